"""Normalisation before planning: follow-ups on a column added in the same migration are
folded into its ``AddColumn`` (what SQL input produces for ``ADD COLUMN`` + ``UPDATE`` +
``SET NOT NULL``), so the planner can run them online."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ..changes import AddColumn, Backfill, Change, SetDefault, SetNotNull


def normalize(changes: Sequence[Change]) -> list[Change]:
    """Fold follow-up changes on a column added in the same migration into its AddColumn.

    ``ADD COLUMN c; UPDATE t SET c = e; ALTER c SET NOT NULL; ALTER c SET DEFAULT d`` means
    the same as ``AddColumn(c, backfill=e, nullable=False, default=d)``, which the planner
    can run online. A follow-up is folded only where the meaning stays the same.
    """
    out: list[Change] = []
    added: dict[tuple[str | None, str, str], int] = {}
    for ch in changes:
        if isinstance(ch, AddColumn):
            added[(ch.schema, ch.table, ch.column)] = len(out)
            out.append(ch)
            continue
        key = None
        if isinstance(ch, (SetNotNull, SetDefault)):
            key = (ch.schema, ch.table, ch.column)
        elif isinstance(ch, Backfill) and len(ch.set) == 1 and ch.where is None:
            key = (ch.schema, ch.table, ch.set[0][0])
        pos = added.get(key) if key else None
        if pos is not None:
            base = out[pos]
            assert isinstance(base, AddColumn)
            if isinstance(ch, Backfill) and base.backfill is None:
                out[pos] = dataclasses.replace(base, backfill=ch.set[0][1])
                continue
            if (
                isinstance(ch, SetNotNull)
                and base.nullable
                and (base.default is not None or base.backfill is not None)
            ):
                out[pos] = dataclasses.replace(base, nullable=False)
                continue
            if isinstance(ch, SetDefault) and base.default is None and base.backfill is not None:
                out[pos] = dataclasses.replace(base, default=ch.default)
                continue
        out.append(ch)
    return out
