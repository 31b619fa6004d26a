"""SIGTERM (a service manager, ``kubectl delete pod``) stops a migration as Ctrl-C does:
after the current batch or statement, its locks released, the migration ``paused``,
exit 3; ``resume`` then completes it exactly once. With one backfill worker and with two
(worker threads on connections of their own), with the signal sent from outside (it
lands where it lands) and landing in chosen statements while they are in flight.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest
from scenario_tools import backfill_progress, executor_backends, wait_until

pytestmark = pytest.mark.version_independent

ROWS = 6000


@pytest.fixture
def slow(dsn: str) -> Iterator[str]:
    """``slow(id, n)``: backfilling ``n = slow_inc(n)`` takes ~1 ms per row past id 500."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE slow (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0)")
        conn.execute("INSERT INTO slow (id) SELECT g FROM generate_series(1, %s) g", (ROWS,))
        conn.execute(
            "CREATE FUNCTION slow_inc(bigint, int) RETURNS int LANGUAGE sql VOLATILE AS"
            " $$ SELECT pg_sleep(CASE WHEN $1 > 500 THEN 0.001 ELSE 0 END); SELECT $2 + 1 $$"
        )
    yield dsn


def cli(dsn: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "onlineschema", *args, "--dsn", dsn]


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("ONLINESCHEMA_DSN", "DATABASE_URL")}
    return out


def query(dsn: str, sql: str, params: tuple[object, ...] = ()) -> object:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql.encode(), params).fetchone()
    assert row is not None
    return row[0] if len(row) == 1 else row


@pytest.mark.parametrize(
    ("signum", "workers"),
    [(signal.SIGTERM, 1), (signal.SIGTERM, 2), (signal.SIGINT, 2)],
    ids=["sigterm-1-worker", "sigterm-2-workers", "sigint-2-workers"],
)
def test_signal_stops_resumably_and_resume_completes_once(
    slow: str, signum: signal.Signals, workers: int
) -> None:
    dsn = slow
    args = cli(
        dsn,
        "backfill",
        "--table",
        "slow",
        "--set",
        "n = slow_inc(id, n)",
        "--name",
        "slow",
        "--workers",
        str(workers),
    )
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )
    try:
        wait_until(lambda: (backfill_progress(dsn, "slow") or 0) > 0, timeout=30, what="batches")
        proc.send_signal(signum)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    how = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
    stopped_then_resumed_once(dsn, proc.returncode, err, how)


#: Where SIGTERM lands: (a word of the statement in flight, which such statement, backfill
#: workers). With one worker, all on the connection the migration runs on: the batch's
#: UPDATE, the chunk claim (the first such statement is the migration's lock), the lock on
#: the chunk's row, the read of who waits on the batch, the progress written between
#: batches; with two, the progress the main thread writes while the workers run batches.
POINTS = [
    ("slow_inc", 3, 1),
    ("pg_try_advisory_lock(hashtext($1), $2)", 3, 1),
    ("FOR UPDATE", 3, 1),
    ("pg_blocking_pids", 3, 1),
    ("rows_per_second =", 2, 1),
    ("rows_per_second =", 2, 2),
]


@pytest.mark.parametrize(
    ("word", "nth", "workers"),
    POINTS,
    ids=["batch", "claim", "chunk-lock", "waiters", "progress", "progress-2-workers"],
)
def test_sigterm_mid_statement_stops_resumably(
    slow: str, word: str, nth: int, workers: int
) -> None:
    """SIGTERM landing after a statement was sent and before psycopg waits for its result
    (psycopg cancels only what it waits on) leaves that statement running and the
    connection refusing every command after. The stop must still win: exit 3, the
    migration paused with the reason, no session left, and resume completing it once;
    not the cleanup's error, nor a reconnect that carries the backfill on to the end."""
    dsn = slow
    args = ["backfill", "--dsn", dsn, "--table", "slow", "--set", "n = slow_inc(id, n)"]
    proc = interrupted(word, nth, [*args, "--name", "slow", "--workers", str(workers)])
    stopped_then_resumed_once(dsn, proc.returncode, proc.stderr, "SIGTERM")


