"""Through a real PgBouncer in transaction mode (tests/pgbouncer.py): the pooler is
detected and said in ``plan`` and ``status``; a typical migration's whole lifecycle runs
(no server-side prepared statements, no session settings left on pooled server
connections); a backfill with two workers; two ``apply``\\s of one migration at once
(exactly one runs, the other exits 2); a process killed mid-backfill, then ``resume``
once its lease expired, exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from pgbouncer import PgBouncer
from scenario_tools import backfill_progress, wait_until

from onlineschema import Executor
from onlineschema.backfill import BackfillSettings
from onlineschema.changes import Backfill
from onlineschema.errors import AlreadyRunning
from onlineschema.executor import Settings

pytestmark = pytest.mark.version_independent

ROWS = 3000

EXAMPLE_SQL = """\
ALTER TABLE orders ADD COLUMN status text;
UPDATE orders SET status = CASE WHEN amount > 100 THEN 'big' ELSE 'small' END;
ALTER TABLE orders ALTER COLUMN status SET NOT NULL, ALTER COLUMN status SET DEFAULT 'small';
CREATE INDEX ON orders(status);
ALTER TABLE orders ADD FOREIGN KEY (user_id) REFERENCES users(id);
"""


@pytest.fixture(scope="module")
def bouncer(admin_dsn: str) -> Iterator[PgBouncer]:
    with PgBouncer(admin_dsn) as b:
        yield b


@pytest.fixture
def pooled(bouncer: PgBouncer, dsn: str) -> str:
    """The test database through PgBouncer (transaction mode)."""
    return bouncer.dsn_for(dsn)


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("ONLINESCHEMA_DSN", "DATABASE_URL")}


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "onlineschema", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env(),
        timeout=timeout,
    )


def value(dsn: str, query: str, params: tuple[Any, ...] = ()) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query.encode(), params).fetchone()
    assert row is not None
    return row[0] if len(row) == 1 else row


def make_shop(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id bigserial PRIMARY KEY)")
        conn.execute("CREATE TABLE orders (id bigserial PRIMARY KEY, user_id bigint, amount int)")
        conn.execute("INSERT INTO users SELECT FROM generate_series(1, 50)")
        conn.execute(
            "INSERT INTO orders (user_id, amount) SELECT 1 + i % 50, i * 3"
            " FROM generate_series(1, 300) i"
        )


def make_counter(dsn: str, *, slow: float = 0.0) -> None:
    """``t(id, n)`` with n = 0; ``bump(n)`` is ``n + 1``, ``slow`` seconds per row."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0)")
        conn.execute("INSERT INTO t (id) SELECT g FROM generate_series(1, %s) g", (ROWS,))
        conn.execute(
            "CREATE FUNCTION bump(int) RETURNS int LANGUAGE sql VOLATILE AS"
            f" $$ SELECT pg_sleep({slow}); SELECT $1 + 1 $$"
        )


