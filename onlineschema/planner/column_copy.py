"""The column copy: expand/contract for a column whose type or name changes.

Expand adds the new column (the new type, or the new name) and a trigger that keeps the
two columns in step for writes from old and new code; a batched backfill fills the
existing rows; indexes and constraints are rebuilt on the new column concurrently
(``NOT VALID`` + ``VALIDATE``, unique ones attached later with ``USING INDEX``); the
migration then waits (``awaiting_contract``). The contract swaps the columns in one
short lock-guarded transaction (constraints, defaults, sequences and identity move over,
the triggers go), then drops the old column's indexes ``CONCURRENTLY`` and the old
column. Changing a key that other tables reference changes the referencing columns too
(``int -> bigint``), all swapped in the same transaction.

The copies of one migration are planned together once every change has been seen: the
recipes record them in the plan's ``ColumnCopies`` extension, whose finalizer emits the
steps, so several columns, and the tables whose foreign keys follow them, share one
contract swap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..catalog import ColumnInfo, ConstraintInfo, IndexInfo
from ..plan import Action, Step
from ..sql import checks, ddl, rewrite
from ..sql import views as view_sql
from .context import PlanContext
from .dependents import (
    checks_using,
    fks_touching,
    index_uses,
    refuse_unrecreatable,
    stats,
    views_over,
)
from .model import VColumn, VTable
from .naming import not_null_name, retired_name, shadow_name, sync_trigger_names
from .steps import RANK_DEFAULT, RANK_FK, RANK_INDEX

#: length-limited string types: an explicit cast would truncate, ALTER TYPE errors
_LIMITED = re.compile(r"^(character varying|character|bit varying|bit)\(\d+\)(\[\])*$")

_INT_RANK = {"smallint": 0, "integer": 1, "bigint": 2}


@dataclass
class Copy:
    """A column replaced by a copy: expand adds ``shadow`` (kept in step by a trigger),
    contract swaps it in as ``final`` and drops the old column."""

    key: tuple[str, str]
    column: str
    shadow: str
    final: str
    old_type: str
    new_type: str
    collation: str | None
    forward: str  # the new column's value, from the row
    reverse: str | None  # the old column's value, from the new one (named ``column``)
    sources: tuple[str, ...]
    why: str
    info: ColumnInfo
    auto: bool = False

    @property
    def renamed(self) -> bool:
        return self.final != self.column


@dataclass
class ColumnCopies:
    """The plan's column copies (a ``PlanContext`` extension)."""

    copies: dict[tuple[str, str], dict[str, Copy]] = field(default_factory=dict)

    @classmethod
    def create(cls, ctx: PlanContext) -> ColumnCopies:
        ctx.finalizers.append(_finalize)
        return cls()


def limited(formatted: str) -> bool:
    return bool(_LIMITED.match(formatted))


def convert(expr: str, type_: str) -> str:
    """``expr`` as a value of ``type_``: an explicit cast, except to a length-limited
    string type, where the assignment cast (as ALTER TYPE uses) errors instead of
    silently truncating."""
    return f"({expr})" if limited(type_) else ddl.cast_expr(expr, type_)


def _earlier_on_column(t: VTable, info: ColumnInfo) -> list[str]:
    """What changes earlier in this migration did to the column a copy is made of (the
    copy is built from the catalog, so it would lose them)."""
    assert t.info is not None
    out: list[str] = []
    col = t.columns.get(info.name)
    if col is not None:
        if col.notnull != info.notnull:
            out.append("its NOT NULL")
        if col.default != info.default:
            out.append("its default")
        if col.type != info.type:
            out.append("its type")
    for name, idx in t.indexes.items():
        if name not in t.info.indexes and (info.name in idx.columns or None in idx.columns):
            out.append(f"index {name}")
    for name, iinfo in t.info.indexes.items():
        if name not in t.indexes and index_uses(iinfo, {info.name}):
            out.append(f"index {name} (dropped)")
    for name, con in t.constraints.items():
        if name not in t.info.constraints and info.name in con.columns:
            out.append(f"constraint {name}")
    for name, cinfo in t.info.constraints.items():
        if name not in t.constraints and info.name in cinfo.columns:
            out.append(f"constraint {name} (dropped)")
    if tuple(t.primary_key) != tuple(t.info.primary_key):
        out.append("the primary key of the table")
    return out


