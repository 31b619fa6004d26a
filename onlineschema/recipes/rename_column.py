"""Column renames: the column copy (both names work until the contract phase), or with
``instant=True`` one brief ``RENAME COLUMN``, marked in the plan as breaking running code."""

from __future__ import annotations

from typing import Any

from ..changes import RenameColumn
from ..plan import Action
from ..planner.column_copy import ColumnCopies, request_copy
from ..planner.context import PlanContext
from ..planner.model import VTable
from ..planner.naming import (
    MAX_IDENTIFIER_BYTES,
)
from ..sql import checks, ddl
from .base import Recipe, recipe_for


def _name_free(p: PlanContext, t: VTable, name: str, what: str) -> bool:
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        p.refuse(
            f"{what} name {name!r} is longer than {MAX_IDENTIFIER_BYTES} bytes",
            f"use a name of at most {MAX_IDENTIFIER_BYTES} bytes",
        )
        return False
    if name in t.columns:
        p.refuse(
            f"column {name!r} already exists in table {t.qual}",
            "choose another name, or drop that column first",
        )
        return False
    return True


def _rename_instant(p: PlanContext, t: VTable, c: RenameColumn) -> None:
    s, n = t.schema, t.name
    t.columns[c.new_name] = t.columns.pop(c.column)

    def ren(cols: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(c.new_name if x == c.column else x for x in cols)

    t.primary_key = ren(t.primary_key)
    for idx in t.indexes.values():
        idx.columns = ren(idx.columns)
    for con in t.constraints.values():
        con.columns = ren(con.columns)
    p.brief(
        f"rename_column.{t.qual}.{c.column}",
        "expand",
        "rename_column",
        f"rename column {t.qual}.{c.column} to {c.new_name} in place: code that still"
        f" uses {c.column} fails from here on",
        [ddl.rename_column(s, n, c.column, c.new_name)],
        [t.qual],
        post=checks.q_column_exists(s, n, c.new_name),
        undo=[Action(ddl.rename_column(s, n, c.new_name, c.column))],
        breaking=not t.new,
    )
    if not t.new:
        p.notes.append(
            f"instant rename of {t.qual}.{c.column} to {c.new_name} breaks running code that"
            " uses the old name: deploy the code that uses the new name at the same time"
        )


@recipe_for(RenameColumn)
class RenameColumnRecipe(Recipe[RenameColumn]):
    offline_ok = False

    def plan(self, p: PlanContext, c: RenameColumn) -> None:
        st = p.extension(ColumnCopies)
        t = p.table(c.schema, c.table)
        col = p.column(t, c.column) if t else None
        if t is None or col is None or not p.name_ok(c.new_name, "column"):
            return
        if not _name_free(p, t, c.new_name, "column"):
            return
        if c.instant or t.new:
            _rename_instant(p, t, c)
            return
        if col.new or t.info is None or c.column not in t.info.columns:
            p.refuse(
                f"column {t.qual}.{c.column} is added by this migration",
                "give it the name you want in its AddColumn",
            )
            return
        if c.column in st.copies.get((t.schema, t.name), {}):
            p.refuse(
                f"column {t.qual}.{c.column} is changed twice in this migration",
                "keep one change per column",
            )
            return
        info = t.info.columns[c.column]
        if info.generated:
            p.refuse(
                f"column {t.qual}.{c.column} is a generated column and cannot be copied",
                "rename it with RenameColumn(..., instant=True) when code and schema deploy together",
            )
            return
        col_id = ddl.ident(c.column)
        request_copy(
            p,
            t,
            info,
            shadow=c.new_name,
            final=c.new_name,
            new_type=info.type,
            collation=info.collation,
            forward=col_id,
            reverse=col_id,
            sources=(c.column,),
            why=c.describe(),
            follow_references=False,
        )

    def joins_column_copy(self, change: RenameColumn) -> bool:
        return not change.instant
