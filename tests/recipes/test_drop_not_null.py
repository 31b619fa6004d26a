"""The drop_not_null recipe: its golden plans and its lifecycle on a real server (moved from
test_lifecycle.py)."""

from __future__ import annotations

import pytest
from golden.cases import golden_ids
from golden.compare import check
from harness import (
    Conn,
    contract_lifecycle,
    run_until_paused_in_contract,
    vacuumed_snapshots,
)
from helpers import (
    column_must_exist,
    must_insert,
)

from onlineschema import (
    AddIndex,
    DropNotNull,
    Executor,
)


def test_drop_not_null_is_contract_only(dsn: str, orders: Conn) -> None:
    with Executor(dsn) as ex:
        (step,) = ex.plan([DropNotNull("orders", "n")]).steps
    assert (step.phase, step.breaking) == ("contract", True)

    def dropped(conn: Conn) -> None:
        column_must_exist(conn, "orders", "n", nullable=True)
        must_insert(conn, "INSERT INTO orders (user_id, n) VALUES (1, NULL)")

    contract_lifecycle(
        dsn,
        orders,
        [DropNotNull("orders", "n")],
        before_contract=lambda c: column_must_exist(c, "orders", "n", nullable=False),
        after=dropped,
    )


def test_abort_after_drop_not_null_puts_it_back(dsn: str, orders: Conn) -> None:
    """Paused after the DROP NOT NULL ran (the contract phase): abort restores it through
    a validated constraint, with no scan under ACCESS EXCLUSIVE."""
    before = vacuumed_snapshots(orders, ["orders"], mask_oids=True)
    changes = [DropNotNull("orders", "n"), AddIndex("orders", columns=("amount",))]
    with Executor(dsn) as ex:
        assert ex.apply(changes, "nn").state == "awaiting_contract"
    run_until_paused_in_contract(dsn, "nn", lambda step: step.action == "drop_not_null")
    column_must_exist(orders, "orders", "n", nullable=True)
    with Executor(dsn) as ex:
        assert ex.abort("nn").state == "aborted"
    column_must_exist(orders, "orders", "n", nullable=False)
    # PostgreSQL 18 keeps NOT NULL as a constraint row: put back, it has a new oid
    assert vacuumed_snapshots(orders, ["orders"], mask_oids=True) == before


@pytest.mark.server_independent
@pytest.mark.parametrize("case_id", golden_ids("drop_not_null"))
def test_golden_plans(case_id: str, request: pytest.FixtureRequest) -> None:
    check(case_id, request.config)