def request_copy(
    p: PlanContext,
    t: VTable,
    info: ColumnInfo,
    *,
    shadow: str,
    final: str,
    new_type: str,
    collation: str | None,
    forward: str,
    reverse: str | None,
    sources: tuple[str, ...],
    why: str,
    follow_references: bool,
    auto: bool = False,
) -> None:
    st = p.extension(ColumnCopies)
    key = (t.schema, t.name)
    assert t.info is not None
    problems = len(p.problems)
    if t.info.relkind == "p":
        p.refuse(
            f"{why}: {t.qual} is partitioned; its indexes cannot be built concurrently nor"
            " attached with USING INDEX",
            "change each partition's column in its own migration, or use raw SQL in a"
            " maintenance window",
        )
    earlier = _earlier_on_column(t, info)
    if earlier:
        p.refuse(
            f"{why}: changes earlier in this migration touch {t.qual}.{info.name}"
            f" ({', '.join(earlier)}); the column copy rebuilds its indexes and constraints"
            " from the catalog",
            "put those changes in a migration of their own, before this one",
        )
    refuse_unrecreatable(p, why, t, info.name)
    unread = sorted(f"{s}.{n}.{k}" for s, n, k in t.info.referenced_by if (s, n) not in p.tables)
    if unread:
        p.refuse(
            f"{why}: foreign keys from tables too far away to plan for reference {t.qual}"
            f" ({', '.join(unread)})",
            "change the columns of that chain of foreign keys in separate migrations,"
            " starting from the referencing end",
        )
    for con in t.info.constraints.values():
        if info.name not in con.columns:
            continue
        if con.type == "x":
            p.refuse(
                f"{why}: exclusion constraint {con.name} uses {t.qual}.{info.name}; it cannot"
                " be rebuilt without blocking writes",
                "drop it first, or change the column in a maintenance window",
            )
        if con.type in ("p", "u") and "DEFERRABLE" in con.definition.upper():
            p.refuse(
                f"{why}: deferrable constraint {con.name} uses {t.qual}.{info.name}",
                "make it NOT DEFERRABLE first, or change the column in a maintenance window",
            )
    if shadow in t.columns:
        p.refuse(
            f"{why}: the column name {shadow!r} is taken in {t.qual}",
            f"rename or drop column {shadow} first",
        )
    if len(p.problems) > problems:
        return
    for stat in stats(t.info, info.name):
        p.notes.append(f"{stat} uses {t.qual}.{info.name}; it is dropped with the old column")
    copy = Copy(
        key=key,
        column=info.name,
        shadow=shadow,
        final=final,
        old_type=info.type,
        new_type=new_type,
        collation=collation,
        forward=forward,
        reverse=reverse,
        sources=sources,
        why=why,
        info=info,
        auto=auto,
    )
    st.copies.setdefault(key, {})[info.name] = copy
    p.frozen[key] = (why, "copy")
    t.columns[shadow] = VColumn(new_type, info.notnull, None, new=True)
    p.filled.add((t.schema, t.name, shadow))  # the copy's backfill fills it
    # tables whose foreign keys are rebuilt are changed too
    for u, _con in fks_touching(p, {key: {info.name: shadow}}):
        if (u.schema, u.name) != key:
            p.frozen.setdefault((u.schema, u.name), (why, "copy"))
    if not follow_references or new_type == info.type:
        return
    for u, con in fks_touching(p, {key: {info.name: shadow}}):
        if con.ref_table != key or info.name not in con.ref_columns or u.info is None:
            continue
        local = con.columns[con.ref_columns.index(info.name)]
        ref_info = u.info.columns.get(local)
        ukey = (u.schema, u.name)
        if ref_info is None or ref_info.type != info.type or local in st.copies.get(ukey, {}):
            continue
        if (ukey, local) == (key, info.name):
            continue
        p.notes.append(
            f"{u.qual}.{local} references {t.qual}.{info.name} (foreign key {con.name}):"
            f" its type changes to {new_type} too"
        )
        local_id = ddl.ident(local)
        request_copy(
            p,
            u,
            ref_info,
            shadow=shadow_name(local),
            final=local,
            new_type=new_type,
            collation=None,
            forward=convert(local_id, new_type),
            reverse=convert(local_id, ref_info.type),
            sources=(local,),
            why=f"change type of {u.qual}.{local} to {new_type} (follows {t.qual}.{info.name})",
            follow_references=True,
            auto=True,
        )


