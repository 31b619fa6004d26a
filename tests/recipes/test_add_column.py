"""The add_column recipe: its golden plans and its lifecycle on a real server (moved from
test_lifecycle.py)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from golden.cases import golden_ids
from golden.compare import check
from harness import (
    SIZE,
    SMALL_BATCHES,
    Check,
    Conn,
    lifecycle,
)
from helpers import (
    column_default,
    column_must_exist,
    column_must_not_exist,
    constraint_must_exist,
    constraint_must_not_exist,
    constraint_names,
    count,
    must_insert,
    must_not_insert,
    relfilenode,
    trigger_names,
)
from psycopg import errors as pgerr

from onlineschema import (
    AddColumn,
    Executor,
    Step,
)


def test_add_column_nullable(dsn: str, orders: Conn) -> None:
    def added(conn: Conn) -> None:
        column_must_exist(conn, "orders", "status", type="text", nullable=True)
        assert count(conn, "SELECT count(*) FROM orders WHERE status IS NULL") == 2000
        must_insert(conn, "INSERT INTO orders (user_id, amount) VALUES (1, 1)")

    lifecycle(
        dsn,
        orders,
        [AddColumn("orders", "status", "text")],
        after_expand=added,
        after_abort=lambda c: column_must_not_exist(c, "orders", "status"),
        after_finish=added,
    )


def test_add_column_constant_default_not_null_is_one_brief_step_without_rewrite(
    dsn: str, orders: Conn
) -> None:
    changes = [AddColumn("orders", "status", "text", nullable=False, default="'new'")]
    with Executor(dsn) as ex:
        plan = ex.plan(changes)
    assert [(s.action, s.scans, s.rewrites) for s in plan.steps] == [("add_column", False, False)]
    node = relfilenode(orders, "orders")

    def added(conn: Conn) -> None:
        column_must_exist(conn, "orders", "status", type="text", nullable=False)
        assert column_default(conn, "orders", "status") == "'new'::text"
        assert relfilenode(conn, "orders") == node, "the table was rewritten"
        # the fast default: stored once in pg_attribute, not written into every row
        assert conn.execute(
            "SELECT atthasmissing FROM pg_attribute"
            " WHERE attrelid = 'orders'::regclass AND attname = 'status'"
        ).fetchone() == (True,)
        assert count(conn, "SELECT count(*) FROM orders WHERE status = 'new'") == 2000
        must_not_insert(
            conn,
            "INSERT INTO orders (user_id, status) VALUES (1, NULL)",
            (),
            pgerr.NotNullViolation,
        )

    lifecycle(dsn, orders, changes, after_expand=added, after_finish=added)


def test_add_column_volatile_default_clock_timestamp(dsn: str, orders: Conn) -> None:
    changes = [
        AddColumn("orders", "seen_at", "timestamptz", nullable=False, default="clock_timestamp()")
    ]
    node = relfilenode(orders, "orders")

    def expanded(conn: Conn) -> None:
        # nullable for now: existing rows are filled in batches, not by a rewrite
        column_must_exist(conn, "orders", "seen_at", type="timestamp with time zone", nullable=True)
        assert column_default(conn, "orders", "seen_at") == "clock_timestamp()"
        assert count(conn, "SELECT count(*) FROM orders WHERE seen_at IS NULL") >= 2000
        assert relfilenode(conn, "orders") == node
        new = conn.execute("INSERT INTO orders (user_id) VALUES (1) RETURNING seen_at").fetchone()
        assert new is not None and new[0] is not None

    def finished(conn: Conn) -> None:
        column_must_exist(conn, "orders", "seen_at", nullable=False)
        assert count(conn, "SELECT count(*) FROM orders WHERE seen_at IS NULL") == 0
        # filled in batches of at most 100 rows, each its own transaction: the 2000 rows
        # that existed carry at least 20 different xmins (one UPDATE would leave one)
        assert count(conn, "SELECT count(DISTINCT xmin::text) FROM orders WHERE id <= 2000") >= 20
        assert relfilenode(conn, "orders") == node

    lifecycle(
        dsn, orders, changes, settings=SMALL_BATCHES, after_expand=expanded, after_finish=finished
    )


def test_add_column_volatile_default_gen_random_uuid(dsn: str, orders: Conn) -> None:
    changes = [AddColumn("orders", "token", "uuid", default="gen_random_uuid()")]

    def expanded(conn: Conn) -> None:
        column_must_exist(conn, "orders", "token", type="uuid", nullable=True)
        assert count(conn, "SELECT count(*) FROM orders WHERE token IS NULL") == 2000

    def finished(conn: Conn) -> None:
        column_must_exist(conn, "orders", "token", type="uuid", nullable=True)
        assert count(conn, "SELECT count(*) FROM orders WHERE token IS NULL") == 0
        assert count(conn, "SELECT count(DISTINCT token) FROM orders") == count(
            conn, "SELECT count(*) FROM orders"
        )

    lifecycle(dsn, orders, changes, after_expand=expanded, after_finish=finished)


def _fill_trigger_lifecycle(dsn: str, conn: Conn, final_not_null: Check) -> None:
    """AddColumn NOT NULL with a backfill expression: nullable add + fill trigger, batched
    backfill, NOT NULL; rows written by old code during the window get the value."""
    changes = [AddColumn("orders", "size", "text", nullable=False, backfill=SIZE)]
    old_rows: list[int] = []

    def expanded(conn: Conn) -> None:
        column_must_exist(conn, "orders", "size", type="text", nullable=True)
        assert trigger_names(conn, "orders") == ["onlineschema_fill_size"]
        assert count(conn, "SELECT count(*) FROM orders WHERE size IS NULL") >= 2000

    def old_code(conn: Conn) -> None:
        # code that does not know the column: inserts and updates without it
        for amount in (500, 5):
            row = conn.execute(
                "INSERT INTO orders (user_id, amount) VALUES (1, %s) RETURNING id, size",
                (amount,),
            ).fetchone()
            assert row is not None
            assert row[1] == ("big" if amount > 100 else "small")
            old_rows.append(row[0])
        row = conn.execute("UPDATE orders SET amount = 250 WHERE id = 1 RETURNING size").fetchone()
        assert row == ("big",)

    def aborted(conn: Conn) -> None:
        column_must_not_exist(conn, "orders", "size")
        assert trigger_names(conn, "orders") == []

    def finished(conn: Conn) -> None:
        column_must_exist(conn, "orders", "size", type="text", nullable=False)
        assert count(conn, f"SELECT count(*) FROM orders WHERE size IS DISTINCT FROM {SIZE}") == 0  # noqa: S608 (test constants)
        assert count(conn, "SELECT count(*) FROM orders WHERE id = ANY(%s)", (old_rows,)) == 4
        assert trigger_names(conn, "orders") == []
        must_not_insert(
            conn, "INSERT INTO orders (user_id, size) VALUES (1, NULL)", (), pgerr.NotNullViolation
        )
        final_not_null(conn)

    lifecycle(
        dsn,
        conn,
        changes,
        settings=SMALL_BATCHES,
        after_expand=expanded,
        during_window=old_code,
        after_abort=aborted,
        after_finish=finished,
    )


@pytest.mark.pg(">=18")
def test_add_column_backfill_not_null_pg18(dsn: str, orders: Conn) -> None:
    def not_null(conn: Conn) -> None:
        constraint_must_exist(conn, "orders", "orders_size_not_null", validated=True, type="n")

    _fill_trigger_lifecycle(dsn, orders, not_null)


@pytest.mark.pg("<18")
def test_add_column_backfill_not_null_pg15_16(dsn: str, orders: Conn) -> None:
    def not_null(conn: Conn) -> None:
        constraint_must_not_exist(conn, "orders", "onlineschema_nn_orders_size")
        assert not [n for n in constraint_names(conn, "orders") if "size" in n]

    _fill_trigger_lifecycle(dsn, orders, not_null)


def test_table_without_primary_key_add_column_uses_ctid_batches(dsn: str, conn: Conn) -> None:
    conn.execute("CREATE TABLE logs (msg text, level int)")
    conn.execute("INSERT INTO logs SELECT 'm' || g, g % 5 FROM generate_series(1, 1500) g")
    fill = "'level ' || level"
    change = AddColumn("logs", "severity", "text", nullable=False, backfill=fill)
    with Executor(dsn) as ex:
        plan = ex.plan([change])
    (backfill,) = plan.phase("backfill")
    assert backfill.details["strategy"] == "ctid"

    def expanded(conn: Conn) -> None:
        column_must_exist(conn, "logs", "severity", nullable=True)
        row = conn.execute(
            "INSERT INTO logs (msg, level) VALUES ('old code', 3) RETURNING severity"
        ).fetchone()
        assert row == ("level 3",)

    def finished(conn: Conn) -> None:
        column_must_exist(conn, "logs", "severity", nullable=False)
        assert count(conn, f"SELECT count(*) FROM logs WHERE severity IS DISTINCT FROM {fill}") == 0  # noqa: S608 (test constants)
        assert count(conn, "SELECT count(*) FROM logs") == 1502

    lifecycle(
        dsn,
        conn,
        [change],
        tables=("logs",),
        settings=SMALL_BATCHES,
        after_expand=expanded,
        after_abort=lambda c: column_must_not_exist(c, "logs", "severity"),
        after_finish=finished,
    )


class _MoveRowsOnce:
    """After the first backfill batch, updates rows that the ctid pass has not reached
    yet, from another connection, as the application would: their new versions land in
    blocks the pass has already done or past its frozen end."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.moved = 0

    def step_started(self, step: Step, index: int, total: int) -> None:
        pass

    def step_finished(self, step: Step, index: int, total: int, skipped: bool) -> None:
        pass

    def backfill_progress(self, step_id: str, rows_done: int, *rest: Any) -> None:
        if self.moved:
            return
        with psycopg.connect(self.dsn, autocommit=True) as app:
            cur = app.execute(
                "UPDATE logs SET level = level + 10 WHERE token IS NULL AND ctid >= '(4,0)'::tid"
            )
            self.moved = cur.rowcount


