"""The set_not_null recipe: its golden plans and its lifecycle on a real server (moved from
test_lifecycle.py)."""

from __future__ import annotations

import pytest
from golden.cases import golden_ids
from golden.compare import check
from harness import (
    Conn,
    after_action,
    lifecycle,
    vacuumed_snapshots,
)
from helpers import (
    column_must_exist,
    constraint_must_exist,
    constraint_must_not_exist,
    migration_state,
    must_not_insert,
)
from psycopg import errors as pgerr

from onlineschema import (
    Executor,
    SetNotNull,
    StepFailed,
)


@pytest.mark.pg(">=18")
def test_set_not_null_pg18_not_valid_then_validate(dsn: str, orders: Conn) -> None:
    def expanded(conn: Conn) -> None:
        constraint_must_exist(conn, "orders", "orders_amount_not_null", validated=False, type="n")
        must_not_insert(
            conn,
            "INSERT INTO orders (user_id, amount) VALUES (1, NULL)",
            (),
            pgerr.NotNullViolation,
        )

    def finished(conn: Conn) -> None:
        column_must_exist(conn, "orders", "amount", nullable=False)
        constraint_must_exist(conn, "orders", "orders_amount_not_null", validated=True, type="n")

    lifecycle(
        dsn,
        orders,
        [SetNotNull("orders", "amount")],
        stop=after_action("add_not_null_not_valid"),
        after_expand=expanded,
        after_abort=lambda c: column_must_exist(c, "orders", "amount", nullable=True),
        after_finish=finished,
    )


@pytest.mark.pg("<18")
def test_set_not_null_pg15_16_check_then_set_not_null(dsn: str, orders: Conn) -> None:
    helper = "onlineschema_nn_orders_amount"

    def expanded(conn: Conn) -> None:
        constraint_must_exist(
            conn, "orders", helper, validated=False, type="c", definition_contains=["IS NOT NULL"]
        )
        column_must_exist(conn, "orders", "amount", nullable=True)
        must_not_insert(
            conn, "INSERT INTO orders (user_id, amount) VALUES (1, NULL)", (), pgerr.CheckViolation
        )

    def finished(conn: Conn) -> None:
        column_must_exist(conn, "orders", "amount", nullable=False)
        constraint_must_not_exist(conn, "orders", helper)

    with Executor(dsn) as ex:
        actions = [s.action for s in ex.plan([SetNotNull("orders", "amount")]).steps]
    assert actions == [
        "add_check_not_valid",
        "validate_constraint",
        "set_not_null",
        "drop_helper_check",
    ]
    lifecycle(
        dsn,
        orders,
        [SetNotNull("orders", "amount")],
        stop=after_action("add_check_not_valid"),
        after_expand=expanded,
        after_finish=finished,
    )


@pytest.mark.pg(">=18")
def test_set_not_null_pg18_over_a_not_valid_not_null_validates_it(dsn: str, orders: Conn) -> None:
    """On 18 ``attnotnull`` is already true under ``NOT NULL ... NOT VALID``; SET NOT NULL
    still means "every row is checked", which a VALIDATE (SHARE UPDATE EXCLUSIVE) gives."""
    orders.execute("ALTER TABLE orders ADD CONSTRAINT orders_amount_nn NOT NULL amount NOT VALID")
    with Executor(dsn) as ex:
        (step,) = ex.plan([SetNotNull("orders", "amount")]).steps
        assert (step.action, step.lock) == ("validate_constraint", "ShareUpdateExclusiveLock")
        assert ex.apply([SetNotNull("orders", "amount")], "nn").state == "completed"
    constraint_must_exist(orders, "orders", "orders_amount_nn", validated=True, type="n")


def test_set_not_null_on_a_column_with_nulls_fails_at_validate_and_aborts_clean(
    dsn: str, orders: Conn
) -> None:
    before = vacuumed_snapshots(orders, ["orders"])
    with Executor(dsn) as ex, pytest.raises(StepFailed) as failed:
        ex.apply([SetNotNull("orders", "note")], "nn")
    assert "fix:" in str(failed.value) and "resume" in str(failed.value)
    assert migration_state(orders, "nn") == "failed"
    with Executor(dsn) as ex:
        steps = [(st["id"].split(".")[0], st["state"]) for st in ex.status("nn")[0]["steps"]]
    # the validate step failed; what came before it is done, nothing after it ran
    failed_at = [i for i, (_, state) in enumerate(steps) if state == "failed"]
    assert len(failed_at) == 1 and steps[failed_at[0]][0] == "validate", steps
    assert all(state == "done" for _, state in steps[: failed_at[0]]), steps
    assert all(state != "done" for _, state in steps[failed_at[0] + 1 :]), steps
    with Executor(dsn) as ex:
        assert ex.abort("nn").state == "aborted"
    assert vacuumed_snapshots(orders, ["orders"]) == before


@pytest.mark.server_independent
@pytest.mark.parametrize("case_id", golden_ids("set_not_null"))
def test_golden_plans(case_id: str, request: pytest.FixtureRequest) -> None:
    check(case_id, request.config)
