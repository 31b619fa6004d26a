"""Add a column: one brief catalog-only step when it can, else a nullable add, a batched fill and NOT NULL through a validated constraint."""

from __future__ import annotations

from collections.abc import Iterable

from ..changes import AddColumn
from ..errors import Refused
from ..expressions import (
    check_type,
)
from ..plan import Action
from ..planner.assumed import AssumedSchema
from ..planner.context import PlanContext
from ..planner.model import VColumn
from ..planner.naming import (
    fill_trigger_names,
)
from ..sql import checks, ddl
from .base import CatalogNeeds, Recipe, recipe_for

SERIAL_TYPES = frozenset({"serial", "bigserial", "smallserial", "serial4", "serial8", "serial2"})


@recipe_for(AddColumn)
class AddColumnRecipe(Recipe[AddColumn]):
    def plan(self, ctx: PlanContext, c: AddColumn) -> None:
        t = ctx.table(c.schema, c.table)
        if t is None or not ctx.name_ok(c.column, "column"):
            return
        if c.column in t.columns:
            ctx.refuse(
                f"column {c.column!r} already exists in table {t.qual}",
                "remove this change, or use another column name",
            )
            return
        try:
            type_ = check_type(c.type)
        except Refused as exc:
            ctx.problems.append(exc)
            return
        serial = type_.lower() in SERIAL_TYPES
        if serial and not (t.new or ctx.empty(t)):  # on an empty table: nothing to rewrite
            ctx.refuse(
                f"adding a {type_} column to {t.qual} rewrites the whole table under ACCESS EXCLUSIVE",
                "add a bigint column, create a sequence, SetDefault nextval(...) and Backfill it",
            )
            return
        resolved = ctx.catalog.types.get(c.type, ("", "b", False))
        # a type made earlier in this migration does not exist yet for the probes
        probe_type = None if resolved is None else type_
        if resolved is None and not t.new and not ctx.new_type(type_) and not serial:
            ctx.refuse(
                f"type {c.type!r} does not exist",
                "check the type name, or create the type earlier in the migration",
            )
            return
        if resolved and resolved[2] and not t.new:
            ctx.refuse(
                f"adding a column of the constrained domain {c.type!r} to {t.qual} rewrites the table",
                "add the column with the domain's base type and an AddCheck for the constraint",
            )
            return
        default = ctx.expr(c.default, "default") if c.default is not None else None
        fill = ctx.expr(c.backfill, "backfill expression") if c.backfill is not None else None
        if (c.default is not None and default is None) or (c.backfill is not None and fill is None):
            return
        if default is not None and not ctx.default_ok(t, c.column, default):
            return
        s, n = t.schema, t.name
        if default is not None or fill is not None:
            ctx.filled.add((s, n, c.column))
        if default is not None:
            ctx.probe_expr(t, default, probe_type, "default")
        if fill is not None:
            ctx.probe_expr(t, fill, probe_type, "backfill expression")
        volatile = default is not None and ctx.volatile(default)
        t.columns[c.column] = VColumn(type_, not c.nullable, default, new=True)
        undo = [Action(ddl.drop_column(s, n, c.column))]
        post = checks.q_column_exists(s, n, c.column)
        sid = f"add_column.{t.qual}.{c.column}"
        if t.new or (fill is None and not volatile):
            if not c.nullable and default is None and not t.new and not ctx.empty(t):
                t.columns.pop(c.column)
                ctx.refuse(
                    f"column {t.qual}.{c.column} is NOT NULL with no default and no backfill:"
                    " existing rows would have no value",
                    "give a default (AddColumn(default=...)), a backfill expression"
                    " (AddColumn(backfill=...)), or make it nullable",
                )
                return
            desc = f"add column {c.column} {type_}"
            if not c.nullable and default is None and not t.new:
                ctx.notes.append(
                    f"{t.qual} was empty when planned, so {c.column} is added NOT NULL without"
                    " a default; if a row appears first, the ADD COLUMN fails (23502) and"
                    " changes nothing"
                )
            if default is not None:
                desc += f" DEFAULT {default} (stored once, no rewrite)"
            if not c.nullable:
                desc += " NOT NULL"
            ctx.brief(
                sid,
                "expand",
                "add_column",
                desc + f" to {t.qual}",
                [ddl.add_column(s, n, c.column, type_, default=default, not_null=not c.nullable)],
                [t.qual],
                post=post,
                undo=undo,
            )
            return
        # volatile default or explicit backfill: nullable add, default for new rows,
        # batched fill of the existing rows, then NOT NULL through a validated constraint
        desc = f"add column {c.column} {type_} to {t.qual} as nullable"
        if default is not None:
            desc += f", DEFAULT {default} for new rows only"
        ctx.brief(
            sid,
            "expand",
            "add_column",
            desc,
            [ddl.add_column(s, n, c.column, type_, default_for_new_rows=default)],
            [t.qual],
            post=post,
            undo=undo,
        )
        value = fill if fill is not None else default
        assert value is not None
        # Rows written by code that does not know the column yet get the value from a
        # trigger when nothing else gives them one (NOT NULL, no default); on a table
        # without a key it also catches rows the application updates during the fill:
        # such a row moves behind the ctid cursor and would otherwise stay NULL.
        if (not c.nullable and default is None) or not t.primary_key:
            fn, trg = fill_trigger_names(n, c.column)
            drop = [Action(ddl.drop_trigger(s, n, trg)), Action(ddl.drop_function(s, fn))]
            ctx.brief(
                f"fill_trigger.{t.qual}.{c.column}",
                "expand",
                "create_trigger",
                f"add a trigger that fills {c.column} for rows written during the migration",
                [
                    ddl.fill_trigger_function(s, fn, n, c.column, value),
                    ddl.create_trigger(s, n, trg, fn),
                ],
                [t.qual],
                lock="ShareRowExclusiveLock",
                post=checks.q_trigger_exists(s, n, trg),
                undo=drop,
            )
            dropper = ctx.brief(
                f"drop_fill_trigger.{t.qual}.{c.column}",
                "contract",
                "drop_trigger",
                f"drop the fill trigger on {t.qual}",
                [a.sql for a in drop],
                [t.qual],
                post=checks.q_trigger_exists(s, n, trg, exists=False),
            )
            dropper.details["squawk_ignore"] = [
                {
                    "rule": "ban-drop-function",
                    "why": "the fill function was created by this plan; only its trigger used it",
                }
            ]
        ctx.backfill_step(t, ((c.column, value),), None, only_null=c.column)
        if not c.nullable:
            ctx.not_null_steps(t, c.column)

    def expressions(self, change: AddColumn) -> Iterable[str | None]:
        return (change.default, change.backfill)

    def catalog_needs(self, change: AddColumn) -> CatalogNeeds:
        needs = super().catalog_needs(change)
        needs.type(change.type)
        if (
            not change.nullable and change.default is None and change.backfill is None
        ) or change.type.strip().lower() in SERIAL_TYPES:
            # possible only while the table is empty: the catalog reader looks into it
            needs.probe_rows.add((change.schema, change.table))
        return needs

    def assume(self, change: AddColumn, schema: AssumedSchema) -> None:
        schema.table(change.schema, change.table)
        schema.created_cols.add((*schema.key(change.schema, change.table), change.column))

    def adds_column(self, change: AddColumn) -> tuple[str | None, str, str] | None:
        return (change.schema, change.table, change.column)
