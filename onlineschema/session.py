"""One execution policy: the only place the timeouts our sessions run under are decided,
for the executor, its preflight probes, the SQL script and the backfill alike.

* a brief (transactional) step: ``SET LOCAL`` the lock timeout and its statement timeout
  inside the step's own transaction;
* a ``CONCURRENTLY`` (autocommit) step: the same values for the session, reset after;
* a step whose lock waits block no one (``Step.lock_waits_block_no_one``: an index
  build, a ``REINDEX CONCURRENTLY``, an abort's undo outside a transaction):
  ``index_lock_timeout``;
* an undo action (``executor.steps.undo_steps`` makes it a step): brief ones as a brief
  step; ones that scan or run outside a transaction without a statement timeout;
* a preflight probe: a read-only transaction under the lock timeout;
* a backfill transaction (a batch, a chunk claim, the cut at start): settings local to
  the transaction (:func:`backfill_timeouts`); the backfill's own VACUUM connection: no
  statement timeout (:func:`no_statement_timeout`).

Timeouts are text the server reads (``"500ms"``, ``"0"``): the executor passes them to
``set_config`` and the script renderer writes them into ``SET`` statements, so both say
the same thing. This module imports nothing from the executor or the backfill engine:
both use it (the executor runs backfills, so the policy cannot live in the executor).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
from psycopg import sql

from .plan import Step
from .pooler import is_pooled

__all__ = [
    "CLAIM_LOCK_TIMEOUT",
    "Policy",
    "TimeoutSettings",
    "Timeouts",
    "backfill_timeouts",
    "batch_settings",
    "claim_settings",
    "cut_settings",
    "local_settings",
    "ms",
    "no_statement_timeout",
    "probe_settings",
    "session_settings",
    "timeouts_for",
]


class TimeoutSettings(Protocol):
    """What the policy reads from the executor's Settings (seconds)."""

    @property
    def lock_timeout(self) -> float: ...
    @property
    def statement_timeout(self) -> float: ...
    @property
    def index_lock_timeout(self) -> float: ...


def ms(seconds: float) -> str:
    """Seconds as the server's duration text: ``0.5`` -> ``"500ms"``, rounded to the
    millisecond. The one way a duration is written, for the server and for scripts."""
    return f"{round(seconds * 1000)}ms"


def _statement(seconds: float) -> str:
    """A step's own statement_timeout: ``0`` means none."""
    return ms(seconds) if seconds else "0"


@dataclass(frozen=True)
class Policy:
    """The timeouts steps run under, as the server's text."""

    lock_timeout: str
    statement_timeout: str
    #: for CREATE INDEX CONCURRENTLY's waits (they do not block the application)
    index_lock_timeout: str

    @classmethod
    def from_settings(cls, settings: TimeoutSettings) -> Policy:
        return cls(
            lock_timeout=ms(settings.lock_timeout),
            statement_timeout=ms(settings.statement_timeout),
            index_lock_timeout=ms(settings.index_lock_timeout),
        )


@dataclass(frozen=True)
class Timeouts:
    """The session settings one step's statements run under."""

    lock_timeout: str
    statement_timeout: str
    #: True: ``SET LOCAL`` in the step's transaction; False: for the session, reset after
    local: bool


def timeouts_for(step: Step, policy: Policy) -> Timeouts:
    """The timeouts ``step``'s statements run under (for an index build, also the drop
    of its invalid leftovers)."""
    statement = (
        policy.statement_timeout
        if step.statement_timeout is None
        else _statement(step.statement_timeout)
    )
    if step.lock_waits_block_no_one:
        return Timeouts(policy.index_lock_timeout, statement, local=False)
    return Timeouts(policy.lock_timeout, statement, local=step.transactional)


def local_settings(cur: psycopg.Cursor[Any], t: Timeouts) -> None:
    """Set ``t`` for the rest of the current transaction (``SET LOCAL``)."""
    cur.execute(
        "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
        (t.lock_timeout, t.statement_timeout),
    )


@contextlib.contextmanager
def session_settings(cur: psycopg.Cursor[Any], t: Timeouts) -> Iterator[None]:
    """Set ``t`` for the session while the block runs, then reset both (unless the
    connection broke: then the session is gone anyway). Through a transaction pooler
    nothing is set: the block's statement may run on another server connection than the
    SET, which would stay behind for the application to inherit (onlineschema.pooler)."""
    if is_pooled(cur.connection):
        yield
        return
    cur.execute(
        "SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false)",
        (t.lock_timeout, t.statement_timeout),
    )
    try:
        yield
    finally:
        if not cur.connection.broken:
            cur.execute("RESET lock_timeout")
            cur.execute("RESET statement_timeout")


def probe_settings(cur: psycopg.Cursor[Any], policy: Policy) -> None:
    """A preflight probe's transaction: read only, under the lock timeout."""
    cur.execute("SET TRANSACTION READ ONLY")
    cur.execute("SELECT set_config('lock_timeout', %s, true)", (policy.lock_timeout,))


# --- the backfill ----------------------------------------------------------------------

#: how long a backfill worker's claim may wait for a lock on a chunk's row in the state
#: table
CLAIM_LOCK_TIMEOUT = "2s"


def backfill_timeouts(
    *,
    lock_timeout: str | None = None,
    statement_timeout: str | None = None,
    seqscan: bool = True,
) -> sql.Composed:
    """What a backfill transaction starts with (a batch, a chunk claim, the cut at
    start): one ``SELECT set_config(..., true)``, local to the transaction. Values are
    PostgreSQL durations (``'500ms'``, ``'2s'``, ``'0'`` for none); ``seqscan=False``
    also turns sequential scans off, so that a batch reads its slice through the key's
    index."""
    values: dict[str, str] = {}
    if lock_timeout is not None:
        values["lock_timeout"] = lock_timeout
    if statement_timeout is not None:
        values["statement_timeout"] = statement_timeout
    if not seqscan:
        values["enable_seqscan"] = "off"
    return sql.SQL("SELECT {}").format(
        sql.SQL(", ").join(
            sql.SQL("set_config({}, {}, true)").format(sql.Literal(k), sql.Literal(v))
            for k, v in values.items()
        )
    )


def batch_settings(lock_timeout: float, batch_statement_timeout: float) -> sql.Composed:
    """A backfill batch: the executor's lock timeout, the batch's own statement timeout
    (never none: at least 1ms) and no sequential scan."""
    return backfill_timeouts(
        lock_timeout=ms(lock_timeout),
        statement_timeout=ms(max(batch_statement_timeout, 0.001)),
        seqscan=False,
    )


def claim_settings() -> sql.Composed:
    """A chunk claim: a short wait for a chunk's row in the state table."""
    return backfill_timeouts(lock_timeout=CLAIM_LOCK_TIMEOUT)


def cut_settings() -> sql.Composed:
    """The cut of the work into chunks at start: reads the key's bounds, no limit."""
    return backfill_timeouts(statement_timeout="0")


def no_statement_timeout(cur: psycopg.Cursor[Any]) -> None:
    """A connection of its own that runs one long maintenance statement and closes (the
    backfill's VACUUM, which steps aside by SKIP_LOCKED and by its guard): no statement
    timeout for the session. Not through a transaction pooler, where the SET would stay
    behind on a server connection the application gets next."""
    if not is_pooled(cur.connection):
        cur.execute("SET statement_timeout = 0")
