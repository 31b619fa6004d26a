"""The application never notices (issue 13): how a backfill paces itself.

* a session waiting on the rows a batch holds makes the worker aim its batches lower
  (smaller batches, shorter waits), and the batches grow back when nobody waits;
* the latency probe (the application's latency against its baseline) makes the backfill
  rest between batches when strained and pause when over its limit, and carry on after;
* on an idle database nothing is affected: the backfill never rests (the duty cycle only
  applies under load), by the pace's own accounting;
* batches commit with synchronous_commit off (their locks go before the WAL flush).

Every test runs real backfills on a real PostgreSQL and reads the event log.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from scenario_tools import wait_until
from structlog.testing import capture_logs

from onlineschema import Backfill, BackfillSettings, Executor, RetryPolicy, Settings
from onlineschema.backfill.chunks import WORKER_APPLICATION_NAME
from onlineschema.backfill.pace import MIN_TARGET_SHARE, Decision, Pace
from onlineschema.embedded.server import LocalServer
from onlineschema.throttle import ActiveSessions, AppLatency, Context

Conn = psycopg.Connection[Any]


def settings(**backfill: Any) -> Settings:
    base: dict[str, Any] = dict(
        max_replica_lag=0.0, control_interval=0.1, signal_interval=0.1, vacuum=False, chunks=1
    )
    return Settings(
        retry=RetryPolicy(max_attempts=5, backoff_initial=0.01, backoff_max=0.05),
        backfill=BackfillSettings(**{**base, **backfill}),
    )


def one(conn: Conn, query: str, params: Any = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def make_table(conn: Conn, rows: int, per_row_ms: float = 0.0) -> None:
    conn.execute("CREATE TABLE r (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0, note text)")
    conn.execute("INSERT INTO r (id) SELECT g FROM generate_series(1, %s) g", (rows,))
    # each row costs per_row_ms of the batch's time: batches of a known length
    conn.execute(
        "CREATE FUNCTION slow_inc(n int) RETURNS int LANGUAGE sql VOLATILE AS"
        f" $$ SELECT pg_sleep({per_row_ms / 1000!r}); SELECT n + 1 $$"
    )
    conn.execute("ANALYZE r")


def batches(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "backfill_batch"]


class Run:
    """A backfill in a thread (``join`` re-raises what it raised)."""

    def __init__(self, dsn: str, name: str, s: Settings, change: Backfill | None = None) -> None:
        self.error: BaseException | None = None
        change = change or Backfill("r", {"n": "slow_inc(n)"})

        def run() -> None:
            try:
                with Executor(dsn, s) as ex:
                    ex.apply([change], name)
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout: float = 120) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the backfill did not finish"
        if self.error is not None:
            raise self.error


def test_waiters_on_a_batch_shrink_it_and_it_grows_back(dsn: str, conn: Conn) -> None:
    """Batches of ~100 rows at 1 ms a row (target 100 ms). While an application session
    keeps updating the first row of the batch in flight (so it waits on every batch), the
    worker halves its target per batch down to a quarter, and its batches follow; it
    rests after those batches (duty_cycle), not before. When the session stops, the
    target grows back to batch_target and the batches with it."""
    make_table(conn, 2400, per_row_ms=1.0)
    s = settings(batch_target=0.1, batch_initial=100, batch_min=5, duty_cycle=0.5)
    stop = threading.Event()
    app_updates: list[int] = []

    def app() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            while not stop.is_set():
                # the first row after the last committed batch: the batch in flight holds it
                cur = c.execute(
                    "UPDATE r SET note = 'app' WHERE id ="
                    " (SELECT coalesce(max(id), 0) + 1 FROM r WHERE n = 1)"
                )
                app_updates.append(cur.rowcount)

    with capture_logs() as logs:
        run = Run(dsn, "waiters", s)
        wait_until(lambda: len(batches(logs)) >= 4, timeout=60, what="4 quiet batches")
        t = threading.Thread(target=app, daemon=True)
        t.start()
        try:
            wait_until(
                lambda: sum(1 for e in batches(logs) if e["waiters"]) >= 4,
                timeout=60,
                what="4 batches the application waited on",
            )
        finally:
            stop.set()
            t.join(30)
        run.join()
    bs = batches(logs)
    first = next(i for i, e in enumerate(bs) if e["waiters"])
    last = max(i for i, e in enumerate(bs) if e["waiters"])
    quiet = bs[:first]
    assert all(e["target"] == pytest.approx(0.1) and e["rest"] == 0 for e in quiet), quiet
    steady = quiet[-1]["next_batch_size"]
    assert steady >= 20, quiet  # ~100 rows at 1 ms a row (pg_sleep takes longer)
    waited = [e for e in bs[first : last + 1] if e["waiters"]]
    # halved per waited-on batch, never under the floor
    assert waited[0]["target"] == pytest.approx(0.05)
    assert min(e["target"] for e in waited) == pytest.approx(0.1 * MIN_TARGET_SHARE)
    assert min(e["next_batch_size"] for e in bs[first : last + 1]) <= steady * 0.5, bs
    assert all(e["rest"] > 0 and e["affected"] for e in waited), waited
    # nobody waits any more: the target grows back (never down) to batch_target
    after = bs[last + 1 :]
    targets = [e["target"] for e in after if not e["waiters"]]
    assert targets and targets == sorted(targets) and targets[-1] == pytest.approx(0.1), after
    full = [e for e in after if e["target"] == pytest.approx(0.1)]
    assert full and max(e["next_batch_size"] for e in full) >= steady * 0.7, after
    done = next(e for e in logs if e["event"] == "backfill_done")
    assert (
        done["waited_batches"] == len(waited) + sum(1 for e in after if e["waiters"])
        and done["rested_seconds"] > 0
    )
    assert one(conn, "SELECT count(*) FROM r WHERE n <> 1") == 0
    assert sum(app_updates) >= 1 and one(conn, "SELECT count(*) FROM r WHERE note = 'app'") >= 1


@pytest.mark.parametrize("workers", [1, 2])
def test_idle_database_the_backfill_never_rests(dsn: str, conn: Conn, workers: int) -> None:
    """At the default settings (duty_cycle 0.25 included) on a database nothing else
    uses, no signal says the application is affected: no batch is followed by a rest, so
    the backfill goes at the speed of its UPDATEs (the 0.25 duty cycle would make it four
    times as long). The accounting: rested_seconds 0, every batch busy."""
    make_table(conn, 40_000)
    defaults = BackfillSettings()
    assert defaults.duty_cycle < 1  # the rule under test: the duty cycle is for load only
    with capture_logs() as logs, Executor(dsn) as ex:
        assert ex.settings.backfill == defaults
        ex.apply([Backfill("r", {"n": "n + 1"})], "idle", workers=workers)
    bs = batches(logs)
    done = next(e for e in logs if e["event"] == "backfill_done")
    assert len(bs) >= 4 and done["batches"] == len(bs)
    assert [e for e in bs if e["rest"] or e["affected"] or e["waiters"]] == []
    assert done["rests"] == 0 and done["rested_seconds"] == 0 and done["waited_batches"] == 0
    assert done["busy_seconds"] > 0 and done["throttled_seconds"] == 0
    assert one(conn, "SELECT count(*) FROM r WHERE n <> 1") == 0


@pytest.mark.server_independent
def test_pace_rests_at_the_duty_cycle_only_while_affected() -> None:
    """The accounting itself: a batch of 40 ms rests 40 ms at duty_cycle 0.5 while a
    signal reports strain or a session waited within signal_interval, and not at all
    otherwise; the next size follows the target."""
    now = [0.0]
    strained = [False]
    pace = Pace(strained=lambda: strained[0], clock=lambda: now[0])
    s = BackfillSettings(batch_target=0.04, duty_cycle=0.5, signal_interval=1.0)
    d = pace.after_batch(s, size=100, target=0.04, elapsed=0.04, last=False, waiters=0)
    assert (d.size, d.rest, d.affected) == (100, 0.0, False)
    strained[0] = True
    d = pace.after_batch(s, size=100, target=0.04, elapsed=0.04, last=False, waiters=0)
    assert d.rest == pytest.approx(0.04) and d.affected
    strained[0] = False
    d = pace.after_batch(s, size=100, target=0.04, elapsed=0.04, last=False, waiters=2)
    assert d.target == pytest.approx(0.02) and d.size == 50 and d.rest == pytest.approx(0.04)
    now[0] = 0.5  # within signal_interval of the waiters: still affected
    d = pace.after_batch(s, size=50, target=d.target, elapsed=0.02, last=False, waiters=0)
    assert d.target == pytest.approx(0.025) and d.rest == pytest.approx(0.02)
    now[0] = 2.0
    d = pace.after_batch(s, size=60, target=d.target, elapsed=0.025, last=False, waiters=0)
    assert d.rest == 0 and not d.affected
    st = pace.stats
    assert (st.batches, st.waited_batches, st.rests) == (5, 1, 3)
    assert st.rested_seconds == pytest.approx(0.1) and st.busy_seconds == pytest.approx(0.165)


@pytest.mark.server_independent
def test_max_wal_rate_rests_the_workers_together_until_their_wal_fits() -> None:
    """max_wal_rate 1 MB/s, one bucket for the workers of a process: a batch of 0.1 s
    across 0.5 MB of WAL rests 0.4 s; another worker's batch ending at that moment, across
    0.75 MB of which 0.25 MB the first one counted, waits for both (0.9 s); a quiet spell
    is not saved up; where the duty cycle rests longer the cap adds nothing; a batch
    that began before one which ended first counts only what that one did not. With no
    cap (0) the same batch does not rest."""
    mb = 1 << 20
    now = [10.0]
    strained = [False]
    pace = Pace(strained=lambda: strained[0], clock=lambda: now[0])
    s = BackfillSettings(max_wal_rate=mb, duty_cycle=0.1, signal_interval=1.0)

    def batch(p: Pace, lo: float, hi: float, cap: BackfillSettings = s) -> Decision:
        return p.after_batch(
            cap, size=100, target=0.03, elapsed=0.1, last=False, waiters=0, wal=(lo, hi)
        )

    d = batch(pace, 0, mb / 2)
    assert d.rest == pytest.approx(0.4) and d.wal_capped and not d.affected
    d = batch(pace, mb / 4, mb)  # a second worker's, overlapping the first one's WAL
    assert d.wal == mb / 2 and d.rest == pytest.approx(0.9) and d.wal_capped
    now[0] = 20.0  # long after: the quiet time is not saved up
    d = batch(pace, 2 * mb, 2.25 * mb)
    assert d.rest == pytest.approx(0.15)
    strained[0], now[0] = True, 30.0  # the duty cycle rests 0.9 s, more than the cap's 0.15
    d = batch(pace, 3 * mb, 3.25 * mb)
    assert d.rest == pytest.approx(0.9) and d.affected and not d.wal_capped
    strained[0], now[0] = False, 40.0
    d = batch(pace, 5.25 * mb, 5.5 * mb)  # ends first, inside the next one
    assert d.wal == mb / 4 and d.rest == pytest.approx(0.15)
    d = batch(pace, 5 * mb, 6 * mb)
    assert d.wal == 3 * mb / 4 and d.rest == pytest.approx(0.9)
    st = pace.stats
    assert st.wal_bytes == 2.5 * mb
    assert st.wal_rested_seconds == pytest.approx(0.4 + 0.9 + 0.15 + 0.15 + 0.9)
    d = batch(Pace(clock=lambda: now[0]), 0, mb, BackfillSettings(max_wal_rate=0))
    assert d.rest == 0 and not d.wal_capped and d.wal == mb


def test_max_wal_rate_caps_the_backfills_wal_on_an_idle_database(dsn: str, conn: Conn) -> None:
    """max_wal_rate=256kB on an idle database, where no other rule rests: each batch reads
    the WAL written while it ran (at least a row version's worth a row) and rests until
    it fits under the cap, so by the pace's own accounting the busy and rested time
    together cover the backfill's WAL at 256 kB a second. Without the cap, no rest."""
    make_table(conn, 3000)
    cap = 256 * 1024
    s = settings(batch_initial=100, batch_max=100, max_wal_rate=cap)
    with capture_logs() as logs, Executor(dsn, s) as ex:
        ex.apply([Backfill("r", {"n": "n + 1"})], "capped")
    bs = batches(logs)
    done = next(e for e in logs if e["event"] == "backfill_done")
    assert len(bs) >= 30 and all(e["wal"] >= 50 * e["rows"] for e in bs), bs
    # a 100-row batch writes ~10-20 kB (40-80 ms at the cap) in a few ms
    assert all(e["rest"] >= e["wal"] / cap - e["seconds"] - 0.001 for e in bs), bs
    assert done["wal_bytes"] == sum(e["wal"] for e in bs)
    assert done["busy_seconds"] + done["rested_seconds"] >= done["wal_bytes"] / cap * 0.99
    # (a batch slowed past its WAL's time at the cap, on a loaded machine, need not rest)
    assert done["wal_rested_seconds"] > 0 and done["rests"] >= len(bs) // 2
    assert one(conn, "SELECT count(*) FROM r WHERE n <> 1") == 0
    conn.execute("UPDATE r SET n = 0")
    with capture_logs() as logs, Executor(dsn, settings(batch_initial=100, batch_max=100)) as ex:
        ex.apply([Backfill("r", {"n": "n + 1"})], "uncapped")
    assert [e for e in batches(logs) if e["rest"]] == []


def test_latency_probe_rests_when_strained_pauses_when_over_and_carries_on(
    dsn: str, conn: Conn
) -> None:
    """The probe query stands for the application (latency_probe: here it sleeps as long
    as the delay table says). Baseline ~0 (counted as latency_floor 10 ms). At 40 ms
    (4x: between resume_latency_ratio 2 and max_latency_ratio 10) the backfill rests
    after each batch; at 300 ms (30x) it pauses (app_latency), no batch runs; back at 0
    it carries on without resting, and finishes."""
    make_table(conn, 1500, per_row_ms=2.0)
    conn.execute("CREATE TABLE probe_delay (d float8 NOT NULL)")
    conn.execute("INSERT INTO probe_delay VALUES (0)")
    s = settings(
        batch_target=0.04,
        batch_initial=20,
        batch_max=20,
        duty_cycle=0.5,
        latency_probe="SELECT pg_sleep(d) FROM probe_delay",
        latency_floor=0.01,
        max_latency_ratio=10.0,
        resume_latency_ratio=2.0,
    )

    def delay(seconds: float) -> None:
        conn.execute("UPDATE probe_delay SET d = %s", (seconds,))

    def seen(name: str, **match: Any) -> int:
        return sum(
            1 for e in logs if e["event"] == name and all(e.get(k) == v for k, v in match.items())
        )

    with capture_logs() as logs:
        run = Run(dsn, "latency", s)
        try:
            wait_until(lambda: len(batches(logs)) >= 3, timeout=60, what="3 batches")
            delay(0.04)
            wait_until(
                lambda: sum(1 for e in batches(logs) if e["affected"]) >= 3,
                timeout=60,
                what="3 batches under strain",
            )
            delay(0.3)
            wait_until(
                lambda: seen("backfill_throttled", reason="app_latency"),
                timeout=60,
                what="the pause on app_latency",
            )
            n_paused = len(batches(logs))
            wait_until(
                lambda: one(
                    conn,
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
                    " AND query LIKE '%%probe_delay%%'",
                ),
                timeout=30,
                what="a probe while paused",
            )
            assert len(batches(logs)) <= n_paused + 1
        finally:
            delay(0)
        run.join()
    order = [
        (e["event"], e.get("reason"))
        for e in logs
        if e["event"] in ("backfill_throttled", "backfill_unthrottled")
    ]
    assert order == [
        ("backfill_throttled", "app_latency"),
        ("backfill_unthrottled", "app_latency"),
    ]
    i_on = next(i for i, e in enumerate(logs) if e["event"] == "backfill_throttled")
    i_off = next(i for i, e in enumerate(logs) if e["event"] == "backfill_unthrottled")
    assert logs[i_on]["ratio"] > 10
    between = [e for e in logs[i_on:i_off] if e["event"] == "backfill_batch"]
    assert len(between) <= 1, between  # at most the batch in flight when it engaged
    bs = batches(logs)
    strained = [e for e in bs if e["affected"]]
    assert strained and all(e["rest"] > 0 for e in strained)
    assert all(e["rest"] == 0 for e in bs[:3])  # before any delay
    tail = [e for e in logs[i_off:] if e["event"] == "backfill_batch"]
    assert tail and tail[-1]["rest"] == 0  # back to full speed
    done = next(e for e in logs if e["event"] == "backfill_done")
    assert done["throttled_seconds"] > 0
    assert one(conn, "SELECT count(*) FROM r WHERE n <> 1") == 0


@pytest.mark.version_independent
def test_the_latency_probe_commits_as_the_applications_writes_do(pg_version: int) -> None:
    """The default probe's commit waits for the WAL flush, as an application's write
    does (the WAL the backfill wrote before it included). Shown with a synchronous
    standby that stopped answering: every commit that wrote WAL waits for it (wait event
    SyncRep). The probe's commit waits with the application's, and after probe_timeout
    reads as a probe that timed out, which pauses the backfill, while the application
    still waits. A probe that only took a transaction id wrote no WAL and would return
    at once; one whose commit had no timeout would wait with the application."""
    server = LocalServer(pg_version, settings={"synchronous_commit": "on"}).start()
    try:
        dsn = server.create_database("probe")
        with psycopg.connect(dsn, autocommit=True) as admin, psycopg.connect(dsn) as c:
            make_table(admin, 10)
            ctx = Context(c, one(admin, "SELECT 'r'::regclass::oid"), list, ("public", "r"))
            probe, s = AppLatency(), BackfillSettings()
            probe.prime(ctx, s)  # the baseline, with commits as usual
            released = threading.Event()
            readings: list[Any] = []

            def standby(name: str) -> None:
                query = sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}")
                admin.execute(query.format(sql.Literal(name)))
                admin.execute("SELECT pg_reload_conf()")

            def app_writes() -> None:  # (the first after the reload waits)
                with psycopg.connect(dsn, autocommit=True) as app:
                    while not released.is_set():
                        app.execute("UPDATE r SET n = n + 1 WHERE id = 1")

            def waiting(pid: int | None = None) -> int:
                return int(
                    one(
                        admin,
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
                        " AND pid = coalesce(%s, pid)",
                        (pid,),
                    )
                )

            app = threading.Thread(target=app_writes)
            reader = threading.Thread(target=lambda: readings.append(probe.read(ctx, s)))
            standby("nobody")
            try:
                app.start()
                wait_until(lambda: waiting() == 1, timeout=30, what="a commit waiting")
                reader.start()
                pid = c.info.backend_pid
                wait_until(lambda: waiting(pid) == 1, timeout=10, what="the probe waiting")
                reader.join(AppLatency.reading_probes * AppLatency.probe_timeout + 10)
                assert not reader.is_alive(), "the probe's commit had no timeout"
                assert waiting() == 1 and app.is_alive()  # the application still waits
            finally:
                standby("")
                released.set()
            app.join(10)
            assert not app.is_alive()
        (r,) = readings
        assert r.problem is None and r.values["seconds"] >= AppLatency.probe_timeout, r
        assert probe.over(r, s) is not None  # the backfill pauses
    finally:
        server.stop()


