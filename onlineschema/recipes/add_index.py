"""CREATE INDEX CONCURRENTLY (reads and writes go on)."""

from __future__ import annotations

from collections.abc import Iterable

from ..changes import AddIndex
from ..errors import Refused
from ..expressions import (
    check_index_element,
    index_element_expression,
)
from ..planner.assumed import AssumedSchema
from ..planner.context import PlanContext
from ..planner.naming import index_column_names, name_addition, names_in_use
from .base import CatalogNeeds, Recipe, recipe_for


@recipe_for(AddIndex)
class AddIndexRecipe(Recipe[AddIndex]):
    def plan(self, ctx: PlanContext, c: AddIndex) -> None:
        t = ctx.table(c.schema, c.table)
        if t is None:
            return
        if not c.columns and not c.expressions:
            ctx.refuse(f"index on {t.qual} has no columns or expressions", "name at least one")
            return
        for col in (*c.columns, *c.include):
            ctx.column(t, col)
        elements: list[str] = []
        for e in c.expressions:
            try:
                elements.append(check_index_element(e))
            except Refused as exc:
                ctx.problems.append(exc)
                continue
            expr = index_element_expression(elements[-1])
            if expr is not None and ctx.no_subquery(expr, "index expression"):
                ctx.probe_expr(t, expr, None, "index expression")
        where = ctx.expr(c.where, "index predicate") if c.where else None
        if where and ctx.no_subquery(where, "index predicate"):
            ctx.probe_cond(t, where, "index predicate")
        if not ctx.name_ok(c.using, "index method"):
            return
        if ctx.catalog.index_methods and c.using not in ctx.catalog.index_methods:
            ctx.refuse(
                f"index method {c.using!r} does not exist on this server",
                "use one of "
                + ", ".join(sorted(ctx.catalog.index_methods))
                + " (or create the extension that provides it first)",
            )
            return
        name = c.name or names_in_use(ctx).relation(
            t.schema,
            t.name,
            name_addition(index_column_names(c.columns, elements, c.include)),
            "idx",
            isconstraint=False,
        )
        name = ctx.recreated(t, name, "index")
        if not ctx.new_name(t.schema, name, "index"):
            return
        what = "unique index" if c.unique else "index"
        ctx.index_step(
            t,
            name,
            f"build {what} {name} on {t.qual} concurrently (reads and writes go on)",
            columns=c.columns,
            elements=elements,
            unique=c.unique,
            using=c.using,
            include=c.include,
            where=where,
        )

    def expressions(self, change: AddIndex) -> Iterable[str | None]:
        return (change.where,)

    def catalog_needs(self, change: AddIndex) -> CatalogNeeds:
        needs = super().catalog_needs(change)
        if change.name:
            needs.index_names.add((change.schema, change.name))
        return needs

    def assume(self, change: AddIndex, schema: AssumedSchema) -> None:
        t = schema.table(change.schema, change.table)
        for col in (*change.columns, *change.include):
            schema.column(t, col)
