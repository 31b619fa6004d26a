"""Throttling a backfill on signals PostgreSQL reports.

Each signal has a threshold to pause at and a (lower or equal) threshold to resume at, so
the backfill does not flap around one value. Engaging and releasing are logged as
``backfill_throttled`` (with the reason and the values read) and ``backfill_unthrottled``
(with how long it lasted); the current reason and the total throttled time are written to
the backfill's row in the state table by the runner.

Signals (all read on the clock, every ``signal_interval`` seconds, by the backfill's
coordinator on a connection no batch runs on, except ``lock_waiters``, which each batch
samples itself):

* ``replica_lag``: ``pg_stat_replication`` on the primary: ``replay_lag`` (seconds) and the
  bytes between ``pg_current_wal_lsn()`` and each standby's ``replay_lsn``;
* ``replica_lag_dsn``: the same read on a standby given by ``replica_dsn``
  (``pg_last_wal_replay_lsn()``, ``pg_last_xact_replay_timestamp()``);
* ``lock_waiters``: sessions waiting on a lock held by a batch (``pg_blocking_pids``),
  sampled inside the batch's transaction just before it commits, when they have waited
  longest; the backfill then pauses for ``blocked_cooldown`` seconds and halves its batch;
* ``long_transaction``: transactions that hold a lock on the table and hold back the
  vacuum horizon (``backend_xmin``/``backend_xid``) for longer than the limit: the dead
  rows the backfill leaves cannot be cleaned while they run;
* ``vacuum`` (off by default): a vacuum of the table (autovacuum or manual, not the
  backfill's own) is running;
* ``active_sessions``: the application's latency by Little's law: sessions other than
  the backfill's running a query (``pg_stat_activity``) over the database's transactions
  per second (``pg_stat_database``), against its own baseline taken before the first
  batch; the backfill's duty cycle follows it to keep it at or under
  ``app_latency_target`` (1.1x), never above ``duty_cycle``. Never pauses. With no
  baseline (an idle database when the backfill started) the backfill rests at
  ``duty_cycle`` while at least ``busy_sessions`` sessions run queries;
* ``app_latency``: the application's latency as a probe query sees it (``latency_probe``:
  by default a one-block read of the table, which also waits behind any lock queued on
  the table, in a transaction that writes a few bytes of WAL (``pg_logical_emit_message``),
  so that its commit waits for the WAL flush, and for a synchronous standby, as the
  application's writes do), against its own baseline measured before the first batch
  (median of 5). Above ``max_latency_ratio`` times the baseline the backfill pauses;
  between ``resume_latency_ratio`` and that it is *strained*: it runs, but rests between
  batches (``duty_cycle``); at or under ``resume_latency_ratio`` it runs at full speed.
  Latencies under ``latency_floor`` count as the floor, so noise on a sub-millisecond
  baseline does not count. An operator's probe runs read-only; every probe has a 1 s
  timeout, its commit's wait included (a probe that times out reads as 1 s: a standby
  that stopped answering holds the application's commits, and pauses the backfill).
  ``pg_stat_statements`` is not used: its figures are cumulative per
  statement shape and include the backfill's own statements; a probe measures now.

A signal that cannot be read (no permission, no replica, replica unreachable) is reported
once (``backfill_signal_unreadable``); ``on_unreadable_signal`` decides whether the backfill
carries on (``continue``, the default: a missing signal must not stop a data migration that
was fine without it) or waits until the signal can be read again (``pause``).
"""

from __future__ import annotations

import abc
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
import structlog
from psycopg import sql
from psycopg.rows import dict_row

from .connection import OUR_APPLICATION_NAMES
from .observe import publish

log = structlog.stdlib.get_logger("onlineschema.throttle")

HIDDEN_QUERY = "<insufficient privilege>"


class Limits(Protocol):
    """The thresholds (a BackfillSettings; a Protocol so this module does not import it)."""

    @property
    def max_replica_lag(self) -> float: ...
    @property
    def resume_replica_lag(self) -> float: ...
    @property
    def max_replica_lag_bytes(self) -> int: ...
    @property
    def resume_replica_lag_bytes(self) -> int: ...
    @property
    def replica_dsn(self) -> str | None: ...
    @property
    def max_blocked_wait(self) -> float: ...
    @property
    def blocked_cooldown(self) -> float: ...
    @property
    def max_transaction_age(self) -> float: ...
    @property
    def resume_transaction_age(self) -> float: ...
    @property
    def pause_on_vacuum(self) -> bool: ...
    @property
    def on_unreadable_signal(self) -> str: ...
    @property
    def busy_sessions(self) -> float: ...
    @property
    def app_latency_target(self) -> float: ...
    @property
    def duty_cycle(self) -> float: ...
    @property
    def latency_probe(self) -> str: ...
    @property
    def max_latency_ratio(self) -> float: ...
    @property
    def resume_latency_ratio(self) -> float: ...
    @property
    def latency_floor(self) -> float: ...


