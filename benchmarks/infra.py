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
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis as redis_lib

from engine.coordination import RedisCoordinator
from engine.db import engine_for
from engine.embedded import EmbeddedRedis, free_port
from engine.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def wait_for(predicate: Callable[[], bool], timeout: float, every: float = 0.2) -> bool:
    """Poll until `predicate()` is true or `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


@dataclass
class Proc:
    """One child process of the run, with its role (for resource accounting) and log."""

    name: str
    role: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class ProcessGroup:
    """The run's child processes; each is stopped by its own pid, never by name."""

    env: dict[str, str]
    logdir: Path
    procs: dict[str, Proc] = field(default_factory=dict)
    gone: list[Proc] = field(default_factory=list)  # stopped or killed, logs still wanted

    def spawn(
        self, name: str, role: str, args: list[str], extra_env: dict[str, str] | None = None
    ) -> Proc:
        """Start `args` with stdout and stderr appended to `<logdir>/<name>.log`."""
        log = self.logdir / f"{name}.log"
        env = {**self.env, **(extra_env or {})}
        with log.open("ab") as out:
            popen = subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        proc = Proc(name, role, popen, log)
        self.procs[name] = proc
        return proc

    def celery_worker(
        self,
        name: str,
        app: str,
        queues: str,
        pool: str,
        concurrency: int,
        log_level: str,
        role: str,
        extra_env: dict[str, str] | None = None,
    ) -> Proc:
        """A Celery worker with the flags the engine's tests use (no gossip, mingle)."""
        return self.spawn(
            name,
            role,
            [
                str(BIN / "celery"),
                "-A",
                app,
                "worker",
                "-l",
                log_level,
                "-Q",
                queues,
                "--pool",
                pool,
                "-c",
                str(concurrency),
                "-n",
                f"{name}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            extra_env,
        )

    def beat(self, workdir: Path) -> Proc:
        """Celery beat: the reconciler's clock."""
        return self.spawn(
            "beat",
            "beat",
            [
                str(BIN / "celery"),
                "-A",
                "engine.celery_app",
                "beat",
                "-l",
                "info",
                "--schedule",
                str(workdir / "beat-schedule"),
            ],
        )

    def by_role(self, role: str) -> list[Proc]:
        """Running processes of one role."""
        return [p for p in self.procs.values() if p.role == role]

    def kill(self, name: str) -> None:
        """SIGKILL: no shutdown handlers and no acks, as a crash or OOM kill would."""
        proc = self.procs.pop(name)
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait()
        self.gone.append(proc)

    def stop(self, names: list[str], timeout: float = 30.0) -> None:
        """SIGTERM (Celery's warm shutdown), then SIGKILL what outlives `timeout`."""
        procs = [self.procs.pop(n) for n in names if n in self.procs]
        for proc in procs:
            if proc.popen.poll() is None:
                proc.popen.terminate()
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
        self.gone.extend(procs)

    def stop_all(self) -> None:
        """Stop every process still running."""
        self.stop(list(self.procs))

    def logs(self, role: str) -> list[Path]:
        """Log files of every process of a role, running or gone."""
        return sorted({p.log for p in [*self.procs.values(), *self.gone] if p.role == role})

    def wait_ready(self, procs: list[Proc], marker: str, timeout: float = 90.0) -> None:
        """Wait until each process wrote `marker` to its log (e.g. `worker.ready`)."""

        def ready() -> bool:
            for proc in procs:
                if proc.popen.poll() is not None:
                    raise RuntimeError(f"{proc.name} exited: see {proc.log}")
            return all(marker in p.log.read_text(errors="replace") for p in procs)

        if not wait_for(ready, timeout, every=0.25):
            raise RuntimeError(f"processes not ready in {timeout:.0f} s: {[p.name for p in procs]}")


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
    procs = ProcessGroup(env, workdir / "logs")
    try:
        procs.spawn(
            "simulator",
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
