"""Hand-written: a non-idempotent data change (n = n + 1) as an ordinary op.execute.

onlineschema runs it as a batched backfill, exactly once, even if `alembic upgrade` is
killed in the middle and run again.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("UPDATE orders SET n = n + 1")


def downgrade() -> None:
    op.execute("UPDATE orders SET n = n - 1")
