"""What depends on a column or a table in the catalog snapshot: indexes, checks,
foreign keys (either way), views, policies, triggers... The breaking recipes read it to
refuse, to rebuild, or to say in the plan what goes along."""

from __future__ import annotations

from ..catalog import ConstraintInfo, IndexInfo, TableInfo
from ..sql import rewrite
from .context import PlanContext
from .model import VTable

#: objects that make a column or table impossible to drop or replace as planned
_BLOCKING = {
    "pg_rewrite": "view or rule",
    "pg_policy": "row security policy",
    "pg_trigger": "trigger",
    "pg_proc": "function",
    "pg_class": "generated column",
    "pg_publication_rel": "publication",
}


def index_uses(idx: IndexInfo, columns: set[str]) -> bool:
    return bool(set(c for c in idx.columns if c) & columns) or rewrite.index_references(
        idx.definition, columns
    )


def checks_using(info: TableInfo, columns: set[str]) -> list[ConstraintInfo]:
    return [
        con
        for con in info.constraints.values()
        if con.type == "c"
        and (set(con.columns) & columns or rewrite.constraint_references(con.definition, columns))
    ]


def fks_touching(
    p: PlanContext, maps: dict[tuple[str, str], dict[str, str]]
) -> list[tuple[VTable, ConstraintInfo]]:
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


def blocking_dependents(
    info: TableInfo, column: str | None, *, recreate_views: bool = False
) -> list[str]:
    """What stops a drop or copy of ``column`` (or of the table, when None).

    ``recreate_views``: the change recreates the plain views over the column (and the
    views on them) in its own transaction (``sql.views``); then only what cannot be
    recreated with them blocks (materialized views, rules, triggers on those views,
    functions that use them)."""
    out = []
    for col, catalog, what in info.dependents:
        kind = _BLOCKING.get(catalog)
        if kind is None:
            continue
        if column is not None and col != column:
            continue
        if column is None and catalog not in ("pg_rewrite", "pg_proc"):
            continue  # dropped with the table
        if recreate_views and catalog == "pg_rewrite":
            continue  # plain views are recreated; the rest is in view_blockers
        if catalog == "pg_proc":
            kind = "function with a SQL-standard body"
        out.append(f"{what} ({kind})")
    if recreate_views:
        out += sorted({what for col, what in info.view_blockers if col == column})
    return out


#: how to get past what a column change cannot recreate
UNRECREATABLE_FIX = (
    "drop those objects in a migration before this one and create them again after"
    " `onlineschema contract` (a materialized view then with REFRESH MATERIALIZED VIEW"
    " CONCURRENTLY; a function as LANGUAGE sql with a string body, which is not bound to"
    " the column), or change them to stop using the column"
)


def refuse_unrecreatable(p: PlanContext, why: str, t: VTable, column: str) -> bool:
    """Refuse a type change or rename of ``column`` that something uses which cannot be
    recreated with it in a short transaction (plain views can); True when refused."""
    assert t.info is not None
    blockers = blocking_dependents(t.info, column, recreate_views=True)
    if blockers:
        p.refuse(
            f"{why}: {t.qual}.{column} is used by {'; '.join(blockers)}, which would still"
            " use the old column and cannot be recreated safely in a short transaction"
            " (plain views are)",
            UNRECREATABLE_FIX,
        )
    return bool(blockers)


def views_over(info: TableInfo, columns: set[str]) -> list[str]:
    """The plain views over ``columns`` and the views on them, in creation order."""
    depth: dict[str, int] = {}
    for col, schema, name, d in info.views:
        if col in columns:
            qual = f"{schema}.{name}"
            depth[qual] = max(d, depth.get(qual, 0))
    return sorted(depth, key=lambda q: (depth[q], q))


def stats(info: TableInfo, column: str) -> list[str]:
    return [w for c, cat, w in info.dependents if cat == "pg_statistic_ext" and c == column]


def fks_in_or_out(p: PlanContext, t: VTable) -> list[tuple[VTable, ConstraintInfo]]:
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
