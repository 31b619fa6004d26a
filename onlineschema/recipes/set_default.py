"""SET DEFAULT: catalog only, new rows only."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from ..changes import AddColumn, SetDefault
from ..plan import Action
from ..planner.assumed import AssumedSchema
from ..planner.context import PlanContext
from ..sql import checks, ddl
from .base import Recipe, recipe_for


@recipe_for(SetDefault)
class SetDefaultRecipe(Recipe[SetDefault]):
    undo_offline_ok = False

    def plan(self, ctx: PlanContext, c: SetDefault) -> None:
        t = ctx.table(c.schema, c.table)
        col = ctx.column(t, c.column) if t else None
        default = ctx.expr(c.default, "default")
        if t is None or col is None or default is None:
            return
        if not ctx.default_ok(t, c.column, default):
            return
        if not col.new:
            ctx.probe_expr(t, default, col.type, "default")
        before = col.default
        col.default = default
        ctx.brief(
            f"set_default.{t.qual}.{c.column}",
            "expand",
            "set_default",
            f"set default of {t.qual}.{c.column} to {default} (new rows only, no rewrite)",
            [ddl.set_default(t.schema, t.name, c.column, default)],
            [t.qual],
            post=checks.q_column_has_default(t.schema, t.name, c.column),
            undo=[Action(ddl.set_default(t.schema, t.name, c.column, before))],
        )

    def expressions(self, change: SetDefault) -> Iterable[str | None]:
        return (change.default,)

    def assume(self, change: SetDefault, schema: AssumedSchema) -> None:
        schema.column(schema.table(change.schema, change.table), change.column)

    def follows_up(self, change: SetDefault) -> tuple[str | None, str, str] | None:
        return (change.schema, change.table, change.column)

    def fold(self, change: SetDefault, added: AddColumn) -> AddColumn | None:
        if added.default is None and added.backfill is not None:
            return dataclasses.replace(added, default=change.default)
        return None
