"""DROP COLUMN: contract-only. What depends on the column is listed in the plan; foreign
keys in both directions are dropped first (brief locks on both tables), then the indexes
``CONCURRENTLY``, then the column. Dropping a NOT NULL column without a default makes it
nullable during expand, so code that no longer writes it can insert rows before the
contract."""

from __future__ import annotations

from ..changes import DropColumn
from ..plan import Action
from ..planner.context import PlanContext
from ..planner.dependents import (
    blocking_dependents,
    checks_using,
    fks_touching,
    index_uses,
    stats,
    views_over,
)
from ..planner.model import VTable
from ..planner.naming import (
    nn_check_name,
)
from ..sql import checks, ddl
from .base import Recipe, recipe_for


def _cascade_ok(p: PlanContext, t: VTable, c: DropColumn) -> bool:
    """``DROP COLUMN ... CASCADE`` takes the column's own indexes and constraints, as a
    plain DROP COLUMN does; refuse it when it would also drop foreign keys that reference
    the column (views and other dependents are refused for every drop)."""
    key = (t.schema, t.name)
    fks = [
        f"foreign key {u.qual}.{con.name}"
        for u, con in fks_touching(p, {key: {c.column: ""}})
        if con.ref_table == key
        and c.column in con.ref_columns
        and not ((u.schema, u.name) == key and c.column in con.columns)
    ]
    if fks:
        p.refuse(
            f"DROP COLUMN {t.qual}.{c.column} CASCADE would also drop {', '.join(fks)}, which"
            " reference(s) the column",
            "drop those foreign keys first, in a migration of their own, then drop the column",
        )
        return False
    return True


@recipe_for(DropColumn)
class DropColumnRecipe(Recipe[DropColumn]):
    offline_ok = False

    def plan(self, p: PlanContext, c: DropColumn) -> None:
        t = p.table(c.schema, c.table)
        if t is None:
            return
        if c.column not in t.columns and c.if_exists and not t.new:
            p.notes.append(
                f"column {c.column} does not exist in {t.qual}; DROP COLUMN IF EXISTS skipped"
            )
            return
        col = p.column(t, c.column)
        if col is None:
            return
        s, n = t.schema, t.name
        if t.new or col.new or t.info is None or c.column not in t.info.columns:
            p.refuse(
                f"column {t.qual}.{c.column} is added by this migration",
                "remove it from the migration instead of dropping it",
            )
            return
        info = t.info.columns[c.column]
        if c.column in t.primary_key:
            p.refuse(
                f"column {t.qual}.{c.column} is part of the primary key of {t.qual}",
                "drop the primary key first (DropConstraint), in an earlier migration",
            )
            return
        views = views_over(t.info, {c.column})
        blockers = blocking_dependents(t.info, c.column, recreate_views=True)
        if views:
            blockers.insert(
                0,
                f"view(s) {', '.join(views)} (a view cannot be recreated without a column it"
                " selects)",
            )
        if blockers:
            p.refuse(
                f"{t.qual}.{c.column} is used by {'; '.join(blockers)}",
                "change those objects first, in a migration before this one (a view: DROP VIEW"
                " and CREATE VIEW without the column, since CREATE OR REPLACE VIEW cannot"
                " remove one); DROP COLUMN would fail, or take them along",
            )
            return
        if c.cascade and not _cascade_ok(p, t, c):
            return
        del t.columns[c.column]
        depends: list[str] = []
        # expand: code that no longer writes the column must be able to insert
        if info.notnull and info.default is None and not info.identity and not info.generated:
            nn_check = nn_check_name(n, c.column)
            relax = p.brief(
                f"drop_not_null.{t.qual}.{c.column}",
                "expand",
                "drop_not_null",
                f"drop NOT NULL on {t.qual}.{c.column} so that code that no longer writes it can"
                " insert rows until the column is dropped",
                [ddl.drop_not_null(s, n, c.column)],
                [t.qual],
                post=checks.q_column_notnull(s, n, c.column, False),
                undo=[
                    Action(
                        ddl.add_check(
                            s, n, nn_check, ddl.check_not_null_expr(c.column), not_valid=True
                        )
                    ),
                    Action(ddl.validate_constraint(s, n, nn_check), transactional=False),
                    Action(ddl.set_not_null(s, n, c.column)),
                    Action(ddl.drop_constraint(s, n, nn_check)),
                ],
            )
            relax.details["squawk_ignore"] = [
                {"rule": "ban-drop-not-null", "why": "the column is dropped in the contract phase"}
            ]
        # contract: foreign keys (both directions), then indexes, then the column
        for u, con in fks_touching(p, {(s, n): {c.column: ""}}):
            ref_qual = f"{con.ref_table[0]}.{con.ref_table[1]}" if con.ref_table else u.qual
            direction = (
                f"references {t.qual}.{c.column}"
                if u.qual != t.qual or c.column not in con.columns
                else f"on {t.qual}.{c.column} references {ref_qual}"
            )
            p.drop_foreign_key_step(u, con, f"foreign key {u.qual}.{con.name} ({direction})")
            depends.append(f"foreign key {u.qual}.{con.name}")
        for idx in sorted(t.info.indexes.values(), key=lambda i: i.name):
            if not index_uses(idx, {c.column}):
                continue
            if idx.constraint:
                cinfo = t.info.constraints.get(idx.constraint)
                if cinfo is not None and cinfo.type in ("p", "u", "x"):
                    step = p.brief(
                        f"drop_constraint.{t.qual}.{idx.constraint}",
                        "contract",
                        "drop_constraint",
                        f"drop constraint {idx.constraint} on {t.qual} (uses {c.column}; its index"
                        " goes with it)",
                        [ddl.drop_constraint(s, n, idx.constraint)],
                        [t.qual],
                        post=checks.q_constraint_absent(s, n, idx.constraint),
                        breaking=True,
                    )
                    step.details["squawk_ignore"] = [
                        {"rule": "ban-drop-constraint", "why": "contract phase of a column drop"}
                    ]
                    t.constraints.pop(idx.constraint, None)
                    t.indexes.pop(idx.name, None)
                    depends.append(f"constraint {idx.constraint}")
                    continue
            p.drop_index_step(
                t,
                idx.name,
                f"drop index {s}.{idx.name} concurrently (uses {c.column})",
                breaking=True,
            )
            depends.append(f"index {idx.name}")
        along = [f"check {k.name}" for k in checks_using(t.info, {c.column})]
        for k in checks_using(t.info, {c.column}):
            t.constraints.pop(k.name, None)
        if info.sequence is not None:
            along.append(f"sequence {info.sequence[0]}.{info.sequence[1]}")
        along += stats(t.info, c.column)
        step = p.brief(
            f"drop_column.{t.qual}.{c.column}",
            "contract",
            "drop_column",
            f"drop column {t.qual}.{c.column} (catalog only)"
            + (f"; takes along {', '.join(along)}" if along else ""),
            [ddl.drop_column(s, n, c.column, if_exists=False)],
            [t.qual],
            post=checks.q_column_exists(s, n, c.column, exists=False),
            breaking=True,
        )
        step.details["squawk_ignore"] = [
            {"rule": "ban-drop-column", "why": "contract phase: no code uses the column"}
        ]
        everything = depends + along
        p.notes.append(
            f"{t.qual}.{c.column} is dropped in the contract phase, after the code stops using it"
            + (
                f"; depending on it: {', '.join(everything)}"
                if everything
                else "; nothing depends on it"
            )
        )
