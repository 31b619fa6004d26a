"""The add_identity recipe (``ALTER COLUMN ... ADD GENERATED ... AS IDENTITY``): its golden
plans, its lifecycle on a real server, and what it refuses before any DDL."""

from __future__ import annotations

import pytest
from golden.cases import golden_ids
from golden.compare import check
from harness import Conn, lifecycle
from helpers import count

from onlineschema import AddIdentity, Executor, PreflightError


def _identity(conn: Conn, column: str) -> str:
    row = conn.execute(
        "SELECT attidentity FROM pg_attribute WHERE attrelid = 'orders'::regclass AND attname = %s",
        (column,),
    ).fetchone()
    assert row is not None
    return str(row[0])


def test_add_identity(dsn: str, orders: Conn) -> None:
    orders.execute("ALTER TABLE orders ADD COLUMN k int NOT NULL DEFAULT 0")
    orders.execute("ALTER TABLE orders ALTER COLUMN k DROP DEFAULT")

    def has_identity(conn: Conn) -> None:
        assert _identity(conn, "k") == "a"
        # the sequence starts where the options say
        assert conn.execute("SELECT nextval(pg_get_serial_sequence('orders', 'k'))").fetchone() == (
            5000,
        )

    lifecycle(
        dsn,
        orders,
        [AddIdentity("orders", "k", always=True, options="START WITH 5000")],
        after_expand=has_identity,
        after_abort=lambda c: _identity_is_gone(c),
        after_finish=lambda c: _identity_is(c, "a"),
        mask_oids=True,
    )


def _identity_is_gone(conn: Conn) -> None:
    assert _identity(conn, "k") == ""
    assert count(conn, "SELECT count(*) FROM pg_class WHERE relname = 'orders_k_seq'") == 0


def _identity_is(conn: Conn, kind: str) -> None:
    assert _identity(conn, "k") == kind


@pytest.mark.parametrize(
    ("setup", "change", "problem"),
    [
        ("", AddIdentity("orders", "amount"), "is nullable; PostgreSQL adds an identity only"),
        ("", AddIdentity("orders", "n"), "has a default (0)"),
        (
            "ALTER TABLE orders ALTER COLUMN amount SET NOT NULL",
            AddIdentity("orders", "amount", options="START WITH 1; DROP TABLE users"),
            "are not sequence options",
        ),
    ],
)
def test_refused_before_any_ddl(
    dsn: str, orders: Conn, setup: str, change: AddIdentity, problem: str
) -> None:
    if setup:
        orders.execute(setup)
    with Executor(dsn) as ex, pytest.raises(PreflightError) as refused:
        ex.apply([change], "refused")
    assert problem in str(refused.value)
    assert _identity(orders, change.column) == ""
    assert count(orders, "SELECT count(*) FROM users") == 100


@pytest.mark.server_independent
@pytest.mark.parametrize("case_id", golden_ids("add_identity"))
def test_golden_plans(case_id: str, request: pytest.FixtureRequest) -> None:
    check(case_id, request.config)
