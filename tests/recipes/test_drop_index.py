"""The drop_index recipe: its golden plans and its lifecycle on a real server (moved from
test_lifecycle.py)."""

from __future__ import annotations

import pytest
from golden.cases import golden_ids
from golden.compare import check
from harness import (
    Conn,
    drop_lifecycle,
)
from helpers import (
    index_must_not_exist,
)

from onlineschema import (
    DropIndex,
    Executor,
)


def test_drop_index(dsn: str, orders: Conn) -> None:
    orders.execute("CREATE INDEX orders_amount_idx ON orders (amount)")
    with Executor(dsn) as ex:
        (step,) = ex.plan([DropIndex("orders_amount_idx")]).steps
    assert (step.phase, step.transactional, step.lock) == (
        "contract",
        False,
        "ShareUpdateExclusiveLock",
    )
    assert "CONCURRENTLY" in step.statements[0]
    drop_lifecycle(
        dsn,
        orders,
        DropIndex("orders_amount_idx"),
        lambda c: index_must_not_exist(c, "orders_amount_idx"),
    )


@pytest.mark.server_independent
@pytest.mark.parametrize("case_id", golden_ids("drop_index"))
def test_golden_plans(case_id: str, request: pytest.FixtureRequest) -> None:
    check(case_id, request.config)
