"""A batched backfill that is not idempotent (n = n + 1): it must run exactly once,
even if `alembic upgrade` is killed in the middle and run again.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

from alembic import op

from onlineschema import Backfill
from onlineschema.alembic import run

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    run(op, "orders_n_plus_one", [Backfill("orders", {"n": "n + 1"})])


def downgrade() -> None:
    # the dynamic form of the same operation (it works, but mypy does not know it)
    op.online_migrate("orders_n_minus_one", [Backfill("orders", {"n": "n - 1"})])
