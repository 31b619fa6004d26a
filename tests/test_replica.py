"""Replica lag throttling against a real streaming standby (issue 3).

A dedicated primary (its own LocalServer, not the session's) and a standby cloned from it
with ``pg_basebackup -R``; the test pauses replay on the standby
(``pg_wal_replay_pause()``), shows that the backfill stops making progress while the lag
is over its limit (a ``backfill_throttled`` event, rows done unchanged for a while) and
that it carries on and finishes after ``pg_wal_replay_resume()``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from scenario_tools import wait_until
from structlog.testing import capture_logs

from onlineschema import Backfill, BackfillSettings, Executor, RetryPolicy, Settings
from onlineschema.embedded.server import LocalServer, start_standby

Conn = psycopg.Connection[Any]
ROWS = 20_000


@pytest.fixture(scope="module")
def servers(pg_version: int) -> Iterator[tuple[LocalServer, LocalServer]]:
    primary = LocalServer(pg_version).start()
    try:
        # the standby reports its replay position every second (default 10 s), so the
        # primary's view of the lag follows quickly once replay resumes
        standby = start_standby(primary, settings={"wal_receiver_status_interval": "1s"})
        try:
            yield primary, standby
        finally:
            standby.stop()
    finally:
        primary.stop()


def one(conn: Conn, query: str, params: Any = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


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


def throttle_reason(conn: Conn, name: str) -> str:
    if one(conn, "SELECT to_regclass('onlineschema.backfills')") is None:
        return ""
    row = conn.execute(
        "SELECT throttle_reason FROM onlineschema.backfills WHERE migration = %s", (name,)
    ).fetchone()
    return (row[0] or "") if row else ""


def caught_up(primary: Conn) -> bool:
    return bool(
        one(
            primary,
            "SELECT count(*) = 1 AND bool_and(replay_lsn = pg_current_wal_lsn())"
            " FROM pg_stat_replication",
        )
    )


def run_with_replay_paused(
    servers: tuple[LocalServer, LocalServer], reason: str, **backfill: Any
) -> list[dict[str, Any]]:
    primary, standby = servers
    db = f"rep_{uuid.uuid4().hex[:8]}"
    dsn = primary.create_database(db)
    name = "lagged"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE r (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0)")
        conn.execute("INSERT INTO r (id) SELECT g FROM generate_series(1, %s) g", (ROWS,))
        wait_until(lambda: caught_up(conn), timeout=30, what="the standby to catch up")
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        psycopg.connect(standby.dsn(db), autocommit=True) as replica,
    ):
        replica.execute("SELECT pg_wal_replay_pause()")
        settings = Settings(
            retry=RetryPolicy(max_attempts=5, backoff_initial=0.01, backoff_max=0.05),
            backfill=BackfillSettings(
                **{
                    "duty_cycle": 1.0,
                    "batch_initial": 200,
                    "batch_max": 200,
                    "sleep": 0.01,
                    "signal_interval": 0.1,
                    "control_interval": 0.1,
                    "vacuum": False,
                    **backfill,
                }
            ),
        )
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with Executor(dsn, settings) as ex:
                    assert ex.apply([Backfill("r", {"n": "n + 1"})], name).state == "completed"
            except BaseException as exc:
                errors.append(exc)

        with capture_logs() as logs:
            bg = threading.Thread(target=run, daemon=True)
            bg.start()
            try:
                wait_until(
                    lambda: reason in throttle_reason(conn, name),
                    timeout=30,
                    what=f"the backfill to throttle on {reason}",
                )
                held = rows_done(conn, name)
                time.sleep(1.5)
                assert rows_done(conn, name) == held, "rows done while replay was paused"
                assert held < ROWS
                assert one(replica, "SELECT pg_is_wal_replay_paused()")
            finally:
                replica.execute("SELECT pg_wal_replay_resume()")
                bg.join(120)
        assert not bg.is_alive()
        if errors:
            raise errors[0]
        assert one(conn, "SELECT count(*) FROM r WHERE n <> 1") == 0
        wait_until(
            lambda: one(replica, "SELECT count(*) FROM r WHERE n = 1") == ROWS,
            timeout=30,
            what="the standby to replay the whole backfill",
        )
    primary.drop_database(db)
    return logs


def test_backfill_waits_for_a_standby_whose_replay_is_paused(
    servers: tuple[LocalServer, LocalServer],
) -> None:
    """Bytes behind as the primary sees them in pg_stat_replication."""
    logs = run_with_replay_paused(
        servers,
        "replica_lag",
        max_replica_lag=0.0,
        max_replica_lag_bytes=256 * 1024,
        resume_replica_lag_bytes=16 * 1024,
    )
    throttled = [e for e in logs if e["event"] == "backfill_throttled"]
    released = [e for e in logs if e["event"] == "backfill_unthrottled"]
    # after replay resumes, the full-speed backfill may briefly pass this tiny limit again
    assert {e["reason"] for e in throttled + released} == {"replica_lag"}
    assert len(throttled) == len(released) >= 1
    assert throttled[0]["bytes"] > 256 * 1024 and throttled[0]["standbys"] == 1
    assert all(e["bytes"] <= 16 * 1024 for e in released)


def test_backfill_reads_the_lag_on_the_standby_itself(
    servers: tuple[LocalServer, LocalServer],
) -> None:
    """Replay delay in seconds, read on the standby through replica_dsn."""
    _, standby = servers
    logs = run_with_replay_paused(
        servers,
        "replica_lag_dsn",
        max_replica_lag=0.5,
        resume_replica_lag=0.2,
        replica_dsn=standby.dsn(),
    )
    throttled = [e for e in logs if e["event"] == "backfill_throttled"]
    dsn_view = [e for e in throttled if e["reason"] == "replica_lag_dsn"]
    assert dsn_view and dsn_view[0]["seconds"] > 0.5
    released = [e["reason"] for e in logs if e["event"] == "backfill_unthrottled"]
    assert sorted(released) == sorted(e["reason"] for e in throttled)
    assert not [e for e in logs if e["event"] == "backfill_signal_unreadable"]


def test_hidden_lag_is_reported_once_then_read_once_granted(
    servers: tuple[LocalServer, LocalServer],
) -> None:
    """As a role without pg_monitor, the standby's positions in pg_stat_replication are
    hidden: reported once, and with on_unreadable_signal=pause the backfill waits. Once
    the role is granted pg_monitor the lag is read (replay is paused: over the limit),
    and the backfill finishes after replay resumes."""
    primary, standby = servers
    suffix = uuid.uuid4().hex[:8]
    db, role = f"rep_{suffix}", f"lagapp_{suffix}"
    dsn = primary.create_database(db)
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        admin.execute(f'GRANT CREATE ON DATABASE "{db}" TO "{role}"')
        admin.execute("CREATE TABLE r (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0)")
        admin.execute("INSERT INTO r (id) SELECT g FROM generate_series(1, %s) g", (ROWS,))
        admin.execute(f'ALTER TABLE r OWNER TO "{role}"')
        wait_until(lambda: caught_up(admin), timeout=30, what="the standby to catch up")
    settings = Settings(
        retry=RetryPolicy(max_attempts=5, backoff_initial=0.01, backoff_max=0.05),
        backfill=BackfillSettings(
            duty_cycle=1.0,
            batch_initial=200,
            batch_max=200,
            sleep=0.01,
            signal_interval=0.1,
            control_interval=0.1,
            vacuum=False,
            max_replica_lag=0.0,
            max_replica_lag_bytes=256 * 1024,
            on_unreadable_signal="pause",
            # the admin's session is hidden from the role too: the active-sessions
            # signal would wait on it as well (test_pace covers that one)
            app_latency_target=0.0,
            busy_sessions=0.0,
        ),
    )
    role_dsn = make_conninfo(dsn, user=role)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with Executor(role_dsn, settings) as ex:
                assert ex.apply([Backfill("r", {"n": "n + 1"})], "hidden").state == "completed"
        except BaseException as exc:
            errors.append(exc)

    try:
        with (
            psycopg.connect(dsn, autocommit=True) as admin,
            psycopg.connect(standby.dsn(db), autocommit=True) as replica,
            capture_logs() as logs,
        ):
            replica.execute("SELECT pg_wal_replay_pause()")
            bg = threading.Thread(target=run, daemon=True)
            bg.start()
            try:
                wait_until(
                    lambda: throttle_reason(admin, "hidden") == "replica_lag_unreadable",
                    timeout=30,
                    what="the backfill to wait on the hidden lag",
                )
                assert rows_done(admin, "hidden") == 0
                admin.execute(f'GRANT pg_monitor TO "{role}"')
                wait_until(
                    lambda: throttle_reason(admin, "hidden") == "replica_lag",
                    timeout=30,
                    what="the backfill to read the lag, over its limit",
                )
            finally:
                replica.execute("SELECT pg_wal_replay_resume()")
                bg.join(120)
        assert not bg.is_alive()
        if errors:
            raise errors[0]
        unreadable = [e for e in logs if e["event"] == "backfill_signal_unreadable"]
        assert len(unreadable) == 1 and unreadable[0]["signal"] == "replica_lag"
        assert "pg_monitor" in unreadable[0]["problem"]
        reasons = [e["reason"] for e in logs if e["event"] == "backfill_throttled"]
        assert reasons[0] == "replica_lag_unreadable" and "replica_lag" in reasons
    finally:
        primary.drop_database(db)
        with psycopg.connect(primary.dsn(), autocommit=True) as admin:
            admin.execute(f'DROP ROLE "{role}"')
