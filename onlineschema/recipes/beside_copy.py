"""Other changes beside a column copy of the same table (a type change or a rename in
the same migration, as Prisma writes them: ``RENAME COLUMN`` + ``ADD COLUMN``, ``ALTER
TYPE`` + ``CREATE INDEX``).

A change that stays clear of the copied columns is planned as usual. On the new name of
a renamed column, indexes and constraints are built on the new column (after its
backfill); on a column whose type changes, an index, unique constraint or foreign key of
plain columns, and SET NOT NULL, go onto the new column (it takes the column's name at
the contract), named as PostgreSQL would name them on the old one. Anything else that
touches a copied column is refused with the reason. (No recipe of its own: the planner
calls ``against_copies`` before each change's recipe.)
"""

from __future__ import annotations

import dataclasses

from ..changes import (
    AddCheck,
    AddColumn,
    AddForeignKey,
    AddIndex,
    AddUnique,
    Backfill,
    Change,
    DropColumn,
    DropConstraint,
    DropIndex,
    DropTable,
    RenameColumn,
    RenameConstraint,
    RenameIndex,
    RunSQL,
    SetDefault,
    SetNotNull,
    ValidateConstraint,
)
from ..errors import Refused
from ..expressions import check_index_element, column_refs, index_element_expression
from ..planner.column_copy import ColumnCopies, Copy
from ..planner.context import PlanContext
from ..planner.dependents import index_uses
from ..planner.model import VTable
from ..planner.naming import index_column_names, name_addition, names_in_use
from ..sql import rewrite


def guarded(change: Change) -> bool:
    """Is ``change`` checked here (so the frozen-table guard may let it through on a
    table whose columns are copied)? Raw SQL and DROP TABLE are not."""
    return not isinstance(change, (RunSQL, DropTable))


def _change_columns(c: Change) -> set[str]:
    """Columns of its own table that a change names or uses."""
    cols: set[str] = set()
    exprs: list[str] = []
    column = getattr(c, "column", None)
    if isinstance(column, str) and not isinstance(c, AddColumn):
        cols.add(column)  # SET/DROP NOT NULL, SET/DROP DEFAULT, DROP COLUMN, identity...
    if isinstance(c, SetDefault):
        exprs.append(c.default)
    if isinstance(c, AddColumn):
        exprs += [e for e in (c.default, c.backfill) if e]
    if isinstance(c, AddIndex):
        cols.update(c.columns, c.include)
        exprs += list(c.expressions) + ([c.where] if c.where else [])
    if isinstance(c, (AddUnique, AddForeignKey)):
        cols.update(c.columns)
    if isinstance(c, AddCheck):
        exprs.append(c.expression)
    if isinstance(c, Backfill):
        cols.update(col for col, _ in c.set)
        exprs += [e for _, e in c.set] + ([c.where] if c.where else [])
    for text in exprs:
        try:
            cols |= column_refs(text)
        except Refused:
            try:  # an index element: "lower(a) DESC", "a text_pattern_ops"
                expr = index_element_expression(check_index_element(text))
                cols |= column_refs(expr) if expr else {text.split()[0].strip('"')}
            except Refused:
                pass  # the recipe refuses it
    return cols


def against_copies(ctx: PlanContext, c: Change, touched: list[tuple[str, str]]) -> Change | None:
    """The change to plan (possibly moved onto the new columns), or None when refused."""
    st = ctx.extensions.get(ColumnCopies)
    if not isinstance(st, ColumnCopies) or not st.copies or not guarded(c):
        return c
    for key in touched:
        copies = st.copies.get(key)
        t = ctx.tables.get(key)
        if not copies or t is None or t.info is None:
            continue
        table = getattr(c, "table", None)
        own = isinstance(table, str) and key == (
            ctx.catalog.resolve_schema(getattr(c, "schema", None), table),
            table,
        )
        reason = _copy_conflict(ctx, t, list(copies.values()), c, own)
        if reason is not None:
            ctx.refuse(
                f"{c.describe()}: {reason}",
                "put this change in a migration of its own, after `onlineschema contract`"
                " of this one (or before it)",
            )
            return None
        if own:
            c = _onto_new_columns(ctx, t, list(copies.values()), c)
    return c


def copied_tables(ctx: PlanContext) -> set[tuple[str, str]]:
    """Tables with column copies of their own (left to ``against_copies``)."""
    st = ctx.extensions.get(ColumnCopies)
    return set(st.copies) if isinstance(st, ColumnCopies) else set()


