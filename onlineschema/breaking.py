"""Breaking changes: column type changes, renames and drops, through expand/contract.

These are the changes that break running code or rewrite the table. Each takes the
cheapest safe path (``shared/reference/postgres-locks.md``):

* **Type change, binary coercible** (``varchar(n) -> varchar(m >= n)``, ``varchar ->
  text``, numeric widening, ``pg_cast`` castmethod ``b`` pairs): one lock-guarded
  ``ALTER ... TYPE`` that neither rewrites nor scans, when no CHECK constraint would be
  re-verified and no index rebuilt under its ``ACCESS EXCLUSIVE`` lock.
* **Type change otherwise, and rename** (the *column copy*): expand adds the new column
  (the new type, or the new name) and a trigger that keeps the two columns in step
  for writes from old and new code; a batched backfill fills the existing rows; indexes
  and constraints are rebuilt on the new column concurrently (``NOT VALID`` +
  ``VALIDATE``, unique ones attached later with ``USING INDEX``); the migration then
  waits (``awaiting_contract``). ``onlineschema contract NAME`` swaps the columns in one
  short lock-guarded transaction (constraints, defaults, sequences and identity move
  over, the triggers go), then drops the old column's indexes ``CONCURRENTLY`` and the
  old column. Changing a key that other tables reference changes the referencing
  columns too (``int -> bigint``), all swapped in the same transaction.
* **Instant rename** (``RenameColumn(instant=True)``): one brief ``RENAME COLUMN``,
  marked in the plan as breaking running code.
* **Drop column, drop table**: contract-only. What depends on the object is listed in
  the plan; foreign keys in both directions are dropped first (brief locks on both
  tables), then the indexes ``CONCURRENTLY``, then the object itself. Dropping a NOT
  NULL column without a default makes it nullable during expand, so code that no
  longer writes it can insert rows before the contract.

Handlers take the planner (``_Planner``) and the change, as the planner's own do; the
column copies of one migration are planned together once every change has been seen
(``_Planner.finalizers``), so several columns, and the tables whose foreign keys follow
them, share one contract swap.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .catalog import ColumnInfo, ConstraintInfo, IndexInfo, TableInfo
from .changes import (
    AlterColumnType,
    Change,
    DropColumn,
    DropIndex,
    DropTable,
    RenameColumn,
    RunSQL,
)
from .errors import Refused
from .expressions import check_expression, check_type, column_refs
from .plan import Action, Step
from .planner import (
    MAX_IDENTIFIER_BYTES,
    RANK_DEFAULT,
    RANK_FK,
    RANK_INDEX,
    Probe,
    _Col,
    _Planner,
    _Table,
    helper_name,
)
from .sql import ddl

VARCHAR, TEXT, NUMERIC, VARBIT = 1043, 25, 1700, 1562
TIMESTAMP, TIMESTAMPTZ = 1114, 1184
#: same type, longer or unlimited typmod: no rewrite (varchar, numeric, varbit)
TYPMOD_WIDENS = frozenset({VARCHAR, NUMERIC, VARBIT})
#: different types whose indexes PostgreSQL keeps (logically equivalent)
INDEX_KEPT = frozenset({(VARCHAR, TEXT), (TEXT, VARCHAR)})
UTC_ZONES = frozenset(
    {
        "utc",
        "etc/utc",
        "gmt",
        "etc/gmt",
        "uct",
        "etc/uct",
        "zulu",
        "etc/zulu",
        "universal",
        "etc/universal",
        "gmt0",
        "etc/gmt0",
        "greenwich",
    }
)
#: length-limited string types: an explicit cast would truncate, ALTER TYPE errors
_LIMITED = re.compile(r"^(character varying|character|bit varying|bit)\(\d+\)(\[\])*$")
_INT_RANK = {"smallint": 0, "integer": 1, "bigint": 2}
#: objects that make a column or table impossible to drop or replace as planned
_BLOCKING = {
    "pg_rewrite": "view or rule",
    "pg_policy": "row security policy",
    "pg_trigger": "trigger",
    "pg_proc": "function",
    "pg_class": "generated column",
    "pg_publication_rel": "publication",
}

# ---------------------------------------------------------------------------- state


@dataclass
class _Copy:
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
class _State:
    copies: dict[tuple[str, str], dict[str, _Copy]] = field(default_factory=dict)
    #: table -> (what froze it, "copy" or "drop"): later changes on it are refused
    frozen: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)


def _state(p: _Planner) -> _State:
    st = getattr(p, "_breaking", None)
    if st is None:
        st = _State()
        p._breaking = st  # type: ignore[attr-defined]
        p.finalizers.append(_finalize)
    assert isinstance(st, _State)
    return st


def install_handlers(handlers: dict[Any, Any]) -> None:
    """Register the breaking-change handlers and guard every other handler against
    tables whose final shape exists only after this migration's contract phase."""
    for kind, handler in list(handlers.items()):
        handlers[kind] = _guarded(handler)
    handlers[AlterColumnType] = alter_column_type
    handlers[RenameColumn] = rename_column
    handlers[DropColumn] = _guarded(drop_column)
    handlers[DropTable] = _guarded(drop_table)


