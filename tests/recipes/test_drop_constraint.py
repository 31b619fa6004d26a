"""The drop_constraint recipe: its golden plans and its lifecycle on a real server (moved from
test_lifecycle.py)."""

from __future__ import annotations

import pytest
from golden.cases import golden_ids
from golden.compare import check
from harness import (
    Conn,
    contract_lifecycle,
)
from helpers import (
    constraint_must_exist,
    constraint_must_not_exist,
    must_insert,
)

from onlineschema import (
    DropConstraint,
    Executor,
)


def test_drop_constraint_is_contract_only(dsn: str, orders: Conn) -> None:
    orders.execute("ALTER TABLE orders ADD CONSTRAINT orders_amount_small CHECK (amount < 1000)")
    with Executor(dsn) as ex:
        (step,) = ex.plan([DropConstraint("orders", "orders_amount_small")]).steps
    assert (step.phase, step.breaking) == ("contract", True)
    assert "(check)" in step.description

    def gone(conn: Conn) -> None:
        constraint_must_not_exist(conn, "orders", "orders_amount_small")
        must_insert(conn, "INSERT INTO orders (user_id, amount) VALUES (1, 5000)")

    contract_lifecycle(
        dsn,
        orders,
        [DropConstraint("orders", "orders_amount_small")],
        before_contract=lambda c: constraint_must_exist(c, "orders", "orders_amount_small"),
        after=gone,
    )


def test_drop_primary_key_says_what_goes_with_it(dsn: str, orders: Conn) -> None:
    with Executor(dsn) as ex:
        plan = ex.plan([DropConstraint("orders", "orders_pkey")])
    (step,) = plan.steps
    assert "its index orders_pkey is dropped with it" in step.description
    assert "without a primary key" in step.description


@pytest.mark.server_independent
@pytest.mark.parametrize("case_id", golden_ids("drop_constraint"))
def test_golden_plans(case_id: str, request: pytest.FixtureRequest) -> None:
    check(case_id, request.config)