@dataclass
class _Rebuilt:
    """An index or constraint rebuilt on the new columns, swapped in at contract."""

    table: VTable
    name: str  # the original
    temp: str  # the rebuilt one, until the swap
    kind: str  # "index", "constraint_index" (p/u), "check", "fk"
    primary: bool = False
    old_temp: str = ""  # an old plain index, renamed at the swap, dropped after


def _finalize(p: PlanContext) -> None:
    st = p.extension(ColumnCopies)
    if not st.copies or p.problems:
        return
    maps = {key: {col: cp.shadow for col, cp in cols.items()} for key, cols in st.copies.items()}
    keys = sorted(st.copies)
    tables = [p.tables[k] for k in keys]
    rebuilt: list[_Rebuilt] = []
    swap_tables: set[str] = {t.qual for t in tables}

    # --- expand: new columns and sync triggers
    for t in tables:
        for cp in _copies(st, t):
            _expand_copy(p, t, cp)
    # --- backfill
    for t in tables:
        for cp in _copies(st, t):
            p.backfill_step(t, ((cp.shadow, cp.forward),), None, only_null=cp.shadow)
    # --- validate: NOT NULL, indexes, checks, foreign keys
    for t in tables:
        assert t.info is not None
        cols = maps[(t.schema, t.name)]
        for cp in _copies(st, t):
            if cp.info.notnull or cp.column in t.info.primary_key or cp.info.identity:
                p.not_null_steps(t, cp.shadow)
        for idx in sorted(t.info.indexes.values(), key=lambda i: i.name):
            if not index_uses(idx, set(cols)):
                continue
            if not idx.valid:
                p.notes.append(
                    f"invalid index {idx.name} on {t.qual} is not rebuilt; it goes with the"
                    " old column"
                )
                continue
            rebuilt.append(_rebuild_index(p, t, idx, cols))
        for con in checks_using(t.info, set(cols)):
            rebuilt.append(_rebuild_check(p, t, con, cols))
    for u, con in fks_touching(p, maps):
        rebuilt.append(_rebuild_fk(p, u, con, maps))
        swap_tables.add(u.qual)
        if con.ref_table:
            swap_tables.add(f"{con.ref_table[0]}.{con.ref_table[1]}")
    for t in tables:
        shadows = [cp.shadow for cp in _copies(st, t)]
        p.add(
            Step(
                id=f"analyze.{t.qual}",
                phase="validate",
                action="analyze",
                description=f"gather statistics of {', '.join(shadows)} on {t.qual} for the"
                " query planner (reads a sample, reads and writes go on)",
                statements=(ddl.analyze(t.schema, t.name, shadows),),
                lock="ShareUpdateExclusiveLock",
                tables=(t.qual,),
                statement_timeout=0,
            ),
            RANK_FK,
        )
    # --- contract: the swap, then the old indexes and columns
    _swap(p, st, tables, rebuilt, sorted(swap_tables))
    for r in rebuilt:
        if r.kind != "index":
            continue
        p.drop_index_step(
            r.table, r.old_temp, f"drop the old index {r.old_temp} (was {r.name}) concurrently"
        )
    for t in tables:
        olds = [old_column_name(cp) for cp in _copies(st, t)]
        # after the swap a type change's old column hides under a name no code uses;
        # a renamed column's old name goes only now
        step = p.brief(
            f"drop_old_columns.{t.qual}",
            "contract",
            "drop_column",
            f"drop the old column(s) {', '.join(olds)} of {t.qual} (catalog only; the space"
            " comes back as rows are updated or by VACUUM FULL)",
            [ddl.drop_columns(t.schema, t.name, olds)],
            [t.qual],
            post=checks.q_columns_absent(t.schema, t.name, olds),
            breaking=any(cp.renamed for cp in _copies(st, t)),
        )
        step.details["squawk_ignore"] = [
            {"rule": "ban-drop-column", "why": "contract phase: no code uses the old column"}
        ]
        for cp in _copies(st, t):
            if cp.renamed:
                t.columns.pop(cp.column, None)
                t.columns[cp.final].new = False
            else:
                t.columns.pop(cp.shadow, None)
                t.columns[cp.column].type = cp.new_type


def _copies(st: ColumnCopies, t: VTable) -> list[Copy]:
    return [st.copies[(t.schema, t.name)][c] for c in sorted(st.copies[(t.schema, t.name)])]