def test_batches_commit_without_waiting_for_the_wal_flush(dsn: str, conn: Conn) -> None:
    """With the database's synchronous_commit on, it is off inside a batch's transaction
    (the default), and as the server says with the setting synchronous_commit=true."""
    make_table(conn, 50)
    dbname = one(conn, "SELECT current_database()")
    conn.execute(
        sql.SQL("ALTER DATABASE {} SET synchronous_commit = on").format(sql.Identifier(dbname))
    )
    conn.execute(
        "CREATE FUNCTION seen_sync(n int) RETURNS int LANGUAGE sql VOLATILE AS"
        " $$ SELECT CASE current_setting('synchronous_commit') WHEN 'off' THEN n + 1"
        " ELSE n + 100 END $$"
    )
    with Executor(dsn, settings()) as ex:
        ex.apply([Backfill("r", {"n": "seen_sync(n)"})], "async")
    assert one(conn, "SELECT count(*) FROM r WHERE n = 1") == 50
    conn.execute("UPDATE r SET n = 0")
    with Executor(dsn, settings(synchronous_commit=True)) as ex:
        ex.apply([Backfill("r", {"n": "seen_sync(n)"})], "sync")
    assert one(conn, "SELECT count(*) FROM r WHERE n = 100") == 50


@pytest.mark.slow
def test_server_crash_mid_backfill_then_resume_applies_each_row_once(pg_version: int) -> None:
    """Batches commit with synchronous_commit off, so a crash of the server (here an
    immediate shutdown: shared memory, WAL buffers included, is lost) can lose the last
    batches it reported committed. Each batch's rows and its chunk's cursor are lost
    together, so the run that carries on (or `resume`) redoes exactly those: the
    non-idempotent `n = n + 1` ends at 1 on every row.

    The server's own commits are on disk when they return, as on a production server:
    with the test servers' synchronous_commit off the crash could also lose the table's
    rows, committed a few ms before (the run then rightly starts over on an empty table)."""
    server = LocalServer(pg_version, settings={"synchronous_commit": "on"}).start()
    try:
        dsn = server.create_database("crash")
        with psycopg.connect(dsn, autocommit=True) as c:
            make_table(c, 4000, per_row_ms=0.0)
        s = settings(batch_initial=40, batch_max=40, sleep=0.005)
        with capture_logs() as logs:
            run = Run(dsn, "crash", s, Backfill("r", {"n": "n + 1"}))
            wait_until(lambda: len(batches(logs)) >= 10, timeout=60, what="10 batches")
            server.restart("immediate")
            run.thread.join(60)
        assert not run.thread.is_alive()
        # the run died with the server, or (reconnecting) carried on past the crash from
        # the stored cursors; either way resume (or nothing) finishes it
        with Executor(dsn, s) as ex:
            state = ex.resume("crash").state if run.error is not None else "completed"
            assert state == "completed"
        with psycopg.connect(dsn) as c:
            assert c.execute("SELECT n, count(*) FROM r GROUP BY n").fetchall() == [(1, 4000)]
    finally:
        server.stop()