def _guarded(handler: Callable[[_Planner, Any], None]) -> Callable[[_Planner, Any], None]:
    @functools.wraps(handler)
    def run(p: _Planner, c: Any) -> None:
        if not _frozen(p, c):
            handler(p, c)

    return run


def _touched(p: _Planner, c: Change) -> list[tuple[str, str]]:
    keys = []
    cat = p.catalog
    for attr, sattr in (("table", "schema"), ("ref_table", "ref_schema")):
        name = getattr(c, attr, None)
        if isinstance(name, str):
            keys.append((cat.resolve_schema(getattr(c, sattr, None), name), name))
    if isinstance(c, DropIndex):
        for s in [c.schema] if c.schema else list(cat.search_path):
            owner = cat.index_owner.get((s, c.name))
            if owner:
                keys.append(owner)
                break
    if isinstance(c, RunSQL):
        for name in c.touches:
            s, _, rel = name.rpartition(".")
            keys.append((s or cat.resolve_schema(None, rel), rel))
    return keys


def _frozen(p: _Planner, c: Change, *, allow_copy: bool = False) -> bool:
    st = getattr(p, "_breaking", None)
    if not isinstance(st, _State) or not st.frozen:
        return False
    for key in _touched(p, c):
        hit = st.frozen.get(key)
        if hit is None or (allow_copy and hit[1] == "copy"):
            continue
        p.refuse(
            f"{c.describe()}: table {key[0]}.{key[1]} is also changed by '{hit[0]}' in this"
            " migration, and its final shape exists only after that change's contract phase",
            "put this change in a migration of its own (before this one, or after"
            " `onlineschema contract`)",
        )
        return True
    return False


# ------------------------------------------------------------------------- helpers


def _ident(name: str) -> str:
    return ddl.ident(name)


def _limited(formatted: str) -> bool:
    return bool(_LIMITED.match(formatted))


def _convert(expr: str, type_: str) -> str:
    """``expr`` as a value of ``type_``: an explicit cast, except to a length-limited
    string type, where the assignment cast (as ALTER TYPE uses) errors instead of
    silently truncating."""
    return f"({expr})" if _limited(type_) else ddl.cast_expr(expr, type_)


def _numeric_mod(mod: int) -> tuple[int, int]:
    """(precision, scale) of a numeric typmod."""
    raw = mod - 4
    scale = raw & 0x7FF
    if scale > 1023:  # negative scale (PostgreSQL 15+) is stored in 11 bits
        scale -= 2048
    return (raw >> 16) & 0xFFFF, scale


def _binary(p: _Planner, old_oid: int, old_mod: int, new_oid: int, new_mod: int) -> bool:
    """Can PostgreSQL change the type without touching a row (reference: ALTER TYPE)?"""
    if old_oid == new_oid:
        if old_oid not in TYPMOD_WIDENS:
            return False
        if new_mod == -1:
            return True
        if old_mod == -1:
            return False
        if old_oid == NUMERIC:
            (op, os_), (np_, ns) = _numeric_mod(old_mod), _numeric_mod(new_mod)
            return ns == os_ and np_ >= op
        return new_mod >= old_mod
    return new_mod == -1 and (old_oid, new_oid) in p.catalog.binary_casts


def _index_uses(idx: IndexInfo, columns: set[str]) -> bool:
    return bool(set(c for c in idx.columns if c) & columns) or ddl.index_references(
        idx.definition, columns
    )


def _checks_using(info: TableInfo, columns: set[str]) -> list[ConstraintInfo]:
    return [
        con
        for con in info.constraints.values()
        if con.type == "c"
        and (set(con.columns) & columns or ddl.constraint_references(con.definition, columns))
    ]


def _fks_touching(
    p: _Planner, maps: dict[tuple[str, str], dict[str, str]]
) -> list[tuple[_Table, ConstraintInfo]]:
    """Foreign keys whose own or referenced columns are in ``maps``, with their table."""
    out = []
    for key in sorted(p.tables):
        u = p.tables[key]
        if u.info is None:
            continue
        for con in sorted(u.info.constraints.values(), key=lambda k: k.name):
            if con.type != "f":
                continue
            local = maps.get(key, {})
            ref = maps.get(con.ref_table, {}) if con.ref_table else {}
            if set(con.columns) & set(local) or set(con.ref_columns) & set(ref):
                out.append((u, con))
    return out


def _blocking_dependents(info: TableInfo, column: str | None) -> list[str]:
    """What stops a drop or copy of ``column`` (or of the table, when None)."""
    out = []
    for col, catalog, what in info.dependents:
        kind = _BLOCKING.get(catalog)
        if kind is None:
            continue
        if column is not None and col != column:
            continue
        if column is None and catalog not in ("pg_rewrite", "pg_proc"):
            continue  # dropped with the table
        out.append(f"{what} ({kind})")
    return out