@dataclass
class Reading:
    """What a signal read: its values, or why it could not be read."""

    values: dict[str, float] = field(default_factory=dict)
    problem: str | None = None
    #: a problem that is not worth a warning (e.g. there is no replica at all)
    benign: bool = False
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What signals need to read: the coordinator's connection and who we are."""

    conn: psycopg.Connection[Any]
    table_oid: int
    our_pids: Callable[[], Sequence[int]]
    #: (schema, table)
    table_name: tuple[str, str] = ("", "")
    #: transactions the backfill committed so far (its batches), not the application's
    our_commits: Callable[[], int] = lambda: 0


def _resume_limit(pause: float, resume: float) -> float:
    return min(resume, pause)


class Signal(abc.ABC):
    """One signal: ``read`` it, then ``over`` says why to pause (or None), ``clear`` says
    whether it is back under the resume threshold."""

    name = "signal"

    def enabled(self, s: Limits) -> bool:
        return True

    @abc.abstractmethod
    def read(self, ctx: Context, s: Limits) -> Reading: ...

    @abc.abstractmethod
    def over(self, r: Reading, s: Limits) -> str | None: ...

    @abc.abstractmethod
    def clear(self, r: Reading, s: Limits) -> bool: ...

    def close(self) -> None:  # noqa: B027 - most signals hold nothing
        """Release what the signal holds (e.g. a connection to a replica)."""

    def prime(self, ctx: Context, s: Limits) -> None:  # noqa: B027 - most need no baseline
        """Take a baseline before the first batch (signals that compare with one)."""

    def strained(self, r: Reading, s: Limits) -> bool:
        """Whether the reading, under the pause threshold, still says the application is
        affected (the backfill then rests between batches)."""
        return False


class _LagMixin:
    """Pause while replay lag (seconds) or bytes behind exceed their limits."""

    def enabled(self, s: Limits) -> bool:
        return s.max_replica_lag > 0 or s.max_replica_lag_bytes > 0

    def over(self, r: Reading, s: Limits) -> str | None:
        secs, nbytes = r.values.get("seconds", 0.0), r.values.get("bytes", 0.0)
        if s.max_replica_lag > 0 and secs > s.max_replica_lag:
            return f"replay lag {secs:.1f}s > {s.max_replica_lag:g}s"
        if s.max_replica_lag_bytes > 0 and nbytes > s.max_replica_lag_bytes:
            return f"{int(nbytes)} bytes behind > {s.max_replica_lag_bytes}"
        return None

    def clear(self, r: Reading, s: Limits) -> bool:
        secs, nbytes = r.values.get("seconds", 0.0), r.values.get("bytes", 0.0)
        ok = True
        if s.max_replica_lag > 0:
            ok &= secs <= _resume_limit(s.max_replica_lag, s.resume_replica_lag)
        if s.max_replica_lag_bytes > 0:
            ok &= nbytes <= _resume_limit(s.max_replica_lag_bytes, s.resume_replica_lag_bytes)
        return ok


class ReplicaLag(_LagMixin, Signal):
    """Lag of every standby (and logical consumer) as the primary sees it."""

    name = "replica_lag"

    def read(self, ctx: Context, s: Limits) -> Reading:
        with ctx.conn.cursor() as cur:
            # replay_lag is the last measured lag, shown for a while after the standby
            # caught up: it only counts while the standby has WAL left to replay
            cur.execute(
                "SELECT count(*), count(replay_lsn),"
                " coalesce(max(CASE WHEN behind > 0 THEN extract(epoch FROM replay_lag) END),"
                " 0)::float8, coalesce(max(behind), 0)::float8"
                " FROM (SELECT replay_lsn, replay_lag,"
                "   pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) AS behind"
                "   FROM pg_stat_replication) s"
            )
            row = cur.fetchone()
        assert row is not None
        total, visible, secs, nbytes = int(row[0]), int(row[1]), float(row[2]), float(row[3])
        if total == 0:
            return Reading(
                problem="no standby is connected (pg_stat_replication is empty)", benign=True
            )
        if visible == 0:
            return Reading(
                problem=f"{total} standby(s) connected but their positions are hidden:"
                " grant pg_monitor (or pg_read_all_stats) to the backfill's role"
            )
        return Reading(values={"seconds": secs, "bytes": nbytes}, detail={"standbys": total})