def interrupted(word: str, nth: int, args: list[str]) -> subprocess.CompletedProcess[str]:
    """``onlineschema ARGS`` with SIGTERM landing in the ``nth`` statement containing
    ``word`` while it is in flight (tests/interrupt_cli.py)."""
    helper = os.path.join(os.path.dirname(__file__), "interrupt_cli.py")
    proc = subprocess.run(
        [sys.executable, helper, word, str(nth), "--", *args],
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 97, proc.stderr[-3000:]  # it landed
    return proc


#: The same for the steps around a backfill: the index built concurrently, the constraint's
#: validation, and the write that starts a step (the second: the index's).
DDL_POINTS = [("CREATE INDEX CONCURRENTLY", 1), ("VALIDATE CONSTRAINT", 1), ("attempts + 1", 2)]


@pytest.mark.parametrize(("word", "nth"), DDL_POINTS, ids=["index-build", "validate", "step-start"])
def test_sigterm_mid_ddl_stops_resumably(slow: str, word: str, nth: int) -> None:
    """SIGTERM landing while a step's own statement is in flight: the statement is
    cancelled and its session ended, the migration is paused (not failed, not carried on),
    and resume leaves the schema as asked: the index valid, the constraint validated."""
    dsn = slow
    changes = (
        "CREATE INDEX slow_n ON slow (n); ALTER TABLE slow ADD CONSTRAINT slow_n_ok CHECK (n >= 0)"
    )
    proc = interrupted(
        word, nth, ["apply", "--dsn", dsn, "--name", "ddl", "--yes", "--sql", changes]
    )
    stopped_paused(dsn, "ddl", proc.returncode, proc.stderr, "SIGTERM")
    resumed = subprocess.run(
        [*cli(dsn, "resume", "ddl")], env=env(), capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert query(
        dsn,
        "SELECT (SELECT indisvalid FROM pg_index WHERE indexrelid = 'slow_n'::regclass),"
        " (SELECT convalidated FROM pg_constraint WHERE conname = 'slow_n_ok'),"
        " (SELECT count(*) FROM pg_class WHERE relname LIKE 'slow_n%%')",
    ) == (True, True, 1)


def stopped_then_resumed_once(dsn: str, returncode: int, err: str, how: str) -> None:
    """The stopped run left the migration paused part-way with only whole batches
    committed, and ``resume`` completes it exactly once."""
    stopped_paused(dsn, "slow", returncode, err, how)
    assert "onlineschema resume slow" in err
    done = backfill_progress(dsn, "slow") or 0
    assert 0 < done < ROWS, "stopped part-way"
    # what was committed before the stop is exactly what the batches recorded
    assert query(dsn, "SELECT count(*) FROM slow WHERE n = 1") == done
    assert query(dsn, "SELECT count(*) FROM slow WHERE n > 1") == 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION slow_inc(bigint, int) RETURNS int LANGUAGE sql"
            " VOLATILE AS $$ SELECT $2 + 1 $$"
        )
    resumed = subprocess.run(
        [*cli(dsn, "resume", "slow")], env=env(), capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert query(dsn, "SELECT count(*) FROM slow WHERE n = 1") == ROWS
    assert query(dsn, "SELECT state FROM onlineschema.migrations WHERE name = 'slow'") == (
        "completed"
    )


def stopped_paused(dsn: str, name: str, returncode: int, err: str, how: str) -> None:
    """The run stopped with exit 3 and no traceback, said why, left migration ``name``
    paused with that reason, and no session of its process is left."""
    assert returncode == 3, err[-3000:]
    assert "Traceback" not in err
    assert f"interrupted ({how})" in err
    state, error = query(
        dsn, "SELECT state, last_error FROM onlineschema.migrations WHERE name = %s", (name,)
    )  # type: ignore[misc]
    assert (state, error) == ("paused", f"interrupted ({how})")
    # no session of the stopped process is left, so none holds a lock (a session whose
    # statement was cancelled ends once the server has read that its client is gone)
    wait_until(lambda: executor_backends(dsn) == [], timeout=10, what="the sessions to end")
