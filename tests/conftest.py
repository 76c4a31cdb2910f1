"""Shared fixtures: a Redis the tests own, a migrated database, the simulator, workers.

Redis: the configured one (REDIS_URL, default 127.0.0.1:6379) when it answers, on a
database index this suite claims with a marker key — it never flushes a database it did
not claim — else an embedded redis-server on a free port. PostgreSQL: set
TEST_DATABASE_URL (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test) and every
database test also runs against a fresh database created there.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
# The `engine` fixture (real workers, beat, a Runtime) for tests that run bots.
pytest_plugins = ["tests.chain_support"]
OWNER_KEY = "botengine:test-owner"
_embedded = None


_TOKEN = f"{os.getpid()}:{uuid.uuid4().hex}"


def _owner_alive(marker: bytes) -> bool:
    pid = int(marker.split(b":", 1)[0] or 0)
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def _claim_db(base_url: str) -> str:
    """Claim a Redis db index (15 down to 8): an empty one, or one a dead suite left.

    Concurrent test sessions each get their own index; a db holding anyone else's data
    is never touched.
    """
    for index in range(15, 7, -1):
        url = f"{base_url.rsplit('/', 1)[0]}/{index}"
        client = redis.Redis.from_url(url)
        marker = client.get(OWNER_KEY)
        if marker is not None and not _owner_alive(marker):
            client.flushdb()
        if client.dbsize() == 0 and client.set(OWNER_KEY, _TOKEN, nx=True):
            return url
    raise RuntimeError("no free Redis database index between 8 and 15 to run tests on")


def pytest_configure(config: pytest.Config) -> None:
    """Point every engine setting at test infrastructure before engine modules import."""
    global _embedded
    from engine.embedded import EmbeddedRedis, reachable

    configured = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if reachable(configured):
        url = _claim_db(configured)
    else:
        _embedded = EmbeddedRedis().start()
        url = _embedded.url
    os.environ.update(
        {
            "REDIS_URL": url,
            "CELERY_BROKER_URL": url,
            "CELERY_RESULT_BACKEND": url,
            "DATABASE_URL": os.environ.get("BOTENGINE_TEST_SQLITE", "sqlite:///:memory:"),
            "LOG_LEVEL": "INFO",
            "LOG_FORMAT": "json",
        }
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run `sqlite_only` tests once: their behaviour does not depend on the database, and
    each costs tens of seconds of real workers (the suite must stay under ~10 minutes)."""
    keep = []
    for item in items:
        params = getattr(item, "callspec", None)
        on_postgres = params is not None and params.params.get("db_url") == "postgres"
        if not (on_postgres and item.get_closest_marker("sqlite_only")):
            keep.append(item)
    items[:] = keep


def pytest_unconfigure(config: pytest.Config) -> None:
    """Release the claimed Redis db (flush only ours) or stop the embedded server."""
    if _embedded is not None:
        _embedded.stop()
        return
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    if client.get(OWNER_KEY) == _TOKEN.encode():
        client.flushdb()


@pytest.fixture
def redis_url() -> str:
    """URL of the Redis db this suite owns, emptied before each test."""
    url = os.environ["REDIS_URL"]
    client = redis.Redis.from_url(url)
    assert _embedded is not None or client.get(OWNER_KEY) == _TOKEN.encode()
    client.flushdb()
    client.set(OWNER_KEY, _TOKEN)
    return url


@pytest.fixture
def redis_client(redis_url: str) -> redis.Redis:
    """A client on the owned db."""
    return redis.Redis.from_url(redis_url)


def _postgres_db() -> Iterator[str]:
    from benchmarks.infra import own_postgres_database

    with own_postgres_database(os.environ["TEST_DATABASE_URL"]) as url:
        yield url


_DB_KINDS = ["sqlite"] + (["postgres"] if os.environ.get("TEST_DATABASE_URL") else [])


@pytest.fixture(params=_DB_KINDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A freshly migrated database: SQLite in a temp dir, and PostgreSQL when configured."""
    from engine.db import migrate

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'botengine.db'}"
        migrate(url)
        yield url
        return
    for url in _postgres_db():
        migrate(url)
        yield url


@pytest.fixture(scope="session")
def simulator() -> Iterator[object]:
    """The loopback exchange simulator, shared by the session (reset per test by users)."""
    from engine.exchange.simulator import SimulatorServer

    with SimulatorServer(port=0) as sim:
        os.environ["SIMULATOR_URL"] = sim.url
        yield sim


@pytest.fixture
def sim(simulator: Any) -> Iterator[Any]:
    """The session's simulator, reset, with the process's ccxt client cache emptied."""
    from engine.exchange.clients import clear_clients

    simulator.reset()
    clear_clients()
    yield simulator
    simulator.reset()


@pytest.fixture
def db(db_url: str) -> Any:
    """An engine on the migrated test database."""
    from engine.db import make_engine

    return make_engine(db_url)