class ReplicaLagFromDsn(_LagMixin, Signal):
    """Lag read on a standby the user names (``replica_dsn``)."""

    name = "replica_lag_dsn"
    retry_every = 10.0

    def __init__(self) -> None:
        self._conn: psycopg.Connection[Any] | None = None
        self._dsn: str | None = None
        self._next_try = 0.0
        self._last_problem: str | None = None

    def enabled(self, s: Limits) -> bool:
        return bool(s.replica_dsn) and super().enabled(s)

    def _connect(self, dsn: str) -> psycopg.Connection[Any] | None:
        if self._conn is not None and (self._dsn != dsn or self._conn.closed):
            self.close()
        if self._conn is None:
            now = time.monotonic()
            if now < self._next_try:
                return None
            self._next_try = now + self.retry_every
            try:
                self._conn = psycopg.connect(
                    dsn, autocommit=True, connect_timeout=5, application_name="onlineschema"
                )
                self._dsn = dsn
            except psycopg.Error as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                self._last_problem = f"cannot connect to replica_dsn: {first}"
                return None
        return self._conn

    def read(self, ctx: Context, s: Limits) -> Reading:
        assert s.replica_dsn
        conn = self._connect(s.replica_dsn)
        if conn is None:
            return Reading(problem=self._last_problem or "cannot connect to replica_dsn")
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text,"
                    " CASE WHEN pg_last_wal_receive_lsn() IS NULL"
                    "   OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0"
                    "  ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())"
                    " END::float8"
                )
                row = cur.fetchone()
        except psycopg.Error as exc:
            self.close()
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return Reading(problem=f"cannot read the replica's position: {first}")
        assert row is not None
        in_recovery, replay_lsn, secs = row
        if not in_recovery or replay_lsn is None:
            return Reading(problem="replica_dsn does not point to a standby in recovery")
        with ctx.conn.cursor() as cur:
            cur.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)::float8", (replay_lsn,)
            )
            drow = cur.fetchone()
        nbytes = max(float(drow[0]) if drow and drow[0] is not None else 0.0, 0.0)
        return Reading(values={"seconds": float(secs or 0.0), "bytes": nbytes})

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


class LockWaiters(Signal):
    """Sessions that waited on the backfill's locks, sampled by the batches themselves.

    A batch holds row locks (and ROW EXCLUSIVE on the table) until it commits; just before
    committing it asks ``pg_locks`` who waits on it and for how long (``feed``). The value
    decays to 0 after ``blocked_cooldown`` seconds, which is how long the backfill pauses.
    """

    name = "lock_waiters"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._wait = 0.0
        self._waiters = 0
        self._at = -1e9

    def enabled(self, s: Limits) -> bool:
        return s.max_blocked_wait > 0

    def feed(self, waiters: int, longest_wait: float, cooldown: float) -> None:
        with self._lock:
            if waiters and longest_wait >= self._current(cooldown):
                self._wait, self._waiters, self._at = longest_wait, waiters, self._clock()

    def _current(self, cooldown: float | None = None) -> float:
        if cooldown is not None and self._clock() - self._at > cooldown:
            return 0.0
        return self._wait

    def read(self, ctx: Context, s: Limits) -> Reading:
        with self._lock:
            wait = self._current(s.blocked_cooldown)
            if wait == 0.0:
                self._wait, self._waiters = 0.0, 0
            return Reading(values={"seconds": wait, "sessions": float(self._waiters)})

    def over(self, r: Reading, s: Limits) -> str | None:
        wait = r.values.get("seconds", 0.0)
        if wait > s.max_blocked_wait:
            n = int(r.values.get("sessions", 0))
            return f"{n} session(s) waited {wait:.2f}s > {s.max_blocked_wait:g}s on a batch's locks"
        return None

    def clear(self, r: Reading, s: Limits) -> bool:
        return r.values.get("seconds", 0.0) == 0.0


#: the WAL insert position in bytes: read as a batch begins and ends (the WAL written
#: between is the batch's, and what other sessions wrote meanwhile)
WAL_POSITION = "pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::float8"
#: sampled inside a batch's transaction, just before COMMIT: who waits on us, how long
#: (parameter: the backfill's own sessions, which do not count), and the WAL position
BATCH_END_SQL = sql.SQL(
    "SELECT count(DISTINCT pid)::int,"
    " coalesce(max(extract(epoch FROM clock_timestamp() - waitstart)), 0)::float8, {}"
    " FROM pg_locks WHERE CASE WHEN granted OR pid = pg_backend_pid() OR pid = ANY(%s)"
    " THEN false ELSE pg_backend_pid() = ANY(pg_blocking_pids(pid)) END"
).format(sql.SQL(WAL_POSITION))


class LongTransaction(Signal):
    """Transactions holding a lock on the table and holding back the vacuum horizon."""

    name = "long_transaction"

    def enabled(self, s: Limits) -> bool:
        return s.max_transaction_age > 0

    def read(self, ctx: Context, s: Limits) -> Reading:
        with ctx.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT DISTINCT ON (a.pid) a.pid, a.application_name, a.state, a.query,"
                " extract(epoch FROM clock_timestamp() - a.xact_start)::float8 AS age,"
                " (a.backend_xmin IS NOT NULL OR a.backend_xid IS NOT NULL) AS holds_horizon"
                " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'relation' AND l.relation = %s AND l.granted"
                "   AND l.database = (SELECT oid FROM pg_database"
                "                     WHERE datname = current_database())"
                "   AND NOT (a.pid = ANY(%s))",
                (ctx.table_oid, [pg_backend_pid(ctx.conn), *ctx.our_pids()]),
            )
            rows = cur.fetchall()
        hidden = [r for r in rows if r["age"] is None and r["query"] == HIDDEN_QUERY]
        visible = [r for r in rows if r["age"] is not None and r["holds_horizon"]]
        oldest = max(visible, key=lambda r: r["age"], default=None)
        values = {"seconds": float(oldest["age"]) if oldest else 0.0}
        detail: dict[str, Any] = {}
        if oldest:
            detail = {
                "pid": oldest["pid"],
                "application_name": oldest["application_name"],
                "state": oldest["state"],
            }
        if hidden and not visible:
            return Reading(
                problem=f"{len(hidden)} session(s) of other roles hold locks on the table and"
                " their transaction age is hidden: grant pg_read_all_stats to the backfill's role",
                detail={"pids": [r["pid"] for r in hidden]},
            )
        return Reading(values=values, detail=detail)

    def over(self, r: Reading, s: Limits) -> str | None:
        age = r.values.get("seconds", 0.0)
        if age > s.max_transaction_age:
            return (
                f"a transaction on the table has held back vacuum for {age:.0f}s"
                f" > {s.max_transaction_age:g}s"
            )
        return None

    def clear(self, r: Reading, s: Limits) -> bool:
        limit = _resume_limit(s.max_transaction_age, s.resume_transaction_age)
        return r.values.get("seconds", 0.0) <= limit


