"""DROP INDEX CONCURRENTLY in the contract phase."""

from __future__ import annotations

from ..changes import DropIndex
from ..planner.assumed import AssumedSchema
from ..planner.context import PlanContext
from ..planner.partition_tree import is_partitioned
from ..sql import checks, ddl
from .base import CatalogNeeds, Recipe, recipe_for


@recipe_for(DropIndex)
class DropIndexRecipe(Recipe[DropIndex]):
    def plan(self, ctx: PlanContext, c: DropIndex) -> None:
        if not ctx.name_ok(c.name, "index"):
            return
        schema = c.schema
        if schema is None:
            for s in ctx.catalog.search_path:
                if (s, c.name) in ctx.catalog.index_owner:
                    schema = s
                    break
        owner = ctx.catalog.index_owner.get((schema or "", c.name))
        if owner is None:
            if c.if_exists:
                ctx.notes.append(f"index {c.name} does not exist; DROP INDEX IF EXISTS skipped")
                return
            ctx.refuse(f"index {c.name!r} does not exist", "check the index name and schema")
            return
        assert schema is not None
        t = ctx.tables[owner]
        info = t.indexes.get(c.name)
        backing = info.constraint if info is not None else None
        if backing:
            ctx.refuse(
                f"index {c.name!r} backs constraint {backing!r} on {t.qual}",
                f"drop the constraint instead (DropConstraint({t.name!r}, {backing!r}))",
            )
            return
        live = t.info.indexes.get(c.name) if t.info is not None else None
        if live is not None and live.parent_index:
            ctx.refuse(
                f"index {schema}.{c.name} of partition {t.qual} is part of the partitioned"
                f" index {live.parent_index}; PostgreSQL drops it only with that index",
                f"drop {live.parent_index} instead (DropIndex({live.parent_index!r}))",
            )
            return
        if is_partitioned(t):
            # DROP INDEX CONCURRENTLY is not allowed on a partitioned index: a plain
            # DROP INDEX is catalog work (no scan) under a brief lock on every partition
            t.indexes.pop(c.name, None)
            ctx.relations.discard((schema, c.name))
            ctx.brief(
                f"drop_index.{schema}.{c.name}",
                "contract",
                "drop_partitioned_index",
                f"drop partitioned index {schema}.{c.name} with its partitions' indexes"
                " (CONCURRENTLY is not possible on a partitioned index: brief ACCESS"
                f" EXCLUSIVE on {t.qual} and its partitions, no scan)",
                [ddl.drop_index(schema, c.name, concurrently=False)],
                [t.qual],
                post=checks.q_relation_absent(schema, c.name),
            )
            return
        ctx.drop_index_step(t, c.name, f"drop index {schema}.{c.name} concurrently")

    def catalog_needs(self, change: DropIndex) -> CatalogNeeds:
        needs = super().catalog_needs(change)
        needs.index_names.add((change.schema, change.name))
        return needs

    def touched(self, ctx: PlanContext, change: DropIndex) -> list[tuple[str, str]]:
        cat = ctx.catalog
        for s in [change.schema] if change.schema else list(cat.search_path):
            owner = cat.index_owner.get((s, change.name))
            if owner:
                return [owner]
        return []

    def assume(self, change: DropIndex, schema: AssumedSchema) -> None:
        schema.index(change.schema, change.name)
