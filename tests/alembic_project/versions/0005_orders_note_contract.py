"""Contract: deployed once every application server writes orders.note itself.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

from alembic import op

from onlineschema import AddCheck, AddColumn
from onlineschema.alembic import contract

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# the changes of revision 0004: needed only to render this phase with --sql
CHANGES = [
    AddColumn("orders", "note", "text", nullable=False, backfill="'order ' || id"),
    AddCheck("orders", "amount >= 0", name="orders_amount_nonnegative"),
]


def upgrade() -> None:
    contract(op, "orders_note", CHANGES)


def downgrade() -> None:
    # The contract phase dropped the trigger that filled orders.note for the old
    # application: there is nothing to undo, and the old application must not come back.
    pass
