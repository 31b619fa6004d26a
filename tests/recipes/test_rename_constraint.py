"""The rename_constraint recipe (``ALTER TABLE ... RENAME CONSTRAINT``): its golden plans,
its lifecycle on a real server, and what it refuses before any DDL."""

from __future__ import annotations

import pytest
from golden.cases import golden_ids
from golden.compare import check
from harness import Conn, lifecycle
from helpers import constraint_must_exist, constraint_must_not_exist, index_must_exist

from onlineschema import Executor, PreflightError, RenameConstraint


def test_rename_primary_key_renames_its_index(dsn: str, orders: Conn) -> None:
    def renamed(conn: Conn) -> None:
        constraint_must_exist(conn, "orders", "orders_pk", type="p")
        constraint_must_not_exist(conn, "orders", "orders_pkey")
        index_must_exist(conn, "orders_pk", unique=True)

    def as_before(conn: Conn) -> None:
        constraint_must_exist(conn, "orders", "orders_pkey", type="p")
        index_must_exist(conn, "orders_pkey", unique=True)

    lifecycle(
        dsn,
        orders,
        [RenameConstraint("orders", "orders_pkey", "orders_pk")],
        after_expand=renamed,
        after_abort=as_before,
        after_finish=renamed,
    )


def test_rename_foreign_key(dsn: str, orders: Conn) -> None:
    orders.execute(
        "ALTER TABLE orders ADD CONSTRAINT orders_user_id_fkey FOREIGN KEY (user_id)"
        " REFERENCES users (id)"
    )
    with Executor(dsn) as ex:
        result = ex.apply(
            [RenameConstraint("orders", "orders_user_id_fkey", "orders_user_fk")], "fk"
        )
    assert result.state == "completed"
    assert [s.lock for s in result.plan.steps] == ["AccessExclusiveLock"]
    assert result.plan.steps[0].tables == ("public.orders", "public.users")
    constraint_must_exist(orders, "orders", "orders_user_fk", type="f", validated=True)
    constraint_must_not_exist(orders, "orders", "orders_user_id_fkey")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (RenameConstraint("orders", "nope", "other"), "constraint 'nope' does not exist"),
        (
            RenameConstraint("orders", "orders_pkey", "users_pkey"),
            "index 'users_pkey' already exists in schema public",
        ),
    ],
)
def test_refused_before_any_ddl(
    dsn: str, orders: Conn, change: RenameConstraint, problem: str
) -> None:
    with Executor(dsn) as ex, pytest.raises(PreflightError) as refused:
        ex.apply([change], "refused")
    assert problem in str(refused.value)
    constraint_must_exist(orders, "orders", "orders_pkey", type="p")


@pytest.mark.server_independent
@pytest.mark.parametrize("case_id", golden_ids("rename_constraint"))
def test_golden_plans(case_id: str, request: pytest.FixtureRequest) -> None:
    check(case_id, request.config)