def old_column_name(cp: Copy) -> str:
    """The old column's name after the swap."""
    return cp.column if cp.renamed else retired_name(cp.column)


def _expand_copy(p: PlanContext, t: VTable, cp: Copy) -> None:
    s, n = t.schema, t.name
    what = f"the new name of {cp.column}" if cp.renamed else f"{cp.column} as {cp.new_type}"
    fn, trg = sync_trigger_names(t.name, cp.column)
    refuse = (
        f"{t.qual}.{cp.shadow} is filled from {cp.column} until the contract phase of"
        f" '{cp.why}' (no reverse_using was given): write {cp.column} instead"
    )
    # the column and its trigger in one transaction: the new column never exists
    # without the trigger, so no write to either column is ever missed by the other
    p.brief(
        f"add_column.{t.qual}.{cp.shadow}",
        "expand",
        "add_column",
        f"add column {cp.shadow} {cp.new_type} to {t.qual}, nullable ({what}; catalog"
        f" only), with trigger {trg}: writes to {cp.column} (old code) and to {cp.shadow}"
        " (new code) are copied to the other column",
        [
            ddl.add_plain_column(s, n, cp.shadow, cp.new_type, collation=cp.collation),
            ddl.sync_trigger_function(
                s,
                fn,
                n,
                old=cp.column,
                new=cp.shadow,
                new_type=cp.new_type,
                forward=cp.forward,
                sources=cp.sources,
                reverse=cp.reverse,
                refuse_message=refuse,
            ),
            ddl.create_trigger(s, n, trg, fn),
        ],
        [t.qual],
        post=checks.q_trigger_exists(s, n, trg),
        undo=[
            Action(ddl.drop_trigger(s, n, trg)),
            Action(ddl.drop_function(s, fn)),
            Action(ddl.drop_column(s, n, cp.shadow)),
        ],
    )
    if cp.renamed:
        p.notes.append(
            f"until `onlineschema contract`, {t.qual}.{cp.column} (old code) and"
            f" {cp.final} (new code) are both readable and writable, kept in step by"
            f" trigger {trg}"
        )
    else:
        back = (
            f"; code may also write {cp.shadow} (copied back into {cp.column})"
            if cp.reverse is not None
            else ""
        )
        p.notes.append(
            f"until `onlineschema contract`, code keeps using {t.qual}.{cp.column}"
            f" ({cp.old_type}); {cp.shadow} ({cp.new_type}) follows it{back}; the contract"
            f" swaps the names"
        )


def _rebuild_index(p: PlanContext, t: VTable, idx: IndexInfo, cols: dict[str, str]) -> _Rebuilt:
    s = t.schema
    temp = shadow_name(idx.name)
    p.relations.add((s, temp))
    p.add(
        Step(
            id=f"create_index.{s}.{temp}",
            phase="validate",
            action="create_index",
            description=f"build {'unique ' if idx.unique else ''}index {temp} on {t.qual}"
            f" concurrently, like {idx.name} on the new column(s) (reads and writes go on)",
            statements=(rewrite.rebuild_index(idx.definition, temp, cols),),
            transactional=False,
            lock="ShareUpdateExclusiveLock",
            tables=(t.qual,),
            scans=True,
            statement_timeout=0,
            postcondition=checks.q_index_valid(s, temp),
            undo=(Action(ddl.drop_index(s, temp), transactional=False),),
            details={"index": {"schema": s, "name": temp, "table": t.name}},
        ),
        RANK_INDEX,
    )
    if idx.constraint and t.info and t.info.constraints.get(idx.constraint, None):
        con = t.info.constraints[idx.constraint]
        if con.type in ("p", "u"):
            return _Rebuilt(t, con.name, temp, "constraint_index", primary=con.type == "p")
    return _Rebuilt(t, idx.name, temp, "index", old_temp=retired_name(idx.name))


def _rebuild_check(
    p: PlanContext, t: VTable, con: ConstraintInfo, cols: dict[str, str]
) -> _Rebuilt:
    s, n = t.schema, t.name
    temp = shadow_name(con.name)
    p.brief(
        f"add_check.{t.qual}.{temp}",
        "validate",
        "add_check_not_valid",
        f"add check {temp} on {t.qual} NOT VALID, like {con.name} on the new column(s)",
        [rewrite.rebuild_constraint(s, n, temp, con.definition, cols)],
        [t.qual],
        post=checks.q_constraint(s, n, temp),
        undo=[Action(ddl.drop_constraint(s, n, temp))],
    )
    if con.validated:
        p.validate_step(
            t,
            temp,
            f"validate check {temp} (scans {t.qual}, reads and writes go on)",
            rank=RANK_DEFAULT,
        )
    return _Rebuilt(t, con.name, temp, "check")


