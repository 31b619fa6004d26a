"""A batched UPDATE (range, keyset or ctid batches)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from ..catalog import ColumnInfo, ConstraintInfo
from ..changes import AddColumn, Backfill
from ..planner.assumed import ASSUMED_KEY, AssumedSchema
from ..planner.context import PlanContext
from .base import Recipe, recipe_for


@recipe_for(Backfill)
class BackfillRecipe(Recipe[Backfill]):
    def plan(self, ctx: PlanContext, c: Backfill) -> None:
        t = ctx.table(c.schema, c.table)
        if t is None:
            return
        if not c.set:
            ctx.refuse(
                f"backfill of {t.qual} sets no column", "give at least one column = expression"
            )
            return
        sets: list[tuple[str, str]] = []
        for colname, e in c.set:
            col = ctx.column(t, colname)
            expr = ctx.expr(e, "backfill expression")
            if col is None or expr is None:
                return
            if col.identity == "a" or col.generated:
                ctx.refuse(
                    f"column {t.qual}.{colname} is generated or GENERATED ALWAYS AS IDENTITY and"
                    " cannot be updated",
                    "remove it from the backfill",
                )
                return
            if colname in t.primary_key:
                ctx.refuse(
                    f"backfill updates {t.qual}.{colname}, part of the key it batches over",
                    "batch over another key, or update the key column in a separate migration",
                )
                return
            ctx.probe_expr(t, expr, col.type if not col.new else None, "backfill expression")
            sets.append((colname, expr))
            ctx.filled.add((t.schema, t.name, colname))
        where = ctx.expr(c.where, "backfill condition") if c.where else None
        if c.where and where is None:
            return
        if where:
            ctx.probe_cond(t, where, "backfill condition")
        ctx.backfill_step(t, sets, where)

    def expressions(self, change: Backfill) -> Iterable[str | None]:
        return (change.where, *(e for _, e in change.set))

    def assume(self, change: Backfill, schema: AssumedSchema) -> None:
        t = schema.table(change.schema, change.table)
        for col, _ in change.set:
            schema.column(t, col)
        if (
            t is not None
            and not t.primary_key
            and schema.key(change.schema, change.table) not in schema.pk_changes
        ):
            t.primary_key = (ASSUMED_KEY,)
            t.columns[ASSUMED_KEY] = ColumnInfo(ASSUMED_KEY, "bigint", 20, True, None, "", "")
            t.constraints[ASSUMED_KEY] = ConstraintInfo(
                ASSUMED_KEY, "p", True, "", (ASSUMED_KEY,), None, None
            )
            schema.assumptions.append(f"table {t.schema}.{t.name} has a primary key")

    def follows_up(self, change: Backfill) -> tuple[str | None, str, str] | None:
        if len(change.set) == 1 and change.where is None:
            return (change.schema, change.table, change.set[0][0])
        return None

    def fold(self, change: Backfill, added: AddColumn) -> AddColumn | None:
        if added.backfill is None:
            return dataclasses.replace(added, backfill=change.set[0][1])
        return None
