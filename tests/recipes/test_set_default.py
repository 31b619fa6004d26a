"""The set_default recipe: its golden plans and its lifecycle on a real server (moved from
test_lifecycle.py)."""

from __future__ import annotations

import pytest
from golden.cases import golden_ids
from golden.compare import check
from harness import (
    Conn,
    lifecycle,
)
from helpers import (
    column_default,
)

from onlineschema import (
    SetDefault,
)


def test_set_default(dsn: str, orders: Conn) -> None:
    existing = orders.execute("SELECT md5(string_agg(amount::text, ',' ORDER BY id)) FROM orders")
    checksum = existing.fetchone()

    def with_default(conn: Conn) -> None:
        assert column_default(conn, "orders", "amount") == "42"
        row = conn.execute("INSERT INTO orders (user_id) VALUES (1) RETURNING amount").fetchone()
        assert row == (42,)
        # existing rows are not touched
        assert (
            conn.execute(
                "SELECT md5(string_agg(amount::text, ',' ORDER BY id)) FROM orders WHERE id <= 2000"
            ).fetchone()
            == checksum
        )

    def no_default(conn: Conn) -> None:
        assert column_default(conn, "orders", "amount") is None
        row = conn.execute("INSERT INTO orders (user_id) VALUES (1) RETURNING amount").fetchone()
        assert row == (None,)

    lifecycle(
        dsn,
        orders,
        [SetDefault("orders", "amount", "42")],
        after_expand=with_default,
        after_abort=no_default,
        after_finish=with_default,
    )


@pytest.mark.server_independent
@pytest.mark.parametrize("case_id", golden_ids("set_default"))
def test_golden_plans(case_id: str, request: pytest.FixtureRequest) -> None:
    check(case_id, request.config)
