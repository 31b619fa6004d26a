"""The drop_default recipe: its golden plans and its lifecycle on a real server (moved from
test_lifecycle.py)."""

from __future__ import annotations

import pytest
from golden.cases import golden_ids
from golden.compare import check
from harness import (
    Conn,
    default_is,
    lifecycle,
)
from helpers import (
    column_default,
    must_not_insert,
)
from psycopg import errors as pgerr

from onlineschema import (
    DropDefault,
)


def test_drop_default(dsn: str, orders: Conn) -> None:
    def without_default(conn: Conn) -> None:
        assert column_default(conn, "orders", "n") is None
        must_not_insert(conn, "INSERT INTO orders (user_id) VALUES (1)", (), pgerr.NotNullViolation)

    lifecycle(
        dsn,
        orders,
        [DropDefault("orders", "n")],
        after_expand=without_default,
        after_abort=lambda c: default_is(c, "n", "0"),
        after_finish=without_default,
    )
    assert column_default(orders, "orders", "n") is None


@pytest.mark.server_independent
@pytest.mark.parametrize("case_id", golden_ids("drop_default"))
def test_golden_plans(case_id: str, request: pytest.FixtureRequest) -> None:
    check(case_id, request.config)
