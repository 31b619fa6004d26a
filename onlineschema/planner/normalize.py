"""Normalisation before planning: follow-ups on a column added in the same migration are
folded into its ``AddColumn`` (what SQL input produces for ``ADD COLUMN`` + ``UPDATE`` +
``SET NOT NULL``), so the planner can run them online."""

from __future__ import annotations

from collections.abc import Sequence

from .. import recipes
from ..changes import AddColumn, Change


def normalize(changes: Sequence[Change]) -> list[Change]:
    """Fold follow-up changes on a column added in the same migration into its AddColumn.

    ``ADD COLUMN c; UPDATE t SET c = e; ALTER c SET NOT NULL; ALTER c SET DEFAULT d`` means
    the same as ``AddColumn(c, backfill=e, nullable=False, default=d)``, which the planner
    can run online. A follow-up is folded only where the meaning stays the same (each
    recipe says: ``adds_column``, ``follows_up``, ``fold``).
    """
    out: list[Change] = []
    added: dict[tuple[str | None, str, str], int] = {}
    for ch in changes:
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
