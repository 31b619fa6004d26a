"""Column type changes. Binary coercible (``varchar(n) -> varchar(m >= n)``, ``varchar ->
text``, numeric widening, ``pg_cast`` castmethod ``b`` pairs): one lock-guarded ``ALTER ...
TYPE`` that neither rewrites nor scans, when no CHECK constraint would be re-verified and
no index rebuilt under its ``ACCESS EXCLUSIVE`` lock. Otherwise the column copy
(``planner.column_copy``): expand/contract, swapped at ``onlineschema contract``."""

from __future__ import annotations

from collections.abc import Iterable

from ..catalog import ColumnInfo
from ..changes import AlterColumnType
from ..errors import Refused
from ..expressions import (
    check_expression,
    check_type,
    column_refs,
)
from ..plan import Action
from ..planner.column_copy import ColumnCopies, convert, request_copy
from ..planner.context import PlanContext, Probe
from ..planner.dependents import (
    checks_using,
    fks_touching,
    index_uses,
    refuse_unrecreatable,
    views_over,
)
from ..planner.model import VTable
from ..planner.naming import (
    shadow_name,
)
from ..sql import checks, ddl
from ..sql import views as view_sql
from .base import CatalogNeeds, Recipe, recipe_for

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
    back = [ddl.alter_column_type_plain(s, n, column, info.type, info.collation)]
    # PostgreSQL refuses ALTER TYPE of a column a view selects: the views (read when the
    # step runs) are dropped and recreated around it, in the same transaction
    views = views_over(t.info, {column}) if t.info else []
    if views:
        stash = view_sql.stash([(s, n, column)])
        after = view_sql.restore() + view_sql.drop_helpers()
        statements = stash + statements + after
        # an undo action is one statement: the whole sequence is sent as one
        back = [";\n".join(stash + back + after)]
    undo: list[Action] = []
    if _binary(p, new_oid, new_mod, info.type_oid, info.typmod):
        undo = [Action(b) for b in back]
    else:
        p.notes.append(
            f"abort would not change {t.qual}.{column} back to {info.type} (that would"
            " rewrite or scan the table)"
        )
    others = {u.qual for u, _ in fks_touching(p, {(s, n): {column: ""}})} - {t.qual}
    tables = [t.qual, *sorted(others)]
    t.columns[column].type = new_fmt
    recreated = (
        f"; drops and recreates view(s) {', '.join(views)} in the same transaction, with"
        " their owners, privileges, comments and options"
        if views
        else ""
    )
    step = p.brief(
        f"alter_column_type.{t.qual}.{column}",
        "expand",
        "alter_column_type",
        f"change type of {t.qual}.{column} from {info.type} to {new_fmt} in place"
        f" (binary coercible: no rewrite, no scan, indexes kept){recreated}",
        statements,
        tables,
        post=checks.q_column_type(s, n, column, new_fmt),
        undo=undo,
    )
    step.details["squawk_ignore"] = [
        {"rule": rule, "why": "binary coercible: no rewrite, no scan (relfilenode unchanged)"}
        for rule in ("changing-column-type", "prefer-text-field")
    ]
    if views:
        step.details["squawk_ignore"].append(
            {"rule": "ban-drop-function", "why": "the step's own helpers in pg_temp"}
        )


@recipe_for(AlterColumnType)
class AlterColumnTypeRecipe(Recipe[AlterColumnType]):
    offline_ok = False

    def plan(self, p: PlanContext, c: AlterColumnType) -> None:
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
        if trivial and new_fmt == info.type:  # a no-op on PostgreSQL too
            p.notes.append(f"{t.qual}.{c.column} is already of type {info.type}; skipped")
            return
        to_utc = (
            info.type_oid == TIMESTAMP
            and new_oid == TIMESTAMPTZ
            and p.catalog.timezone.lower() in UTC_ZONES
            and new_mod in (-1, info.typmod)
        )
        binary = kind[1] != "d" and (
            _binary(p, info.type_oid, info.typmod, new_oid, new_mod) or to_utc
        )
        if refuse_unrecreatable(p, c.describe(), t, c.column):
            return
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
                    checks.q_compile_reverse(c.column, new_fmt, back, old_fmt, t.name),
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

    def expressions(self, change: AlterColumnType) -> Iterable[str | None]:
        return (change.using,)

    def catalog_needs(self, change: AlterColumnType) -> CatalogNeeds:
        needs = super().catalog_needs(change)
        needs.type(change.type)
        return needs

    def joins_column_copy(self, change: AlterColumnType) -> bool:
        return True

    def copies_column(self, change: AlterColumnType) -> tuple[str | None, str, str] | None:
        return (change.schema, change.table, change.column)
