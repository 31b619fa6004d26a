"""The drop_column recipe: its golden plans and its lifecycle on a real server."""

from __future__ import annotations

import pytest
from golden.cases import LEGACY, golden_ids
from golden.compare import check
from harness import Conn, contract_lifecycle
from helpers import column_must_exist, column_must_not_exist, constraint_must_not_exist, count

from onlineschema import DropColumn


def test_drop_column_is_contract_only(dsn: str, conn: Conn) -> None:
    conn.execute(LEGACY)
    conn.execute("INSERT INTO codes SELECT generate_series(1, 600)")
    conn.execute("INSERT INTO orders SELECT g, g, 'n' || g FROM generate_series(1, 500) g")

    def relaxed(c: Conn) -> None:
        # code that no longer writes the column can insert until it is dropped
        column_must_exist(c, "orders", "legacy", nullable=True)
        c.execute("INSERT INTO orders (id, note) VALUES (1000, 'new code')")
        c.execute("DELETE FROM orders WHERE id = 1000")

    def dropped(c: Conn) -> None:
        column_must_not_exist(c, "orders", "legacy")
        constraint_must_not_exist(c, "refs", "refs_legacy_fkey")
        assert count(c, "SELECT count(*) FROM orders") == 500

    contract_lifecycle(
        dsn,
        conn,
        [DropColumn("orders", "legacy")],
        before_contract=relaxed,
        after=dropped,
        tables=("orders", "refs"),
        mask_oids=True,
    )


@pytest.mark.server_independent
@pytest.mark.parametrize("case_id", golden_ids("drop_column"))
def test_golden_plans(case_id: str, request: pytest.FixtureRequest) -> None:
    check(case_id, request.config)