def _rebuild_fk(
    p: PlanContext,
    u: VTable,
    con: ConstraintInfo,
    maps: dict[tuple[str, str], dict[str, str]],
) -> _Rebuilt:
    s, n = u.schema, u.name
    temp = shadow_name(con.name)
    assert con.ref_table is not None
    ref = p.tables.get(con.ref_table)
    ref_qual = f"{con.ref_table[0]}.{con.ref_table[1]}"
    statement = rewrite.rebuild_constraint(
        s,
        n,
        temp,
        con.definition,
        maps.get((s, n), {}),
        ref=con.ref_table,
        ref_columns=maps.get(con.ref_table, {}),
    )
    p.brief(
        f"add_foreign_key.{u.qual}.{temp}",
        "validate",
        "add_foreign_key_not_valid",
        f"add foreign key {temp} on {u.qual} NOT VALID, like {con.name} on the new"
        " column(s) (new rows checked at once)",
        [statement],
        [u.qual] if ref_qual == u.qual else [u.qual, ref_qual],
        lock="ShareRowExclusiveLock",
        post=checks.q_constraint(s, n, temp),
        undo=[Action(ddl.drop_constraint(s, n, temp))],
        rank=RANK_FK,
    )
    if con.validated:
        p.validate_step(
            u,
            temp,
            f"validate foreign key {temp} (scans {u.qual}, reads and writes go on)",
            ref=ref,
            rank=RANK_FK,
        )
    return _Rebuilt(u, con.name, temp, "fk")


def _swap(
    p: PlanContext,
    st: ColumnCopies,
    tables: list[VTable],
    rebuilt: list[_Rebuilt],
    swap_tables: list[str],
) -> None:
    """One transaction: old constraints off, names swapped, defaults, sequences and
    identity moved, new constraints on, triggers dropped."""
    out: list[str] = []
    said: list[str] = []
    # the views over the old columns: stashed and dropped first, recreated last, over
    # the new columns (their definitions are read when this transaction runs)
    columns = [(t.schema, t.name, cp.column) for t in tables for cp in _copies(st, t)]
    out += view_sql.stash(columns)
    for r in rebuilt:
        if r.kind == "fk":
            out.append(ddl.drop_constraint(r.table.schema, r.table.name, r.name))
    for r in rebuilt:
        if r.kind in ("constraint_index", "check"):
            out.append(ddl.drop_constraint(r.table.schema, r.table.name, r.name))
    for r in rebuilt:
        if r.kind == "index":
            out.append(ddl.rename_index(r.table.schema, r.name, r.old_temp))
    for t in tables:
        s, n = t.schema, t.name
        for cp in _copies(st, t):
            old = old_column_name(cp)
            if not cp.renamed:
                out.append(ddl.rename_column(s, n, cp.column, old))
                out.append(ddl.rename_column(s, n, cp.shadow, cp.final))
                said.append(f"{t.qual}.{cp.column} becomes {cp.new_type}")
            else:
                said.append(f"{t.qual}.{cp.column} is replaced by {cp.final}")
            out += _move_default(t, cp, old)
            if cp.info.notnull or cp.info.identity:
                out.append(ddl.drop_not_null(s, n, old))
                out += _keep_not_null_name(p, t, cp)
            elif p.major >= 18 and not cp.renamed and t.columns[cp.shadow].notnull:
                # NOT NULL asked for in this migration: named for the final column
                ours = not_null_name(t.name, cp.shadow)
                out.append(ddl.rename_constraint(s, n, ours, not_null_name(t.name, cp.final)))
    for r in rebuilt:
        s, n = r.table.schema, r.table.name
        if r.kind == "constraint_index":
            out.append(ddl.add_constraint_using_index(s, n, r.name, r.temp, primary_key=r.primary))
        elif r.kind in ("check", "fk"):
            out.append(ddl.rename_constraint(s, n, r.temp, r.name))
        else:
            out.append(ddl.rename_index(s, r.temp, r.name))
    for t in tables:
        for cp in _copies(st, t):
            fn, trg = sync_trigger_names(t.name, cp.column)
            out += [ddl.drop_trigger(t.schema, t.name, trg), ddl.drop_function(t.schema, fn)]
    out += _recreate_views(st, tables)
    views = [v for t in tables if t.info for v in views_over(t.info, set(_copied_columns(st, t)))]
    if views:
        said.append(
            f"drops and recreates view(s) {', '.join(views)} over the new column(s), with"
            " their owners, privileges, comments and options (definitions read when the"
            " swap runs)"
        )
    else:
        said.append("recreates any view that uses the old column(s) by then")
    moved = [r.name for r in rebuilt]
    first = tables[0]
    fn, trg = sync_trigger_names(first.name, _copies(st, first)[0].column)
    step = p.brief(
        "swap_columns." + "+".join(t.qual for t in tables),
        "contract",
        "swap_columns",
        "switch to the new column(s) in one short transaction: "
        + "; ".join(said)
        + (f"; moves {', '.join(moved)}" if moved else "")
        + "; drops the sync triggers",
        out,
        swap_tables,
        post=checks.q_trigger_exists(first.schema, first.name, trg, exists=False),
        breaking=True,
    )
    step.details["squawk_ignore"] = [
        {
            "rule": "renaming-object",
            "why": "each index or constraint takes the name of the"
            " one it replaces, in the same transaction",
        },
        {"rule": "ban-drop-not-null", "why": "the old column, which no code writes any more"},
        {"rule": "ban-drop-default", "why": "the default moves to the new column"},
        {"rule": "ban-drop-function", "why": "the sync trigger's own function"},
    ]


