"""A foreign key added NOT VALID (brief), then validated under SHARE UPDATE EXCLUSIVE."""

from __future__ import annotations

from ..catalog import ConstraintInfo
from ..changes import AddForeignKey
from ..errors import Refused
from ..plan import Action
from ..planner.assumed import AssumedSchema
from ..planner.context import PlanContext, Probe
from ..planner.leftovers import constraint_leftover
from ..planner.model import VColumn, VConstraint, VTable
from ..planner.naming import (
    name_addition,
    names_in_use,
)
from ..planner.partition_tree import is_partitioned, leaves, partitions_unchanged
from ..planner.steps import RANK_FK
from ..sql import checks, ddl
from .base import CatalogNeeds, Recipe, recipe_for


@recipe_for(AddForeignKey)
class AddForeignKeyRecipe(Recipe[AddForeignKey]):
    def plan(self, ctx: PlanContext, c: AddForeignKey) -> None:
        t = ctx.table(c.schema, c.table)
        ref = ctx.table(c.ref_schema, c.ref_table, what="referenced table")
        if t is None or ref is None:
            return
        ok = all(ctx.column(t, col) is not None for col in c.columns)
        ref_cols = tuple(c.ref_columns) or ref.primary_key
        if not ref_cols and not ref.new:
            ctx.refuse(
                f"referenced table {ref.qual} has no primary key and no columns were named",
                "name the referenced columns (ref_columns=...)",
            )
            return
        ok = (
            all(ctx.column(ref, col, what="referenced column") is not None for col in ref_cols)
            and ok
        )
        if not ok:
            return
        if len(ref_cols) != len(c.columns) and not (ref.new and not ref_cols):
            # (a table this migration creates: PostgreSQL takes its primary key)
            ctx.refuse(
                f"foreign key on {t.qual} has {len(c.columns)} columns but references"
                f" {len(ref_cols)}",
                "list as many referenced columns as referencing ones",
            )
            return
        if not ref.new and not ctx.has_unique(ref, ref_cols):
            ctx.refuse(
                f"no unique constraint or primary key on {ref.qual} ({', '.join(ref_cols)})",
                "add one first (AddUnique, in this migration or an earlier one)",
            )
            return
        new_cols = any(t.columns.get(col, VColumn("", False, None)).new for col in c.columns)
        if not (t.new or ref.new or new_cols):
            ctx.probes.append(
                Probe(
                    checks.q_compile_fk_join(
                        t.schema, t.name, c.columns, ref.schema, ref.name, ref_cols
                    ),
                    f"foreign key columns {t.qual} ({', '.join(c.columns)}) cannot be compared"
                    f" with {ref.qual} ({', '.join(ref_cols)})",
                    "give the referencing columns the referenced columns' types",
                )
            )
        for action in (c.on_delete, c.on_update):
            if action is not None and action.upper() not in ddl.FK_ACTIONS:
                ctx.refuse(
                    f"foreign key action {action!r} is not one of {', '.join(sorted(ddl.FK_ACTIONS))}",
                    "use one of those",
                )
                return
        name = c.name or names_in_use(ctx).constraint(
            t.schema, t.name, name_addition(c.columns), "fkey"
        )
        name = ctx.recreated(t, name, "constraint")
        actions = [
            f"ON {w} {a.upper()}"
            for w, a in (("DELETE", c.on_delete), ("UPDATE", c.on_update))
            if a is not None and a.upper() != "NO ACTION"
        ]
        if c.deferrable:
            actions.append("INITIALLY DEFERRED" if c.initially_deferred else "DEFERRABLE")
        leftover = constraint_leftover(
            ctx,
            t,
            name,
            "f",
            columns=c.columns,
            ref=(ref.schema, ref.name),
            ref_columns=ref_cols,
            actions=actions,
        )
        if leftover == "refused":
            return
        if leftover == "repair":
            if c.validate:
                t.constraints[name].validated = True
                ctx.validate_step(
                    t,
                    name,
                    f"validate foreign key {name}, left NOT VALID by an earlier run (scans"
                    f" {t.qual}, reads and writes go on)",
                    ref=ref,
                    rank=RANK_FK,
                )
            return
        if not ctx.constraint_name_free(t, name):
            return
        if is_partitioned(t) and ctx.major < 18:
            self._per_partition(ctx, c, t, ref, name, ref_cols)
            return
        t.constraints[name] = VConstraint("f", c.validate, tuple(c.columns), (ref.schema, ref.name))
        statement = ddl.add_foreign_key(
            t.schema,
            t.name,
            name,
            c.columns,
            ref.schema,
            ref.name,
            ref_cols,
            on_delete=c.on_delete.upper() if c.on_delete else None,
            on_update=c.on_update.upper() if c.on_update else None,
            deferrable=c.deferrable,
            initially_deferred=c.initially_deferred,
            not_valid=True,
        )
        tables = [t.qual] if ref.qual == t.qual else [t.qual, ref.qual]
        ctx.brief(
            f"add_foreign_key.{t.qual}.{name}",
            "validate",
            "add_foreign_key_not_valid",
            f"add foreign key {name} on {t.qual} NOT VALID (new rows checked at once)",
            [statement],
            tables,
            lock="ShareRowExclusiveLock",
            post=checks.q_constraint(t.schema, t.name, name),
            undo=[Action(ddl.drop_constraint(t.schema, t.name, name))],
            rank=RANK_FK,
        )
        if c.validate:
            ctx.validate_step(
                t,
                name,
                f"validate foreign key {name} (scans {t.qual}, reads and writes go on)",
                ref=ref,
                rank=RANK_FK,
            )
        if not t.new:
            # checked once every change is seen: the index may come later in the script
            ctx.finalizers.append(lambda p: p.note_missing_fk_index(t, ref, tuple(c.columns)))

    def _per_partition(
        self,
        ctx: PlanContext,
        c: AddForeignKey,
        t: VTable,
        ref: VTable,
        name: str,
        ref_cols: tuple[str, ...],
    ) -> None:
        """Before PostgreSQL 18 a partitioned table cannot hold a NOT VALID foreign key:
        add it NOT VALID and validate it on each leaf partition, then add it on the
        parent, which attaches the validated leaf constraints (no scan)."""
        if not c.validate:
            ctx.refuse(
                f"foreign key {name} on partitioned {t.qual}: PostgreSQL {ctx.major} cannot"
                " keep a NOT VALID foreign key on a partitioned table (18 can)",
                "let onlineschema validate it (validate=True: each partition is validated"
                " under SHARE UPDATE EXCLUSIVE), or add it on each partition instead",
            )
            return
        parts = leaves(ctx, t)
        if parts is None:
            return
        if not all(ctx.constraint_name_free(leaf, name) for leaf in parts):
            return

        def statement(schema: str, table: str, *, not_valid: bool) -> str:
            return ddl.add_foreign_key(
                schema,
                table,
                name,
                c.columns,
                ref.schema,
                ref.name,
                ref_cols,
                on_delete=c.on_delete.upper() if c.on_delete else None,
                on_update=c.on_update.upper() if c.on_update else None,
                deferrable=c.deferrable,
                initially_deferred=c.initially_deferred,
                not_valid=not_valid,
            )

        total = len(parts)
        for i, leaf in enumerate(parts, 1):
            ctx.brief(
                f"add_foreign_key.{leaf.qual}.{name}",
                "validate",
                "add_foreign_key_not_valid",
                f"partition {i}/{total} of {t.qual}: add foreign key {name} on {leaf.qual}"
                f" NOT VALID (PostgreSQL {ctx.major} cannot add it NOT VALID on the"
                " partitioned parent)",
                [statement(leaf.schema, leaf.name, not_valid=True)],
                [leaf.qual, ref.qual],
                lock="ShareRowExclusiveLock",
                post=checks.q_constraint(leaf.schema, leaf.name, name),
                undo=[Action(ddl.drop_constraint(leaf.schema, leaf.name, name))],
                rank=RANK_FK,
            )
            ctx.validate_step(
                leaf,
                name,
                f"partition {i}/{total} of {t.qual}: validate foreign key {name} (scans"
                f" {leaf.qual}, reads and writes go on)",
                ref=ref,
                rank=RANK_FK,
            )
            leaf.constraints[name] = VConstraint(
                "f", True, tuple(c.columns), (ref.schema, ref.name)
            )
        t.constraints[name] = VConstraint("f", True, tuple(c.columns), (ref.schema, ref.name))
        ctx.brief(
            f"add_foreign_key.{t.qual}.{name}",
            "validate",
            "add_partitioned_foreign_key",
            f"add foreign key {name} on partitioned {t.qual}: attaches the validated"
            " constraints of its partitions (no scan; first checks the partitions are those"
            " planned)",
            [partitions_unchanged(ctx, t), statement(t.schema, t.name, not_valid=False)],
            [t.qual, ref.qual],
            lock="ShareRowExclusiveLock",
            post=checks.q_constraint(t.schema, t.name, name, validated=True),
            undo=[Action(ddl.drop_constraint(t.schema, t.name, name))],
            rank=RANK_FK,
        )
        ctx.finalizers.append(lambda p: p.note_missing_fk_index(t, ref, tuple(c.columns)))

    def catalog_needs(self, change: AddForeignKey) -> CatalogNeeds:
        needs = super().catalog_needs(change)
        needs.tables.add((change.ref_schema, change.ref_table))
        return needs

    def assume(self, change: AddForeignKey, schema: AssumedSchema) -> None:
        c = change
        t = schema.table(c.schema, c.table)
        for col in c.columns:
            schema.column(t, col)
        if not c.ref_columns:
            raise Refused(
                f"{c.describe()}: with --sql there is no database to read the primary key"
                f" of {c.ref_table} from",
                "name the referenced columns (AddForeignKey(..., ref_columns=(...)))",
            )
        ref = schema.table(c.ref_schema, c.ref_table)
        for col in c.ref_columns:
            schema.column(ref, col, notnull=True)
        if ref is not None and not any(
            set(k.columns) == set(c.ref_columns) for k in ref.constraints.values()
        ):
            unique = f"{ref.name}_{'_'.join(c.ref_columns)}_key (assumed)"
            ref.constraints[unique] = ConstraintInfo(
                unique, "u", True, "", tuple(c.ref_columns), None, None
            )
            schema.assumptions.append(
                f"{ref.schema}.{ref.name} ({', '.join(c.ref_columns)}) is unique"
            )
        if c.name:
            schema.created_cons.add((*schema.key(c.schema, c.table), c.name))