def _stats(info: TableInfo, column: str) -> list[str]:
    return [w for c, cat, w in info.dependents if cat == "pg_statistic_ext" and c == column]


def _earlier_steps(p: _Planner, t: _Table) -> list[str]:
    return [s.id for *_, s in p.steps if t.qual in s.tables and s.action != "alter_column_type"]


def _name_free(p: _Planner, t: _Table, name: str, what: str) -> bool:
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        p.refuse(
            f"{what} name {name!r} is longer than {MAX_IDENTIFIER_BYTES} bytes",
            f"use a name of at most {MAX_IDENTIFIER_BYTES} bytes",
        )
        return False
    if name in t.columns:
        p.refuse(
            f"column {name!r} already exists in table {t.qual}",
            "choose another name, or drop that column first",
        )
        return False
    return True


# --------------------------------------------------------------- ALTER COLUMN TYPE


def alter_column_type(p: _Planner, c: AlterColumnType) -> None:
    st = _state(p)
    if _frozen(p, c, allow_copy=True):
        return
    t = p.table(c.schema, c.table)
    col = p.column(t, c.column) if t else None
    if t is None or col is None:
        return
    try:
        new_type = check_type(c.type)
    except Refused as exc:
        p.problems.append(exc)
        return
    using = p.expr(c.using, "USING expression") if c.using else None
    reverse = p.expr(c.reverse_using, "reverse_using expression") if c.reverse_using else None
    if (c.using and using is None) or (c.reverse_using and reverse is None):
        return
    if t.new:
        col.type = new_type
        p.brief(
            f"alter_column_type.{t.qual}.{c.column}",
            "expand",
            "alter_column_type",
            f"change type of {t.qual}.{c.column} to {new_type} (table created by this migration)",
            [ddl.alter_column_type(t.schema, t.name, c.column, new_type, using)],
            [t.qual],
        )
        return
    if col.new or t.info is None or c.column not in t.info.columns:
        p.refuse(
            f"column {t.qual}.{c.column} is added by this migration",
            "give it the type you want in its AddColumn",
        )
        return
    earlier = st.copies.get((t.schema, t.name), {}).get(c.column)
    if earlier is not None and not earlier.auto:
        p.refuse(
            f"column {t.qual}.{c.column} is changed twice in this migration",
            "keep one change per column",
        )
        return
    if earlier is not None:  # it followed a referenced key: asked for explicitly now
        del st.copies[(t.schema, t.name)][c.column]
        t.columns.pop(earlier.shadow, None)
    info = t.info.columns[c.column]
    resolved = p.catalog.type_mods.get(c.type)
    kind = p.catalog.types.get(c.type)
    if resolved is None or kind is None:
        p.refuse(
            f"type {c.type!r} does not exist",
            "check the type name, or create the type in an earlier migration",
        )
        return
    new_oid, new_mod, new_fmt = resolved
    if info.generated:
        p.refuse(
            f"column {t.qual}.{c.column} is a generated column; changing its type rewrites"
            " the table under ACCESS EXCLUSIVE",
            "add a new generated column of the new type, switch the code to it, then drop"
            " the old one",
        )
        return
    col_id = _ident(c.column)
    trivial = using is None or using in (
        col_id,
        check_expression(f"CAST({col_id} AS {new_type})"),
    )
    if trivial and reverse is not None:
        p.refuse(
            "reverse_using is given without a USING expression",
            "drop reverse_using (the default converts back with a cast) or give USING",
        )
        return
    if trivial and new_fmt == info.type:
        p.refuse(f"column {t.qual}.{c.column} is already of type {info.type}", "remove this change")
        return
    to_utc = (
        info.type_oid == TIMESTAMP
        and new_oid == TIMESTAMPTZ
        and p.catalog.timezone.lower() in UTC_ZONES
        and new_mod in (-1, info.typmod)
    )
    binary = kind[1] != "d" and (_binary(p, info.type_oid, info.typmod, new_oid, new_mod) or to_utc)
    if trivial and binary:
        blocker = _in_place_blocker(p, t, info, new_oid)
        if blocker is None:
            _alter_in_place(p, t, info, new_fmt, new_oid, new_mod, to_utc)
            return
        p.notes.append(
            f"{t.qual}.{c.column} -> {new_fmt} needs no rewrite, but {blocker}: planned as"
            " a column copy (expand/contract) instead"
        )
    # the column copy
    old_fmt = info.type
    zone = p.catalog.timezone
    if trivial and info.type_oid == TIMESTAMP and new_oid == TIMESTAMPTZ:
        forward = ddl.at_time_zone(c.column, zone)
        back: str | None = ddl.at_time_zone(c.column, zone)
        p.notes.append(
            f"existing values of {t.qual}.{c.column} are read as {zone} times (the"
            " TimeZone of the planning session), as ALTER TYPE in that session would"
        )
    elif trivial:
        forward = _convert(col_id, new_fmt)
        back = _convert(col_id, old_fmt)
    else:
        assert using is not None
        forward = _convert(using, new_fmt)
        back = _convert(reverse, old_fmt) if reverse is not None else None
    sources = {c.column}
    if using is not None:
        for ref in sorted(column_refs(using)):
            if p.column(t, ref, what="column used by USING") is None:
                return
            sources.add(ref)
    if reverse is not None and column_refs(reverse) - {c.column}:
        p.refuse(
            f"reverse_using {reverse!r} may use only the column {c.column} (its new value)",
            "write it over that column alone",
        )
        return
    p.probe_expr(t, forward, new_fmt, f"conversion of {t.qual}.{c.column} to {new_fmt}")
    if back is not None:
        p.probes.append(
            Probe(
                ddl.q_compile_reverse(c.column, new_fmt, back, old_fmt, t.name),
                f"conversion of {t.qual}.{c.column} back from {new_fmt} to {old_fmt} ({back})",
                "give reverse_using: an expression over the column (its new value) that"
                " gives the old type",
            )
        )
    collation = info.collation if _collatable(new_fmt) else None
    _request_copy(
        p,
        t,
        info,
        shadow=helper_name(c.column, "onlineschema_new"),
        final=c.column,
        new_type=new_fmt,
        collation=collation,
        forward=forward,
        reverse=back,
        sources=tuple(sorted(sources)),
        why=c.describe(),
        follow_references=True,
    )


