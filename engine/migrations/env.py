"""Alembic environment: runs migrations on the engine handed in by `engine.db.migrate`."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import engine.models  # noqa: F401 - registers the tables on SQLModel.metadata
from engine.db import make_engine

config = context.config
target_metadata = SQLModel.metadata


def run() -> None:
    """Run migrations online (offline SQL generation is not needed by this project)."""
    connectable = config.attributes.get("engine") or make_engine(
        config.get_main_option("sqlalchemy.url") or ""
    )
    with connectable.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()


run()
