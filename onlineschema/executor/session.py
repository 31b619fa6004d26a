"""One execution policy: the only place a step's lock_timeout and statement_timeout are
decided, for the executor, its preflight probes and the SQL script alike.

* a brief (transactional) step: ``SET LOCAL`` the lock timeout and its statement timeout
  inside the step's own transaction;
* a ``CONCURRENTLY`` (autocommit) step: the same values for the session, reset after;
* an index build: ``index_lock_timeout`` (its waits do not block the application) and no
  statement timeout;
* an undo action: brief ones as a brief step; ones that scan or run outside a
  transaction without a statement timeout (``CONCURRENTLY`` undo under
  ``index_lock_timeout``);
* a preflight probe: a read-only transaction under the lock timeout.

Timeouts are text the server reads (``"500ms"``, ``"0"``): the executor passes them to
``set_config`` and the script renderer writes them into ``SET`` statements, so both say
the same thing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

from ..errors import PreflightError, Refused
from ..plan import Action, Step
from ..planner import Probe
from ..pooler import is_pooled

__all__ = [
    "Policy",
    "TimeoutSettings",
    "Timeouts",
    "local_settings",
    "ms",
    "probe_settings",
    "run_probes",
    "session_settings",
    "timeouts_for",
    "undo_timeouts",
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
    """Seconds as the server's duration text: ``0.5`` -> ``"500ms"``."""
    return f"{int(seconds * 1000)}ms"


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


def timeouts_for(step: Step, policy: Policy, *, index_build: bool = False) -> Timeouts:
    """The timeouts ``step``'s statements run under (``index_build``: the statements of
    a concurrent index build, or the drop of its invalid leftovers)."""
    statement = (
        policy.statement_timeout
        if step.statement_timeout is None
        else _statement(step.statement_timeout)
    )
    if index_build:
        return Timeouts(policy.index_lock_timeout, statement, local=False)
    return Timeouts(policy.lock_timeout, statement, local=step.transactional)


def undo_timeouts(action: Action, policy: Policy) -> Timeouts:
    """The timeouts an undo action runs under: brief ones as a brief step; one that
    scans or runs outside a transaction (``DROP INDEX CONCURRENTLY``) without a
    statement timeout, the latter under ``index_lock_timeout``."""
    brief = action.transactional and not action.scans
    statement = policy.statement_timeout if brief else "0"
    if action.transactional:
        return Timeouts(policy.lock_timeout, statement, local=True)
    return Timeouts(policy.index_lock_timeout, statement, local=False)


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


def run_probes(conn: psycopg.Connection[Any], policy: Policy, probes: Sequence[Probe]) -> None:
    """Run the planner's preflight probes, each in a read-only transaction under the lock
    timeout; refuse (PreflightError) with every probe that failed. A probe that could
    not get its lock in time is skipped: the step itself will find out."""
    problems: list[Refused] = []
    for probe in probes:
        try:
            with conn.transaction(), conn.cursor() as cur:
                probe_settings(cur, policy)
                cur.execute(probe.sql)
        except psycopg.errors.LockNotAvailable:
            continue
        except psycopg.Error as exc:
            detail = (exc.diag.message_primary or str(exc)).strip()
            problems.append(Refused(f"{probe.problem}: {detail}", probe.fix))
    if problems:
        raise PreflightError(problems)
