"""Connections that drop and servers that restart, in the middle of a migration: the
executor (and its backfill workers) connect again within the reconnect budget and carry
on from the state in the database, exactly once.

Every migration here backfills ``n = n + 1`` (not idempotent: a batch applied twice
leaves 2, a lost one 0) and builds an index on a slow expression (so the build is caught
half-way, invalid). Each fault runs 20 times in a loop in one test:

* the executor's own sessions terminated (``pg_terminate_backend``) at random points;
* the server stopped (fast, and immediate: a crash) mid-backfill and mid-index-build and
  started again a second later;
* past the budget: exit 3 (ConnectionLost), and ``resume`` completes it.
"""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import psycopg
import pytest
from scenario_tools import backfill_progress, executor_backends, invalid_index, wait_until

from onlineschema import Executor
from onlineschema.backfill import BackfillSettings
from onlineschema.changes import AddIndex, Backfill, Change
from onlineschema.embedded.server import LocalServer
from onlineschema.errors import ConnectionLost
from onlineschema.executor import Result, Settings
from onlineschema.reconnect import is_disconnect

pytestmark = pytest.mark.version_independent

ROWS = 2000
ITERATIONS = 20

SETTINGS = Settings(
    reconnect_budget=60.0,
    # old transactions are not waited out before the build: the test's faults are the
    # only thing in the way
    long_transaction=60.0,
    backfill=BackfillSettings(
        batch_initial=100, batch_min=10, batch_max=200, batch_target=0.02, duty_cycle=1.0
    ),
)


def make_table(dsn: str, table: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION slow_id(v int) RETURNS int IMMUTABLE LANGUAGE plpgsql"
            " AS 'BEGIN PERFORM pg_sleep(0.0003); RETURN v; END'"
        )
        t = psycopg.sql.Identifier(table)
        conn.execute(
            psycopg.sql.SQL(
                "CREATE TABLE {} (id int PRIMARY KEY, n int NOT NULL DEFAULT 0)"
            ).format(t)
        )
        conn.execute(
            psycopg.sql.SQL("INSERT INTO {} (id) SELECT g FROM generate_series(1, %s) g").format(t),
            (ROWS,),
        )


def changes(table: str) -> list[Change]:
    return [
        Backfill(table, {"n": "n + 1"}),
        AddIndex(table, expressions=("slow_id(n)",), name=f"{table}_slow_idx"),
    ]


def must_be_completed_once(dsn: str, table: str, result: Result | BaseException | None) -> None:
    assert isinstance(result, Result), f"{table}: {result!r}"
    assert result.state == "completed", table
    with psycopg.connect(dsn, autocommit=True) as conn:
        counts = dict(
            conn.execute(
                psycopg.sql.SQL("SELECT n, count(*) FROM {} GROUP BY n").format(
                    psycopg.sql.Identifier(table)
                )
            ).fetchall()
        )
        state = conn.execute(
            "SELECT state FROM onlineschema.migrations WHERE name = %s", (table,)
        ).fetchone()
        valid = conn.execute(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE c.relname = %s",
            (f"{table}_slow_idx",),
        ).fetchall()
    # every row updated exactly once: none lost (0), none twice (2)
    assert counts == {1: ROWS}, f"{table}: rows by n {counts}"
    assert state == ("completed",), table
    assert valid == [(True,)], f"{table}: the index (valid?) {valid}"


class Run(threading.Thread):
    """``Executor.apply`` of a migration in a thread; ``result`` is its Result or error."""

    def __init__(self, dsn: str, table: str, *, workers: int = 1, settings: Settings = SETTINGS):
        super().__init__(daemon=True)
        self.dsn, self.table, self.workers, self.settings = dsn, table, workers, settings
        self.result: Result | BaseException | None = None

    def run(self) -> None:
        try:
            with Executor(self.dsn, self.settings) as ex:
                self.result = ex.apply(changes(self.table), self.table, workers=self.workers)
        except BaseException as exc:
            self.result = exc

    def finish(self, timeout: float = 60) -> Result | BaseException | None:
        self.join(timeout)
        assert not self.is_alive(), f"{self.table}: the migration did not finish"
        return self.result


def test_is_disconnect_classifies_by_class_and_sqlstate(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as victim, psycopg.connect(dsn) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (victim.info.backend_pid,))
        with pytest.raises(psycopg.Error) as terminated:
            victim.execute("SELECT 1")
        with pytest.raises(psycopg.Error) as closed:
            victim.execute("SELECT 1")  # the connection is closed now
        with pytest.raises(psycopg.Error) as cancelled:
            admin.execute("SET LOCAL statement_timeout = '10ms'; SELECT pg_sleep(1)")
        admin.rollback()
        with pytest.raises(psycopg.Error) as broken_sql:
            admin.execute("SELECT * FROM no_such_table")
    assert is_disconnect(terminated.value), terminated.value
    assert is_disconnect(closed.value), closed.value
    # raised while handling a lost connection (e.g. recording the failure): still one
    try:
        try:
            raise terminated.value
        except psycopg.Error:
            raise RuntimeError("cleanup failed") from None
    except RuntimeError as chained:
        assert is_disconnect(chained)
    assert not is_disconnect(cancelled.value)  # 57014: the statement, not the connection
    assert not is_disconnect(broken_sql.value)
    assert not is_disconnect(ConnectionLost("budget spent"))