def test_other_active_sessions_make_the_backfill_rest(dsn: str, conn: Conn) -> None:
    """busy_sessions (1): while another session runs a query (here a long pg_sleep, as a
    busy application's sessions would keep the server), the backfill rests after each
    batch (duty_cycle); before it, on the otherwise idle server, it does not."""
    make_table(conn, 1500, per_row_ms=1.0)
    s = settings(batch_initial=20, batch_max=20, duty_cycle=0.5, latency_probe="off")
    with capture_logs() as logs:
        run = Run(dsn, "busy", s)
        wait_until(lambda: len(batches(logs)) >= 3, timeout=60, what="3 quiet batches")
        quiet = len(batches(logs))
        with psycopg.connect(dsn, autocommit=True) as app:
            app.execute("SELECT pg_sleep(2)")
        run.join()
    bs = batches(logs)
    assert all(e["rest"] == 0 and not e["affected"] for e in bs[:quiet]), bs[:quiet]
    rested = [e for e in bs[quiet:] if e["affected"]]
    assert len(rested) >= 3 and all(e["rest"] > 0 for e in rested), bs
    done = next(e for e in logs if e["event"] == "backfill_done")
    assert done["rested_seconds"] > 0 and done["waited_batches"] == 0


def test_the_applications_latency_sets_the_duty_cycle(dsn: str, conn: Conn) -> None:
    """app_latency_target: an application already writing when the backfill starts gives
    the baseline (Little's law: its sessions running queries over its transactions a
    second). Its 8 sessions (a transaction, then 2 ms of think time, as a web request's
    would) update the row after the last committed batch, which the batch in flight
    holds, so their latency rises far past the target: the duty cycle falls below duty_cycle (0.5),
    which no other rule sets. When the application stops, the duty cycle climbs back (a
    quarter a second, up to duty_cycle)."""
    make_table(conn, 20000, per_row_ms=0.5)
    s = settings(batch_target=0.05, batch_initial=100, duty_cycle=0.5, latency_probe="off")
    stop = threading.Event()
    # the first row after the last committed batch: the batch in flight holds it
    update_next = (
        "UPDATE r SET note = 'app' WHERE id = (SELECT coalesce(max(id), 0) + 1 FROM r WHERE n = 1)"
    )

    def app() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            while not stop.wait(0.002):
                c.execute(update_next)

    apps = [threading.Thread(target=app, daemon=True) for _ in range(8)]
    for t in apps:
        t.start()
    with capture_logs() as logs:
        try:
            run = Run(dsn, "little", s)
            wait_until(
                lambda: any(e["duty"] < 0.5 for e in batches(logs)),
                timeout=60,
                what="the duty cycle to fall under duty_cycle",
            )
        finally:
            stop.set()
            for t in apps:
                t.join(10)
        cut = len(batches(logs))

        def climbed() -> bool:
            # a duty cycle twice the lowest before it, or back at its ceiling
            # (duty_cycle) above that lowest: the readings of the last few seconds still
            # hold the application's, so it may fall further first
            after = [e["duty"] for e in batches(logs)[cut:]]
            assert run.thread.is_alive(), (
                f"the backfill ended before the duty cycle climbed back: {after}"
            )
            ceiling = s.backfill.duty_cycle
            return any(
                d >= min(2 * low, ceiling) and d > low
                for i, d in enumerate(after)
                if i and (low := min(after[:i]))
            )

        wait_until(climbed, timeout=60, what="the duty cycle to climb back once the app stopped")
        # the rest of the rows at no cost: the test has seen what it came for
        conn.execute(
            "CREATE OR REPLACE FUNCTION slow_inc(n int) RETURNS int LANGUAGE sql"
            " VOLATILE AS $$ SELECT n + 1 $$"
        )
        run.join()
    assert one(conn, "SELECT count(*) FROM r WHERE n <> 1") == 0
    assert min(e["duty"] for e in batches(logs)) >= 0.05  # min_duty: the migration moves
    baseline = next(e for e in logs if e["event"] == "backfill_app_baseline")
    assert baseline["measured"], baseline


