"""bots.strategy, exchange, symbol, labels: the fleet's listing columns, copied from config

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 17:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from engine.models import listing

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (("strategy", 200), ("exchange", 64), ("symbol", 40), ("labels", 600))
INDEXED = ("strategy", "exchange", "symbol")


def upgrade() -> None:
    with op.batch_alter_table("bots", schema=None) as batch_op:
        for name, length in COLUMNS:
            batch_op.add_column(
                sa.Column(name, sa.String(length=length), nullable=False, server_default="")
            )
        for name in INDEXED:
            batch_op.create_index(f"ix_bots_{name}", [name])
    bots = sa.table(
        "bots",
        sa.column("name", sa.String),
        sa.column("config", sa.JSON),
        *(sa.column(name, sa.String) for name, _ in COLUMNS),
    )
    conn = op.get_bind()
    for name, config in conn.execute(sa.select(bots.c.name, bots.c.config)).all():
        conn.execute(bots.update().where(bots.c.name == name).values(**listing(config or {})))


def downgrade() -> None:
    with op.batch_alter_table("bots", schema=None) as batch_op:
        for name in INDEXED:
            batch_op.drop_index(f"ix_bots_{name}")
        for name, _ in COLUMNS:
            batch_op.drop_column(name)
