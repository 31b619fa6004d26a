"""``ALTER INDEX ... RENAME TO``: catalog only (Prisma's ``-- RenameIndex``). Running
queries do not name indexes: one brief lock-guarded step (SHARE UPDATE EXCLUSIVE)."""

from __future__ import annotations

from ..changes import RenameIndex
from ..plan import Action
from ..planner.assumed import AssumedSchema
from ..planner.context import PlanContext
from ..sql import checks, ddl
from .base import CatalogNeeds, Recipe, recipe_for


@recipe_for(RenameIndex)
class RenameIndexRecipe(Recipe[RenameIndex]):
    def plan(self, ctx: PlanContext, c: RenameIndex) -> None:
        if not ctx.name_ok(c.name, "index") or not ctx.name_ok(c.new_name, "index"):
            return
        schema = c.schema
        if schema is None:
            schema = next(
                (s for s in ctx.catalog.search_path if (s, c.name) in ctx.catalog.index_owner),
                None,
            )
        owner = ctx.catalog.index_owner.get((schema or "", c.name))
        t = ctx.tables.get(owner) if owner else None
        if t is None or schema is None or c.name not in t.indexes:
            ctx.refuse(f"index {c.name!r} does not exist", "check the index name and schema")
            return
        info = t.indexes[c.name]
        if info.constraint:
            ctx.refuse(
                f"index {c.name!r} backs constraint {info.constraint!r} on {t.qual}",
                f"rename the constraint instead (ALTER TABLE {t.name} RENAME CONSTRAINT"
                f" {info.constraint} TO ...), which renames its index with it",
            )
            return
        if not ctx.new_name(t.schema, c.new_name, "index"):
            return
        t.indexes[c.new_name] = t.indexes.pop(c.name)
        ctx.relations.discard((t.schema, c.name))
        ctx.brief(
            f"rename_index.{t.schema}.{c.name}",
            "expand",
            "rename_index",
            f"rename index {t.schema}.{c.name} to {c.new_name} (catalog only)",
            [ddl.rename_index(t.schema, c.name, c.new_name)],
            [t.qual],
            lock="ShareUpdateExclusiveLock",
            post=checks.q_index_valid(t.schema, c.new_name),
            undo=[Action(ddl.rename_index(t.schema, c.new_name, c.name))],
        )

    def catalog_needs(self, change: RenameIndex) -> CatalogNeeds:
        needs = super().catalog_needs(change)
        needs.index_names |= {(change.schema, change.name), (change.schema, change.new_name)}
        return needs

    def touched(self, ctx: PlanContext, change: RenameIndex) -> list[tuple[str, str]]:
        cat = ctx.catalog
        for s in [change.schema] if change.schema else list(cat.search_path):
            owner = cat.index_owner.get((s, change.name))
            if owner:
                return [owner]
        return []

    def assume(self, change: RenameIndex, schema: AssumedSchema) -> None:
        schema.index(change.schema, change.name)
