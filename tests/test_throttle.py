"""Throttling on database signals (issue 3): each signal pauses the backfill above one
threshold and lets it carry on at or below another, logged as ``backfill_throttled`` /
``backfill_unthrottled`` and recorded in the backfill's row; a signal that cannot be read
is reported once and ``on_unreadable_signal`` decides.

The replica-lag signal against a real standby is in test_replica.py.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from scenario_tools import wait_until
from structlog.testing import capture_logs

from onlineschema import Backfill, BackfillSettings, Executor, RetryPolicy, Settings
from onlineschema.throttle import Context, Reading, Signal, Throttle

Conn = psycopg.Connection[Any]
ROWS = 3000


def settings(**backfill: Any) -> Settings:
    base = dict(
        duty_cycle=1.0,
        max_replica_lag=0.0,
        control_interval=0.1,
        signal_interval=0.1,
        vacuum=False,
        chunks=2,
    )
    return Settings(
        retry=RetryPolicy(max_attempts=5, backoff_initial=0.01, backoff_max=0.05),
        backfill=BackfillSettings(**{**base, **backfill}),
    )


def one(conn: Conn, query: str, params: Any = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def make_table(conn: Conn, rows: int = ROWS) -> None:
    conn.execute("CREATE TABLE r (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0, note text)")
    conn.execute("INSERT INTO r (id) SELECT g FROM generate_series(1, %s) g", (rows,))


def events(logs: list[dict[str, Any]], name: str, **match: Any) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name and all(e.get(k) == v for k, v in match.items())]


def rows_done(conn: Conn, name: str) -> int:
    if one(conn, "SELECT to_regclass('onlineschema.chunks')") is None:
        return 0
    return int(
        one(
            conn,
            "SELECT coalesce(sum(rows_done), 0) FROM onlineschema.chunks WHERE migration = %s",
            (name,),
        )
    )


def throttle_reason(conn: Conn, name: str) -> str | None:
    if one(conn, "SELECT to_regclass('onlineschema.backfills')") is None:
        return None
    row = conn.execute(
        "SELECT throttle_reason FROM onlineschema.backfills WHERE migration = %s", (name,)
    ).fetchone()
    return row[0] if row else None


class Background:
    """Run a backfill in a thread; ``join()`` re-raises what it raised."""

    def __init__(self, dsn: str, change: Any, name: str, s: Settings) -> None:
        self.error: BaseException | None = None
        self.result: Any = None

        def run() -> None:
            try:
                with Executor(dsn, s) as ex:
                    self.result = ex.apply([change], name)
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout: float = 60) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the backfill did not finish"
        if self.error is not None:
            raise self.error
        return self.result


# --- the state machine, on its own ----------------------------------------------------------


@dataclass
class FakeSignal(Signal):
    """A signal whose reading the test sets."""

    reading: Reading
    name: str = "fake"

    def read(self, ctx: Context, s: Any) -> Reading:
        return self.reading

    def over(self, r: Reading, s: Any) -> str | None:
        return "too high" if r.values.get("v", 0) > 10 else None

    def clear(self, r: Reading, s: Any) -> bool:
        return r.values.get("v", 0) <= 5


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_hysteresis_between_pause_and_resume_thresholds() -> None:
    sig = FakeSignal(Reading(values={"v": 3}))
    clock = Clock()
    throttle = Throttle([sig], clock=clock)
    s = BackfillSettings()
    with capture_logs() as logs:
        for v, engaged in [(3, False), (11, True), (8, True), (12, True), (5, False), (8, False)]:
            sig.reading = Reading(values={"v": v})
            throttle.poll(None, s)  # type: ignore[arg-type]
            assert throttle.engaged is engaged, v
            assert throttle.reason == ("fake" if engaged else None)
            clock.now += 1.0
    assert [e["event"] for e in logs] == ["backfill_throttled", "backfill_unthrottled"]
    assert logs[0]["reason"] == "fake" and logs[0]["v"] == 11
    assert logs[1]["throttled_for"] == 3.0
    assert throttle.throttled_seconds() == 3.0


@pytest.mark.parametrize("policy", ["continue", "pause"])
def test_unreadable_signal_is_reported_once_and_the_policy_decides(policy: str) -> None:
    sig = FakeSignal(Reading(problem="no permission"))
    throttle = Throttle([sig], clock=Clock())
    s = BackfillSettings(on_unreadable_signal=policy)
    with capture_logs() as logs:
        for _ in range(3):
            throttle.poll(None, s)  # type: ignore[arg-type]
            assert throttle.engaged is (policy == "pause")
        sig.reading = Reading(values={"v": 1})
        throttle.poll(None, s)  # type: ignore[arg-type]
        assert not throttle.engaged
    reports = events(logs, "backfill_signal_unreadable")
    assert len(reports) == 1
    assert reports[0]["signal"] == "fake" and reports[0]["then"] == policy
    if policy == "pause":
        assert events(logs, "backfill_throttled", reason="fake_unreadable")


def test_settings_pairs_resume_never_above_pause() -> None:
    """A resume threshold set above its pause threshold acts as equal to it."""
    from onlineschema.throttle import ReplicaLag

    s = BackfillSettings(max_replica_lag=5.0, resume_replica_lag=50.0)
    sig = ReplicaLag()
    assert sig.over(Reading(values={"seconds": 6.0}), s)
    assert not sig.clear(Reading(values={"seconds": 6.0}), s)
    assert sig.clear(Reading(values={"seconds": 5.0}), s)


# --- signals read from a real server ---------------------------------------------------------


def test_sessions_waiting_on_a_batch_pause_it(dsn: str, conn: Conn) -> None:
    """A batch holds its rows' locks until it commits. A session that waited on them
    longer than max_blocked_wait throttles the backfill (lock_waiters): it pauses for
    blocked_cooldown and halves its batch size."""
    make_table(conn, 300)
    # row 60 is slow: while the batch sleeps on it, rows 1..59 are locked by the batch
    conn.execute(
        "CREATE FUNCTION slow_at(id bigint, n int) RETURNS int LANGUAGE sql VOLATILE AS"
        " $$ SELECT pg_sleep(CASE WHEN id = 60 THEN 1.5 ELSE 0 END); SELECT n + 1 $$"
    )
    s = settings(
        batch_initial=100,
        batch_max=100,
        chunks=1,
        max_blocked_wait=0.3,
        blocked_cooldown=0.5,
    )
    waited: list[float] = []

    def app_update() -> None:
        with psycopg.connect(dsn, autocommit=True) as app:
            t0 = time.monotonic()
            app.execute("UPDATE r SET note = 'app' WHERE id = 5")
            waited.append(time.monotonic() - t0)

    with capture_logs() as logs:
        bg = Background(dsn, Backfill("r", {"n": "slow_at(id, n)"}), "waiters", s)
        wait_until(
            lambda: one(conn, "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"),
            timeout=30,
            what="the batch to reach the slow row",
        )
        app = threading.Thread(target=app_update)
        app.start()
        bg.join()
        app.join(10)
    assert waited and waited[0] > 0.3  # the application really waited on the batch
    throttled = events(logs, "backfill_throttled", reason="lock_waiters")
    assert len(throttled) == 1 and throttled[0]["seconds"] > 0.3
    assert events(logs, "backfill_unthrottled", reason="lock_waiters")
    sizes = [e["next_batch_size"] for e in logs if e["event"] == "backfill_batch"]
    # 100 rows: halved for the waiters, and halved again for taking 1.5 s > batch_target
    assert sizes[0] == 25
    assert one(conn, "SELECT count(*) FROM r WHERE n <> 1") == 0
    assert one(conn, "SELECT note FROM r WHERE id = 5") == "app"


@pytest.fixture
def repeatable_read_reader(dsn: str) -> Iterator[Conn]:
    """A session in a REPEATABLE READ transaction that read the table: it holds a lock on
    it and a snapshot that keeps vacuum from removing dead rows."""
    reader = psycopg.connect(dsn)
    try:
        yield reader
    finally:
        reader.close()


def test_long_transaction_on_the_table_pauses_the_backfill(
    dsn: str, conn: Conn, repeatable_read_reader: Conn
) -> None:
    make_table(conn)
    reader = repeatable_read_reader
    reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    reader.execute("SELECT count(*) FROM r").fetchone()
    s = settings(batch_initial=50, batch_max=50, max_transaction_age=0.3, sleep=0.01)
    with capture_logs() as logs:
        bg = Background(dsn, Backfill("r", {"n": "n + 1"}), "long_tx", s)
        wait_until(
            lambda: "long_transaction" in (throttle_reason(conn, "long_tx") or "").split(","),
            timeout=30,
            what="the backfill to throttle on the long transaction",
        )
        held = rows_done(conn, "long_tx")
        time.sleep(1.0)
        assert rows_done(conn, "long_tx") == held  # no progress while throttled
        assert held < ROWS
        reader.rollback()
        bg.join()
    assert one(conn, "SELECT count(*) FROM r WHERE n <> 1") == 0
    (throttled,) = events(logs, "backfill_throttled", reason="long_transaction")
    assert throttled["pid"] == reader.info.backend_pid
    assert events(logs, "backfill_unthrottled", reason="long_transaction")
    row = conn.execute(
        "SELECT throttle_reason, throttled_seconds FROM onlineschema.backfills"
        " WHERE migration = 'long_tx'"
    ).fetchone()
    assert row is not None and row[0] is None and row[1] >= 1.0


def test_vacuum_of_the_table_pauses_the_backfill_when_asked(dsn: str, conn: Conn) -> None:
    """pause_on_vacuum: while a (slowed-down) VACUUM of the table runs, no batch runs
    (checked every 20 ms for half a second after the backfill has seen it), and the
    backfill carries on and finishes once the VACUUM has ended.

    The VACUUM lasts as long as the test wants: wide rows give it a few hundred pages,
    which at one cost-delay sleep a page take it minutes, and the test cancels it. (A
    VACUUM that ends on its own after a few seconds raced the backfill's start on a
    loaded machine: the backfill could start after it.)"""
    make_table(conn)
    conn.execute("UPDATE r SET note = repeat('x', 500)")  # ~14 rows a page
    vacuum_pid: list[int] = []

    def slow_vacuum() -> None:
        with psycopg.connect(dsn, autocommit=True) as v:
            vacuum_pid.append(v.info.backend_pid)
            v.execute("SET vacuum_cost_delay = 100")
            v.execute("SET vacuum_cost_limit = 1")
            with contextlib.suppress(psycopg.errors.QueryCanceled):
                v.execute("VACUUM r")

    def vacuuming() -> bool:
        return bool(
            one(conn, "SELECT count(*) FROM pg_stat_progress_vacuum WHERE relid = 'r'::regclass")
        )

    vac = threading.Thread(target=slow_vacuum)
    vac.start()
    try:
        wait_until(vacuuming, timeout=30, what="the VACUUM to start")
        with capture_logs() as logs:
            s = settings(pause_on_vacuum=True)
            bg = Background(dsn, Backfill("r", {"n": "n + 1"}), "vac", s)
            wait_until(
                lambda: "vacuum" in (throttle_reason(conn, "vac") or "").split(","),
                timeout=30,
                what="the backfill to throttle on the VACUUM",
            )
            # no batch runs while the VACUUM is there
            samples = []
            for _ in range(25):
                samples.append((vacuuming(), rows_done(conn, "vac")))
                time.sleep(0.02)
            assert all(running for running, _ in samples), "the VACUUM ended: make it slower"
            moved = [done for _, done in samples if done]
            assert not moved, f"batches ran while the VACUUM ran: rows done went to {moved[0]}"
            one(conn, "SELECT pg_cancel_backend(%s)", (vacuum_pid[0],))
            vac.join(60)
            bg.join()
    finally:
        if vac.is_alive():  # the test failed: end the VACUUM so its database can go
            one(conn, "SELECT pg_cancel_backend(%s)", (vacuum_pid[0],))
            vac.join(60)
    assert events(logs, "backfill_throttled", reason="vacuum")
    assert events(logs, "backfill_unthrottled", reason="vacuum")
    assert one(conn, "SELECT count(*) FROM r WHERE n <> 1") == 0


def test_unreadable_signals_as_an_ordinary_role(
    dsn: str, conn: Conn, owner_dsn: str, repeatable_read_reader: Conn
) -> None:
    """As a role that may update the table but is neither superuser nor owner nor
    pg_read_all_stats: the replica-lag signal finds no standby, the long-transaction
    signal cannot see another role's transaction and the active-sessions signal cannot
    see another role's sessions; each is reported once. With
    on_unreadable_signal=pause the backfill waits; `set on_unreadable_signal=continue`
    from another session lets it finish. The table's VACUUM is not allowed either."""
    make_table(conn)
    role = conninfo_to_dict(owner_dsn)["user"]
    conn.execute(f'GRANT SELECT, UPDATE ON r TO "{role}"')
    reader = repeatable_read_reader  # a superuser's transaction on the table
    reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    reader.execute("SELECT count(*) FROM r").fetchone()
    s = settings(
        on_unreadable_signal="pause",
        max_replica_lag=5.0,
        vacuum=True,
        vacuum_every=100,
        batch_initial=100,
        batch_max=100,
        sleep=0.02,  # some ticks of the coordinator (which starts vacuums) in between
    )
    with capture_logs() as logs:
        bg = Background(owner_dsn, Backfill("r", {"n": "n + 1"}), "blind", s)
        wait_until(
            lambda: (throttle_reason(conn, "blind") or "").count("_unreadable") == 3,
            timeout=30,
            what="the backfill to wait on the three unreadable signals",
        )
        assert rows_done(conn, "blind") == 0
        with Executor(owner_dsn) as ex:
            ex.set("blind", {"on_unreadable_signal": "continue"})
        bg.join()
    reader.rollback()
    assert one(conn, "SELECT count(*) FROM r WHERE n <> 1") == 0
    reports = {e["signal"]: e for e in events(logs, "backfill_signal_unreadable")}
    assert sorted(reports) == ["active_sessions", "long_transaction", "replica_lag"]
    assert len(events(logs, "backfill_signal_unreadable")) == 3  # once each
    assert "pg_read_all_stats" in reports["long_transaction"]["problem"]
    assert "pg_read_all_stats" in reports["active_sessions"]["problem"]
    assert "no standby" in reports["replica_lag"]["problem"]
    assert len(events(logs, "backfill_vacuum_unavailable")) == 1
    assert not events(logs, "backfill_vacuum")
