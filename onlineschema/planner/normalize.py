"""Normalisation before planning: follow-ups on a column added in the same migration are
folded into its ``AddColumn`` (what SQL input produces for ``ADD COLUMN`` + ``UPDATE`` +
``SET NOT NULL``), so the planner can run them online."""

from __future__ import annotations

from collections.abc import Sequence

from .. import recipes
from ..changes import AddColumn, Change


def not_null_after_copies(changes: Sequence[Change]) -> list[Change]:
    """``SET NOT NULL`` on a column whose type a later change of the migration changes is
    moved right after that change: the end state is the same, and the NOT NULL then goes
    onto the column copy instead of the old column (``ALTER COLUMN x SET NOT NULL, ALTER
    COLUMN x TYPE ...`` as Prisma writes it). Not before a rename: on PostgreSQL 18 the
    NOT NULL constraint would then be named after the new name, not the old one."""

    def recipe(ch: Change) -> recipes.Recipe[Change]:
        return recipes.find(type(ch)) or recipes.Recipe()

    out = list(changes)
    i = 0
    while i < len(out):
        key = recipe(out[i]).after_copy(out[i])
        if key is not None:
            j = next(
                (j for j in range(i + 1, len(out)) if recipe(out[j]).copies_column(out[j]) == key),
                None,
            )
            if j is not None:
                out.insert(j + 1, out[i])
                del out[i]
                continue
        i += 1
    return out


def normalize(changes: Sequence[Change]) -> list[Change]:
    """Fold follow-up changes on a column added in the same migration into its AddColumn.

    ``ADD COLUMN c; UPDATE t SET c = e; ALTER c SET NOT NULL; ALTER c SET DEFAULT d`` means
    the same as ``AddColumn(c, backfill=e, nullable=False, default=d)``, which the planner
    can run online. A follow-up is folded only where the meaning stays the same (each
    recipe says: ``adds_column``, ``follows_up``, ``fold``).
    """
    out: list[Change] = []
    added: dict[tuple[str | None, str, str], int] = {}
    for ch in not_null_after_copies(changes):
        recipe = recipes.find(type(ch)) or recipes.Recipe()
        new = recipe.adds_column(ch)
        if new is not None:
            added[new] = len(out)
            out.append(ch)
            continue
        key = recipe.follows_up(ch)
        pos = added.get(key) if key else None
        if pos is not None:
            base = out[pos]
            assert isinstance(base, AddColumn)
            folded = recipe.fold(ch, base)
            if folded is not None:
                out[pos] = folded
                continue
        out.append(ch)
    return out
