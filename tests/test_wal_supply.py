"""The backfill warns before its first batch when the server has fewer WAL segments ready
for reuse than it will write (``onlineschema/backfill/wal.py``): past them the server
creates a segment file inside a WAL write, and every commit waits meanwhile (the stalls
of 50-200 ms in ``benchmarks/README.md``, lock impact).

Each test has a server of its own: how many segments a server keeps depends on all the
WAL it wrote before, which a shared server's other tests change.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

from onlineschema import AddColumn, BackfillSettings, Executor, Settings
from onlineschema.backfill.wal import MB, WAL_PER_BYTE
from onlineschema.embedded.server import LocalServer

pytestmark = pytest.mark.version_independent

Conn = psycopg.Connection[Any]
ROWS = 200_000  # about 22 MB with its indexes: 65 MB of WAL by the estimate


@pytest.fixture
def server(pg_version: int) -> Iterator[LocalServer]:
    # a fresh cluster keeps few segments; min_wal_size decides how many it keeps later
    with LocalServer(pg_version, settings={"min_wal_size": "32MB"}) as srv:
        yield srv


def one(conn: Conn, query: str, params: Any = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def ready_mb(conn: Conn) -> int:
    """Segments after the one being written: the ones kept for reuse."""
    return int(
        one(
            conn,
            "SELECT count(*) * 16 FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'"
            " AND name > pg_walfile_name(pg_current_wal_insert_lsn())",
        )
    )


def make_orders(conn: Conn) -> int:
    conn.execute(
        "CREATE TABLE orders (id bigint PRIMARY KEY, customer int NOT NULL,"
        " amount numeric NOT NULL, note text NOT NULL)"
    )
    conn.execute(
        "INSERT INTO orders SELECT g, g %% 1000, g * 0.01, md5(g::text)"
        " FROM generate_series(1, %s) g",
        (ROWS,),
    )
    conn.execute("CREATE INDEX ON orders (customer)")
    conn.execute("VACUUM ANALYZE orders")
    return int(one(conn, "SELECT pg_table_size('orders') + pg_indexes_size('orders')"))


def backfill(dsn: str, column: str) -> list[dict[str, Any]]:
    s = Settings(backfill=BackfillSettings(vacuum=False, batch_initial=2000, batch_max=5000))
    with capture_logs() as logs, Executor(dsn, s) as ex:
        ex.apply([AddColumn("orders", column, "int", backfill="customer + 1")], column)
    return [e for e in logs if e["event"] == "backfill_wal_short"]


def test_a_server_short_of_wal_segments_is_named_before_the_first_batch(
    server: LocalServer,
) -> None:
    """A fresh server has next to no segments kept: the warning says how much WAL the
    backfill will write, how much is ready, and what to raise; its estimate is within
    a factor of 1.5 of the WAL the backfill then wrote (a checkpoint just before it, as
    at any time a checkpoint may just have run)."""
    dsn = server.dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        size = make_orders(conn)
        conn.execute("CHECKPOINT")
        ready = ready_mb(conn)
        before = one(conn, "SELECT pg_current_wal_insert_lsn()")
        warnings = backfill(dsn, "c1")
        wrote = one(conn, "SELECT pg_current_wal_insert_lsn() - %s::pg_lsn", (before,))
    assert len(warnings) == 1, warnings
    (w,) = warnings
    assert w["ready_mb"] == ready < w["needed_mb"], (w, ready)
    assert w["needed_mb"] == int(WAL_PER_BYTE * size) // MB
    assert w["min_wal_size_mb"] == 32
    assert f"Raise min_wal_size (now 32 MB) to {w['needed_mb']} MB or more" in w["advice"]
    assert 1 / 1.5 <= float(wrote) / (WAL_PER_BYTE * size) <= 1.5, (int(wrote) // MB, size // MB)


def test_no_warning_when_the_server_has_the_segments_ready(server: LocalServer) -> None:
    """The same backfill once the server keeps 128 MB of segments (min_wal_size raised,
    128 MB of WAL written and retired by a checkpoint): no warning."""
    dsn = server.dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        make_orders(conn)
        conn.execute("ALTER SYSTEM SET min_wal_size = '256MB'")
        conn.execute("SELECT pg_reload_conf()")
        for _ in range(128):
            conn.execute("SELECT pg_logical_emit_message(false, 'w', repeat('x', 1048576))")
        conn.execute("CHECKPOINT")
        assert ready_mb(conn) >= 96
        assert backfill(dsn, "c1") == []