def _copy_conflict(
    ctx: PlanContext, t: VTable, copies: list[Copy], c: Change, own: bool
) -> str | None:
    assert t.info is not None
    copied = {cp.column for cp in copies}
    if isinstance(c, AddForeignKey) and not own:
        ref_key = (ctx.catalog.resolve_schema(c.ref_schema, c.ref_table), c.ref_table)
        if ref_key == (t.schema, t.name) and set(c.ref_columns or t.primary_key) & copied:
            return f"it references a column of {t.qual} that '{copies[0].why}' replaces"
        return None
    if isinstance(
        c, (DropIndex, DropConstraint, ValidateConstraint, RenameIndex, RenameConstraint)
    ):
        name = c.name
        idx = t.info.indexes.get(name)
        con = t.info.constraints.get(name)
        if (idx is not None and index_uses(idx, copied)) or (
            con is not None
            and (set(con.columns) & copied or rewrite.constraint_references(con.definition, copied))
        ):
            return (
                f"{name} uses a column that this migration copies; it is rebuilt on the new"
                " column and swapped in at the contract"
            )
        return None
    if isinstance(c, RenameColumn) and c.instant:
        return "an instant rename on a table whose columns are being copied"
    cols = _change_columns(c)
    if isinstance(c, DropColumn):
        shared = [
            i.name
            for i in t.info.indexes.values()
            if index_uses(i, {c.column}) and index_uses(i, copied)
        ] + [
            k.name
            for k in t.info.constraints.values()
            if c.column in k.columns and set(k.columns) & copied
        ]
        if shared:
            return (
                f"{', '.join(sorted(shared))} use(s) both {c.column} and a column that this"
                " migration copies"
            )
        fed = [cp.why for cp in copies if c.column in cp.sources and c.column != cp.column]
        if fed:
            return f"'{fed[0]}' computes the new column from {t.qual}.{c.column}"
    for cp in copies:
        if cp.renamed and cp.column in cols:
            return f"{t.qual}.{cp.column} is renamed to {cp.final} by '{cp.why}' earlier"
        if (
            cp.renamed
            and cp.final in cols
            and not isinstance(c, (AddIndex, AddUnique, AddForeignKey, AddCheck, SetNotNull))
        ):
            return (
                f"{t.qual}.{cp.final} is the new name of {cp.column} ('{cp.why}'): a copy"
                " filled from it until the contract phase"
            )
        if not cp.renamed and cp.column in cols and not _plain(c, cp):
            return (
                f"{t.qual}.{cp.column} is replaced by a copy of type {cp.new_type}"
                f" until the contract phase of '{cp.why}'"
            )
    return None


def _plain(c: Change, cp: Copy) -> bool:
    """Can ``c`` go onto the new column of ``cp`` (a type change) as it is?"""
    if isinstance(c, SetNotNull):
        return True
    if not isinstance(c, (AddIndex, AddUnique, AddForeignKey)):
        return False
    if isinstance(c, AddUnique) and c.primary_key:
        return False
    if isinstance(c, AddIndex):
        if c.where:
            return False
        if any(
            cp.column in _change_columns(AddIndex(c.table, expressions=(e,))) for e in c.expressions
        ):
            return False
    return True


def _onto_new_columns(ctx: PlanContext, t: VTable, copies: list[Copy], c: Change) -> Change:
    """An index, unique constraint or foreign key on columns whose type changes: built
    on the new columns, named as PostgreSQL would name it on the old ones."""
    shadows = {cp.column: cp.shadow for cp in copies if not cp.renamed}
    if isinstance(c, SetNotNull) and c.column in shadows:
        return dataclasses.replace(c, column=shadows[c.column])
    if not isinstance(c, (AddIndex, AddUnique, AddForeignKey)):
        return c
    if not (set(c.columns) | set(getattr(c, "include", ()))) & set(shadows):
        return c

    def mapped(cols: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(shadows.get(col, col) for col in cols)

    names = names_in_use(ctx)
    if isinstance(c, AddIndex):
        name = c.name or names.relation(
            t.schema,
            t.name,
            name_addition(index_column_names(c.columns, c.expressions, c.include)),
            "idx",
            isconstraint=False,
        )
        return dataclasses.replace(
            c, columns=mapped(c.columns), include=mapped(c.include), name=name
        )
    if isinstance(c, AddUnique):
        name = c.name or names.relation(
            t.schema, t.name, name_addition(c.columns), "key", isconstraint=True
        )
        return dataclasses.replace(c, columns=mapped(c.columns), name=name)
    name = c.name or names.constraint(t.schema, t.name, name_addition(c.columns), "fkey")
    return dataclasses.replace(c, columns=mapped(c.columns), name=name)
