"""Expand: orders.note NOT NULL, existing rows filled in batches; rows that the old
application writes without a note are filled by a trigger until the contract phase.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

from alembic import op

from onlineschema import AddCheck, AddColumn
from onlineschema.alembic import abort, expand

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANGES = [
    AddColumn("orders", "note", "text", nullable=False, backfill="'order ' || id"),
    AddCheck("orders", "amount >= 0", name="orders_amount_nonnegative"),
]


def upgrade() -> None:
    expand(op, "orders_note", CHANGES)


def downgrade() -> None:
    abort(op, "orders_note", CHANGES)
