"""The rename_index recipe (``ALTER INDEX ... RENAME TO``): its golden plans, its lifecycle
on a real server, and what it refuses before any DDL."""

from __future__ import annotations

import pytest
from golden.cases import golden_ids
from golden.compare import check
from harness import Conn, lifecycle
from helpers import index_must_exist, index_must_not_exist

from onlineschema import Executor, PreflightError, RenameIndex


def test_rename_index(dsn: str, orders: Conn) -> None:
    orders.execute("CREATE INDEX orders_amount_idx ON orders (amount)")

    def renamed(conn: Conn) -> None:
        index_must_exist(conn, "orders_amt_idx", definition_contains=["(amount)"])
        index_must_not_exist(conn, "orders_amount_idx")

    def as_before(conn: Conn) -> None:
        index_must_exist(conn, "orders_amount_idx", definition_contains=["(amount)"])
        index_must_not_exist(conn, "orders_amt_idx")

    lifecycle(
        dsn,
        orders,
        [RenameIndex("orders_amount_idx", "orders_amt_idx")],
        after_expand=renamed,
        after_abort=as_before,
        after_finish=renamed,
    )


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (RenameIndex("orders_pkey", "orders_pk"), "backs constraint 'orders_pkey'"),
        (RenameIndex("nope_idx", "other_idx"), "index 'nope_idx' does not exist"),
        (RenameIndex("orders_pkey", "users_pkey"), "backs constraint"),
    ],
)
def test_refused_before_any_ddl(dsn: str, orders: Conn, change: RenameIndex, problem: str) -> None:
    with Executor(dsn) as ex, pytest.raises(PreflightError) as refused:
        ex.apply([change], "refused")
    assert problem in str(refused.value)
    index_must_exist(orders, "orders_pkey")


def test_new_name_taken_is_refused(dsn: str, orders: Conn) -> None:
    orders.execute("CREATE INDEX orders_amount_idx ON orders (amount)")
    with Executor(dsn) as ex, pytest.raises(PreflightError) as refused:
        ex.apply([RenameIndex("orders_amount_idx", "users_pkey")], "refused")
    assert "index 'users_pkey' already exists in schema public" in str(refused.value)
    index_must_exist(orders, "orders_amount_idx")


@pytest.mark.server_independent
@pytest.mark.parametrize("case_id", golden_ids("rename_index"))
def test_golden_plans(case_id: str, request: pytest.FixtureRequest) -> None:
    check(case_id, request.config)
