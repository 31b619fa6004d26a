"""CREATE INDEX CONCURRENTLY (reads and writes go on)."""

from __future__ import annotations

from collections.abc import Iterable

from ..changes import AddIndex
from ..errors import Refused
from ..expressions import (
    check_index_element,
    index_element_expression,
)
from ..plan import Action
from ..planner.assumed import AssumedSchema
from ..planner.context import PlanContext
from ..planner.leftovers import index_leftover
from ..planner.model import VIndex, VTable
from ..planner.naming import (
    index_column_names,
    name_addition,
    names_in_use,
)
from ..planner.partition_tree import is_partitioned
from ..planner.partitions import index_tree, unique_keys_ok
from ..planner.steps import RANK_INDEX
from ..sql import checks, ddl
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
        what = "unique index" if c.unique else "index"
        new_key = ctx.new_partitioned.get((t.schema, t.name)) if t.new else None
        if new_key is not None:
            self._new_partitioned(ctx, c, t, name, what, elements, where, new_key)
            return
        if is_partitioned(t):
            if c.unique and not unique_keys_ok(ctx, t, c.columns, what, "a unique index"):
                return
            if c.unique and elements:
                ctx.refuse(
                    f"unique index on partitioned {t.qual} has expressions; PostgreSQL"
                    " cannot enforce such uniqueness across partitions",
                    "use plain columns that include the partition key",
                )
                return
        expected = ddl.create_index(
            t.schema,
            t.name,
            name,
            columns=c.columns,
            elements=elements,
            unique=c.unique,
            using=c.using,
            include=c.include,
            where=where,
        )
        verdict = index_leftover(ctx, t.schema, name, expected)
        if verdict == "refused":
            return
        if verdict == "free" and not ctx.new_name(t.schema, name, "index"):
            return
        if is_partitioned(t):
            index_tree(
                ctx,
                t,
                name,
                what,
                columns=c.columns,
                elements=elements,
                unique=c.unique,
                using=c.using,
                include=c.include,
                where=where,
            )
            return
        repair = (
            " (repairs the invalid index of that name an earlier run left: drop"
            " concurrently, build again)"
            if verdict == "repair"
            else ""
        )
        ctx.index_step(
            t,
            name,
            f"build {what} {name} on {t.qual} concurrently (reads and writes go on){repair}",
            columns=c.columns,
            elements=elements,
            unique=c.unique,
            using=c.using,
            include=c.include,
            where=where,
        )

    def _new_partitioned(
        self,
        ctx: PlanContext,
        c: AddIndex,
        t: VTable,
        name: str,
        what: str,
        elements: list[str],
        where: str | None,
        key: tuple[str | None, ...],
    ) -> None:
        """A partitioned table this migration creates: nothing uses it yet, and
        CONCURRENTLY is not possible on a partitioned table, so a plain CREATE INDEX."""
        if c.unique:
            missing = [k or "(expression)" for k in key if k is None or k not in c.columns]
            if missing:
                ctx.refuse(
                    f"{what} on {t.qual} ({', '.join(c.columns)}) does not include the"
                    f" partition key column(s) {', '.join(missing)}: PostgreSQL can enforce"
                    " uniqueness on a partitioned table only when the partition key is part"
                    " of it",
                    f"add {', '.join(missing)} to the columns",
                )
                return
        if not ctx.new_name(t.schema, name, "index"):
            return
        ctx.brief(
            f"create_index.{t.schema}.{name}",
            "validate",
            "create_index_new_partitioned",
            f"create {what} {name} on {t.qual}, a partitioned table this migration creates"
            " (nothing uses it yet; CONCURRENTLY is not possible on a partitioned table)",
            [
                ddl.create_index(
                    t.schema,
                    t.name,
                    name,
                    columns=c.columns,
                    elements=elements,
                    unique=c.unique,
                    using=c.using,
                    include=c.include,
                    where=where,
                    concurrently=False,
                )
            ],
            [t.qual],
            lock="ShareLock",
            post=checks.q_index_exists(t.schema, name),
            undo=[Action(ddl.drop_index(t.schema, name, concurrently=False))],
            rank=RANK_INDEX,
        )
        t.indexes[name] = VIndex(c.unique, tuple(c.columns) if not elements else (*c.columns, None))

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