class VacuumRunning(Signal):
    """A vacuum of the table that is not the backfill's own (``pause_on_vacuum``)."""

    name = "vacuum"

    def enabled(self, s: Limits) -> bool:
        return s.pause_on_vacuum

    def read(self, ctx: Context, s: Limits) -> Reading:
        with ctx.conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FILTER (WHERE relid = %s)::int,"
                " count(*) FILTER (WHERE relid IS NULL)::int"
                " FROM pg_stat_progress_vacuum"
                " WHERE datname = current_database() AND NOT (pid = ANY(%s))",
                (ctx.table_oid, list(ctx.our_pids())),
            )
            row = cur.fetchone()
        assert row is not None
        running, hidden = int(row[0]), int(row[1])
        if hidden and not running:
            return Reading(
                problem=f"{hidden} vacuum(s) run on tables this role cannot see:"
                " grant pg_read_all_stats to the backfill's role"
            )
        return Reading(values={"vacuums": float(running)})

    def over(self, r: Reading, s: Limits) -> str | None:
        n = int(r.values.get("vacuums", 0))
        return f"{n} vacuum(s) of the table running" if n else None

    def clear(self, r: Reading, s: Limits) -> bool:
        return r.values.get("vacuums", 0) == 0


class ActiveSessions(Signal):
    """The application's load, and its latency by Little's law.

    Each reading samples ``L``, this database's sessions other than the backfill's
    running a query (``pg_stat_activity``, state ``active``; queries older than
    ``long_query`` and maintenance commands left out; a few samples a reading), and
    ``X``, the database's transactions a second (``pg_stat_database``, less the
    backfill's batches and these readings, over the readings of the last ``window``
    seconds). By Little's law the application's mean time in the server, lock waits and
    commit flushes included, is ``W = L / X``: no probe and no extension needed, and it
    counts every query the application runs.

    Before the first batch, if the application is there (sessions running queries, or
    done with one in the last ``astir`` seconds), the signal takes a baseline ``W0`` over
    ``baseline_seconds``. From then on the backfill keeps ``W / W0`` near
    ``app_latency_target``: once a second (over ``min_span`` seconds of readings at
    least) the workers' duty cycle (the share of their time spent in batches) is
    multiplied by ``1 + gain * (target - ratio) / target``, within ``[cut, grow]``, and
    kept between ``min_duty`` and ``duty_cycle``: the mean moves little while the
    slowest transactions slow with the backfill's share of the time, so the share is
    bounded whatever the mean says (a duty cycle of 1 lets the controller go as far as
    no rest). A saturated application (every session
    busy) then keeps about ``1 / app_latency_target`` of its throughput; one below its
    capacity keeps its queue short. On an idle database there is no baseline and no rest.

    Without a baseline (the application came after the backfill started, or
    ``app_latency_target`` is 0) the older rule holds: at or above ``busy_sessions``
    sessions on average over the last ``busy_readings`` readings, the backfill rests at
    ``duty_cycle``. Never pauses (gh-ost's ``max-load`` counts ``Threads_running`` the
    same way, to pause). Sessions this role may not see (other roles', without
    ``pg_read_all_stats``) make the signal unreadable when nothing visible gave a
    baseline; it then rests at ``duty_cycle`` while the database's transaction rate,
    which every role can read, says an application is at work (``_blind``)."""

    name = "active_sessions"
    #: the rate and the mean sessions are taken over the readings of this many seconds:
    #: backends report their transactions to pg_stat_database about once a second
    window = 4.0
    #: no rate over a shorter span: each backend reports at most once a second, so over
    #: half a second a steady application can read as no transactions at all (and so as
    #: stuck: latency without end)
    min_span = 2.0
    busy_readings = 5  #: readings the busy_sessions rule averages
    samples = 1  #: pg_stat_activity samples per reading, ``sample_gap`` apart
    sample_gap = 0.02
    #: backends report their transactions about once a second each, so a rate over T
    #: seconds is off by some 0.4 s worth of them: 4 s keeps the baseline within ~5 %
    baseline_seconds = 4.0
    #: below this many transactions a second, or this many sessions running a query on
    #: average, the application is too quiet to measure (the backfill's own signal
    #: reads are a few transactions a second)
    min_rate = 50.0
    min_sessions = 0.2
    #: seconds: a session done with a query this recently is an application at work
    #: too: the sessions of a busy application that spends its time between queries
    #: (think time, the network) can all be between two at the first look's moments
    astir = 0.02
    #: the lowest duty cycle the controller goes to: the migration still moves
    min_duty = 0.05
    #: seconds: queries running longer are not counted in L
    long_query = 1.0
    #: the duty cycle changes at most this often, by these factors
    adjust_every = 1.0
    #: each adjustment multiplies the duty cycle by 1 + gain * (target - ratio) / target,
    #: within [cut, grow]
    gain, cut, grow = 1.5, 0.67, 1.25

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        #: (time, transactions, L, sessions running any query)
        self._samples: list[tuple[float, float, float, float]] = []
        self._adjusted = -1e18
        self._own = 0  #: transactions of this signal's own readings
        self.baseline: float | None = None  #: W0, seconds
        #: the controller's duty cycle (None without a baseline)
        self.duty: float | None = None

    def enabled(self, s: Limits) -> bool:
        return s.busy_sessions > 0 or s.app_latency_target > 0

    def _sample(self, ctx: Context, n: int, gap: float) -> tuple[float, float, float, int, int]:
        """(the database's transactions less ours, mean sessions running a short query,
        mean sessions running any query, sessions whose activity this role may not see
        in the last sample, the most sessions running a query or done with one in the
        last ``astir`` seconds in a sample). Each sample is one statement of its own (the
        connection is shared with the coordinator's other work: no transaction is held
        across the samples) and is counted as one of our transactions."""
        ours = list(ctx.our_pids())
        counts: list[float] = []
        running: list[float] = []
        xacts = 0.0
        hidden = astir = 0
        with ctx.conn.cursor() as cur:
            for i in range(n):
                if i:
                    time.sleep(gap)
                self._own += 1
                # L and X over the same population: this database's client sessions.
                # A query running for longer than long_query (a report, a batch job)
                # and maintenance (VACUUM, ANALYZE, CREATE INDEX, CLUSTER) are not the
                # transactional work whose latency the backfill keeps: they would read
                # as a latency the backfill cannot lower.
                # Without pg_read_all_stats another role's session shows neither its
                # state nor its backend type, only its query as HIDDEN_QUERY: counted
                # apart, since whether it is busy cannot be told
                cur.execute(
                    "SELECT count(*) FILTER (WHERE state = 'active' AND query_start"
                    " > clock_timestamp() - make_interval(secs => %s) AND pid NOT IN ("
                    "SELECT pid FROM pg_stat_progress_vacuum UNION ALL"
                    " SELECT pid FROM pg_stat_progress_analyze UNION ALL"
                    " SELECT pid FROM pg_stat_progress_create_index UNION ALL"
                    " SELECT pid FROM pg_stat_progress_cluster))::float8,"
                    " count(*) FILTER (WHERE state = 'active')::float8,"
                    " count(*) FILTER (WHERE backend_type IS NULL AND query = %s)::int,"
                    " count(*) FILTER (WHERE state = 'active' OR state_change"
                    " > clock_timestamp() - make_interval(secs => %s))::int,"
                    " (SELECT xact_commit + xact_rollback FROM pg_stat_database"
                    " WHERE datname = current_database())::float8"
                    " FROM pg_stat_activity WHERE (backend_type = 'client backend'"
                    " OR (backend_type IS NULL AND query = %s)) AND pid <> pg_backend_pid()"
                    " AND datname = current_database() AND NOT (pid = ANY(%s))"
                    " AND NOT (coalesce(application_name, '') = ANY(%s))",
                    (
                        self.long_query,
                        HIDDEN_QUERY,
                        self.astir,
                        HIDDEN_QUERY,
                        ours,
                        list(OUR_APPLICATION_NAMES),
                    ),
                )
                row = cur.fetchone()
                assert row is not None
                counts.append(float(row[0]))
                running.append(float(row[1]))
                hidden = int(row[2])
                astir = max(astir, int(row[3]))
                xacts = float(row[4] or 0.0)
        mean, mean_running = sum(counts) / n, sum(running) / n
        return xacts - ctx.our_commits() - self._own, mean, mean_running, hidden, astir

    def prime(self, ctx: Context, s: Limits) -> None:
        if s.app_latency_target <= 0 or self.baseline is not None:
            return
        x0, busy, _, _, astir = self._sample(ctx, 3, 0.01)  # costs an idle database ~0.02 s
        if busy < self.min_sessions and not astir:
            return  # an idle database: nothing to compare, nothing to slow
        # the rate counts from a second in: by then every backend has reported what it
        # did before (ours included: the executor's own writes just now)
        t0 = self._clock()
        steps = max(int(self.baseline_seconds / 0.1), 20)
        sessions: list[float] = []
        x1 = x0
        for i in range(steps):
            time.sleep(0.1)
            x1, mean, _, _, _ = self._sample(ctx, 1, 0)
            sessions.append(mean)
            if i == 9:
                if sum(sessions) / len(sessions) < self.min_sessions:
                    break  # a passing moment or long queries: nothing to measure
                t0, x0 = self._clock(), x1
            if i == 19 and x1 - x0 < self.min_rate * 0.5:
                break  # hardly a transaction in a second: nothing to measure
        rate = (x1 - x0) / max(self._clock() - t0, 1e-3)
        mean = sum(sessions) / len(sessions)
        if rate >= self.min_rate and mean >= self.min_sessions:
            self.baseline = mean / rate
            self.duty = s.duty_cycle
        log.debug(
            "backfill_app_baseline",
            sessions=round(mean, 2),
            rate=round(rate, 1),
            seconds=round(self._clock() - t0, 2),
            measured=self.baseline is not None,
        )

    def read(self, ctx: Context, s: Limits) -> Reading:
        xacts, busy, running, hidden, _ = self._sample(ctx, self.samples, self.sample_gap)
        now = self._clock()
        kept = [x for x in self._samples if now - x[0] <= self.window]
        self._samples = [*kept, (now, xacts, busy, running)]
        k = len(self._samples)
        sessions = sum(x[2] for x in self._samples) / k
        # the busy_sessions rule: any query, over the last few readings (as before)
        recent = self._samples[-self.busy_readings :]
        values = {"sessions": sum(x[3] for x in recent) / len(recent), "short": sessions}
        (t_first, x_first, *_), (t_last, x_last, *_) = self._samples[0], self._samples[-1]
        span = t_last - t_first
        rate = max(x_last - x_first, 0.0) / span if span >= self.min_span else None
        if self.baseline is None and hidden:
            return self._blind(hidden, rate, s, values)
        if self.baseline is None or s.app_latency_target <= 0:
            self.duty = None  # nothing measures the latency (any more)
            return Reading(values=values)
        if rate is None:
            return Reading(values=values)
        # no transaction done while sessions run queries: they are stuck
        latency = sessions / rate if rate > 0 else (1e3 if sessions > 0 else 0.0)
        ratio = min(latency / self.baseline, 1e3)
        duty = self.duty if self.duty is not None else s.duty_cycle
        if now - self._adjusted >= self.adjust_every:
            self._adjusted = now
            duty = self.next_duty(duty, ratio, s)
            log.debug(
                "backfill_duty",
                latency_ratio=round(ratio, 3),
                sessions=round(sessions, 2),
                rate=round(rate, 1),
                baseline_ms=round(self.baseline * 1000, 4),
                duty=round(duty, 3),
            )
        self.duty = duty
        values.update(rate=rate, latency_ratio=ratio, duty=duty)
        return Reading(values=values)

    def next_duty(self, duty: float, ratio: float, s: Limits) -> float:
        """The duty cycle after one adjustment from ``duty``, the application's latency
        read at ``ratio`` times its baseline: in proportion to the distance from the
        target (a bang-bang rule drifts to its floor on noise when the latency sits just
        under the target for reasons not the backfill's), between ``min_duty`` and
        ``duty_cycle`` (the operator's ceiling, lower than ``min_duty`` if so set)."""
        error = (s.app_latency_target - ratio) / s.app_latency_target
        factor = min(max(1.0 + self.gain * error, self.cut), self.grow)
        return min(max(duty * factor, self.min_duty), s.duty_cycle)

    def _blind(
        self, hidden: int, rate: float | None, s: Limits, values: dict[str, float]
    ) -> Reading:
        """Sessions of other roles hide their activity (no pg_read_all_stats) and nothing
        visible gave a baseline: the latency cannot be measured. pg_stat_database is
        visible to every role, so the fallback is the database's transaction rate: while
        it says an application is at work, rest at ``duty_cycle``."""
        busy = rate is not None and rate >= self.min_rate
        self.duty = min(max(s.duty_cycle, self.min_duty), 1.0) if busy else None
        return Reading(
            values=values,
            problem=f"{hidden} session(s) in this database hide what they do from the"
            " backfill's role (other roles' sessions need pg_read_all_stats), so the"
            " application's latency cannot be measured: grant pg_read_all_stats (or"
            " pg_monitor) to the backfill's role;"
            f" until then the backfill rests at duty_cycle ({s.duty_cycle:g}) while the"
            f" database runs {self.min_rate:g} or more transactions a second",
            detail={"hidden_sessions": hidden},
        )

    def over(self, r: Reading, s: Limits) -> str | None:
        return None

    def clear(self, r: Reading, s: Limits) -> bool:
        return True

    def strained(self, r: Reading, s: Limits) -> bool:
        if self.duty is not None and s.app_latency_target > 0:
            return False  # the controller's duty cycle paces the backfill instead
        return s.busy_sessions > 0 and r.values.get("sessions", 0.0) >= s.busy_sessions


