"""Every name the planner generates, in one place: the planner, the recipes, the column
copy and the abort actions must agree on them (a step's undo and a later migration find
the objects by these names)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

MAX_IDENTIFIER_BYTES = 63


def helper_name(*parts: str) -> str:
    """A deterministic name for an object the plan creates, at most 63 bytes."""
    name = "_".join(parts)
    if len(name.encode()) <= MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    head = name.encode()[: MAX_IDENTIFIER_BYTES - 9].decode(errors="ignore")
    return f"{head}_{digest}"


def auto_name(table: str, columns: Sequence[str], suffix: str) -> str:
    """PostgreSQL's own naming (``orders_status_idx``), shortened with a hash if long."""
    return helper_name(table, *columns, suffix)


def not_null_name(table: str, column: str) -> str:
    """The NOT NULL constraint PostgreSQL 18 plans add (``NOT NULL ... NOT VALID``)."""
    return helper_name(table, column, "not_null")


def nn_check_name(table: str, column: str) -> str:
    """The helper ``CHECK (column IS NOT NULL)`` of the NOT NULL path before 18."""
    return helper_name("onlineschema_nn", table, column)


def fill_trigger_names(table: str, column: str) -> tuple[str, str]:
    """(function, trigger) that fill a new column for rows written during a migration."""
    return helper_name("onlineschema_fill", table, column), helper_name("onlineschema_fill", column)


def sync_trigger_names(table: str, column: str) -> tuple[str, str]:
    """(function, trigger) that keep a column and its copy in step. BEFORE triggers fire
    in name order: "zz_" runs after the application's own, so a trigger that changes the
    old column is seen by the copy."""
    return (
        helper_name("onlineschema_sync", table, column),
        helper_name("zz_onlineschema_sync", column),
    )


def shadow_name(name: str) -> str:
    """An object built beside ``name`` and swapped in for it at contract."""
    return helper_name(name, "onlineschema_new")


def retired_name(name: str) -> str:
    """An object that ``shadow_name(name)`` replaced, until it is dropped."""
    return helper_name(name, "onlineschema_old")
