"""REINDEX INDEX CONCURRENTLY of an existing index (reads and writes go on).

PostgreSQL builds the new index beside the old one as ``<name>_ccnew``, swaps them and
drops the old one (``<name>_ccold``). An interrupted rebuild leaves either behind,
invalid; the step drops both (concurrently) before it rebuilds, so running it again
after a crash or a lock timeout finishes the job. Refused before any DDL: an index that
backs an exclusion constraint and system catalog indexes (PostgreSQL cannot rebuild
those concurrently), an unknown index, and a valid index already named like a leftover.
"""

from __future__ import annotations

from ..changes import Reindex
from ..plan import Step
from ..planner.assumed import AssumedSchema
from ..planner.context import PlanContext
from ..planner.model import VTable
from ..planner.naming import MAX_IDENTIFIER_BYTES
from ..planner.partition_tree import is_partitioned, tree
from ..planner.steps import RANK_INDEX
from ..sql import ddl
from .base import CatalogNeeds, Recipe, recipe_for

SYSTEM_SCHEMAS = ("pg_catalog", "pg_toast")


def leftover(name: str, label: str) -> str:
    """The name PostgreSQL gives the transient index (``makeObjectName``: the index name
    cut so that ``_<label>`` fits in 63 bytes)."""
    head = name.encode()[: MAX_IDENTIFIER_BYTES - len(label) - 1].decode(errors="ignore")
    return f"{head}_{label}"


@recipe_for(Reindex)
class ReindexRecipe(Recipe[Reindex]):
    def catalog_needs(self, change: Reindex) -> CatalogNeeds:
        needs = CatalogNeeds()
        for name in (change.name, leftover(change.name, "ccnew"), leftover(change.name, "ccold")):
            needs.index_names.add((change.schema, name))
        if change.schema is None:  # to say "system catalog" rather than "does not exist"
            needs.index_names.add(("pg_catalog", change.name))
        return needs

    def touched(self, ctx: PlanContext, change: Reindex) -> list[tuple[str, str]]:
        owner = ctx.catalog.index_owner.get((self._schema(ctx, change), change.name))
        return [owner] if owner else []

    def assume(self, change: Reindex, schema: AssumedSchema) -> None:
        schema.index(change.schema, change.name)

    def _schema(self, ctx: PlanContext, change: Reindex) -> str:
        if change.schema:
            return change.schema
        for s in ctx.catalog.search_path:
            if (s, change.name) in ctx.catalog.index_owner:
                return s
        if ("pg_catalog", change.name) in ctx.catalog.index_owner:
            return "pg_catalog"
        return ctx.catalog.resolve_schema(None, change.name)

    @staticmethod
    def _partition_indexes(ctx: PlanContext, t: VTable, index: str) -> list[tuple[str, str]] | None:
        """(schema, name) of the leaf partitions' indexes attached (at any depth) to
        ``index`` of partitioned ``t``."""
        nodes = tree(ctx, t)
        if nodes is None:
            return None
        wanted = {(t.schema, index)}
        out: list[tuple[str, str]] = []
        for node in nodes[1:]:  # parents come before their partitions
            v = node.table
            for name, info in (v.info.indexes if v.info else {}).items():
                parent = node.parent.table if node.parent else None
                if parent is None or (parent.schema, info.parent_index or "") not in wanted:
                    continue
                wanted.add((v.schema, name))
                if not node.partitioned:
                    out.append((v.schema, name))
        return out

    def plan(self, ctx: PlanContext, c: Reindex) -> None:
        if not ctx.name_ok(c.name, "index"):
            return
        schema = self._schema(ctx, c)
        if schema in SYSTEM_SCHEMAS:
            ctx.refuse(
                f"index {schema}.{c.name} is a system catalog index: PostgreSQL cannot"
                " reindex system catalogs concurrently",
                "run REINDEX INDEX without CONCURRENTLY yourself, in a maintenance window"
                " (it blocks writes to that catalog)",
            )
            return
        owner = ctx.catalog.index_owner.get((schema, c.name))
        t = ctx.tables.get(owner) if owner else None
        info = t.indexes.get(c.name) if t else None
        if t is None or info is None:
            if (schema, c.name) in ctx.relations and owner is None:
                ctx.refuse(
                    f"{schema}.{c.name} is created by this migration or is not an index",
                    "remove this change: a new index is built fresh",
                )
            else:
                ctx.refuse(f"index {c.name!r} does not exist", "check the index name and schema")
            return
        if is_partitioned(t):
            # a partitioned index has no storage: rebuild each partition's index, each
            # its own resumable step (REINDEX ... CONCURRENTLY of the partitioned index
            # would leave per-partition _ccnew leftovers this step could not find)
            parts = self._partition_indexes(ctx, t, c.name)
            if parts is None:
                return
            if not parts:
                ctx.notes.append(f"partitioned index {schema}.{c.name} has no partitions")
            for part_schema, part_index in parts:
                self.plan(ctx, Reindex(part_index, part_schema))
            return
        con = t.constraints.get(info.constraint) if info.constraint else None
        if con is not None and con.type == "x":
            ctx.refuse(
                f"index {c.name!r} backs exclusion constraint {info.constraint!r} on"
                f" {t.qual}: PostgreSQL cannot rebuild it concurrently",
                "run REINDEX INDEX without CONCURRENTLY in a maintenance window (it blocks"
                " writes to the table), or drop and add the constraint again",
            )
            return
        leftovers = [leftover(c.name, "ccnew"), leftover(c.name, "ccold")]
        for name in leftovers:
            other = ctx.catalog.index_owner.get((schema, name))
            valid = other is not None and ctx.tables[other].indexes[name].valid
            if (schema, name) in ctx.relations and (other is None or valid):
                ctx.refuse(
                    f"{schema}.{name} exists and is not the leftover of an interrupted"
                    f" rebuild of {c.name}; the reindex would drop it",
                    f"rename {name} first",
                )
                return
        s = schema
        ctx.add(
            Step(
                id=f"reindex.{s}.{c.name}",
                phase="validate",
                action="reindex",
                description=f"rebuild index {c.name} on {t.qual} concurrently (reads and"
                " writes go on; leftovers of an interrupted rebuild are dropped first)",
                statements=(
                    *(ddl.drop_index(s, name) for name in leftovers),
                    ddl.reindex_index(s, c.name),
                ),
                transactional=False,
                lock="ShareUpdateExclusiveLock",
                tables=(t.qual,),
                scans=True,
                statement_timeout=0,
                # REINDEX CONCURRENTLY waits for old snapshots as an index build does
                details={"waits_for_snapshots": True},
            ),
            RANK_INDEX,
        )
