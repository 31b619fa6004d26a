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
       a.application_name, a.state, a.usename, a.backend_type,
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


# CREATE INDEX CONCURRENTLY also waits, in its last phase, for every transaction of the
# database whose snapshot is older than its own, whatever tables they use: those hold no
# lock on the table, so they are looked for here (only to name them).
_SNAPSHOTS_SQL = """
SELECT a.pid, 'an old snapshot' AS mode, NULL AS relation, a.application_name, a.state,
       a.usename, extract(epoch FROM now() - a.xact_start)::float8 AS xact_age_s, a.query
FROM pg_stat_activity a
WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
  AND a.backend_xmin IS NOT NULL AND a.backend_type = 'client backend'
  AND a.xact_start < now() - make_interval(secs => %(min_age)s)
ORDER BY a.xact_start
LIMIT 10
"""


def find_blockers(
    conn: psycopg.Connection[Any],
    tables: Sequence[str],
    mode: str,
    *,
    snapshots_older_than: float | None = None,
) -> list[dict[str, Any]]:
    """Sessions holding a lock on ``tables`` that conflicts with ``mode``; with
    ``snapshots_older_than`` (seconds), also the sessions of the database holding a
    snapshot in a transaction at least that old (what a concurrent index build waits for).

    Other roles' query text needs ``pg_read_all_stats``; without it the blocker is still
    reported, with a note instead of the query (and other roles' snapshots are not seen).
    """
    modes = sorted(conflicting_modes(mode))
    rows: list[dict[str, Any]] = []
    with conn.cursor(row_factory=dict_row) as cur:
        if tables and modes:
            cur.execute(_HOLDERS_SQL, {"tables": list(tables), "modes": modes})
            rows = cur.fetchall()
        if snapshots_older_than is not None:
            cur.execute(_SNAPSHOTS_SQL, {"min_age": snapshots_older_than})
            seen = {r["pid"] for r in rows}
            rows += [r for r in cur.fetchall() if r["pid"] not in seen]
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


RETRYABLE: tuple[type[BaseException], ...] = (pgerr.LockNotAvailable, pgerr.DeadlockDetected)

#: how often the guard looks again while it waits for a long transaction to end
POLL_INTERVAL = 0.5
#: how often that wait is logged
WAIT_LOG_INTERVAL = 10.0


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
    waits_for_snapshots: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Run ``attempt`` (which must itself set ``lock_timeout``) under the lock guard.

    Before each attempt, wait outside the lock queue while a session holds a conflicting
    lock in a transaction older than ``long_transaction`` seconds (the application pays
    nothing for that wait, so it is polled often and counts only against
    ``policy.max_wait``). ``waits_for_snapshots``: the step also waits for old snapshots
    on any table (a concurrent index build), so those are waited out too.
    """
    deadline = clock() + policy.max_wait
    snapshots = long_transaction if waits_for_snapshots else None
    last: dict[str, Any] = {"blockers": [], "attempts": 0}
    cancelled: set[int] = set()

    def report() -> list[dict[str, Any]]:
        if not (tables and mode) and snapshots is None:
            return []
        return find_blockers(conn, tables, mode, snapshots_older_than=snapshots)

    def wait_outside_the_queue() -> None:
        logged_at: float | None = None
        while True:
            holders = report()
            _cancel_autovacuum(conn, holders, cancelled, step_id)
            long_ones = [h for h in holders if _is_long(h, long_transaction)]
            if not long_ones:
                return
            last["blockers"] = long_ones
            now = clock()
            if now >= deadline:
                raise LockBudgetExhausted(step_id, last["attempts"], [_short(b) for b in long_ones])
            if logged_at is None or now - logged_at >= WAIT_LOG_INTERVAL:
                logged_at = now
                log.warning(
                    "waiting_for_blockers",
                    step=step_id,
                    waited_s=round(now - (deadline - policy.max_wait), 1),
                    budget_left_s=round(deadline - now, 1),
                    blockers=[_short(b) for b in long_ones],
                )
                if on_retry:
                    on_retry(last["attempts"], long_ones)
            sleep(min(POLL_INTERVAL, max(deadline - now, 0.0)))

    def once() -> T:
        wait_outside_the_queue()
        last["attempts"] += 1
        return attempt()

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        blockers = report()
        last["blockers"] = blockers
        log.warning(
            "lock_retry",
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
        blockers = report() or last["blockers"]
        raise LockBudgetExhausted(step_id, last["attempts"], [_short(b) for b in blockers]) from exc


def _is_long(holder: dict[str, Any], threshold: float) -> bool:
    """A holder worth waiting out: in a transaction older than ``threshold``. Autovacuum
    is not waited for: it gives way to a lock request (see _cancel_autovacuum)."""
    if holder.get("backend_type") == "autovacuum worker":
        return False
    age = holder.get("xact_age_s")
    return age is not None and age > threshold


def _cancel_autovacuum(
    conn: psycopg.Connection[Any],
    holders: Sequence[dict[str, Any]],
    done: set[int],
    step_id: str,
) -> None:
    """Cancel an ordinary autovacuum that holds the table, as PostgreSQL itself does for
    a lock request that waits longer than ``deadlock_timeout``: our short lock_timeout
    gives up before that would happen. A vacuum against wraparound is left alone."""
    for h in holders:
        if h.get("backend_type") != "autovacuum worker" or h["pid"] in done:
            continue
        done.add(h["pid"])
        if "wraparound" in (h.get("query") or ""):
            continue
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_cancel_backend(%s)", (h["pid"],))
            log.info("autovacuum_cancelled", step=step_id, pid=h["pid"], relation=h.get("relation"))
        except psycopg.Error:
            log.info(
                "autovacuum_in_the_way",
                step=step_id,
                pid=h["pid"],
                note="no permission to cancel it; retrying until it finishes",
            )


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
