"""DROP NOT NULL: contract-only (the application must be ready for NULLs); abort puts it back without a scan under ACCESS EXCLUSIVE."""

from __future__ import annotations

from ..changes import DropNotNull
from ..planner.assumed import AssumedSchema
from ..planner.context import PlanContext
from ..sql import checks, ddl
from .base import Recipe, recipe_for


@recipe_for(DropNotNull)
class DropNotNullRecipe(Recipe[DropNotNull]):
    def plan(self, ctx: PlanContext, c: DropNotNull) -> None:
        t = ctx.table(c.schema, c.table)
        col = ctx.column(t, c.column) if t else None
        if t is None or col is None:
            return
        if not ctx.not_null_once(t, c.column, "DROP NOT NULL"):
            return
        if not col.notnull and not t.new:
            # a no-op on PostgreSQL too
            ctx.notes.append(f"{t.qual}.{c.column} is already nullable; DROP NOT NULL skipped")
            return
        if c.column in t.primary_key:
            ctx.refuse(
                f"column {t.qual}.{c.column} is part of the primary key and cannot be nullable",
                "drop the primary key first",
            )
            return
        col.notnull = False
        # A drop is contract-only: `apply` stops before it (awaiting_contract) and
        # `onlineschema contract` runs it once the application is ready for NULLs.
        ctx.brief(
            f"drop_not_null.{t.qual}.{c.column}",
            "contract",
            "drop_not_null",
            f"drop NOT NULL on {t.qual}.{c.column} (new rows may then leave it NULL)",
            [ddl.drop_not_null(t.schema, t.name, c.column)],
            [t.qual],
            post=checks.q_column_notnull(t.schema, t.name, c.column, False),
            undo=[] if t.new else ctx.restore_not_null(t, c.column),
            breaking=not t.new,
        )

    def assume(self, change: DropNotNull, schema: AssumedSchema) -> None:
        schema.column(schema.table(change.schema, change.table), change.column, notnull=True)
