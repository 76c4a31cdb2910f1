"""Alembic environment: runs migrations on the engine handed in by `engine.db.migrate`."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import engine.models  # noqa: F401 - registers the tables on SQLModel.metadata
from engine.db import make_engine

config = context.config
MIGRATION_LOCK_ID = 0x626F7465  # "bote": the advisory lock every migrating process takes
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
            if connection.dialect.name == "postgresql":
                # Workers, beat, the API and the CLI all migrate at start: one at a time,
                # each reading the version table only once the previous one committed.
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
            context.run_migrations()


run()
