"""SET NOT NULL without a scan under ACCESS EXCLUSIVE: through a validated constraint."""

from __future__ import annotations

import dataclasses

from ..changes import AddColumn, SetNotNull
from ..planner.assumed import AssumedSchema
from ..planner.context import PlanContext
from ..planner.steps import RANK_DEFAULT
from ..sql import ddl
from .base import Recipe, recipe_for


@recipe_for(SetNotNull)
class SetNotNullRecipe(Recipe[SetNotNull]):
    def plan(self, ctx: PlanContext, c: SetNotNull) -> None:
        t = ctx.table(c.schema, c.table)
        col = ctx.column(t, c.column) if t else None
        if t is None or col is None:
            return
        if not ctx.not_null_once(t, c.column, "SET NOT NULL"):
            return
        # PostgreSQL 18: attnotnull is already true under a NOT VALID NOT NULL constraint;
        # SET NOT NULL then means "validate it", which VALIDATE does without AE
        pending = [
            name
            for name, con in t.constraints.items()
            if con.type == "n" and not con.validated and con.columns == (c.column,)
        ]
        if col.notnull and pending:
            t.constraints[pending[0]].validated = True
            ctx.validate_step(
                t,
                pending[0],
                f"validate NOT NULL {pending[0]} on {t.qual}.{c.column} (scans, reads and"
                " writes go on)",
                rank=RANK_DEFAULT,
            )
            return
        if col.notnull:
            # a no-op on PostgreSQL too
            ctx.notes.append(f"{t.qual}.{c.column} is already NOT NULL; SET NOT NULL skipped")
            return
        if col.new and not t.new and (t.schema, t.name, c.column) not in ctx.filled:
            ctx.refuse(
                f"column {t.qual}.{c.column} is added by this migration without a value for"
                " the existing rows, so it cannot be made NOT NULL",
                "give the new column a default or a backfill expression (or an UPDATE before"
                " SET NOT NULL), or leave it nullable",
            )
            return
        col.notnull = True
        if t.new:
            ctx.brief(
                f"set_not_null.{t.qual}.{c.column}",
                "expand",
                "set_not_null",
                f"set NOT NULL on {t.qual}.{c.column} (new table)",
                [ddl.set_not_null(t.schema, t.name, c.column)],
                [t.qual],
            )
            return
        ctx.not_null_steps(t, c.column)

    def assume(self, change: SetNotNull, schema: AssumedSchema) -> None:
        schema.column(schema.table(change.schema, change.table), change.column)

    def follows_up(self, change: SetNotNull) -> tuple[str | None, str, str] | None:
        return (change.schema, change.table, change.column)

    def after_copy(self, change: SetNotNull) -> tuple[str | None, str, str] | None:
        return (change.schema, change.table, change.column)

    def fold(self, change: SetNotNull, added: AddColumn) -> AddColumn | None:
        if added.nullable and (added.default is not None or added.backfill is not None):
            return dataclasses.replace(added, nullable=False)
        return None
