"""DROP TABLE: contract-only. Foreign keys in both directions are dropped first, then the
indexes ``CONCURRENTLY``, then the table; what goes along is said in the plan."""

from __future__ import annotations

from ..changes import DropTable
from ..planner.context import PlanContext
from ..planner.dependents import (
    blocking_dependents,
    fks_in_or_out,
    views_over,
)
from ..sql import checks, ddl
from .base import Recipe, recipe_for


@recipe_for(DropTable)
class DropTableRecipe(Recipe[DropTable]):
    offline_ok = False

    def plan(self, p: PlanContext, c: DropTable) -> None:
        key = (p.catalog.resolve_schema(c.schema, c.table), c.table)
        if key not in p.tables and c.if_exists:
            p.notes.append(f"table {c.table} does not exist; DROP TABLE IF EXISTS skipped")
            return
        t = p.table(c.schema, c.table)
        if t is None:
            return
        if t.new or t.info is None:
            p.refuse(
                f"table {t.qual} is created by this migration",
                "remove it from the migration instead of dropping it",
            )
            return
        info = t.info
        s, n = t.schema, t.name
        blockers = blocking_dependents(info, None, recreate_views=True)
        blockers += sorted({what for _, what in info.view_blockers})
        views = views_over(info, set(info.columns))
        if views:
            blockers.insert(0, f"view(s) {', '.join(views)}")
        if blockers:
            p.refuse(
                f"table {t.qual} is used by {'; '.join(blockers)}",
                "drop or change those objects first (DROP TABLE would fail without CASCADE)",
            )
            return
        if c.cascade:
            others = sorted(
                f"foreign key {u.qual}.{con.name}"
                for u, con in fks_in_or_out(p, t)
                if (u.schema, u.name) != key
            )
            if others:
                p.refuse(
                    f"DROP TABLE {t.qual} CASCADE would also drop {', '.join(others)}, which"
                    " reference(s) the table",
                    "drop those foreign keys first, in a migration of their own, then drop"
                    " the table",
                )
                return
        depends: list[str] = []
        for u, con in fks_in_or_out(p, t):
            incoming = (u.schema, u.name) != key
            ref = con.ref_table or key  # an outgoing foreign key always has one
            what = (
                f"foreign key {u.qual}.{con.name} (references {t.qual})"
                if incoming
                else f"foreign key {t.qual}.{con.name} (references {ref[0]}.{ref[1]})"
            )
            p.drop_foreign_key_step(u, con, what)
            depends.append(f"foreign key {u.qual}.{con.name}")
        for idx in sorted(info.indexes.values(), key=lambda i: i.name):
            if idx.constraint:
                continue  # goes with its constraint, with the table
            p.drop_index_step(
                t,
                idx.name,
                f"drop index {s}.{idx.name} concurrently (so that the DROP TABLE holds its lock"
                " for less)",
                breaking=True,
            )
            depends.append(f"index {idx.name}")
        along = sorted(
            {
                f"sequence {col.sequence[0]}.{col.sequence[1]}"
                for col in info.columns.values()
                if col.sequence
            }
        )
        along += [f"trigger {tg}" for tg in info.triggers]
        along += sorted(
            {w for _, cat, w in info.dependents if cat in ("pg_policy", "pg_statistic_ext")}
        )
        step = p.brief(
            f"drop_table.{t.qual}",
            "contract",
            "drop_table",
            f"drop table {t.qual}" + (f"; takes along {', '.join(along)}" if along else ""),
            [ddl.drop_table(s, n)],
            [t.qual],
            post=checks.q_relation_absent(s, n),
            breaking=True,
        )
        step.details["squawk_ignore"] = [
            {"rule": "ban-drop-table", "why": "contract phase: no code uses the table"}
        ]
        everything = depends + along
        p.notes.append(
            f"table {t.qual} is dropped in the contract phase, after the code stops using it"
            + (f"; dropped before it or with it: {', '.join(everything)}" if everything else "")
        )
        del p.tables[key]
        p.relations.discard(key)
        p.frozen[key] = (c.describe(), "drop")
