"""The add_check recipe: its golden plans and its lifecycle on a real server (moved from
test_lifecycle.py)."""

from __future__ import annotations

import pytest
from golden.cases import golden_ids
from golden.compare import check
from harness import (
    Conn,
    after_action,
    lifecycle,
)
from helpers import (
    constraint_must_exist,
    must_not_insert,
)
from psycopg import errors as pgerr

from onlineschema import (
    AddCheck,
)


def test_add_check(dsn: str, orders: Conn) -> None:
    change = AddCheck("orders", "amount >= 0", name="orders_amount_nonneg")

    def not_valid(conn: Conn) -> None:
        constraint_must_exist(conn, "orders", "orders_amount_nonneg", validated=False, type="c")
        must_not_insert(
            conn, "INSERT INTO orders (user_id, amount) VALUES (1, -1)", (), pgerr.CheckViolation
        )

    lifecycle(
        dsn,
        orders,
        [change],
        stop=after_action("add_check_not_valid"),
        after_expand=not_valid,
        after_finish=lambda c: constraint_must_exist(
            c, "orders", "orders_amount_nonneg", validated=True, type="c"
        ),
    )


@pytest.mark.server_independent
@pytest.mark.parametrize("case_id", golden_ids("add_check"))
def test_golden_plans(case_id: str, request: pytest.FixtureRequest) -> None:
    check(case_id, request.config)
