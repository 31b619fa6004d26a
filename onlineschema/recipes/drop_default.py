"""DROP DEFAULT: catalog only."""

from __future__ import annotations

from ..changes import DropDefault
from ..plan import Action
from ..planner.assumed import AssumedSchema
from ..planner.context import PlanContext
from ..sql import checks, ddl
from .base import Recipe, recipe_for


@recipe_for(DropDefault)
class DropDefaultRecipe(Recipe[DropDefault]):
    undo_offline_ok = False

    def plan(self, ctx: PlanContext, c: DropDefault) -> None:
        t = ctx.table(c.schema, c.table)
        col = ctx.column(t, c.column) if t else None
        if t is None or col is None:
            return
        if col.default is None and not t.new:
            # a no-op on PostgreSQL too
            ctx.notes.append(f"{t.qual}.{c.column} has no default; DROP DEFAULT skipped")
            return
        before = col.default
        col.default = None
        ctx.brief(
            f"drop_default.{t.qual}.{c.column}",
            "expand",
            "drop_default",
            f"drop default of {t.qual}.{c.column}",
            [ddl.drop_default(t.schema, t.name, c.column)],
            [t.qual],
            post=checks.q_column_has_default(t.schema, t.name, c.column, False),
            undo=[Action(ddl.set_default(t.schema, t.name, c.column, before))] if before else [],
        )

    def assume(self, change: DropDefault, schema: AssumedSchema) -> None:
        schema.column(schema.table(change.schema, change.table), change.column, default="NULL")
