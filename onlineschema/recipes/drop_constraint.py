"""DROP CONSTRAINT: contract-only, saying what goes with it."""

from __future__ import annotations

from ..changes import DropConstraint
from ..planner.assumed import AssumedSchema
from ..planner.context import PlanContext
from ..planner.model import VConstraint, VTable
from ..sql import checks, ddl
from .base import Recipe, recipe_for


def _fks_needing(ctx: PlanContext, t: VTable, con: VConstraint) -> list[str]:
    """Foreign keys of other tables that may rely on the unique constraint ``con`` of
    ``t``: those on its columns, those still there (not dropped by this migration), and
    any whose table was not read (it cannot be told)."""
    out = []
    for s, tn, k in t.referenced_by:
        if (s, tn) == (t.schema, t.name):
            continue
        u = ctx.tables.get((s, tn))
        info = u.info.constraints.get(k) if u is not None and u.info is not None else None
        if u is not None and k not in u.constraints:
            continue  # dropped earlier in this migration
        if info is None or set(info.ref_columns) == set(con.columns) or not info.ref_columns:
            out.append(f"{s}.{tn}.{k}")
    return out


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
        needing = _fks_needing(ctx, t, con) if con.type in ("p", "u") else []
        if needing:
            ctx.refuse(
                f"constraint {c.name!r} on {t.qual} may be needed by foreign keys that reference"
                f" it ({', '.join(needing)})",
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
