"""SIGTERM (a service manager, ``kubectl delete pod``) stops a migration as Ctrl-C does:
after the current batch or statement, its locks released, the migration ``paused``,
exit 3; ``resume`` then completes it exactly once. With one backfill worker and with two
(worker threads on connections of their own).
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
    assert proc.returncode == 3, err[-3000:]
    assert "Traceback" not in err
    assert f"interrupted ({how})" in err and "onlineschema resume slow" in err
    state, error = query(
        dsn, "SELECT state, last_error FROM onlineschema.migrations WHERE name = 'slow'"
    )  # type: ignore[misc]
    assert (state, error) == ("paused", f"interrupted ({how})")
    # no session of the stopped process is left, so none holds a lock
    assert executor_backends(dsn) == []
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
