"""Hand-written: a new column filled from existing data, then made NOT NULL, and a check.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("orders", sa.Column("note", sa.Text(), nullable=True))
    op.execute("UPDATE orders SET note = 'order ' || id WHERE note IS NULL")
    op.alter_column("orders", "note", existing_type=sa.Text(), nullable=False)
    op.create_check_constraint("orders_amount_nonnegative", "orders", "amount >= 0")


def downgrade() -> None:
    op.drop_constraint("orders_amount_nonnegative", "orders", type_="check")
    op.drop_column("orders", "note")
