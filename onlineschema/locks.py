"""The lock guard: take strong locks briefly or not at all.

Every lock-taking step runs under a short ``lock_timeout`` so that, while it waits, the
application's queries queue behind it for at most that long. Before queueing, the guard
looks for sessions that already hold a conflicting lock in a long transaction and waits
for them to finish *outside* the lock queue. Lock timeouts and deadlocks are retried with
bounded, jittered exponential backoff (tenacity); when the budget is spent the step stops
with the blockers named, and the migration stays resumable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
import structlog
from psycopg import errors as pgerr
from psycopg.rows import dict_row
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from .errors import LockBudgetExhausted
from .plan import conflicting_modes

T = TypeVar("T")

log = structlog.stdlib.get_logger("onlineschema.locks")

HIDDEN_QUERY = "<insufficient privilege>"

_HOLDERS_SQL = """
SELECT DISTINCT ON (l.pid) l.pid, l.mode, n.nspname || '.' || c.relname AS relation,
       a.application_name, a.state, a.usename,
       extract(epoch FROM now() - a.xact_start)::float8 AS xact_age_s,
       a.query
FROM pg_locks l
JOIN pg_class c ON c.oid = l.relation
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.granted AND l.pid <> pg_backend_pid() AND l.database = (
        SELECT oid FROM pg_database WHERE datname = current_database())
  AND n.nspname || '.' || c.relname = ANY(%(tables)s)
  AND l.mode = ANY(%(modes)s)
ORDER BY l.pid, a.xact_start NULLS LAST
"""


def find_blockers(
    conn: psycopg.Connection[Any], tables: Sequence[str], mode: str
) -> list[dict[str, Any]]:
    """Sessions holding a lock on ``tables`` that conflicts with ``mode``.

    Other roles' query text needs ``pg_read_all_stats``; without it the blocker is still
    reported, with a note instead of the query.
    """
    modes = sorted(conflicting_modes(mode))
    if not tables or not modes:
        return []
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_HOLDERS_SQL, {"tables": list(tables), "modes": modes})
        rows = cur.fetchall()
    out = []
    for r in rows:
        q = r.get("query")
        if q == HIDDEN_QUERY or (q is None and r.get("usename") is None):
            r["query"] = None
            r["query_hidden"] = "query not visible: grant pg_read_all_stats to see it"
        elif q:
            q = " ".join(q.split())
            r["query"] = q if len(q) <= 120 else q[:117] + "..."
        out.append(r)
    return out


class WaitingForBlockers(Exception):
    """Raised (and retried) instead of queueing behind a long transaction."""

    def __init__(self, blockers: list[dict[str, Any]]) -> None:
        self.blockers = blockers
        super().__init__(
            f"{len(blockers)} session(s) hold a conflicting lock in a long transaction"
        )


RETRYABLE: tuple[type[BaseException], ...] = (
    pgerr.LockNotAvailable,
    pgerr.DeadlockDetected,
    WaitingForBlockers,
)


@dataclass(frozen=True)
class RetryPolicy:
    """How long a step may try for its lock. Defaults: up to 30 attempts within 10 min,
    waits growing from ~0.2 s to 15 s with full jitter."""

    max_attempts: int = 30
    max_wait: float = 600.0
    backoff_initial: float = 0.2
    backoff_max: float = 15.0

    def retrying(
        self,
        *,
        retry_on: tuple[type[BaseException], ...] = RETRYABLE,
        before_sleep: Callable[[RetryCallState], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Retrying:
        return Retrying(
            retry=retry_if_exception_type(retry_on),
            wait=wait_random_exponential(multiplier=self.backoff_initial, max=self.backoff_max),
            stop=stop_after_attempt(self.max_attempts) | stop_after_delay(self.max_wait),
            reraise=True,
            before_sleep=before_sleep,
            sleep=sleep,
        )


def guarded(
    conn: psycopg.Connection[Any],
    attempt: Callable[[], T],
    *,
    step_id: str,
    tables: Sequence[str],
    mode: str,
    policy: RetryPolicy,
    long_transaction: float,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, list[dict[str, Any]]], None] | None = None,
) -> T:
    """Run ``attempt`` (which must itself set ``lock_timeout``) under the lock guard."""
    last: dict[str, Any] = {"blockers": []}

    def once() -> T:
        if tables and mode:
            holders = find_blockers(conn, tables, mode)
            long_ones = [
                h
                for h in holders
                if h.get("xact_age_s") is not None and h["xact_age_s"] > long_transaction
            ]
            if long_ones:
                last["blockers"] = long_ones
                raise WaitingForBlockers(long_ones)
        return attempt()

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, WaitingForBlockers):
            blockers = exc.blockers
            event = "waiting_for_blockers"
        else:
            blockers = find_blockers(conn, tables, mode) if tables and mode else []
            event = "lock_retry"
        last["blockers"] = blockers
        log.warning(
            event,
            step=step_id,
            attempt=state.attempt_number,
            error=type(exc).__name__ if exc else None,
            next_wait_s=round(state.upcoming_sleep, 3),
            blockers=[_short(b) for b in blockers],
        )
        if on_retry:
            on_retry(state.attempt_number, blockers)

    retrying = policy.retrying(before_sleep=before_sleep, sleep=sleep)
    try:
        return retrying(once)
    except RETRYABLE as exc:
        attempts = retrying.statistics.get("attempt_number", policy.max_attempts)
        blockers = (
            exc.blockers
            if isinstance(exc, WaitingForBlockers)
            else (find_blockers(conn, tables, mode) if tables and mode else []) or last["blockers"]
        )
        raise LockBudgetExhausted(step_id, attempts, [_short(b) for b in blockers]) from exc


def _short(b: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "pid",
        "application_name",
        "state",
        "xact_age_s",
        "mode",
        "relation",
        "query",
        "query_hidden",
    )
    out = {k: b.get(k) for k in keep if b.get(k) is not None}
    if "xact_age_s" in out:
        out["xact_age_s"] = round(float(b["xact_age_s"]), 1)
    return out
