"""``AddIdentity``: make a NOT NULL column an identity column.

``ALTER COLUMN c ADD GENERATED ... AS IDENTITY`` changes only the catalog (it creates
the column's sequence) under a brief ACCESS EXCLUSIVE lock: one lock-guarded step. It
needs a NOT NULL column without a default. A column this migration adds gets its identity
right after the ADD COLUMN (``ADD COLUMN ... GENERATED AS IDENTITY`` is planned so, which
the add-column recipe allows only on an empty table); on a column made NOT NULL by this
migration, after that NOT NULL is in place.
"""

from __future__ import annotations

from typing import Any

import pglast
from pglast import ast
from pglast.enums import AlterTableType

from ..changes import AddIdentity
from ..plan import Action
from ..planner.assumed import AssumedSchema
from ..planner.context import PlanContext
from ..planner.steps import RANK_FK
from ..sql import checks, ddl
from .base import Recipe, recipe_for


def _options_ok(ctx: PlanContext, c: AddIdentity) -> bool:
    """The options are sequence options and nothing else (they are SQL text)."""
    if not c.options:
        return True
    probe = f"ALTER TABLE t ALTER COLUMN c ADD GENERATED ALWAYS AS IDENTITY ({c.options})"
    try:
        statements = pglast.parse_sql(probe)
    except pglast.parser.ParseError:
        statements = ()
    node = statements[0].stmt if len(statements) == 1 else None
    cmds: tuple[Any, ...] = node.cmds or () if isinstance(node, ast.AlterTableStmt) else ()
    ok = len(cmds) == 1 and cmds[0].subtype == AlterTableType.AT_AddIdentity
    if not ok:
        ctx.refuse(
            f"identity options {c.options!r} are not sequence options",
            "give sequence options only, e.g. 'START WITH 100 INCREMENT BY 1'",
        )
    return ok


@recipe_for(AddIdentity)
class AddIdentityRecipe(Recipe[AddIdentity]):
    def plan(self, ctx: PlanContext, c: AddIdentity) -> None:
        t = ctx.table(c.schema, c.table)
        if t is None:
            return
        if (
            c.column not in t.columns
            and not t.new
            and any(f"{t.qual}.{c.column} " in pr.problem for pr in ctx.problems)
        ):
            return  # its ADD COLUMN was refused already, with the reason
        col = ctx.column(t, c.column)
        if col is None or not _options_ok(ctx, c):
            return
        if col.identity:
            ctx.refuse(
                f"column {t.qual}.{c.column} is already an identity column", "remove this change"
            )
            return
        if col.default is not None:
            ctx.refuse(
                f"column {t.qual}.{c.column} has a default ({col.default}); PostgreSQL refuses"
                " an identity on a column with a default",
                "drop the default first (ALTER COLUMN ... DROP DEFAULT) in the same migration",
            )
            return
        if not col.notnull and not (t.new and col.new and col.type == "unknown"):
            ctx.refuse(
                f"column {t.qual}.{c.column} is nullable; PostgreSQL adds an identity only to"
                " a NOT NULL column",
                "make it NOT NULL first (ALTER COLUMN ... SET NOT NULL) in this migration or"
                " an earlier one",
            )
            return
        col.identity = "a" if c.always else "d"
        # after a NOT NULL this migration adds through a validated constraint (validate)
        later = (t.schema, t.name, c.column) in ctx.nullness and not t.new and not col.new
        s, n = t.schema, t.name
        ctx.brief(
            f"add_identity.{t.qual}.{c.column}",
            "validate" if later else "expand",
            "add_identity",
            f"{c.describe()} (catalog only: creates its sequence)",
            [ddl.add_identity_generated(s, n, c.column, always=c.always, options=c.options)],
            [t.qual],
            post=checks.q_column_identity(s, n, c.column),
            undo=[Action(ddl.drop_identity(s, n, c.column))],
            rank=RANK_FK,
        )

    def assume(self, change: AddIdentity, schema: AssumedSchema) -> None:
        t = schema.table(change.schema, change.table)
        schema.column(t, change.column, notnull=True)