def _collatable(formatted: str) -> bool:
    return formatted == "text" or formatted.startswith(("character", "citext"))


def _in_place_blocker(p: _Planner, t: _Table, info: ColumnInfo, new_oid: int) -> str | None:
    """Why an in-place (no rewrite) ALTER TYPE would still scan or rebuild under its lock."""
    assert t.info is not None
    same = info.type_oid == new_oid or (info.type_oid, new_oid) in INDEX_KEPT
    checks = _checks_using(t.info, {info.name})
    if checks:
        names = ", ".join(k.name for k in checks)
        return f"CHECK constraint(s) {names} would be verified again by a scan under its lock"
    if not same:
        idx = [i.name for i in t.info.indexes.values() if _index_uses(i, {info.name})]
        if idx:
            return f"index(es) {', '.join(sorted(idx))} would be rebuilt under its lock"
        fks = [con.name for _, con in _fks_touching(p, {(t.schema, t.name): {info.name: ""}})]
        if fks:
            return f"foreign key(s) {', '.join(fks)} would be checked again"
    return None


def _alter_in_place(
    p: _Planner,
    t: _Table,
    info: ColumnInfo,
    new_fmt: str,
    new_oid: int,
    new_mod: int,
    to_utc: bool,
) -> None:
    s, n, column = t.schema, t.name, info.name
    statements = [ddl.set_timezone_local("UTC")] if to_utc else []
    statements.append(ddl.alter_column_type_plain(s, n, column, new_fmt, info.collation))
    undo: list[Action] = []
    if _binary(p, new_oid, new_mod, info.type_oid, info.typmod):
        undo = [Action(ddl.alter_column_type_plain(s, n, column, info.type, info.collation))]
    else:
        p.notes.append(
            f"abort would not change {t.qual}.{column} back to {info.type} (that would"
            " rewrite or scan the table)"
        )
    others = {u.qual for u, _ in _fks_touching(p, {(s, n): {column: ""}})} - {t.qual}
    tables = [t.qual, *sorted(others)]
    t.columns[column].type = new_fmt
    step = p.brief(
        f"alter_column_type.{t.qual}.{column}",
        "expand",
        "alter_column_type",
        f"change type of {t.qual}.{column} from {info.type} to {new_fmt} in place"
        " (binary coercible: no rewrite, no scan, indexes kept)",
        statements,
        tables,
        post=ddl.q_column_type(s, n, column, new_fmt),
        undo=undo,
    )
    step.details["squawk_ignore"] = [
        {"rule": rule, "why": "binary coercible: no rewrite, no scan (relfilenode unchanged)"}
        for rule in ("changing-column-type", "prefer-text-field")
    ]


# ------------------------------------------------------------------ RENAME COLUMN


def rename_column(p: _Planner, c: RenameColumn) -> None:
    st = _state(p)
    if _frozen(p, c, allow_copy=not c.instant):
        return
    t = p.table(c.schema, c.table)
    col = p.column(t, c.column) if t else None
    if t is None or col is None or not p._name_ok(c.new_name, "column"):
        return
    if not _name_free(p, t, c.new_name, "column"):
        return
    if c.instant or t.new:
        _rename_instant(p, t, c)
        return
    if col.new or t.info is None or c.column not in t.info.columns:
        p.refuse(
            f"column {t.qual}.{c.column} is added by this migration",
            "give it the name you want in its AddColumn",
        )
        return
    if c.column in st.copies.get((t.schema, t.name), {}):
        p.refuse(
            f"column {t.qual}.{c.column} is changed twice in this migration",
            "keep one change per column",
        )
        return
    info = t.info.columns[c.column]
    if info.generated:
        p.refuse(
            f"column {t.qual}.{c.column} is a generated column and cannot be copied",
            "rename it with RenameColumn(..., instant=True) when code and schema deploy together",
        )
        return
    col_id = _ident(c.column)
    _request_copy(
        p,
        t,
        info,
        shadow=c.new_name,
        final=c.new_name,
        new_type=info.type,
        collation=info.collation,
        forward=col_id,
        reverse=col_id,
        sources=(c.column,),
        why=c.describe(),
        follow_references=False,
    )


