"""A CHECK added NOT VALID (brief), then validated under SHARE UPDATE EXCLUSIVE."""

from __future__ import annotations

from collections.abc import Iterable

from ..changes import AddCheck
from ..errors import Refused
from ..expressions import (
    column_refs,
)
from ..plan import Action
from ..planner.assumed import AssumedSchema
from ..planner.context import PlanContext
from ..planner.leftovers import constraint_leftover
from ..planner.model import VConstraint
from ..planner.naming import (
    names_in_use,
)
from ..planner.partition_tree import scope
from ..planner.steps import RANK_DEFAULT
from ..sql import checks, ddl
from .base import Recipe, recipe_for


@recipe_for(AddCheck)
class AddCheckRecipe(Recipe[AddCheck]):
    def plan(self, ctx: PlanContext, c: AddCheck) -> None:
        t = ctx.table(c.schema, c.table)
        expr = ctx.expr(c.expression, "check expression")
        if t is None or expr is None:
            return
        if not ctx.no_subquery(expr, "check expression"):
            return
        cols = sorted(column_refs(expr))
        for col in cols:
            ctx.column(t, col)
        ctx.probe_cond(t, expr, "check expression")
        name = c.name or names_in_use(ctx).constraint(
            t.schema, t.name, cols[0] if len(cols) == 1 else None, "check"
        )
        name = ctx.recreated(t, name, "constraint")
        leftover = constraint_leftover(ctx, t, name, "c", expression=expr)
        if leftover == "refused":
            return
        if leftover == "repair":
            if c.validate:
                t.constraints[name].validated = True
                ctx.validate_step(
                    t,
                    name,
                    f"validate check {name}, left NOT VALID by an earlier run (scans {t.qual},"
                    " reads and writes go on)",
                    rank=RANK_DEFAULT,
                )
            return
        if not ctx.constraint_name_free(t, name):
            return
        t.constraints[name] = VConstraint("c", c.validate, tuple(cols))
        ctx.brief(
            f"add_check.{t.qual}.{name}",
            "validate",
            "add_check_not_valid",
            f"add check {name} on {t.qual} NOT VALID (new rows checked at once{scope(ctx, t)})",
            [ddl.add_check(t.schema, t.name, name, expr, not_valid=True)],
            [t.qual],
            post=checks.q_constraint(t.schema, t.name, name),
            undo=[Action(ddl.drop_constraint(t.schema, t.name, name))],
        )
        if c.validate:
            ctx.validate_step(
                t,
                name,
                f"validate check {name} (scans {t.qual}, reads and writes go on"
                f"{scope(ctx, t, scans=True)})",
                rank=RANK_DEFAULT,
            )

    def expressions(self, change: AddCheck) -> Iterable[str | None]:
        return (change.expression,)

    def assume(self, change: AddCheck, schema: AssumedSchema) -> None:
        t = schema.table(change.schema, change.table)
        try:
            refs = sorted(column_refs(change.expression))
        except Refused:
            refs = []  # the planner reports the bad expression
        for col in refs:
            schema.column(t, col)
        if change.name:
            schema.created_cons.add((*schema.key(change.schema, change.table), change.name))
