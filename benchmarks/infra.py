"""The stack a run needs, all private to the run: Redis, simulator, database, processes.

`Stack.open()` starts an embedded redis-server on a free port (never a shared one: runs
restart and flush it), the exchange simulator in its own process, and migrates a SQLite
database in the run's directory (or the `--database-url` given). Workers and beat are
real `celery` processes whose JSON logs land in `<workdir>/logs/<name>.log`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis as redis_lib

from engine.coordination import RedisCoordinator
from engine.db import engine_for
from engine.embedded import EmbeddedRedis, free_port
from engine.runtime import Runtime
from engine.supervise import ProcessGroup, wait_for

ROOT = Path(__file__).resolve().parent.parent


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
    """GET (or POST `body`) and decode JSON: the simulator's admin endpoints."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url,
        data=data,
        method="POST" if data else "GET",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # loopback only
        return json.loads(response.read())


@dataclass
class Stack:
    """Everything a run talks to; `env` is what engine processes are started with."""

    workdir: Path
    redis: EmbeddedRedis | None  # None: a given server (`--redis-url`), not ours to restart
    redis_url: str
    sim_url: str
    db_url: str
    env: dict[str, str]
    procs: ProcessGroup
    api_url: str | None = None  # a `botengine api` on the stack, once started

    def sim(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call a simulator admin endpoint (`/_sim/stats`, `/_sim/faults`, ...)."""
        return http_json(self.sim_url + path, body)


def engine_env(
    redis_url: str, db_url: str, sim_url: str, log_level: str, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment engine processes (and this harness) run with."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(
        {
            "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": redis_url,
            "CELERY_RESULT_BACKEND": redis_url,
            "DATABASE_URL": db_url,
            "SIMULATOR_URL": sim_url,
            "LOG_LEVEL": log_level,
            "LOG_FORMAT": "json",
            "PYTHONPATH": str(ROOT),
            # A SIGKILLed worker must not take its last log lines (tick.started) with it.
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


def switch_interval_env(workdir: Path, seconds: float) -> dict[str, str]:
    """Environment that makes Python processes call `sys.setswitchinterval(seconds)`.

    An experiment knob until the engine has its own: a `sitecustomize` module first on
    PYTHONPATH runs at interpreter start-up. CPython's default (5 ms) lets a thread
    coming back from a Redis or SQL round trip wait up to 5 ms for the GIL while another
    thread computes; a tick makes ~25 round trips (see benchmarks/README.md).
    """
    site = workdir / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(f"import sys\n\nsys.setswitchinterval({seconds!r})\n")
    return {"PYTHONPATH": f"{site}{os.pathsep}{ROOT}"}


@contextmanager
def open_stack(
    *,
    latency_ms: float = 0.0,
    database_url: str | None = None,
    log_level: str = "INFO",
    extra_env: dict[str, str] | None = None,
    keep: bool = False,
    seed: int = 42,
    redis_url: str | None = None,
    sim_host: str = "127.0.0.1",
    sim_port: int | None = None,
) -> Iterator[Stack]:
    """Start Redis, the simulator and the database; stop and clean up on exit.

    The harness's own environment is pointed at the stack too, so `engine.settings`
    and the Celery app it imports (for sending ticks) use the private Redis. With
    `redis_url` (workers on other machines need a reachable Redis) that server is used
    instead; it must be a dedicated, empty database, because a run fills it.
    """
    workdir = Path(tempfile.mkdtemp(prefix="botengine-bench-"))
    (workdir / "logs").mkdir()
    redis = None
    if redis_url is None:
        redis = EmbeddedRedis().start()
        redis_url = redis.url
    elif redis_lib.Redis.from_url(redis_url).dbsize() > 0:
        raise RuntimeError(f"{redis_url} is not empty: give the benchmark a database of its own")
    sim_port = sim_port or free_port()
    db_url = database_url or f"sqlite:///{workdir / 'bench.db'}"
    env = engine_env(redis_url, db_url, f"http://127.0.0.1:{sim_port}", log_level, extra_env)
    procs = ProcessGroup(env, workdir / "logs", cwd=ROOT)
    try:
        procs.spawn(
            "simulator",
            [
                sys.executable,
                "-m",
                "benchmarks.simproc",
                "--host",
                sim_host,
                "--port",
                str(sim_port),
                "--latency-ms",
                str(latency_ms),
                "--seed",
                str(seed),
            ],
        )
        stack = Stack(workdir, redis, redis_url, f"http://127.0.0.1:{sim_port}", db_url, env, procs)
        if not wait_for(lambda: _healthy(stack), 30):
            raise RuntimeError(f"simulator did not start; see {workdir}/logs/simulator.log")
        os.environ.update(
            {
                k: env[k]
                for k in (
                    "REDIS_URL",
                    "CELERY_BROKER_URL",
                    "CELERY_RESULT_BACKEND",
                    "DATABASE_URL",
                    "SIMULATOR_URL",
                    "LOG_LEVEL",
                    "LOG_FORMAT",
                    *(extra_env or {}),
                )
            }
        )
        from engine.db import migrate
        from engine.settings import get_settings

        get_settings.cache_clear()
        migrate(db_url)
        yield stack
    finally:
        procs.stop_all()
        if redis is not None:
            redis.__exit__(None, None, None)  # stops the server and removes its directory
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@contextmanager
def own_postgres_database(admin_url: str | None = None) -> Iterator[str]:
    """A fresh database on a shared PostgreSQL (BENCH_POSTGRES_URL, default this
    machine's), dropped afterwards: the run's own, so it starts empty and leaves none."""
    from sqlalchemy import create_engine, text

    admin_url = admin_url or os.environ.get("BENCH_POSTGRES_URL", POSTGRES_ADMIN_URL)
    name = f"botengine_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{admin_url.rsplit('/', 1)[0]}/{name}"
    finally:
        engine_for.cache_clear()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def harness_runtime() -> Runtime:
    """A Runtime for lifecycle calls from this process (after `open_stack` set the env)."""
    from engine.runtime import celery_enqueue, claim_ttl, redis_client
    from engine.settings import get_settings

    settings = get_settings()
    client = redis_client(settings.redis_url)
    return Runtime(
        settings=settings,
        redis=client,
        db=engine_for(settings.database_url),
        coordinator=RedisCoordinator(client, claim_ttl(settings)),
        enqueue=celery_enqueue,
        worker_id=f"bench-harness:{os.getpid()}",
    )


def _healthy(stack: Stack) -> bool:
    try:
        return bool(stack.sim("/_sim/health").get("ok"))
    except OSError:
        return False