class AppLatency(Signal):
    """The application's latency as a probe query sees it, against its own baseline."""

    name = "app_latency"
    #: probes per baseline, probes per reading (the median counts)
    baseline_probes = 5
    reading_probes = 3
    #: the probe's statement timeout; a probe that times out reads as this
    probe_timeout = 1.0

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self.baseline: float | None = None

    def enabled(self, s: Limits) -> bool:
        return s.latency_probe not in ("off", "") and s.max_latency_ratio > 0

    def _query(self, ctx: Context, s: Limits) -> sql.SQL | sql.Composed:
        if s.latency_probe == "auto":
            # one block by its address: a constant cost however many dead rows the
            # backfill left at the table's start, but the table's lock like any query;
            # and a few bytes of WAL (a transactional message, no table touched), so
            # that its commit waits for the WAL flush, behind the backfill's WAL, as the
            # application's writes do. A transaction id alone would not: a transaction
            # that wrote no WAL commits without waiting for the flush
            return sql.SQL(
                "SELECT 1 FROM ONLY {} WHERE ctid = '(0,1)'::tid"
                " UNION ALL SELECT 1 FROM pg_logical_emit_message(true, 'onlineschema', '')"
            ).format(sql.Identifier(*ctx.table_name))
        # the operator's own query: run as given, read-only, under a statement timeout
        return sql.SQL(s.latency_probe)

    def _probe(self, ctx: Context, s: Limits, n: int) -> float:
        query = self._query(ctx, s)
        times: list[float] = []
        conn = ctx.conn
        for _ in range(n):
            t0 = self._clock()
            # the commit's wait (for the flush, for a synchronous standby) is no
            # statement: it is cancelled after probe_timeout (the server then says so and
            # keeps the commit), so that a server that cannot commit reads as a probe that
            # timed out instead of holding the signals
            cancel = threading.Timer(self.probe_timeout, _cancel, (conn,))
            cancel.daemon = True
            try:
                with conn.transaction(), conn.cursor() as cur:
                    if s.latency_probe != "auto":  # the operator's query changes nothing
                        cur.execute("SET TRANSACTION READ ONLY")
                    cur.execute(
                        "SELECT set_config('statement_timeout', %s, true),"
                        " set_config('lock_timeout', '0', true)",
                        (f"{int(self.probe_timeout * 1000)}ms",),
                    )
                    cur.execute(query)
                    cur.fetchall()
                    cancel.start()
                times.append(self._clock() - t0)
            except psycopg.errors.QueryCanceled:
                times.append(max(self._clock() - t0, self.probe_timeout))
            finally:
                cancel.cancel()
                if cancel.is_alive():  # a cancel sent late lands on the idle session: ignored
                    cancel.join()
        times.sort()
        return times[len(times) // 2]

    def prime(self, ctx: Context, s: Limits) -> None:
        if self.enabled(s) and self.baseline is None:
            self.baseline = self._probe(ctx, s, self.baseline_probes)

    def read(self, ctx: Context, s: Limits) -> Reading:
        try:
            if self.baseline is None:
                self.prime(ctx, s)
            seconds = self._probe(ctx, s, self.reading_probes)
        except psycopg.Error as exc:
            if ctx.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                ctx.conn.rollback()
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return Reading(problem=f"the latency probe failed: {first}")
        assert self.baseline is not None
        floor = max(s.latency_floor, 1e-6)
        ratio = max(seconds, floor) / max(self.baseline, floor)
        return Reading(
            values={"ratio": ratio, "seconds": seconds, "baseline": self.baseline},
        )

    def over(self, r: Reading, s: Limits) -> str | None:
        ratio = r.values.get("ratio", 0.0)
        if ratio > s.max_latency_ratio:
            return (
                f"the latency probe took {r.values.get('seconds', 0.0) * 1000:.1f} ms,"
                f" {ratio:.1f}x its baseline > {s.max_latency_ratio:g}x"
            )
        return None

    def clear(self, r: Reading, s: Limits) -> bool:
        return r.values.get("ratio", 0.0) <= _resume_limit(
            s.max_latency_ratio, s.resume_latency_ratio
        )

    def strained(self, r: Reading, s: Limits) -> bool:
        return not self.clear(r, s)


def _cancel(conn: psycopg.Connection[Any]) -> None:
    """Cancel what ``conn`` runs (from another thread); a cancel that cannot be sent
    leaves the probe to finish on its own."""
    with contextlib.suppress(psycopg.Error):
        conn.cancel_safe(timeout=5.0)


def pg_backend_pid(conn: psycopg.Connection[Any]) -> int:
    return int(conn.info.backend_pid)


def default_signals() -> list[Signal]:
    return [
        ReplicaLag(),
        ReplicaLagFromDsn(),
        LockWaiters(),
        LongTransaction(),
        VacuumRunning(),
        AppLatency(),
        ActiveSessions(),
    ]


class Throttle:
    """Decides, from the signals, whether batches may run; thread-safe.

    ``poll`` reads the signals (the coordinator calls it at most every signal_interval);
    workers call ``engaged`` before each batch and ``feed_lock_wait`` after each.
    """

    def __init__(
        self,
        signals: Sequence[Signal] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        logger: Any = None,
    ) -> None:
        self.signals = list(signals) if signals is not None else default_signals()
        self._clock = clock
        self._log = logger if logger is not None else log
        self._lock = threading.Lock()
        #: signal name -> (since, why) for every engaged signal
        self._engaged: dict[str, tuple[float, str]] = {}
        self._reported: set[str] = set()
        #: signals whose last reading says the application is affected (under the pause
        #: threshold): the backfill rests between batches while any is
        self._strained: set[str] = set()
        self._closed_seconds = 0.0
        self._since: float | None = None
        self.changed = False

    # --- state ---------------------------------------------------------------------

    @property
    def reason(self) -> str | None:
        """The engaged signals' names, e.g. ``replica_lag`` (None when not throttled)."""
        with self._lock:
            return ",".join(sorted(self._engaged)) or None

    @property
    def strained(self) -> bool:
        with self._lock:
            return bool(self._strained)

    @property
    def engaged(self) -> bool:
        with self._lock:
            return bool(self._engaged)

    @property
    def duty(self) -> float | None:
        """The duty cycle the application's latency calls for (``active_sessions``), or
        None when nothing measures it (no baseline: an idle database at the start)."""
        sig = self.signal(ActiveSessions.name)
        return sig.duty if isinstance(sig, ActiveSessions) else None

    def throttled_seconds(self) -> float:
        """Wall time spent throttled (by any signal) since this object was made."""
        with self._lock:
            open_part = self._clock() - self._since if self._since is not None else 0.0
            return self._closed_seconds + open_part

    def signal(self, name: str) -> Signal | None:
        return next((s for s in self.signals if s.name == name), None)

    # --- updates -------------------------------------------------------------------

    def _engage(
        self, name: str, why: str, values: dict[str, float], detail: dict[str, Any]
    ) -> None:
        with self._lock:
            if name in self._engaged:
                return
            if not self._engaged:
                self._since = self._clock()
            self._engaged[name] = (self._clock(), why)
            self.changed = True
        self._log.warning(
            "backfill_throttled",
            reason=name,
            why=why,
            **{k: round(v, 3) for k, v in values.items()},
            **detail,
        )

    def _release(self, name: str, values: dict[str, float]) -> None:
        with self._lock:
            if name not in self._engaged:
                return
            since, _ = self._engaged.pop(name)
            if not self._engaged and self._since is not None:
                self._closed_seconds += self._clock() - self._since
                self._since = None
            self.changed = True
            seconds = self._clock() - since
        self._log.info(
            "backfill_unthrottled",
            reason=name,
            throttled_for=round(seconds, 3),
            **{k: round(v, 3) for k, v in values.items()},
        )

    def apply(self, sig: Signal, r: Reading, s: Limits) -> None:
        """Update ``sig``'s state from a reading (engage, release, report unreadable)."""
        name = sig.name
        unreadable = f"{name}_unreadable"
        if r.problem is not None:
            if name not in self._reported:
                self._reported.add(name)
                level = self._log.info if r.benign else self._log.warning
                level(
                    "backfill_signal_unreadable",
                    signal=name,
                    problem=r.problem,
                    then=s.on_unreadable_signal,
                    **r.detail,
                )
            self._release(name, {})
            if s.on_unreadable_signal == "pause":
                self._engage(unreadable, r.problem, {}, {})
            else:
                self._release(unreadable, {})
            return
        self._release(unreadable, {})
        publish({"event": "backfill_signal_read", "signal": name, **r.values})  # metrics
        with self._lock:
            engaged = name in self._engaged
            if sig.strained(r, s):
                self._strained.add(name)
            else:
                self._strained.discard(name)
        if not engaged:
            why = sig.over(r, s)
            if why is not None:
                self._engage(name, why, r.values, r.detail)
        elif sig.clear(r, s):
            self._release(name, r.values)

    def poll(self, ctx: Context, s: Limits) -> None:
        """Read every enabled signal once; release the ones that were turned off."""
        for sig in self.signals:
            if not sig.enabled(s):
                with self._lock:
                    self._strained.discard(sig.name)
                self._release(sig.name, {})
                self._release(f"{sig.name}_unreadable", {})
                continue
            try:
                r = sig.read(ctx, s)
            except psycopg.errors.InsufficientPrivilege as exc:
                r = Reading(problem=f"no permission: {(exc.diag.message_primary or '').strip()}")
            self.apply(sig, r, s)

    def prime(self, ctx: Context, s: Limits) -> None:
        """Let the signals take their baselines (before the first batch)."""
        for sig in self.signals:
            if sig.enabled(s):
                try:
                    sig.prime(ctx, s)
                except psycopg.Error as exc:  # read() reports it, once
                    if ctx.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                        ctx.conn.rollback()
                    self._log.debug("backfill_signal_prime_failed", signal=sig.name, error=str(exc))

    def feed_lock_wait(self, waiters: int, longest_wait: float, s: Limits) -> None:
        """A batch saw ``waiters`` sessions waiting on it, the longest for ``longest_wait``s."""
        sig = self.signal(LockWaiters.name)
        if not isinstance(sig, LockWaiters) or not sig.enabled(s):
            return
        sig.feed(waiters, longest_wait, s.blocked_cooldown)
        with self._lock:
            engaged = sig.name in self._engaged
        if not engaged:
            r = Reading(values={"seconds": longest_wait, "sessions": float(waiters)})
            why = sig.over(r, s)
            if why is not None:
                self._engage(sig.name, why, r.values, {})

    def close(self) -> None:
        for sig in self.signals:
            sig.close()
