"""orders.cancel_reason (a cancel recorded before it is sent) and orders.stop_price

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cancel_reason", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("stop_price", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_column("stop_price")
        batch_op.drop_column("cancel_reason")
