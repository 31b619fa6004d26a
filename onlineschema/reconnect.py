"""Connections that drop and servers that restart.

``is_disconnect`` says whether an error means the connection (not the statement) failed:
by psycopg's exception class and SQLSTATE only, never by message text -- class 08
(connection exception), 57P01-57P03 (admin shutdown, crash shutdown, cannot connect
now), or an ``OperationalError`` without a SQLSTATE (libpq's own: the server closed the
connection, the connection is closed, could not connect). The chain of causes is
followed, so an error raised while cleaning up after a lost connection still counts.

``reconnect`` opens a new connection with jittered exponential backoff (tenacity) until
one works or the budget is spent; past the budget it raises ConnectionLost (exit 3: the
migration is resumable).

``drop_if_cut_short`` and ``interrupt_behind`` keep an interrupt (Ctrl-C, SIGTERM) an
interrupt. psycopg cancels the running statement when the interrupt arrives while it waits
on the socket; arriving in its own Python code between sending a statement and waiting
for the result, it leaves the statement running and its result unread, and the
connection answers every later command with "another command is already in progress",
an ``OperationalError`` that looks like a lost connection. So cleanup after an interrupt
drops such a connection instead of querying it, and an error raised while an interrupt
was on its way out is not taken for a lost connection.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

from .errors import ConnectionFailed, ConnectionLost

__all__ = [
    "carry_on",
    "conninfo_of",
    "describe",
    "drop_if_cut_short",
    "interrupt_behind",
    "is_disconnect",
    "reconnect",
]

T = TypeVar("T")

log = structlog.stdlib.get_logger("onlineschema.reconnect")

#: SQLSTATEs of a session ended by the server: admin shutdown (pg_terminate_backend, a
#: fast shutdown), crash shutdown, cannot connect now (starting up or shutting down)
_SESSION_ENDED = frozenset({"57P01", "57P02", "57P03"})


def _is_direct(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionFailed):
        return True
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:
        return isinstance(exc, psycopg.OperationalError)
    return state.startswith("08") or state in _SESSION_ENDED


def is_disconnect(exc: BaseException | None) -> bool:
    """Did ``exc`` (or an error it was raised from or while handling) come from a lost
    connection or a server that is going away?"""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ConnectionLost):
            return False  # the budget is spent: final
        if _is_direct(exc):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def interrupt_behind(exc: BaseException | None) -> BaseException | None:
    """The interrupt (KeyboardInterrupt, which SIGTERM is made into, or SystemExit) that
    ``exc`` was raised from or while handling, if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def drop_if_cut_short(conn: psycopg.Connection[Any]) -> None:
    """If an interrupt left a statement in flight on ``conn`` (sent, its result never
    read), cancel it and close the connection, so that the server rolls its transaction
    back and ends the session (its locks, advisory ones included, go with it). Such a
    connection can run nothing more, and a query on it would raise an error that hides
    the interrupt."""
    if conn.closed or conn.info.transaction_status != TransactionStatus.ACTIVE:
        return
    with contextlib.suppress(psycopg.Error):
        conn.cancel_safe(timeout=5.0)
    conn.close()
    log.info("connection_dropped", reason="an interrupt cut its statement short")


def describe(exc: BaseException) -> str:
    """The lost connection's error, in one line: its class, SQLSTATE and first line."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if _is_direct(cur):
            exc = cur
            break
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    first = (str(exc).strip().splitlines() or [""])[0]
    state = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__}{f' {state}' if state else ''}: {first}".rstrip(": ")


def conninfo_of(conn: psycopg.Connection[Any], application_name: str) -> str:
    """A connection string that reaches what ``conn`` is connected to, as the same role
    (its password included)."""
    params: dict[str, Any] = conninfo_to_dict(conn.info.dsn)
    if conn.info.password:
        params["password"] = conn.info.password
    params["application_name"] = application_name
    return make_conninfo("", **params)


def connect(conninfo: str) -> psycopg.Connection[Any]:
    """An autocommit connection without server-side prepared statements (a transaction
    pooler may run each statement on another server connection)."""
    conn: psycopg.Connection[Any] = psycopg.connect(
        conninfo, autocommit=True, connect_timeout=5, prepare_threshold=None
    )
    return conn


def reconnect(
    conninfo: str,
    *,
    budget: float,
    lost: BaseException,
    what: str = "the migration",
    sleep: Callable[[float], None] = time.sleep,
) -> psycopg.Connection[Any]:
    """A new connection to ``conninfo``, tried with backoff for up to ``budget`` seconds
    after the connection was ``lost``; ConnectionLost (exit 3) past the budget."""
    t0 = time.monotonic()
    cause = describe(lost)
    log.warning("connection_lost", error=cause, budget_s=budget)

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.info(
            "reconnect_retry",
            attempt=state.attempt_number,
            error=describe(exc) if exc else None,
            next_wait_s=round(state.upcoming_sleep, 2),
        )

    def attempt() -> psycopg.Connection[Any]:
        conn = connect(conninfo)
        try:
            conn.execute("SELECT 1")
        except BaseException:
            conn.close()
            raise
        return conn

    retrying = Retrying(
        retry=retry_if_exception(_is_direct),
        wait=wait_random_exponential(multiplier=0.2, max=2.0),
        stop=stop_after_delay(budget),
        reraise=True,
        before_sleep=before_sleep,
        sleep=sleep,
    )
    try:
        conn = retrying(attempt)
    except psycopg.Error as exc:
        if not _is_direct(exc):
            raise
        raise ConnectionLost(
            f"lost the connection to the database ({cause}) and could not connect again"
            f" within the reconnect budget ({budget:g}s; last error: {describe(exc)});"
            f" {what} is resumable: nothing committed is lost"
        ) from exc
    log.info("reconnected", seconds=round(time.monotonic() - t0, 2), after=cause)
    return conn


def carry_on(
    first: Callable[[], T],
    again: Callable[[], T],
    *,
    conninfo: str,
    budget: float,
    adopt: Callable[[psycopg.Connection[Any]], None],
) -> T:
    """Run ``first``; when the connection is lost (a network blip, a server restart, the
    session terminated), connect again within ``budget`` seconds, hand the new connection
    to ``adopt`` and run ``again``, which carries on from the state in the database.
    Past the budget: ConnectionLost (exit 3, resumable)."""
    work = first
    while True:
        try:
            return work()
        except Exception as exc:
            if (stop := interrupt_behind(exc)) is not None:
                # the cleanup after Ctrl-C/SIGTERM failed: still a stop, not a lost connection
                log.info("cleanup_failed_after_interrupt", error=describe(exc))
                raise stop from None
            if not is_disconnect(exc):
                raise
            conn = reconnect(conninfo, budget=budget, lost=exc)
        adopt(conn)
        work = again
