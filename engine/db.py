"""Database engine, sessions and schema migrations (SQLite by default, PostgreSQL by URL)."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

from sqlalchemy import Dialect, Engine, event, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, create_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def make_engine(url: str) -> Engine:
    """Create an engine tuned for many short transactions from worker threads."""
    if url.startswith("sqlite"):
        memory = url in ("sqlite://", "sqlite:///:memory:")
        engine = create_engine(
            url,
            # Worker threads share the engine; SQLite's own locking serialises writers.
            connect_args={"check_same_thread": False, "timeout": 30},
            # Room for every worker thread: a connection past the pool size is closed on
            # return and opened again (with its PRAGMAs) by the next tick.
            **({"poolclass": StaticPool} if memory else {"pool_size": 16, "max_overflow": 16}),
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(url, pool_size=10, max_overflow=20, pool_recycle=1800)
    event.listen(engine, "checkin", _stamp_checkin)
    event.listen(engine, "checkout", partial(_ping_if_idle, engine.dialect))
    return engine


IDLE_PING_S = 2.0
"""A pooled connection idle this long is pinged before use (see _ping_if_idle)."""


def _stamp_checkin(_: Any, record: Any) -> None:
    record.info["checked_in_at"] = time.monotonic()


def _ping_if_idle(dialect: Dialect, dbapi_connection: Any, record: Any, _: Any) -> None:
    """SQLAlchemy's pre-ping, for connections idle a while only. Pinging every checkout
    cost a round trip per checkout (a tick checks out ~5 times); a busy worker reuses
    its connections within milliseconds, while one that sat idle (an API between calls,
    a fleet across a database restart) is the one that may be dead. A dead one makes
    the pool connect afresh; one that dies in use is invalidated with the pool by the
    statement that fails (engine.prepared, SQLAlchemy's own execute path)."""
    last = record.info.get("checked_in_at")
    if last is not None and time.monotonic() - last < IDLE_PING_S:
        return
    try:
        alive = dialect.do_ping(dbapi_connection)
    except Exception as exc:
        raise DisconnectionError("stale pooled connection") from exc
    if not alive:
        raise DisconnectionError("stale pooled connection")


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers (status, API) proceed while a tick writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def is_unavailable(exc: BaseException) -> bool:
    """True for errors that mean "the database is not reachable right now" (down,
    restarting, connection lost, SQLite locked), as opposed to a bad statement."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if not isinstance(exc, OperationalError | InterfaceError):
        return False
    text = str(exc.orig).lower()
    # SQLite reports a missing table or column as an OperationalError too: not an outage.
    return not any(word in text for word in ("no such", "syntax error", "has no column"))


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    """The process-wide engine for `url` (created once, after fork)."""
    return make_engine(url)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def migrate(url: str) -> None:
    """Bring the schema at `url` to the newest Alembic revision (idempotent).

    Safe to call from several processes at once (every worker does at start): PostgreSQL
    serialises them with an advisory lock (migrations/env.py), SQLite with a lock file
    beside the database.
    """
    from alembic import command  # lazy: alembic is only needed at start-up
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["engine"] = engine_for(url)
    with _sqlite_file_lock(url):
        command.upgrade(config, "head")


@contextmanager
def _sqlite_file_lock(url: str) -> Iterator[None]:
    """An exclusive lock on `<database>.migrate-lock` for a file SQLite database."""
    path = make_url(url).database if url.startswith("sqlite") else None
    if not path or path == ":memory:":
        yield
        return
    with open(f"{path}.migrate-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
