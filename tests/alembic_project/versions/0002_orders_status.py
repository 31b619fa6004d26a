"""orders.status and the orders -> users foreign key, online.

Two forms: the typed entry point with change objects, and the operation object with a
SQL snippet (read by onlineschema's SQL front end) through op.invoke().

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

from alembic import op

from onlineschema import AddColumn, AddIndex
from onlineschema.alembic import OnlineMigrateOp, run

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    run(
        op,
        "orders_status",
        [
            AddColumn("orders", "status", "text", nullable=False, default="'new'"),
            AddIndex("orders", columns=("status",), name="orders_status_idx"),
        ],
    )
    op.invoke(
        OnlineMigrateOp(
            "orders_user_fk",
            """
            CREATE INDEX orders_user_id_idx ON orders (user_id);
            ALTER TABLE orders ADD CONSTRAINT orders_user_id_fkey
                FOREIGN KEY (user_id) REFERENCES users (id);
            """,
        )
    )


def downgrade() -> None:
    # Both migrations above finished, so there is nothing to abort: undo them with
    # plain Alembic operations (or with run(op, ...) for online ones).
    op.drop_constraint("orders_user_id_fkey", "orders", type_="foreignkey")
    op.drop_index("orders_user_id_idx", table_name="orders")
    op.drop_index("orders_status_idx", table_name="orders")
    op.drop_column("orders", "status")
