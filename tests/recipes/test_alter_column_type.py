"""The alter_column_type recipe: its golden plans and its lifecycle on a real server
(the scenarios with writers during the window are in test_breaking.py)."""

from __future__ import annotations

import pytest
from golden.cases import ITEMS, golden_ids
from golden.compare import check
from harness import Conn, contract_lifecycle
from helpers import column_must_exist, constraint_must_exist, count, index_must_exist

from onlineschema import AlterColumnType, Executor


def test_type_change_through_a_column_copy(dsn: str, conn: Conn) -> None:
    conn.execute(ITEMS)
    conn.execute(
        "INSERT INTO items (qty, note) SELECT g % 1000, 'n' || g FROM generate_series(1, 500) g"
    )
    change = [AlterColumnType("items", "qty", "bigint")]
    with Executor(dsn) as ex:
        phases = {s.phase for s in ex.plan(change).steps}
    assert phases == {"expand", "backfill", "validate", "contract"}

    def copied(c: Conn) -> None:
        column_must_exist(c, "items", "qty", type="integer", nullable=False)
        column_must_exist(c, "items", "qty_onlineschema_new", type="bigint", nullable=False)
        assert (
            count(c, "SELECT count(*) FROM items WHERE qty_onlineschema_new IS DISTINCT FROM qty")
            == 0
        )
        c.execute("INSERT INTO items (qty, note) VALUES (7, 'old code')")
        assert count(c, "SELECT qty_onlineschema_new FROM items WHERE note = 'old code'") == 7
        c.execute("DELETE FROM items WHERE note = 'old code'")

    def swapped(c: Conn) -> None:
        column_must_exist(c, "items", "qty", type="bigint", nullable=False)
        constraint_must_exist(c, "items", "qty_nonneg", validated=True)
        constraint_must_exist(c, "items", "items_note_qty_key", validated=True)
        index_must_exist(c, "items_qty_idx", valid=True)
        assert count(c, "SELECT sum(qty) FROM items") == sum(g % 1000 for g in range(1, 501))

    contract_lifecycle(
        dsn, conn, change, before_contract=copied, after=swapped, tables=("items",), mask_oids=True
    )


@pytest.mark.server_independent
@pytest.mark.parametrize("case_id", golden_ids("alter_column_type"))
def test_golden_plans(case_id: str, request: pytest.FixtureRequest) -> None:
    check(case_id, request.config)