@pytest.mark.server_independent
def test_the_controller_gives_the_backfill_at_most_duty_cycle() -> None:
    """However low the application's latency reads, the controller's duty cycle climbs
    to duty_cycle and stays there (the application's slowest transactions follow the
    backfill's share, which its mean does not show); only duty_cycle 1 lets it go as far
    as no rest. Over the target it falls to min_duty, and a ceiling set under min_duty
    holds."""
    sig = ActiveSessions()
    for ceiling in (0.25, 0.6, 1.0):
        s = BackfillSettings(duty_cycle=ceiling)
        duty, seen = 0.05, []
        for _ in range(40):  # the latency at half its baseline: as far under as it gets
            duty = sig.next_duty(duty, 0.5, s)
            seen.append(duty)
        assert max(seen) == seen[-1] == ceiling, (ceiling, seen)
    for _ in range(40):
        duty = sig.next_duty(duty, 3.0, s)
    assert duty == sig.min_duty
    low = BackfillSettings(duty_cycle=0.02)
    assert sig.next_duty(0.02, 0.5, low) == 0.02


def test_no_rate_over_less_than_two_seconds_of_readings(dsn: str, conn: Conn) -> None:
    """Backends report their transactions to pg_stat_database about once a second each:
    over half a second a steady application can show none at all, and with its sessions
    running queries that would read as stuck (latency without end) and cut the duty
    cycle. The rate, and so the latency, comes from two seconds of readings or more."""
    conn.execute("CREATE TABLE app (v int)")
    conn.execute("INSERT INTO app VALUES (0)")
    stop = threading.Event()

    def app() -> None:  # running a query all but a few microseconds, 10 transactions a second
        with psycopg.connect(dsn, autocommit=True) as c:
            while not stop.is_set():
                c.execute("UPDATE app SET v = v + 1 WHERE pg_sleep(0.1) IS NOT NULL")

    thread = threading.Thread(target=app, daemon=True)
    thread.start()
    now = [0.0]
    sig = ActiveSessions(clock=lambda: now[0])
    sig.baseline = 0.1  # W0: what the application's own queries take
    s = BackfillSettings()
    ctx = Context(conn, 0, lambda: [], ("public", "r"), lambda: 0)
    try:
        wait_until(
            lambda: one(
                conn,
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
                " AND starts_with(query, 'UPDATE app')",
            ),
            timeout=10,
            what="the application to run",
        )
        first = sig.read(ctx, s)
        now[0] = 0.6  # readings 0.6 s apart by the clock, a few ms in fact: no report between
        early = sig.read(ctx, s)
        time.sleep(1.5)  # every backend has reported since
        now[0] = 2.5
        later = sig.read(ctx, s)
    finally:
        stop.set()
        thread.join(10)
    assert early.values["short"] > 0, (first, early)  # the application was seen running
    assert "latency_ratio" not in early.values, early
    assert later.values["rate"] > 0 and later.values["latency_ratio"] < 100, later


