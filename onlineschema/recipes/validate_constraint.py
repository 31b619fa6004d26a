"""VALIDATE CONSTRAINT under SHARE UPDATE EXCLUSIVE."""

from __future__ import annotations

from ..changes import ValidateConstraint
from ..planner.assumed import AssumedSchema
from ..planner.context import PlanContext
from ..planner.steps import RANK_FK
from .base import Recipe, recipe_for

_CON_KIND = {"p": "primary key", "u": "unique constraint", "x": "exclusion constraint"}


@recipe_for(ValidateConstraint)
class ValidateConstraintRecipe(Recipe[ValidateConstraint]):
    def plan(self, ctx: PlanContext, c: ValidateConstraint) -> None:
        t = ctx.table(c.schema, c.table)
        if t is None:
            return
        con = t.constraints.get(c.name)
        if con is None:
            ctx.refuse(
                f"constraint {c.name!r} does not exist on {t.qual}",
                "check the name (constraints: " + ", ".join(sorted(t.constraints)) + ")",
            )
            return
        if con.type in _CON_KIND:
            ctx.refuse(
                f"constraint {c.name!r} on {t.qual} is a {_CON_KIND[con.type]}: PostgreSQL"
                " validates only foreign key, check and NOT NULL constraints",
                "remove this change (a primary key, unique or exclusion constraint is always"
                " valid)",
            )
            return
        if con.validated:  # a no-op on PostgreSQL too
            ctx.notes.append(f"constraint {c.name} on {t.qual} is already valid; skipped")
            return
        con.validated = True
        ref = ctx.tables.get(con.ref) if con.ref else None
        ctx.validate_step(
            t,
            c.name,
            f"validate constraint {c.name} (scans {t.qual}, reads and writes go on)",
            ref=ref,
            rank=RANK_FK,
        )

    def assume(self, change: ValidateConstraint, schema: AssumedSchema) -> None:
        schema.constraint(schema.table(change.schema, change.table), change.name, validated=False)
