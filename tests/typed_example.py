"""User code as a revision file would write it, checked with ``mypy --strict`` by
tests/test_typed_user_code.py: every typed entry point of onlineschema.alembic.

Not a test module and never run: it only has to type-check.
"""

from __future__ import annotations

from alembic import op
from alembic.operations import Operations

from onlineschema import (
    AddCheck,
    AddColumn,
    AddForeignKey,
    AddIndex,
    AddUnique,
    Backfill,
    BackfillSettings,
    Change,
    DropConstraint,
    DropDefault,
    DropIndex,
    DropNotNull,
    Result,
    RetryPolicy,
    SetDefault,
    SetNotNull,
    Settings,
    ValidateConstraint,
)
from onlineschema.alembic import OnlineMigrateOp, abort, contract, expand, run

CHANGES: list[Change] = [
    AddColumn("orders", "status", "text", nullable=False, default="'new'"),
    AddColumn("orders", "note", "text", nullable=False, backfill="'order ' || id"),
    SetNotNull("orders", "amount"),
    DropNotNull("orders", "user_id"),
    SetDefault("orders", "amount", "0"),
    DropDefault("orders", "n"),
    AddIndex("orders", columns=("status",), name="orders_status_idx"),
    DropIndex("orders_old_idx"),
    AddUnique("users", ("email",)),
    AddUnique("accounts", ("id",), primary_key=True),
    AddForeignKey("orders", ("user_id",), "users", ("id",), on_delete="CASCADE"),
    AddCheck("orders", "amount >= 0", name="orders_amount_check", validate=False),
    ValidateConstraint("orders", "orders_amount_check"),
    DropConstraint("orders", "orders_old_check"),
    Backfill("orders", (("n", "n + 1"),), where="n < 10"),
]

SETTINGS = Settings(
    lock_timeout=0.2,
    retry=RetryPolicy(max_attempts=10),
    backfill=BackfillSettings(batch_target=0.1),
)


def upgrade() -> None:
    result: Result | None = run(op, "orders_status", CHANGES, settings=SETTINGS)
    if result is not None:
        print(result.state, result.steps_run)
    run(op, "users_email", "CREATE UNIQUE INDEX users_email_idx ON users (email);")
    expand(op, "orders_note", CHANGES[1:2])
    op.invoke(OnlineMigrateOp("orders_fk", CHANGES[10:11], phase="run"))


def upgrade_later() -> None:
    contract(op, "orders_note")
    contract(op, "orders_note", CHANGES[1:2], settings=SETTINGS)


def downgrade() -> None:
    abort(op, "orders_note")
    abort(op, "orders_note", CHANGES[1:2])


def with_operations(operations: Operations) -> Result | None:
    # the Operations object, or its MigrationContext, works as well as the `op` proxy
    run(operations.get_context(), "orders_status", CHANGES)
    return expand(operations, "orders_note", CHANGES[1:2])