def test_the_first_look_sees_an_application_between_its_queries(dsn: str, conn: Conn) -> None:
    """Sessions that spend most of their time between queries (here: a 0.1 ms UPDATE,
    then 2 ms of think time) are rarely caught running one, however many transactions
    they do; the look for an application before the first batch also counts those done
    with a query in the last 20 ms, and sees them every time."""
    conn.execute("CREATE TABLE app (v int)")
    conn.execute("INSERT INTO app VALUES (0)")
    stop = threading.Event()

    def app() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            while not stop.wait(0.002):
                c.execute("UPDATE app SET v = v + 1")

    threads = [threading.Thread(target=app, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    sig = ActiveSessions()
    ctx = Context(conn, 0, lambda: [], ("public", "r"), lambda: 0)
    try:
        time.sleep(0.2)
        looks = [sig._sample(ctx, 3, 0.01) for _ in range(10)]
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert all(astir >= 1 for *_, astir in looks), looks


@pytest.mark.parametrize("name", ["onlineschema", WORKER_APPLICATION_NAME])
def test_another_onlineschema_process_is_not_the_application(
    dsn: str, conn: Conn, name: str
) -> None:
    """Sessions of another onlineschema process (a first process whose backfill this one
    joins: its executor, its workers, its signal readings, its VACUUM) are the backfill's
    machinery, never an application to take a baseline of and rest for, whatever their
    pids; a session doing the same under another name is one."""
    stop = threading.Event()

    def busy(application_name: str) -> None:  # a query always running or just done
        with psycopg.connect(dsn, autocommit=True, application_name=application_name) as c:
            while not stop.is_set():
                c.execute("SELECT pg_sleep(0.01)")

    def look(application_name: str) -> tuple[float, int]:
        """(sessions running a query, sessions running one or just done) at a first look."""
        thread = threading.Thread(target=busy, args=(application_name,), daemon=True)
        thread.start()
        try:
            wait_until(
                lambda: one(
                    conn,
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                    (application_name,),
                ),
                timeout=10,
                what="the session to run",
            )
            ctx = Context(conn, 0, lambda: [], ("public", "r"), lambda: 0)
            _, running, _, _, astir = ActiveSessions()._sample(ctx, 3, 0.01)
            return running, astir
        finally:
            stop.set()
            thread.join(10)
            stop.clear()

    assert look(name) == (0.0, 0)
    running, astir = look("shop")
    assert running > 0 or astir > 0, (running, astir)


def test_a_role_allowed_one_connection_reads_the_signals_between_batches(
    conn: Conn, owner_dsn: str
) -> None:
    """The signals are read on a connection of their own; a role allowed a single
    connection cannot open it, so the worker reads them between its batches as before,
    says so once (with what the application's latency then misses), and finishes."""
    make_table(conn, 600)
    role = sql.Identifier(conninfo_to_dict(owner_dsn)["user"])
    conn.execute(sql.SQL("GRANT SELECT, UPDATE ON r TO {}").format(role))
    conn.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT 1").format(role))
    s = settings(batch_initial=50, batch_max=50, latency_probe="off")
    with capture_logs() as logs:
        Run(owner_dsn, "lone", s).join()
    (said,) = [e for e in logs if e["event"] == "backfill_signals_between_batches"]
    assert "too many connections" in said["reason"], said
    assert one(conn, "SELECT count(*) FROM r WHERE n <> 1") == 0


def test_the_signals_connection_dropped_is_opened_again_and_the_backfill_goes_on(
    dsn: str, conn: Conn
) -> None:
    """The signals' own connection is terminated mid-backfill: the readings stop until
    it is opened again (said once, then its return), and the backfill carries on to the
    end; only the batches' connection failing would stop it."""
    make_table(conn, 3000, per_row_ms=1.0)
    s = settings(batch_initial=50, batch_max=50, latency_probe="off")
    signals = (
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
        " AND datname = current_database()"
    )
    with capture_logs() as logs:
        run = Run(dsn, "dropped", s)
        pid = wait_until(
            lambda: conn.execute(signals, (WORKER_APPLICATION_NAME,)).fetchone(),
            timeout=30,
            what="the signals' connection",
        )[0]
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        wait_until(
            lambda: any(e["event"] == "backfill_signals_reconnected" for e in logs),
            timeout=30,
            what="the signals' connection to be opened again",
        )
        assert run.thread.is_alive(), "the backfill ended before the test could see it go on"
        run.join()
    lost = [e for e in logs if e["event"] == "backfill_signals_connection_lost"]
    assert len(lost) == 1, lost
    assert one(conn, "SELECT count(*) FROM r WHERE n <> 1") == 0
    after = conn.execute(signals, (WORKER_APPLICATION_NAME,)).fetchall()
    assert after == [], f"the signals' connection outlived the backfill: {after}"


def test_an_idle_database_gives_no_baseline_and_no_rest(dsn: str, conn: Conn) -> None:
    """No application when the backfill starts: nothing to measure against, so the
    Little's-law controller stays off and no batch rests."""
    make_table(conn, 600)
    s = settings(batch_initial=50, batch_max=50, latency_probe="off")
    with capture_logs() as logs:
        Run(dsn, "idle", s).join()
    bs = batches(logs)
    assert len(bs) >= 10 and all(e["duty"] == 1.0 and e["rest"] == 0 for e in bs), bs


def test_an_application_hidden_from_the_backfills_role_still_makes_it_rest(
    dsn: str, conn: Conn, owner_dsn: str
) -> None:
    """The backfill runs as an ordinary role without pg_read_all_stats, the application
    as another role: pg_stat_activity hides the application's sessions, so its latency
    cannot be measured and the database looks idle. The backfill says so once, with what
    to grant, and since pg_stat_database (visible to every role) shows transactions going
    on, it rests at duty_cycle instead of running flat out. Once the role has
    pg_read_all_stats, the next backfill takes the application's baseline instead."""
    make_table(conn, 6000, per_row_ms=0.5)
    role = conninfo_to_dict(owner_dsn)["user"]
    assert isinstance(role, str)
    conn.execute(sql.SQL("GRANT SELECT, UPDATE ON r TO {}").format(sql.Identifier(role)))
    stop = threading.Event()

    # another role's busy session: short queries on a table, hundreds a second (a
    # backend reports its transactions to pg_stat_database along with its table stats)
    conn.execute("CREATE TABLE busy (x int)")
    conn.execute("INSERT INTO busy VALUES (1)")

    def app() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            while not stop.is_set():
                c.execute("SELECT pg_sleep(0.002) FROM busy")

    thread = threading.Thread(target=app, daemon=True)
    thread.start()
    s = settings(batch_initial=50, batch_max=50, duty_cycle=0.5, latency_probe="off")
    try:
        with capture_logs() as blind:
            Run(owner_dsn, "blind", s).join()
        conn.execute(sql.SQL("GRANT pg_read_all_stats TO {}").format(sql.Identifier(role)))
        with capture_logs() as seen:
            Run(owner_dsn, "seen", s, Backfill("r", {"note": "'x'"})).join()
    finally:
        stop.set()
        thread.join(10)
    reports = [
        e
        for e in blind
        if e["event"] == "backfill_signal_unreadable" and e["signal"] == "active_sessions"
    ]
    assert len(reports) == 1, reports
    assert "pg_read_all_stats" in reports[0]["problem"]
    rested = [e for e in batches(blind) if e["rest"] > 0]
    assert rested and all(e["duty"] == 0.5 for e in rested), batches(blind)
    assert one(conn, "SELECT count(*) FROM r WHERE n <> 1 OR note IS DISTINCT FROM 'x'") == 0
    assert not [e for e in seen if e["event"] == "backfill_signal_unreadable"]
    baseline = next(e for e in seen if e["event"] == "backfill_app_baseline")
    assert baseline["measured"], baseline