def test_table_without_primary_key_volatile_default_reaches_rows_updated_meanwhile(
    dsn: str, conn: Conn
) -> None:
    """Existing rows of a new column with a volatile default all get a value, also those
    the application updates while the ctid backfill runs.

    The ctid strategy relies on ``token IS NULL`` and a frozen last block: a row updated by
    the application moves to a block the pass has already done (or past its end), still
    NULL. The plan's fill trigger on tables without a key fills such a row when it is
    updated; without it the row would stay NULL for good, silently."""
    conn.execute("CREATE TABLE logs (msg text, level int)")
    conn.execute("INSERT INTO logs SELECT 'm' || g, g % 5 FROM generate_series(1, 1500) g")
    change = AddColumn("logs", "token", "uuid", default="gen_random_uuid()")
    mover = _MoveRowsOnce(dsn)
    with Executor(dsn, SMALL_BATCHES, observer=mover) as ex:
        plan = ex.plan([change])
        assert plan.phase("backfill")[0].details["strategy"] == "ctid"
        assert ex.apply([change], "token").state == "completed"
    assert mover.moved > 0
    assert count(conn, "SELECT count(*) FROM logs WHERE token IS NULL") == 0


@pytest.mark.server_independent
@pytest.mark.parametrize("case_id", golden_ids("add_column"))
def test_golden_plans(case_id: str, request: pytest.FixtureRequest) -> None:
    check(case_id, request.config)
