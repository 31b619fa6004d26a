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

Handlers take the plan context and the change; the column copies themselves are
planned in ``planner.column_copy``.
"""

from __future__ import annotations

from typing import Any

from .catalog import ColumnInfo, ConstraintInfo
from .changes import AlterColumnType, DropColumn, DropTable, RenameColumn
from .errors import Refused
from .expressions import check_expression, check_type, column_refs
from .plan import Action
from .planner.column_copy import ColumnCopies, convert, request_copy
from .planner.context import PlanContext, Probe
from .planner.dependents import (
    blocking_dependents,
    checks_using,
    fks_in_or_out,
    fks_touching,
    index_uses,
    stats,
)
from .planner.model import VTable
from .planner.naming import MAX_IDENTIFIER_BYTES, nn_check_name, shadow_name
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


def _numeric_mod(mod: int) -> tuple[int, int]:
    """(precision, scale) of a numeric typmod."""
    raw = mod - 4
    scale = raw & 0x7FF
    if scale > 1023:  # negative scale (PostgreSQL 15+) is stored in 11 bits
        scale -= 2048
    return (raw >> 16) & 0xFFFF, scale


def _binary(p: PlanContext, old_oid: int, old_mod: int, new_oid: int, new_mod: int) -> bool:
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


def _name_free(p: PlanContext, t: VTable, name: str, what: str) -> bool:
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


def alter_column_type(p: PlanContext, c: AlterColumnType) -> None:
    st = p.extension(ColumnCopies)
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
    col_id = ddl.ident(c.column)
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
        forward = convert(col_id, new_fmt)
        back = convert(col_id, old_fmt)
    else:
        assert using is not None
        forward = convert(using, new_fmt)
        back = convert(reverse, old_fmt) if reverse is not None else None
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
    request_copy(
        p,
        t,
        info,
        shadow=shadow_name(c.column),
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


def _in_place_blocker(p: PlanContext, t: VTable, info: ColumnInfo, new_oid: int) -> str | None:
    """Why an in-place (no rewrite) ALTER TYPE would still scan or rebuild under its lock."""
    assert t.info is not None
    same = info.type_oid == new_oid or (info.type_oid, new_oid) in INDEX_KEPT
    checks = checks_using(t.info, {info.name})
    if checks:
        names = ", ".join(k.name for k in checks)
        return f"CHECK constraint(s) {names} would be verified again by a scan under its lock"
    if not same:
        idx = [i.name for i in t.info.indexes.values() if index_uses(i, {info.name})]
        if idx:
            return f"index(es) {', '.join(sorted(idx))} would be rebuilt under its lock"
        fks = [con.name for _, con in fks_touching(p, {(t.schema, t.name): {info.name: ""}})]
        if fks:
            return f"foreign key(s) {', '.join(fks)} would be checked again"
    return None


def _alter_in_place(
    p: PlanContext,
    t: VTable,
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
    others = {u.qual for u, _ in fks_touching(p, {(s, n): {column: ""}})} - {t.qual}
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


def rename_column(p: PlanContext, c: RenameColumn) -> None:
    st = p.extension(ColumnCopies)
    t = p.table(c.schema, c.table)
    col = p.column(t, c.column) if t else None
    if t is None or col is None or not p.name_ok(c.new_name, "column"):
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
    col_id = ddl.ident(c.column)
    request_copy(
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


def _rename_instant(p: PlanContext, t: VTable, c: RenameColumn) -> None:
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


def drop_column(p: PlanContext, c: DropColumn) -> None:
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
    blockers = blocking_dependents(t.info, c.column)
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
        nn_check = nn_check_name(n, c.column)
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
    for u, con in fks_touching(p, {(s, n): {c.column: ""}}):
        ref_qual = f"{con.ref_table[0]}.{con.ref_table[1]}" if con.ref_table else u.qual
        direction = (
            f"references {t.qual}.{c.column}"
            if u.qual != t.qual or c.column not in con.columns
            else f"on {t.qual}.{c.column} references {ref_qual}"
        )
        _drop_fk(p, u, con, f"foreign key {u.qual}.{con.name} ({direction})")
        depends.append(f"foreign key {u.qual}.{con.name}")
    for idx in sorted(t.info.indexes.values(), key=lambda i: i.name):
        if not index_uses(idx, {c.column}):
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
    along = [f"check {k.name}" for k in checks_using(t.info, {c.column})]
    for k in checks_using(t.info, {c.column}):
        t.constraints.pop(k.name, None)
    if info.sequence is not None:
        along.append(f"sequence {info.sequence[0]}.{info.sequence[1]}")
    along += stats(t.info, c.column)
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


def _drop_fk(p: PlanContext, u: VTable, con: ConstraintInfo, what: str) -> None:
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


def drop_table(p: PlanContext, c: DropTable) -> None:
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
    blockers = blocking_dependents(info, None)
    if blockers:
        p.refuse(
            f"table {t.qual} is used by {'; '.join(blockers)}",
            "drop or change those objects first (DROP TABLE would fail without CASCADE)",
        )
        return
    depends: list[str] = []
    for u, con in fks_in_or_out(p, t):
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
    p.frozen[key] = (c.describe(), "drop")
