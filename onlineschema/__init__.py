"""onlineschema: change the schema of a live PostgreSQL database without stopping it.

>>> import onlineschema as osc                                      # doctest: +SKIP
>>> plan = osc.plan(dsn, [osc.AddColumn("orders", "status", "text", # doctest: +SKIP
...                                     nullable=False, default="'new'")])
>>> print(plan.render_text())                                       # doctest: +SKIP
>>> osc.apply(dsn, changes, name="orders_status")                   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import changes as _changes
from .backfill import BackfillSettings
from .changes import *  # noqa: F403 (every change kind, as changes.__all__ lists them)
from .changes import Change
from .errors import (
    AlreadyRunning,
    ConnectionFailed,
    LockBudgetExhausted,
    OnlineSchemaError,
    Paused,
    PreflightError,
    Refused,
    StepFailed,
    UnknownMigration,
    UnsupportedStatement,
)
from .executor import Executor, Result, Settings
from .locks import RetryPolicy
from .plan import Plan, Step

__all__ = [
    "AlreadyRunning",
    "BackfillSettings",
    "ConnectionFailed",
    "Executor",
    "LockBudgetExhausted",
    "OnlineSchemaError",
    "Paused",
    "Plan",
    "PreflightError",
    "Refused",
    "Result",
    "RetryPolicy",
    "Settings",
    "Step",
    "StepFailed",
    "UnknownMigration",
    "UnsupportedStatement",
    "apply",
    "backfill",
    "plan",
]
__all__ += _changes.__all__


def plan(target: Any, changes: Sequence[Change], settings: Settings | None = None) -> Plan:
    """Plan ``changes`` against the database at ``target`` (DSN, psycopg or SQLAlchemy
    connection or engine). Reads the catalog; runs no DDL."""
    with Executor(target, settings) as ex:
        return ex.plan(changes)


def apply(
    target: Any,
    changes: Sequence[Change],
    name: str | None = None,
    settings: Settings | None = None,
) -> Result:
    """Plan and run ``changes`` online as migration ``name`` (resumes it if it exists)."""
    with Executor(target, settings) as ex:
        return ex.apply(changes, name)


def backfill(
    target: Any,
    table: str,
    set: dict[str, str] | Sequence[tuple[str, str]],
    *,
    where: str | None = None,
    schema: str | None = None,
    name: str | None = None,
    workers: int | None = None,
    settings: Settings | None = None,
) -> Result:
    """``UPDATE table SET ... [WHERE ...]`` online: in short batches, exactly once,
    throttled, resumable (run it again with the same ``name``), pausable and observable
    like any migration (``onlineschema status/pause/set/resume NAME``).

    >>> import onlineschema as osc                                       # doctest: +SKIP
    >>> osc.backfill(dsn, "orders", {"total": "price * qty"},            # doctest: +SKIP
    ...              where="total IS NULL", name="orders_total", workers=2)
    """
    with Executor(target, settings) as ex:
        return ex.backfill(table, set, where=where, schema=schema, name=name, workers=workers)