def each_row_once(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        counts = dict(conn.execute("SELECT n, count(*) FROM t GROUP BY n").fetchall())
    assert counts == {1: ROWS}, f"rows by n: {counts}"


def test_pooler_detected_and_said_in_plan_and_status(dsn: str, pooled: str) -> None:
    make_shop(dsn)
    through = cli("plan", "--dsn", pooled, "--sql", EXAMPLE_SQL)
    assert through.returncode == 0, through.stderr
    assert "Connection: connected through a transaction pooler" in through.stdout
    direct = cli("plan", "--dsn", dsn, "--sql", EXAMPLE_SQL)
    assert direct.returncode == 0, direct.stderr
    assert "pooler" not in direct.stdout
    with Executor(pooled) as ex:
        assert ex.pooler is not None
    with Executor(dsn) as ex:
        assert ex.pooler is None


def test_whole_lifecycle_through_the_pooler(dsn: str, pooled: str, bouncer: PgBouncer) -> None:
    """apply (expand, backfill, index build, validate, contract) and status through
    PgBouncer in transaction mode: no prepared statement errors, nothing left on the
    pooled server connections (lock_timeout, statement_timeout, advisory locks)."""
    make_shop(dsn)
    done = cli("apply", "--dsn", pooled, "--sql", EXAMPLE_SQL, "--name", "shop", "--yes")
    assert done.returncode == 0, done.stderr[-4000:]
    assert "prepared statement" not in done.stderr
    status = cli("status", "--dsn", pooled, "shop")
    assert status.returncode == 0, status.stderr
    assert "transaction pooler" in status.stdout
    assert value(dsn, "SELECT state FROM onlineschema.migrations WHERE name = 'shop'") == (
        "completed"
    )
    assert value(dsn, "SELECT count(*) FROM orders WHERE status IS NULL") == 0
    assert value(dsn, "SELECT count(*) FROM orders WHERE status = 'big'") == 267
    assert value(
        dsn,
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE c.relname = 'orders_status_idx'",
    )
    # every server connection of the pool, held at once: none kept our settings
    conns = [psycopg.connect(pooled, prepare_threshold=None) for _ in range(8)]
    try:
        seen = [
            c.execute(
                "SELECT current_setting('lock_timeout'), current_setting('statement_timeout'),"
                " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                "  AND pid = pg_backend_pid())"
            ).fetchone()
            for c in conns
        ]
    finally:
        for c in conns:
            c.close()
    assert set(seen) == {("0", "0", 0)}, seen
    assert value(dsn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
    assert value(dsn, "SELECT count(*) FROM onlineschema.leases") == 0


def test_backfill_with_two_workers_through_the_pooler(dsn: str, pooled: str) -> None:
    make_counter(dsn)
    settings = Settings(backfill=BackfillSettings(batch_initial=100, batch_max=200, chunks=8))
    with Executor(pooled, settings) as ex:
        result = ex.apply([Backfill("t", {"n": "bump(n)"})], "bump", workers=2)
    assert result.state == "completed"
    each_row_once(dsn)
    claims = value(dsn, "SELECT sum(claims), count(*) FILTER (WHERE done) FROM onlineschema.chunks")
    assert claims[1] == 8 and claims[0] >= 8


def test_two_applys_at_once_through_the_pooler(dsn: str, pooled: str) -> None:
    """Both through the pooler: the lease lets exactly one run; the other exits 2
    naming the lease; the migration is applied once."""
    make_counter(dsn, slow=0.0005)
    args = [
        sys.executable, "-m", "onlineschema", "backfill", "--dsn", pooled, "--table", "t",
        "--set", "n = bump(n)", "--name", "bump",
    ]  # fmt: skip
    first = subprocess.Popen(
        args, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env()
    )
    try:
        wait_until(lambda: (backfill_progress(dsn, "bump") or 0) > 0, timeout=30, what="batches")
        second = cli(*args[3:])
        _out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err[-3000:]
    assert second.returncode == 2, second.stderr[-3000:]
    assert "lease" in second.stderr and "another process" in second.stderr
    each_row_once(dsn)


def test_killed_mid_backfill_through_the_pooler_then_resume(dsn: str, pooled: str) -> None:
    """A process running the migration through the pooler is SIGKILLed mid-backfill: its
    lease keeps a resume off until it expires (nothing renews it), then ``resume``
    completes the backfill exactly once."""
    make_counter(dsn, slow=0.001)
    script = textwrap.dedent(
        f"""
        from onlineschema import Executor
        from onlineschema.changes import Backfill
        from onlineschema.executor import Settings
        with Executor({pooled!r}, Settings(lease_ttl=3.0)) as ex:
            ex.apply([Backfill("t", {{"n": "bump(n)"}})], "bump", workers=2)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env=env())
    try:
        wait_until(lambda: (backfill_progress(dsn, "bump") or 0) > 200, timeout=30, what="batches")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert value(dsn, "SELECT count(*) FROM onlineschema.leases") == 1
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION bump(int) RETURNS int LANGUAGE sql AS 'SELECT $1 + 1'"
        )
    with Executor(pooled) as ex:
        with pytest.raises(AlreadyRunning, match="lease"):
            ex.resume("bump")
        # the killed process's sessions end (the pooler's server connections live on)
        wait_until(
            lambda: value(dsn, "SELECT expires_at < now() FROM onlineschema.leases"),
            timeout=10,
            what="the lease to expire",
        )
        result = ex.resume("bump", workers=2)
    assert result.state == "completed"
    each_row_once(dsn)


def test_prisma_deploy_through_the_pooler_is_refused_naming_the_direct_url(
    dsn: str, pooled: str, tmp_path: Any
) -> None:
    """Prisma Migrate's session advisory lock cannot be held through the pooler: deploy
    refuses before any DDL and names the direct connection (Prisma's directUrl)."""
    from onlineschema.errors import Refused
    from onlineschema.integrations import prisma

    migration = tmp_path / "migrations" / "20240101000000_init"
    migration.mkdir(parents=True)
    (migration / "migration.sql").write_text("CREATE TABLE made (id int PRIMARY KEY);\n")
    with pytest.raises(Refused) as refused:
        prisma.deploy(pooled, tmp_path / "migrations")
    assert "transaction pooler" in refused.value.problem
    assert refused.value.fix is not None and "directUrl" in refused.value.fix
    assert value(dsn, "SELECT to_regclass('made') IS NULL")
    # the direct connection deploys it
    assert prisma.deploy(dsn, tmp_path / "migrations") is not None
    assert value(dsn, "SELECT to_regclass('made') IS NOT NULL")


@pytest.mark.parametrize("first_through", ["direct", "pooler"])
def test_a_direct_and_a_pooled_apply_at_once_one_runs(
    dsn: str, pooled: str, first_through: str
) -> None:
    """The advisory lock (direct) and the lease (pooled) each check the other: whichever
    comes second is refused with exit 2, naming what holds the migration."""
    make_counter(dsn, slow=0.0005)
    first_dsn, second_dsn = (dsn, pooled) if first_through == "direct" else (pooled, dsn)
    tail = ["--table", "t", "--set", "n = bump(n)", "--name", "bump"]
    first = subprocess.Popen(
        [sys.executable, "-m", "onlineschema", "backfill", "--dsn", first_dsn, *tail],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env(),
    )  # fmt: skip
    try:
        wait_until(lambda: (backfill_progress(dsn, "bump") or 0) > 0, timeout=30, what="batches")
        second = cli("backfill", "--dsn", second_dsn, *tail)
        _out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err[-3000:]
    assert second.returncode == 2, second.stderr[-3000:]
    holder = "database session pid" if first_through == "direct" else "lease"
    assert holder in second.stderr, second.stderr[-3000:]
    each_row_once(dsn)
