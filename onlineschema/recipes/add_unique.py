"""UNIQUE or PRIMARY KEY from a concurrently built unique index (USING INDEX)."""

from __future__ import annotations

from ..changes import AddUnique
from ..plan import Action
from ..planner.assumed import AssumedSchema
from ..planner.context import PlanContext
from ..planner.leftovers import index_leftover
from ..planner.model import VColumn, VConstraint, VIndex, VTable
from ..planner.naming import (
    name_addition,
    names_in_use,
)
from ..planner.partition_tree import is_partitioned, partitions_unchanged
from ..planner.partitions import index_tree, unique_keys_ok
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
        if not ctx.constraint_name_free(t, name):
            return
        what = "primary key" if c.primary_key else "unique constraint"
        new_key = ctx.new_partitioned.get((t.schema, t.name)) if t.new else None
        if new_key is not None:
            missing = [k or "(expression)" for k in new_key if k is None or k not in c.columns]
            if missing:
                ctx.refuse(
                    f"{what} on {t.qual} ({', '.join(c.columns)}) does not include the"
                    f" partition key column(s) {', '.join(missing)}: PostgreSQL can enforce"
                    " uniqueness on a partitioned table only when the partition key is part"
                    " of it",
                    f"add {', '.join(missing)} to the columns",
                )
                return
            if not ctx.new_name(t.schema, name, "index"):
                return
            ctx.brief(
                f"add_constraint.{t.qual}.{name}",
                "validate",
                "add_partitioned_constraint",
                f"add the {what} {name} on {t.qual}, a partitioned table this migration"
                " creates (nothing uses it yet; USING INDEX is not possible there)",
                [
                    ddl.add_table_constraint(
                        t.schema,
                        t.name,
                        name,
                        ddl.unique_definition(c.columns, primary_key=c.primary_key),
                    )
                ],
                [t.qual],
                post=checks.q_constraint(t.schema, t.name, name),
                undo=[Action(ddl.drop_constraint(t.schema, t.name, name))],
            )
            t.constraints[name] = VConstraint(
                "p" if c.primary_key else "u", True, tuple(c.columns), index=name
            )
            if c.primary_key:
                t.primary_key = tuple(c.columns)
            return
        if is_partitioned(t):
            self._partitioned(ctx, c, t, name, what, cols)
            return
        expected = ddl.create_index(t.schema, t.name, name, columns=c.columns, unique=True)
        verdict = index_leftover(ctx, t.schema, name, expected)
        if verdict == "refused" or (
            verdict == "free" and not ctx.new_name(t.schema, name, "index")
        ):
            return
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

    def _partitioned(
        self,
        ctx: PlanContext,
        c: AddUnique,
        t: VTable,
        name: str,
        what: str,
        cols: list[VColumn | None],
    ) -> None:
        """Each leaf partition's unique index built concurrently and made its constraint
        (USING INDEX, brief), then the constraint added on the parent: PostgreSQL attaches
        the leaves' constraints instead of building (USING INDEX is not allowed on a
        partitioned table)."""
        if not unique_keys_ok(ctx, t, c.columns, what, "a unique constraint"):
            return
        if not ctx.new_name(t.schema, name, "index"):
            return
        built = index_tree(
            ctx,
            t,
            name,
            what,
            columns=c.columns,
            unique=True,
            leaves_only=True,
            suffix="pkey" if c.primary_key else "key",
        )
        if built is None:
            return
        if c.primary_key:
            for colname, col in zip(c.columns, cols, strict=True):
                assert col is not None
                if not col.notnull:
                    col.notnull = True
                    ctx.not_null_steps(t, colname)
        total = len(built.leaves)
        # PostgreSQL 18 makes a partition's inherited NOT NULL constraints local when a
        # primary key is added to the partition, which abort could not take back: there
        # the partitions get UNIQUE constraints, which the parent's primary key attaches
        # just the same (15-17: primary keys, as PostgreSQL creates them)
        leaf_pk = c.primary_key and ctx.major < 18
        leaf_what = "primary key" if leaf_pk else "unique constraint"
        for i, leaf in enumerate(built.leaves, 1):
            idx = built.names[(leaf.schema, leaf.name)]
            ctx.brief(
                f"add_constraint_using_index.{leaf.qual}.{idx}",
                "validate",
                "add_constraint_using_index",
                f"partition {i}/{total} of {t.qual}: attach {idx} as the {leaf_what} of"
                f" {leaf.qual} (catalog only)",
                [
                    ddl.add_constraint_using_index(
                        leaf.schema, leaf.name, idx, idx, primary_key=leaf_pk
                    )
                ],
                [leaf.qual],
                post=checks.q_constraint(leaf.schema, leaf.name, idx),
                undo=[Action(ddl.drop_constraint(leaf.schema, leaf.name, idx))],
            )
            leaf.constraints[idx] = VConstraint(
                "p" if leaf_pk else "u", True, tuple(c.columns), index=idx
            )
        ctx.brief(
            f"add_constraint.{t.qual}.{name}",
            "validate",
            "add_partitioned_constraint",
            f"add the {what} {name} on partitioned {t.qual}: every partition has the"
            " matching constraint, which PostgreSQL attaches (no index build, no scan;"
            " first checks the partitions are those planned)",
            [
                partitions_unchanged(ctx, t),
                ddl.add_table_constraint(
                    t.schema,
                    t.name,
                    name,
                    ddl.unique_definition(c.columns, primary_key=c.primary_key),
                ),
            ],
            [t.qual],
            post=checks.q_constraint(t.schema, t.name, name),
            undo=[Action(ddl.drop_constraint(t.schema, t.name, name))],
        )
        t.constraints[name] = VConstraint(
            "p" if c.primary_key else "u", True, tuple(c.columns), index=name
        )
        t.indexes[name] = VIndex(True, tuple(c.columns), constraint=name)
        if c.primary_key:
            t.primary_key = tuple(c.columns)

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
