"""The executor's settings, and the duration text they are given in."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..backfill import BackfillSettings
from ..locks import RetryPolicy
from ..observe.hooks import Hook

__all__ = ["Settings", "parse_duration"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|min|m|h)?\s*$")


def parse_duration(text: str | float | int) -> float:
    """``"500ms"``, ``"2s"``, ``"1min"``, ``1.5`` -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 500ms, 2s, 1min)")
    value, unit = float(m.group(1)), (m.group(2) or "s")
    return value * {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}[unit]


@dataclass(frozen=True)
class Settings:
    """How the executor behaves. Defaults are for a busy production table."""

    #: how long any step may wait for a lock that blocks the application
    lock_timeout: float = 0.5
    #: statement_timeout for brief DDL steps (catalog-only changes)
    statement_timeout: float = 10.0
    #: lock_timeout for CREATE INDEX CONCURRENTLY's waits (they do not block the application)
    index_lock_timeout: float = 60.0
    #: sessions holding a conflicting lock for longer than this are waited out before
    #: queueing (None: the lock_timeout)
    long_transaction: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    backfill: BackfillSettings = field(default_factory=BackfillSettings)
    state_schema: str = "onlineschema"
    #: how long to keep trying to connect again after the connection to the database was
    #: lost (a network blip, a server restart, a failover); past it: exit 3, resumable
    reconnect_budget: float = 120.0
    #: through a transaction pooler, how long the lease on a migration outlives its last
    #: renewal (a heartbeat renews it every third of that): how soon another process may
    #: take over the migration of one that died
    lease_ttl: float = 30.0
    #: event -> commands or callables to run on it (see onlineschema.observe.hooks)
    hooks: Mapping[str, Sequence[Hook]] = field(default_factory=dict)
    #: a hook running longer is abandoned (a command is killed) and logged
    hook_timeout: float = 10.0
    #: check a column copy's data before the contract phase drops the old column
    verify_before_contract: bool = True