def _copied_columns(st: ColumnCopies, t: VTable) -> list[str]:
    return [cp.column for cp in _copies(st, t)]


def _recreate_views(st: ColumnCopies, tables: list[VTable]) -> list[str]:
    """Recreate the stashed views over the new columns. A renamed column's views are
    created while the new column carries the old name, then the column takes its new
    name: PostgreSQL rewrites the views as a plain ``RENAME COLUMN`` would
    (``SELECT new AS old``)."""
    out: list[str] = []
    back: list[str] = []
    for t in tables:
        for cp in _copies(st, t):
            if not cp.renamed:
                continue
            parked = retired_name(cp.column)
            out += [
                ddl.rename_column(t.schema, t.name, cp.column, parked),
                ddl.rename_column(t.schema, t.name, cp.final, cp.column),
            ]
            back += [
                ddl.rename_column(t.schema, t.name, cp.column, cp.final),
                ddl.rename_column(t.schema, t.name, parked, cp.column),
            ]
    return out + view_sql.restore() + back + view_sql.drop_helpers()


def _keep_not_null_name(p: PlanContext, t: VTable, cp: Copy) -> list[str]:
    """PostgreSQL 18 names NOT NULL constraints: the new column takes the old one's."""
    if p.major < 18 or t.info is None:  # a rename keeps the name too, as RENAME COLUMN does
        return []
    names = [
        k.name for k in t.info.constraints.values() if k.type == "n" and k.columns == (cp.column,)
    ]
    ours = not_null_name(t.name, cp.shadow)
    if not names or names[0] == ours:
        return []
    return [ddl.rename_constraint(t.schema, t.name, ours, names[0])]


def _move_default(t: VTable, cp: Copy, old: str) -> list[str]:
    """Default, serial sequence or identity: from the old column to the new one."""
    s, n, info = t.schema, t.name, cp.info
    out: list[str] = []
    seq = info.sequence
    if info.identity and seq is not None:
        tmp = shadow_name(seq[1])
        out += [
            ddl.add_identity(s, n, cp.final, info.identity == "a", seq[0], tmp),
            ddl.continue_sequence(seq[0], tmp, seq[0], seq[1]),
            ddl.drop_identity(s, n, old),
            ddl.rename_sequence(seq[0], tmp, seq[1]),
        ]
        return out
    if info.default is not None:
        out += [
            ddl.set_default(s, n, cp.final, info.default),
            ddl.drop_default(s, n, old),
        ]
    if seq is not None:
        out.append(ddl.sequence_owned_by(seq[0], seq[1], s, n, cp.final))
        if _INT_RANK.get(cp.new_type, -1) > _INT_RANK.get(seq[2], 9):
            out.append(ddl.sequence_as(seq[0], seq[1], cp.new_type))
    return out