@pytest.mark.slow
def test_executor_sessions_terminated_at_random_points(dsn: str) -> None:
    """20 migrations (one or two backfill workers), each with its executor's sessions
    terminated once or twice at random moments: every one completes, each row updated
    exactly once, the index valid."""
    rng = random.Random(12)
    with psycopg.connect(dsn, autocommit=True) as admin:
        for i in range(ITERATIONS):
            table = f"t{i}"
            make_table(dsn, table)
            run = Run(dsn, table, workers=1 + i % 2)
            run.start()
            for _ in range(1 + i % 2):
                run.join(rng.uniform(0.05, 1.2))
                pids = executor_backends(dsn)
                if pids:
                    admin.execute(
                        "SELECT pg_terminate_backend(p) FROM unnest(%s::int[]) p", (pids,)
                    )
            must_be_completed_once(dsn, table, run.finish())


@pytest.fixture
def server(pg_version: int) -> Iterator[LocalServer]:
    """A server of the version under test of its own, to restart. A commit is on disk
    when it returns (``synchronous_commit``), so an immediate stop loses nothing
    committed, as on a production server."""
    with LocalServer(pg_version, settings={"synchronous_commit": "on"}) as srv:
        yield srv


def _when(dsn: str, table: str, phase: str) -> Callable[[], bool]:
    if phase == "backfill":
        return lambda: (backfill_progress(dsn, table) or 0) > 0
    return lambda: invalid_index(dsn, f"{table}_slow_idx")


@pytest.mark.slow
def test_server_restarted_mid_backfill_and_mid_index_build(server: LocalServer) -> None:
    """20 times: the server stopped fast or immediately (a crash), in the backfill or in
    the concurrent index build, and started a second later: the migration reconnects,
    carries on and completes, exactly once."""
    dsn = server.create_database("faults")
    for i in range(ITERATIONS):
        table = f"t{i}"
        mode = ("fast", "immediate")[i % 2]
        phase = ("backfill", "index build")[i // 2 % 2]
        make_table(dsn, table)
        run = Run(dsn, table)
        run.start()
        wait_until(_when(dsn, table, phase), timeout=30, what=f"{table}: the {phase}")
        server.restart(mode, down=1.0)
        must_be_completed_once(dsn, table, run.finish())


def test_past_the_budget_exit_3_and_resume_completes(server: LocalServer) -> None:
    """The server stays down longer than ``--reconnect-budget``: the CLI exits 3 saying
    what happened (resumable), and ``resume`` once it is back completes the migration
    exactly once."""
    dsn = server.create_database("faults")
    make_table(dsn, "t")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION slow_inc(int) RETURNS int LANGUAGE sql VOLATILE"
            " AS $$ SELECT pg_sleep(0.001); SELECT $1 + 1 $$"
        )
    env = {k: v for k, v in os.environ.items() if k not in ("ONLINESCHEMA_DSN", "DATABASE_URL")}
    cli = [sys.executable, "-m", "onlineschema", "--reconnect-budget", "1s"]
    proc = subprocess.Popen(
        [*cli, "backfill", "--dsn", dsn, "--table", "t", "--set", "n = slow_inc(n)", "--name", "t"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        wait_until(_when(dsn, "t", "backfill"), timeout=30, what="the backfill")
        server.restart("immediate", down=4.0)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, err[-3000:]
    assert "Traceback" not in err
    assert "lost the connection to the database" in err and "reconnect budget (1s" in err
    assert "onlineschema resume t" in err
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION slow_inc(int) RETURNS int LANGUAGE sql AS 'SELECT $1 + 1'"
        )
    with Executor(dsn, SETTINGS) as ex:
        result = ex.resume("t")
    assert result.state == "completed"
    with psycopg.connect(dsn, autocommit=True) as conn:
        counts = dict(conn.execute("SELECT n, count(*) FROM t GROUP BY n").fetchall())
    assert counts == {1: ROWS}, counts


def test_a_reconnect_fires_no_failed_hook(dsn: str) -> None:
    """A lost connection the executor carries on from is not a failure: the ``failed``
    hook does not fire, ``completed`` fires once."""
    make_table(dsn, "t")
    fired: list[str] = []
    hooks = {
        e: [lambda env: fired.append(env["ONLINESCHEMA_EVENT"])] for e in ("failed", "completed")
    }
    settings = dataclasses.replace(SETTINGS, hooks=hooks)
    run = Run(dsn, "t", settings=settings)
    run.start()
    wait_until(_when(dsn, "t", "backfill"), timeout=30, what="the backfill")
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(p) FROM unnest(%s::int[]) p", (executor_backends(dsn),)
        )
    must_be_completed_once(dsn, "t", run.finish())
    assert fired == ["completed"]
