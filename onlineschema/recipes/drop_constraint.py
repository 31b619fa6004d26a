"""DROP CONSTRAINT: contract-only, saying what goes with it."""

from __future__ import annotations

from ..changes import DropConstraint
from ..planner.assumed import AssumedSchema
from ..planner.context import PlanContext
from ..sql import checks, ddl
from .base import Recipe, recipe_for


@recipe_for(DropConstraint)
class DropConstraintRecipe(Recipe[DropConstraint]):
    def plan(self, ctx: PlanContext, c: DropConstraint) -> None:
        t = ctx.table(c.schema, c.table)
        if t is None:
            return
        con = t.constraints.get(c.name)
        if con is None:
            if c.if_exists:
                ctx.notes.append(f"constraint {c.name} does not exist on {t.qual}; skipped")
                return
            ctx.refuse(
                f"constraint {c.name!r} does not exist on {t.qual}",
                "check the name (constraints: " + ", ".join(sorted(t.constraints)) + ")",
            )
            return
        live = t.info.constraints.get(c.name) if t.info is not None else None
        if live is not None and live.inherited:
            ctx.refuse(
                f"constraint {c.name!r} of {t.qual} is inherited from its parent table"
                " (a partition's copy of the parent's constraint); PostgreSQL drops it only"
                " on the parent",
                "drop it on the partitioned parent table instead",
            )
            return
        if con.type in ("p", "u") and any(
            ref_con for s, tn, ref_con in t.referenced_by if (s, tn) != (t.schema, t.name)
        ):
            ctx.refuse(
                f"constraint {c.name!r} on {t.qual} may be needed by foreign keys that reference"
                f" it ({', '.join(f'{s}.{tn}.{k}' for s, tn, k in t.referenced_by)})",
                "drop those foreign keys first",
            )
            return
        del t.constraints[c.name]
        if con.type == "p":
            t.primary_key = ()
        tables = [t.qual]
        if con.ref and con.ref != (t.schema, t.name):
            tables.append(f"{con.ref[0]}.{con.ref[1]}")
        # what goes with it, said in the plan before it runs
        kind = {
            "c": "check",
            "f": "foreign key",
            "u": "unique constraint",
            "p": "primary key",
            "n": "NOT NULL constraint",
            "x": "exclusion constraint",
        }
        what = kind.get(con.type, "constraint")
        if con.type == "f" and con.ref:
            what += f" to {con.ref[0]}.{con.ref[1]}"
        if con.index:
            what += f"; its index {con.index} is dropped with it"
        if con.type == "p":
            what += "; the table is left without a primary key (batched backfills need one)"
        # contract-only: `apply` stops before it, `onlineschema contract` runs it
        ctx.brief(
            f"drop_constraint.{t.qual}.{c.name}",
            "contract",
            "drop_constraint",
            f"drop constraint {c.name} on {t.qual} ({what})",
            [ddl.drop_constraint(t.schema, t.name, c.name)],
            tables,
            post=checks.q_constraint_absent(t.schema, t.name, c.name),
            breaking=not t.new,
        )

    def assume(self, change: DropConstraint, schema: AssumedSchema) -> None:
        if not change.if_exists:
            schema.constraint(
                schema.table(change.schema, change.table), change.name, validated=True
            )
