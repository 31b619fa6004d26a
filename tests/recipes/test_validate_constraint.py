"""The validate_constraint recipe: its golden plans and its lifecycle on a real server (moved from
test_lifecycle.py)."""

from __future__ import annotations

import pytest
from golden.cases import golden_ids
from golden.compare import check
from harness import (
    Conn,
    run_until_paused,
    vacuumed_snapshots,
)
from helpers import (
    constraint_must_exist,
)

from onlineschema import (
    Executor,
    ValidateConstraint,
)


def test_validate_constraint(dsn: str, orders: Conn) -> None:
    """VALIDATE cannot be undone (PostgreSQL has no way back to NOT VALID): abort leaves
    the constraint validated, and that flag is the only difference in the catalog."""
    orders.execute(
        "ALTER TABLE orders ADD CONSTRAINT orders_amount_small CHECK (amount < 1000) NOT VALID"
    )
    before = vacuumed_snapshots(orders, ["orders"])["orders"]
    change = ValidateConstraint("orders", "orders_amount_small")
    run_until_paused(dsn, [change], "first", lambda step: True)
    constraint_must_exist(orders, "orders", "orders_amount_small", validated=True)
    with Executor(dsn) as ex:
        assert ex.abort("first").state == "aborted"
    after = vacuumed_snapshots(orders, ["orders"])["orders"]
    assert after != before
    assert after.replace('"convalidated": true', '"convalidated": false') == before.replace(
        '"convalidated": true', '"convalidated": false'
    )
    with Executor(dsn) as ex:  # validating a valid constraint is a no-op, as in PostgreSQL
        again = ex.apply([change], "second")
    assert (again.state, again.plan.steps) == ("completed", ())
    assert any("already valid" in note for note in again.plan.notes)


def test_validate_constraint_runs_under_share_update_exclusive(dsn: str, orders: Conn) -> None:
    orders.execute(
        "ALTER TABLE orders ADD CONSTRAINT orders_amount_small CHECK (amount < 1000) NOT VALID"
    )
    with Executor(dsn) as ex:
        (step,) = ex.plan([ValidateConstraint("orders", "orders_amount_small")]).steps
        assert (step.lock, step.scans) == ("ShareUpdateExclusiveLock", True)
        assert ex.apply([ValidateConstraint("orders", "orders_amount_small")]).state == "completed"
    constraint_must_exist(orders, "orders", "orders_amount_small", validated=True, type="c")


@pytest.mark.server_independent
@pytest.mark.parametrize("case_id", golden_ids("validate_constraint"))
def test_golden_plans(case_id: str, request: pytest.FixtureRequest) -> None:
    check(case_id, request.config)
