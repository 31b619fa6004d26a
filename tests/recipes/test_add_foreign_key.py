"""The add_foreign_key recipe: its golden plans and its lifecycle on a real server (moved from
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
    constraint_must_not_exist,
    count,
    must_not_insert,
)
from psycopg import errors as pgerr

from onlineschema import (
    AddForeignKey,
)


def test_add_foreign_key_on_delete_cascade(dsn: str, orders: Conn) -> None:
    change = AddForeignKey("orders", ("user_id",), "users", on_delete="cascade")

    def not_valid(conn: Conn) -> None:
        constraint_must_exist(
            conn,
            "orders",
            "orders_user_id_fkey",
            validated=False,
            type="f",
            definition_contains=["REFERENCES users(id)", "ON DELETE CASCADE"],
        )
        must_not_insert(
            conn, "INSERT INTO orders (user_id) VALUES (999)", (), pgerr.ForeignKeyViolation
        )

    def validated(conn: Conn) -> None:
        constraint_must_exist(conn, "orders", "orders_user_id_fkey", validated=True, type="f")

    lifecycle(
        dsn,
        orders,
        [change],
        tables=("orders", "users"),
        stop=after_action("add_foreign_key_not_valid"),
        after_expand=not_valid,
        after_abort=lambda c: constraint_must_not_exist(c, "orders", "orders_user_id_fkey"),
        after_finish=validated,
    )
    assert count(orders, "SELECT count(*) FROM orders WHERE user_id = 7") == 20
    orders.execute("DELETE FROM users WHERE id = 7")
    assert count(orders, "SELECT count(*) FROM orders WHERE user_id = 7") == 0


@pytest.mark.server_independent
@pytest.mark.parametrize("case_id", golden_ids("add_foreign_key"))
def test_golden_plans(case_id: str, request: pytest.FixtureRequest) -> None:
    check(case_id, request.config)
