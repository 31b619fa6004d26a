"""``ALTER TABLE ... RENAME CONSTRAINT``: catalog only (Prisma's ``-- RenameForeignKey``),
a brief ACCESS EXCLUSIVE lock; the index of a unique or primary key constraint is renamed
with it. Running queries do not name constraints."""

from __future__ import annotations

from ..changes import RenameConstraint
from ..plan import Action
from ..planner.assumed import AssumedSchema
from ..planner.context import PlanContext
from ..sql import checks, ddl
from .base import CatalogNeeds, Recipe, recipe_for


@recipe_for(RenameConstraint)
class RenameConstraintRecipe(Recipe[RenameConstraint]):
    def plan(self, ctx: PlanContext, c: RenameConstraint) -> None:
        t = ctx.table(c.schema, c.table)
        if t is None or not ctx.name_ok(c.new_name, "constraint"):
            return
        con = t.constraints.get(c.name)
        if con is None:
            ctx.refuse(
                f"constraint {c.name!r} does not exist on {t.qual}",
                "check the name (constraints: " + ", ".join(sorted(t.constraints)) + ")",
            )
            return
        if not ctx.constraint_name_free(t, c.new_name):
            return
        if con.index and not ctx.new_name(t.schema, c.new_name, "index"):
            return  # its index is renamed too
        t.constraints[c.new_name] = t.constraints.pop(c.name)
        if con.index and con.index in t.indexes:
            t.indexes[c.new_name] = t.indexes.pop(con.index)
            ctx.relations.discard((t.schema, con.index))
            con.index = c.new_name
        s, n = t.schema, t.name
        tables = [t.qual]
        if con.ref and con.ref != (s, n):
            tables.append(f"{con.ref[0]}.{con.ref[1]}")
        ctx.brief(
            f"rename_constraint.{t.qual}.{c.name}",
            "expand",
            "rename_constraint",
            f"rename constraint {c.name} on {t.qual} to {c.new_name} (catalog only)",
            [ddl.rename_constraint(s, n, c.name, c.new_name)],
            tables,
            post=checks.q_constraint(s, n, c.new_name),
            undo=[Action(ddl.rename_constraint(s, n, c.new_name, c.name))],
        )

    def catalog_needs(self, change: RenameConstraint) -> CatalogNeeds:
        needs = super().catalog_needs(change)
        needs.index_names |= {(change.schema, change.name), (change.schema, change.new_name)}
        return needs

    def assume(self, change: RenameConstraint, schema: AssumedSchema) -> None:
        t = schema.table(change.schema, change.table)
        schema.constraint(t, change.name, validated=True)
