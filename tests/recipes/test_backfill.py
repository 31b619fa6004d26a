"""The backfill recipe: its golden plans and its lifecycle on a real server (moved from
test_lifecycle.py)."""

from __future__ import annotations

import pytest
from golden.cases import golden_ids
from golden.compare import check
from harness import (
    SMALL_BATCHES,
    Conn,
    lifecycle,
    run_until_paused,
)
from helpers import (
    catalog_snapshot,
    count,
    migration_state,
)
from structlog.testing import capture_logs

from onlineschema import (
    Backfill,
    Executor,
    PreflightError,
)


def test_backfill_with_where(dsn: str, orders: Conn) -> None:
    """Stopped half-way; abort keeps the rows already written (a warning says so) and
    leaves the catalog as it was; a new migration fills the rest."""
    change = Backfill("orders", {"note": "'none'"}, where="note IS NULL")
    others = orders.execute("SELECT md5(string_agg(note, ',' ORDER BY id)) FROM orders").fetchone()

    def half_way(conn: Conn) -> None:
        done = count(conn, "SELECT count(*) FROM orders WHERE note = 'none'")
        assert 0 < done < 200

    def finished(conn: Conn) -> None:
        assert count(conn, "SELECT count(*) FROM orders WHERE note IS NULL") == 0
        assert count(conn, "SELECT count(*) FROM orders WHERE note = 'none'") == 200
        assert (
            conn.execute(
                "SELECT md5(string_agg(note, ',' ORDER BY id)) FROM orders WHERE note <> 'none'"
            ).fetchone()
            == others
        )

    with capture_logs() as logs:
        lifecycle(
            dsn,
            orders,
            [change],
            mid_backfill=True,
            settings=SMALL_BATCHES,
            after_expand=half_way,
            after_finish=finished,
        )
    assert any(e["event"] == "abort_keeps_backfilled_rows" for e in logs)


def _keyset_table(conn: Conn) -> None:
    conn.execute("CREATE TABLE codes (code text PRIMARY KEY, n int NOT NULL, label text)")
    conn.execute("INSERT INTO codes SELECT 'c' || g, g, NULL FROM generate_series(1, 1500) g")


def _composite_table(conn: Conn) -> None:
    conn.execute(
        "CREATE TABLE lines (order_id int, line int, qty int, label text,"
        " PRIMARY KEY (order_id, line))"
    )
    conn.execute("INSERT INTO lines SELECT g / 10, g % 10, g, NULL FROM generate_series(1, 1500) g")


KEYSET = {
    "text_key": ("codes", _keyset_table, "code", "n - substr(code, 2)::int"),
    "composite_key": (
        "lines",
        _composite_table,
        "order_id::text || '.' || line",
        "qty - (order_id * 10 + line)",
    ),
}


@pytest.mark.parametrize("case", sorted(KEYSET))
def test_keyset_backfill_lifecycle(dsn: str, conn: Conn, case: str) -> None:
    table, setup, label, _ = KEYSET[case]
    setup(conn)
    change = Backfill(table, {"label": label})
    with Executor(dsn) as ex:
        (step,) = ex.plan([change]).steps
    assert step.details["strategy"] == "keyset"

    def half_way(conn: Conn) -> None:
        done = count(conn, f"SELECT count(*) FROM {table} WHERE label IS NOT NULL")  # noqa: S608 (test constants)
        assert 0 < done < 1500

    def finished(conn: Conn) -> None:
        assert (
            count(conn, f"SELECT count(*) FROM {table} WHERE label IS DISTINCT FROM {label}") == 0  # noqa: S608 (test constants)
        )

    lifecycle(
        dsn,
        conn,
        [change],
        tables=(table,),
        mid_backfill=True,
        settings=SMALL_BATCHES,
        after_expand=half_way,
        after_finish=finished,
    )


@pytest.mark.parametrize("case", sorted(KEYSET))
def test_keyset_backfill_paused_and_resumed_touches_each_row_once(
    dsn: str, conn: Conn, case: str
) -> None:
    """A non-idempotent ``x = x + 1`` over a text key and a composite key: after a pause
    half-way and a resume, every row was incremented exactly once."""
    table, setup, _, drift = KEYSET[case]
    setup(conn)
    column = "n" if table == "codes" else "qty"
    change = Backfill(table, {column: f"{column} + 1"})
    run_until_paused(dsn, [change], "inc", mid_backfill=True, settings=SMALL_BATCHES)
    assert 0 < count(conn, f"SELECT count(*) FROM {table} WHERE {drift} = 1") < 1500  # noqa: S608 (test constants)
    with Executor(dsn, SMALL_BATCHES) as ex:
        assert ex.resume("inc").state == "completed"
    assert conn.execute(f"SELECT {drift} AS d, count(*) FROM {table} GROUP BY 1").fetchall() == [  # noqa: S608 (test constants)
        (1, 1500)
    ]


def test_table_without_primary_key_refuses_a_user_backfill(dsn: str, conn: Conn) -> None:
    conn.execute("CREATE TABLE logs (msg text, level int)")
    conn.execute("INSERT INTO logs SELECT 'm' || g, g % 5 FROM generate_series(1, 100) g")
    before = catalog_snapshot(conn, "logs")
    with Executor(dsn) as ex, pytest.raises(PreflightError) as refused:
        ex.apply([Backfill("logs", {"level": "level + 1"})], "bump")
    text = str(refused.value)
    assert "no primary key" in text and "fix:" in text and "AddUnique" in text
    assert catalog_snapshot(conn, "logs") == before
    assert migration_state(conn, "bump") is None
    assert count(conn, "SELECT sum(level) FROM logs") == sum(g % 5 for g in range(1, 101))


@pytest.mark.server_independent
@pytest.mark.parametrize("case_id", golden_ids("backfill"))
def test_golden_plans(case_id: str, request: pytest.FixtureRequest) -> None:
    check(case_id, request.config)
