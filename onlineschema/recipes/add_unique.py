"""UNIQUE or PRIMARY KEY from a concurrently built unique index (USING INDEX)."""

from __future__ import annotations

from ..changes import AddUnique
from ..plan import Action
from ..planner.assumed import AssumedSchema
from ..planner.context import PlanContext
from ..planner.model import VConstraint
from ..planner.naming import name_addition, names_in_use
from ..sql import checks, ddl
from .base import CatalogNeeds, Recipe, recipe_for


@recipe_for(AddUnique)
class AddUniqueRecipe(Recipe[AddUnique]):
    def plan(self, ctx: PlanContext, c: AddUnique) -> None:
        t = ctx.table(c.schema, c.table)
        if t is None:
            return
        if not c.columns:
            ctx.refuse(f"unique constraint on {t.qual} has no columns", "name at least one")
            return
        cols = [ctx.column(t, col) for col in c.columns]
        if any(col is None for col in cols):
            return
        if c.primary_key and (t.primary_key or any(k.type == "p" for k in t.constraints.values())):
            ctx.refuse(
                f"table {t.qual} already has a primary key",
                "drop it first, or use a unique constraint",
            )
            return
        name = c.name or names_in_use(ctx).relation(
            t.schema,
            t.name,
            None if c.primary_key else name_addition(c.columns),
            "pkey" if c.primary_key else "key",
            isconstraint=True,
        )
        name = ctx.recreated(t, name, "constraint")
        if not ctx.constraint_name_free(t, name) or not ctx.new_name(t.schema, name, "index"):
            return
        what = "primary key" if c.primary_key else "unique constraint"
        ctx.index_step(
            t,
            name,
            f"build unique index {name} on {t.qual} concurrently for the {what}",
            columns=c.columns,
            unique=True,
        )
        if c.primary_key:
            for colname, col in zip(c.columns, cols, strict=True):
                assert col is not None
                if not col.notnull and not t.new:
                    col.notnull = True
                    ctx.not_null_steps(t, colname)
        t.constraints[name] = VConstraint(
            "p" if c.primary_key else "u", True, tuple(c.columns), index=name
        )
        if c.primary_key:
            t.primary_key = tuple(c.columns)
        ctx.brief(
            f"add_constraint_using_index.{t.qual}.{name}",
            "validate",
            "add_constraint_using_index",
            f"attach {name} as the {what} of {t.qual} (catalog only)",
            [
                ddl.add_constraint_using_index(
                    t.schema,
                    t.name,
                    name,
                    name,
                    primary_key=c.primary_key,
                    deferrable=c.deferrable,
                    initially_deferred=c.initially_deferred,
                )
            ],
            [t.qual],
            post=checks.q_constraint(t.schema, t.name, name),
            undo=[Action(ddl.drop_constraint(t.schema, t.name, name))],
        )

    def catalog_needs(self, change: AddUnique) -> CatalogNeeds:
        needs = super().catalog_needs(change)
        if change.name:
            needs.index_names.add((change.schema, change.name))
        return needs

    def announce(self, change: AddUnique, schema: AssumedSchema) -> None:
        if change.primary_key:
            schema.pk_changes.add(schema.key(change.schema, change.table))

    def assume(self, change: AddUnique, schema: AssumedSchema) -> None:
        t = schema.table(change.schema, change.table)
        for col in change.columns:
            schema.column(t, col, notnull=change.primary_key)
        if change.name:
            schema.created_cons.add((*schema.key(change.schema, change.table), change.name))