def _rename_instant(p: _Planner, t: _Table, c: RenameColumn) -> None:
    s, n = t.schema, t.name
    t.columns[c.new_name] = t.columns.pop(c.column)

    def ren(cols: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(c.new_name if x == c.column else x for x in cols)

    t.primary_key = ren(t.primary_key)
    for idx in t.indexes.values():
        idx.columns = ren(idx.columns)
    for con in t.constraints.values():
        con.columns = ren(con.columns)
    p.brief(
        f"rename_column.{t.qual}.{c.column}",
        "expand",
        "rename_column",
        f"rename column {t.qual}.{c.column} to {c.new_name} in place: code that still"
        f" uses {c.column} fails from here on",
        [ddl.rename_column(s, n, c.column, c.new_name)],
        [t.qual],
        post=ddl.q_column_exists(s, n, c.new_name),
        undo=[Action(ddl.rename_column(s, n, c.new_name, c.column))],
        breaking=not t.new,
    )
    if not t.new:
        p.notes.append(
            f"instant rename of {t.qual}.{c.column} to {c.new_name} breaks running code that"
            " uses the old name: deploy the code that uses the new name at the same time"
        )


# --------------------------------------------------------------- the column copy


def _request_copy(
    p: _Planner,
    t: _Table,
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
    st = _state(p)
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
    earlier = _earlier_steps(p, t)
    if earlier:
        p.refuse(
            f"{why}: table {t.qual} has other changes earlier in this migration"
            f" ({', '.join(earlier)}); the column copy rebuilds its indexes and constraints"
            " from the catalog",
            "put those changes in a migration of their own, before this one",
        )
    blockers = _blocking_dependents(t.info, info.name)
    if blockers:
        p.refuse(
            f"{why}: {t.qual}.{info.name} is used by {'; '.join(blockers)}, which would"
            " still use the old column",
            "drop or change those objects first (they must stop using the column)",
        )
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
    for stat in _stats(t.info, info.name):
        p.notes.append(f"{stat} uses {t.qual}.{info.name}; it is dropped with the old column")
    copy = _Copy(
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
    st.frozen[key] = (why, "copy")
    t.columns[shadow] = _Col(new_type, False, None, new=True)
    # tables whose foreign keys are rebuilt are changed too
    for u, _con in _fks_touching(p, {key: {info.name: shadow}}):
        if (u.schema, u.name) != key:
            st.frozen.setdefault((u.schema, u.name), (why, "copy"))
    if not follow_references or new_type == info.type:
        return
    for u, con in _fks_touching(p, {key: {info.name: shadow}}):
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
        local_id = _ident(local)
        _request_copy(
            p,
            u,
            ref_info,
            shadow=helper_name(local, "onlineschema_new"),
            final=local,
            new_type=new_type,
            collation=None,
            forward=_convert(local_id, new_type),
            reverse=_convert(local_id, ref_info.type),
            sources=(local,),
            why=f"change type of {u.qual}.{local} to {new_type} (follows {t.qual}.{info.name})",
            follow_references=True,
            auto=True,
        )


@dataclass
class _Rebuilt:
    """An index or constraint rebuilt on the new columns, swapped in at contract."""

    table: _Table
    name: str  # the original
    temp: str  # the rebuilt one, until the swap
    kind: str  # "index", "constraint_index" (p/u), "check", "fk"
    primary: bool = False
    old_temp: str = ""  # an old plain index, renamed at the swap, dropped after


def _finalize(p: _Planner) -> None:
    st = _state(p)
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
            if not _index_uses(idx, set(cols)):
                continue
            if not idx.valid:
                p.notes.append(
                    f"invalid index {idx.name} on {t.qual} is not rebuilt; it goes with the"
                    " old column"
                )
                continue
            rebuilt.append(_rebuild_index(p, t, idx, cols))
        for con in _checks_using(t.info, set(cols)):
            rebuilt.append(_rebuild_check(p, t, con, cols))
    for u, con in _fks_touching(p, maps):
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
        olds = [_old_name(cp) for cp in _copies(st, t)]
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
            post=ddl.q_columns_absent(t.schema, t.name, olds),
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


def _copies(st: _State, t: _Table) -> list[_Copy]:
    return [st.copies[(t.schema, t.name)][c] for c in sorted(st.copies[(t.schema, t.name)])]


def _old_name(cp: _Copy) -> str:
    """The old column's name after the swap."""
    return cp.column if cp.renamed else helper_name(cp.column, "onlineschema_old")


def _sync_names(t: _Table, cp: _Copy) -> tuple[str, str]:
    # BEFORE triggers fire in name order: "zz_" runs after the application's own, so
    # a trigger that changes the old column is seen by the copy
    return (
        helper_name("onlineschema_sync", t.name, cp.column),
        helper_name("zz_onlineschema_sync", cp.column),
    )


def _expand_copy(p: _Planner, t: _Table, cp: _Copy) -> None:
    s, n = t.schema, t.name
    what = f"the new name of {cp.column}" if cp.renamed else f"{cp.column} as {cp.new_type}"
    fn, trg = _sync_names(t, cp)
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
        post=ddl.q_trigger_exists(s, n, trg),
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


def _rebuild_index(p: _Planner, t: _Table, idx: IndexInfo, cols: dict[str, str]) -> _Rebuilt:
    s = t.schema
    temp = helper_name(idx.name, "onlineschema_new")
    p.relations.add((s, temp))
    p.add(
        Step(
            id=f"create_index.{s}.{temp}",
            phase="validate",
            action="create_index",
            description=f"build {'unique ' if idx.unique else ''}index {temp} on {t.qual}"
            f" concurrently, like {idx.name} on the new column(s) (reads and writes go on)",
            statements=(ddl.rebuild_index(idx.definition, temp, cols),),
            transactional=False,
            lock="ShareUpdateExclusiveLock",
            tables=(t.qual,),
            scans=True,
            statement_timeout=0,
            postcondition=ddl.q_index_valid(s, temp),
            undo=(Action(ddl.drop_index(s, temp), transactional=False),),
            details={"index": {"schema": s, "name": temp, "table": t.name}},
        ),
        RANK_INDEX,
    )
    if idx.constraint and t.info and t.info.constraints.get(idx.constraint, None):
        con = t.info.constraints[idx.constraint]
        if con.type in ("p", "u"):
            return _Rebuilt(t, con.name, temp, "constraint_index", primary=con.type == "p")
    return _Rebuilt(t, idx.name, temp, "index", old_temp=helper_name(idx.name, "onlineschema_old"))


def _rebuild_check(p: _Planner, t: _Table, con: ConstraintInfo, cols: dict[str, str]) -> _Rebuilt:
    s, n = t.schema, t.name
    temp = helper_name(con.name, "onlineschema_new")
    p.brief(
        f"add_check.{t.qual}.{temp}",
        "validate",
        "add_check_not_valid",
        f"add check {temp} on {t.qual} NOT VALID, like {con.name} on the new column(s)",
        [ddl.rebuild_constraint(s, n, temp, con.definition, cols)],
        [t.qual],
        post=ddl.q_constraint(s, n, temp),
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
    p: _Planner,
    u: _Table,
    con: ConstraintInfo,
    maps: dict[tuple[str, str], dict[str, str]],
) -> _Rebuilt:
    s, n = u.schema, u.name
    temp = helper_name(con.name, "onlineschema_new")
    assert con.ref_table is not None
    ref = p.tables.get(con.ref_table)
    ref_qual = f"{con.ref_table[0]}.{con.ref_table[1]}"
    statement = ddl.rebuild_constraint(
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
        post=ddl.q_constraint(s, n, temp),
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
    p: _Planner,
    st: _State,
    tables: list[_Table],
    rebuilt: list[_Rebuilt],
    swap_tables: list[str],
) -> None:
    """One transaction: old constraints off, names swapped, defaults, sequences and
    identity moved, new constraints on, triggers dropped."""
    out: list[str] = []
    said: list[str] = []
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
            old = _old_name(cp)
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
            fn, trg = _sync_names(t, cp)
            out += [ddl.drop_trigger(t.schema, t.name, trg), ddl.drop_function(t.schema, fn)]
    moved = [r.name for r in rebuilt]
    first = tables[0]
    fn, trg = _sync_names(first, _copies(st, first)[0])
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
        post=ddl.q_trigger_exists(first.schema, first.name, trg, exists=False),
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


def _keep_not_null_name(p: _Planner, t: _Table, cp: _Copy) -> list[str]:
    """PostgreSQL 18 names NOT NULL constraints: the new column takes the old one's."""
    if p.major < 18 or cp.renamed or t.info is None:
        return []
    names = [
        k.name for k in t.info.constraints.values() if k.type == "n" and k.columns == (cp.column,)
    ]
    ours = helper_name(t.name, cp.shadow, "not_null")  # planner.not_null_steps names it so
    if not names or names[0] == ours:
        return []
    return [ddl.rename_constraint(t.schema, t.name, ours, names[0])]


def _move_default(t: _Table, cp: _Copy, old: str) -> list[str]:
    """Default, serial sequence or identity: from the old column to the new one."""
    s, n, info = t.schema, t.name, cp.info
    out: list[str] = []
    seq = info.sequence
    if info.identity and seq is not None:
        tmp = helper_name(seq[1], "onlineschema_new")
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


# -------------------------------------------------------------------- DROP COLUMN


def drop_column(p: _Planner, c: DropColumn) -> None:
    t = p.table(c.schema, c.table)
    if t is None:
        return
    if c.column not in t.columns and c.if_exists and not t.new:
        p.notes.append(
            f"column {c.column} does not exist in {t.qual}; DROP COLUMN IF EXISTS skipped"
        )
        return
    col = p.column(t, c.column)
    if col is None:
        return
    s, n = t.schema, t.name
    if t.new or col.new or t.info is None or c.column not in t.info.columns:
        p.refuse(
            f"column {t.qual}.{c.column} is added by this migration",
            "remove it from the migration instead of dropping it",
        )
        return
    info = t.info.columns[c.column]
    if c.column in t.primary_key:
        p.refuse(
            f"column {t.qual}.{c.column} is part of the primary key of {t.qual}",
            "drop the primary key first (DropConstraint), in an earlier migration",
        )
        return
    blockers = _blocking_dependents(t.info, c.column)
    if blockers:
        p.refuse(
            f"{t.qual}.{c.column} is used by {'; '.join(blockers)}",
            "drop or change those objects first (DROP COLUMN would fail, or take them along)",
        )
        return
    del t.columns[c.column]
    depends: list[str] = []
    # expand: code that no longer writes the column must be able to insert
    if info.notnull and info.default is None and not info.identity and not info.generated:
        nn_check = helper_name("onlineschema_nn", n, c.column)
        relax = p.brief(
            f"drop_not_null.{t.qual}.{c.column}",
            "expand",
            "drop_not_null",
            f"drop NOT NULL on {t.qual}.{c.column} so that code that no longer writes it can"
            " insert rows until the column is dropped",
            [ddl.drop_not_null(s, n, c.column)],
            [t.qual],
            post=ddl.q_column_notnull(s, n, c.column, False),
            undo=[
                Action(
                    ddl.add_check(s, n, nn_check, ddl.check_not_null_expr(c.column), not_valid=True)
                ),
                Action(ddl.validate_constraint(s, n, nn_check), transactional=False),
                Action(ddl.set_not_null(s, n, c.column)),
                Action(ddl.drop_constraint(s, n, nn_check)),
            ],
        )
        relax.details["squawk_ignore"] = [
            {"rule": "ban-drop-not-null", "why": "the column is dropped in the contract phase"}
        ]
    # contract: foreign keys (both directions), then indexes, then the column
    for u, con in _fks_touching(p, {(s, n): {c.column: ""}}):
        ref_qual = f"{con.ref_table[0]}.{con.ref_table[1]}" if con.ref_table else u.qual
        direction = (
            f"references {t.qual}.{c.column}"
            if u.qual != t.qual or c.column not in con.columns
            else f"on {t.qual}.{c.column} references {ref_qual}"
        )
        _drop_fk(p, u, con, f"foreign key {u.qual}.{con.name} ({direction})")
        depends.append(f"foreign key {u.qual}.{con.name}")
    for idx in sorted(t.info.indexes.values(), key=lambda i: i.name):
        if not _index_uses(idx, {c.column}):
            continue
        if idx.constraint:
            cinfo = t.info.constraints.get(idx.constraint)
            if cinfo is not None and cinfo.type in ("p", "u", "x"):
                step = p.brief(
                    f"drop_constraint.{t.qual}.{idx.constraint}",
                    "contract",
                    "drop_constraint",
                    f"drop constraint {idx.constraint} on {t.qual} (uses {c.column}; its index"
                    " goes with it)",
                    [ddl.drop_constraint(s, n, idx.constraint)],
                    [t.qual],
                    post=ddl.q_constraint_absent(s, n, idx.constraint),
                    breaking=True,
                )
                step.details["squawk_ignore"] = [
                    {"rule": "ban-drop-constraint", "why": "contract phase of a column drop"}
                ]
                t.constraints.pop(idx.constraint, None)
                t.indexes.pop(idx.name, None)
                depends.append(f"constraint {idx.constraint}")
                continue
        p.drop_index_step(
            t, idx.name, f"drop index {s}.{idx.name} concurrently (uses {c.column})", breaking=True
        )
        depends.append(f"index {idx.name}")
    along = [f"check {k.name}" for k in _checks_using(t.info, {c.column})]
    for k in _checks_using(t.info, {c.column}):
        t.constraints.pop(k.name, None)
    if info.sequence is not None:
        along.append(f"sequence {info.sequence[0]}.{info.sequence[1]}")
    along += _stats(t.info, c.column)
    step = p.brief(
        f"drop_column.{t.qual}.{c.column}",
        "contract",
        "drop_column",
        f"drop column {t.qual}.{c.column} (catalog only)"
        + (f"; takes along {', '.join(along)}" if along else ""),
        [ddl.drop_column(s, n, c.column, if_exists=False)],
        [t.qual],
        post=ddl.q_column_exists(s, n, c.column, exists=False),
        breaking=True,
    )
    step.details["squawk_ignore"] = [
        {"rule": "ban-drop-column", "why": "contract phase: no code uses the column"}
    ]
    everything = depends + along
    p.notes.append(
        f"{t.qual}.{c.column} is dropped in the contract phase, after the code stops using it"
        + (
            f"; depending on it: {', '.join(everything)}"
            if everything
            else "; nothing depends on it"
        )
    )


def _drop_fk(p: _Planner, u: _Table, con: ConstraintInfo, what: str) -> None:
    ref_qual = f"{con.ref_table[0]}.{con.ref_table[1]}" if con.ref_table else u.qual
    step = p.brief(
        f"drop_constraint.{u.qual}.{con.name}",
        "contract",
        "drop_constraint",
        f"drop {what} (brief lock on both tables)",
        [ddl.drop_constraint(u.schema, u.name, con.name)],
        [u.qual] if ref_qual == u.qual else [u.qual, ref_qual],
        post=ddl.q_constraint_absent(u.schema, u.name, con.name),
        breaking=True,
    )
    step.details["squawk_ignore"] = [
        {"rule": "ban-drop-constraint", "why": "contract phase: the referenced object goes"}
    ]
    u.constraints.pop(con.name, None)


# --------------------------------------------------------------------- DROP TABLE


def drop_table(p: _Planner, c: DropTable) -> None:
    key = (p.catalog.resolve_schema(c.schema, c.table), c.table)
    if key not in p.tables and c.if_exists:
        p.notes.append(f"table {c.table} does not exist; DROP TABLE IF EXISTS skipped")
        return
    t = p.table(c.schema, c.table)
    if t is None:
        return
    if t.new or t.info is None:
        p.refuse(
            f"table {t.qual} is created by this migration",
            "remove it from the migration instead of dropping it",
        )
        return
    info = t.info
    s, n = t.schema, t.name
    blockers = _blocking_dependents(info, None)
    if blockers:
        p.refuse(
            f"table {t.qual} is used by {'; '.join(blockers)}",
            "drop or change those objects first (DROP TABLE would fail without CASCADE)",
        )
        return
    depends: list[str] = []
    for u, con in _fks_in_or_out(p, t):
        incoming = (u.schema, u.name) != key
        what = (
            f"foreign key {u.qual}.{con.name} (references {t.qual})"
            if incoming
            else f"foreign key {t.qual}.{con.name} (references {con.ref_table[0]}.{con.ref_table[1]})"  # type: ignore[index]
        )
        _drop_fk(p, u, con, what)
        depends.append(f"foreign key {u.qual}.{con.name}")
    for idx in sorted(info.indexes.values(), key=lambda i: i.name):
        if idx.constraint:
            continue  # goes with its constraint, with the table
        p.drop_index_step(
            t,
            idx.name,
            f"drop index {s}.{idx.name} concurrently (so that the DROP TABLE holds its lock"
            " for less)",
            breaking=True,
        )
        depends.append(f"index {idx.name}")
    along = sorted(
        {
            f"sequence {col.sequence[0]}.{col.sequence[1]}"
            for col in info.columns.values()
            if col.sequence
        }
    )
    along += [f"trigger {tg}" for tg in info.triggers]
    along += sorted(
        {w for _, cat, w in info.dependents if cat in ("pg_policy", "pg_statistic_ext")}
    )
    step = p.brief(
        f"drop_table.{t.qual}",
        "contract",
        "drop_table",
        f"drop table {t.qual}" + (f"; takes along {', '.join(along)}" if along else ""),
        [ddl.drop_table(s, n)],
        [t.qual],
        post=ddl.q_relation_absent(s, n),
        breaking=True,
    )
    step.details["squawk_ignore"] = [
        {"rule": "ban-drop-table", "why": "contract phase: no code uses the table"}
    ]
    everything = depends + along
    p.notes.append(
        f"table {t.qual} is dropped in the contract phase, after the code stops using it"
        + (f"; dropped before it or with it: {', '.join(everything)}" if everything else "")
    )
    del p.tables[key]
    p.relations.discard(key)
    _state(p).frozen[key] = (c.describe(), "drop")


def _fks_in_or_out(p: _Planner, t: _Table) -> list[tuple[_Table, ConstraintInfo]]:
    """Foreign keys between ``t`` and other tables, either way (self references go
    with the table)."""
    key = (t.schema, t.name)
    out = []
    for ukey in sorted(p.tables):
        u = p.tables[ukey]
        if u.info is None:
            continue
        for con in sorted(u.info.constraints.values(), key=lambda k: k.name):
            if con.type != "f" or con.ref_table is None:
                continue
            if (ukey == key) != (con.ref_table == key):
                out.append((u, con))
    return out
