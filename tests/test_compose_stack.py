"""The whole stack in containers: build, start, trade, lose a worker, restart Redis.

Runs only when asked (`make compose-test` sets BOTENGINE_COMPOSE_TEST=1) and a Docker
engine answers; skips with the reason otherwise. It follows the documented path: an env
file made from .env.example with the secrets set, passed to compose for interpolation
(`--env-file`, as `make up` does) and to the app containers, so its host-side addresses
(127.0.0.1) are there to prove they do not leak in. Everything runs under a project name,
an image tag and host ports of its own, so no other stack on the machine is touched, and
ends with `down -v` (COMPOSE_TEST_KEEP=1 leaves it up for a look). The figures it
measures are printed as `compose-test: ...` lines.

The tests run in file order against one stack; each step's checks are its own test.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker" / "compose.yaml"
IMAGE = "botengine:compose-test"
BOTS = sorted(ROOT.glob("bots/*.yaml"))
# benchmarks/chaos.py's engine settings and the recovery bound they imply: a dead
# worker's claim is abandoned when its heartbeat expires (10 s), the reconciler runs
# every 2 s and acts on slots overdue by 3 s. Kept in step with CHAOS_ENV by a test below.
CHAOS_ENV = {
    "RECONCILE_EVERY_S": "2",
    "RECONCILE_GRACE_S": "3",
    "TICK_TIME_LIMIT_S": "20",
    "ETA_HORIZON_S": "2",
    "DISPATCH_EVERY_S": "1",
}
RECOVERY_BOUND_S = 30.0
FIRST_TRADE_TIMEOUT_S = 120.0
APP_LOGS = ("worker", "beat", "flower", "api")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        os.environ.get("BOTENGINE_COMPOSE_TEST") != "1",
        reason="container test: run `make compose-test` (sets BOTENGINE_COMPOSE_TEST=1)",
    ),
]


def say(message: str) -> None:
    """One measured figure or step, visible with `pytest -s` (make compose-test)."""
    print(f"compose-test: {message}", flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(
    args: list[str], *, timeout: float = 120, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-3000:]}"
        )
    return result


def _wait(what: str, condition: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    """Poll `condition` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def _http(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except OSError:
        return 0, b""


@dataclass
class Stack:
    """One compose project of this test: its files, secrets, ports and helpers."""

    workdir: Path
    project: str = field(default_factory=lambda: f"botengine-ctest-{os.getpid()}")
    secrets: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict)

    @property
    def env_file(self) -> Path:
        return self.workdir / "dotenv"

    @property
    def override(self) -> Path:
        return self.workdir / "override.yaml"

    def compose(self, *args: str, timeout: float = 180, check: bool = True) -> Any:
        return _run(
            [
                "docker",
                "compose",
                "-p",
                self.project,
                "-f",
                str(COMPOSE_FILE),
                "-f",
                str(self.override),
                "--env-file",
                str(self.env_file),
                "--profile",
                "sim",
                *args,
            ],
            timeout=timeout,
            check=check,
            # The legacy builder, as `make up` uses it: no registry for BuildKit's frontend.
            env={"DOCKER_BUILDKIT": "0", "COMPOSE_BAKE": "false"},
        )

    def write_files(self) -> None:
        # The documented path: cp .env.example .env, then set the secrets (and here the
        # chaos run's reconciler settings, so that its recovery bound applies).
        self.secrets = {
            "POSTGRES_PASSWORD": "pg-" + secrets.token_hex(12),
            "FLOWER_PASSWORD": "fl-" + secrets.token_hex(12),
            "API_TOKEN": "tok-" + secrets.token_hex(16),
        }
        values = {**self.secrets, **CHAOS_ENV}
        lines = []
        for line in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines():
            key = line.split("=", 1)[0]
            if key in values and "=" in line:
                line = f"{key}={values.pop(key)}"
            lines.append(line)
        lines += [f"{key}={value}" for key, value in values.items()]
        self.env_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.ports = {name: _free_port() for name in ("api", "flower", "simulator")}
        inner = {"api": 8000, "flower": 5555, "simulator": 8765}
        app_services = ("migrate", "worker", "beat", "flower", "api", "simulator")
        parts = ["services:"]
        for name in app_services:
            parts += [
                f"  {name}:",
                f"    image: {IMAGE}",
                # The app containers read the same file as the repository's .env.
                "    env_file: !override",
                f"      - path: {self.env_file}",
            ]
            if name in inner:
                parts += [
                    "    ports: !override",
                    f'      - "127.0.0.1:{self.ports[name]}:{inner[name]}"',
                ]
        self.override.write_text("\n".join(parts) + "\n", encoding="utf-8")

    def sql(self, query: str) -> list[list[str]]:
        """Rows of `query`, run in the postgres container over TCP with the set password."""
        result = self.compose(
            "exec",
            "-T",
            "-e",
            f"PGPASSWORD={self.secrets['POSTGRES_PASSWORD']}",
            "postgres",
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "botengine",
            "-d",
            "botengine",
            "-At",
            "-F",
            "|",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            query,
            timeout=30,
        )
        return [line.split("|") for line in result.stdout.splitlines() if line]

    def container_ids(self, service: str) -> list[str]:
        out = self.compose("ps", "-a", "-q", service).stdout
        return [line for line in out.split() if line]

    def health(self, service: str) -> str:
        (cid,) = self.container_ids(service)
        result = _run(["docker", "inspect", "-f", "{{.State.Health.Status}}", cid])
        return result.stdout.strip()

    def last_ticks(self) -> dict[str, float]:
        """Epoch seconds of each bot's latest tick start."""
        rows = self.sql("SELECT bot, extract(epoch FROM max(started_at)) FROM ticks GROUP BY bot")
        return {bot: float(ts) for bot, ts in rows}

    def running_bots(self) -> list[str]:
        return [r[0] for r in self.sql("SELECT name FROM bots WHERE status = 'running'")]

    def record(self, key: str, value: str) -> None:
        self.figures[key] = value
        say(f"{key}: {value}")

    def recovery_after(self, fault_at: float, bots: list[str]) -> dict[str, float]:
        """Seconds from `fault_at` to each bot's first tick that started after it."""

        def recovered() -> dict[str, float] | None:
            latest = self.last_ticks()
            if all(latest.get(bot, 0.0) > fault_at for bot in bots):
                return {bot: latest[bot] - fault_at for bot in bots}
            return None

        # The latest tick only tells that a bot ticked again, not when it first did:
        # ask for the first tick after the fault once all have one.
        _wait("every bot to tick again", recovered, RECOVERY_BOUND_S + 30)
        rows = self.sql(
            "SELECT bot, extract(epoch FROM min(started_at)) FROM ticks "
            f"WHERE started_at > to_timestamp({fault_at}) GROUP BY bot"
        )
        return {bot: float(ts) - fault_at for bot, ts in rows if bot in bots}


def _docker_ready() -> str | None:
    """Why the container test cannot run here, or None."""
    if shutil.which("docker") is None:
        return "no docker CLI"
    info = _run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=30, check=False)
    if info.returncode != 0:
        return (
            "no Docker engine answers (bring one up with "
            "`bash /work/shared/tools/docker/docker-up.sh`, see .ci/run)"
        )
    if _run(["docker", "compose", "version"], timeout=30, check=False).returncode != 0:
        return "no Docker Compose v2 plugin"
    return None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    reason = _docker_ready()
    if reason:
        pytest.skip(f"container test skipped: {reason}")
    assert BOTS, "no bots/*.yaml to start"
    s = Stack(tmp_path_factory.mktemp("compose-stack"))
    s.write_files()
    say(f"project {s.project}, ports {s.ports}, image {IMAGE}")
    started = time.monotonic()
    try:
        t0 = time.monotonic()
        # COMPOSE_TEST_NO_CACHE=1 measures a build from scratch (base image only).
        no_cache = ["--no-cache"] if os.environ.get("COMPOSE_TEST_NO_CACHE") == "1" else []
        s.compose("build", *no_cache, "migrate", timeout=900)
        s.record("build", f"{time.monotonic() - t0:.1f} s")
        t0 = time.monotonic()
        s.compose("up", "-d", timeout=300)
        _wait(
            "the API's /healthz",
            lambda: _http(f"http://127.0.0.1:{s.ports['api']}/healthz")[0] == 200,
            120,
        )
        s.record("stack up (api healthy)", f"{time.monotonic() - t0:.1f} s")
        yield s
    finally:
        if os.environ.get("COMPOSE_TEST_KEEP") == "1":
            say(f"left running: docker compose -p {s.project} ... (COMPOSE_TEST_KEEP=1)")
        else:
            s.compose("down", "-v", "--remove-orphans", "-t", "10", timeout=300, check=False)
        say(f"total {time.monotonic() - started:.1f} s; figures: {json.dumps(s.figures)}")


# --- the steps, in order -----------------------------------------------------------------------


def test_settings_match_the_chaos_run() -> None:
    # The recovery bound is the chaos run's: keep its reconciler settings in step.
    from benchmarks.chaos import CHAOS_ENV as CHAOS
    from benchmarks.profiles import ChaosProfile

    assert {k: CHAOS[k] for k in CHAOS_ENV} == CHAOS_ENV
    assert ChaosProfile.__dataclass_fields__["recovery_bound_s"].default == RECOVERY_BOUND_S


def test_containers_use_this_network_and_the_set_passwords(stack: Stack) -> None:
    # Given an env file written for the host (127.0.0.1 addresses) / Then the containers
    # still reach this stack's services, the broker and REDIS_URL being one URL.
    env = stack.compose("exec", "-T", "worker", "env").stdout
    values = dict(line.split("=", 1) for line in env.splitlines() if "=" in line)
    assert values["CELERY_BROKER_URL"] == "redis://redis:6379/0"
    assert values["REDIS_URL"] == values["CELERY_BROKER_URL"]
    assert values["DATABASE_URL"] == "postgresql+psycopg://botengine@postgres:5432/botengine"
    # And PostgreSQL took the password from the env file, not compose's old default.
    assert stack.sql("SELECT 1") == [["1"]]
    default = stack.compose(
        "exec",
        "-T",
        "-e",
        "PGPASSWORD=botengine",
        "postgres",
        "psql",
        "-h",
        "127.0.0.1",
        "-U",
        "botengine",
        "-d",
        "botengine",
        "-c",
        "SELECT 1",
        check=False,
    )
    assert default.returncode != 0
    assert "password authentication failed" in default.stderr


def test_example_bots_start_tick_and_trade(stack: Stack) -> None:
    # Given the migrated stack / When each example bot is started by a one-off container
    (migrate,) = stack.container_ids("migrate")

    def started_at() -> str:
        return str(_run(["docker", "inspect", "-f", "{{.State.StartedAt}}", migrate]).stdout)

    before = started_at()
    start_times: dict[str, float] = {}
    for path in BOTS:
        rel = path.relative_to(ROOT).as_posix()
        start_times[path.stem] = time.time()
        out = stack.compose("run", "--rm", "--no-deps", "worker", "botengine", "start-bot", rel)
        assert "started" in out.stdout, out.stdout
    # Then `run --no-deps` left the one-shot migration alone
    assert started_at() == before, "run --rm --no-deps restarted migrate"
    names = sorted(start_times)
    assert sorted(stack.running_bots()) == names

    # And every bot ticks, then trades (orders in PostgreSQL), as in `make demo`
    def first_ticks() -> dict[str, float] | None:
        rows = stack.sql("SELECT bot, extract(epoch FROM min(started_at)) FROM ticks GROUP BY bot")
        firsts = {bot: float(ts) for bot, ts in rows}
        return firsts if set(names) <= set(firsts) else None

    firsts = _wait("a first tick of every bot", first_ticks, 60)
    lags = {bot: round(firsts[bot] - start_times[bot], 1) for bot in names}
    stack.record(
        "time to first tick after start-bot, one-off container incl. (s)", json.dumps(lags)
    )
    t0 = time.monotonic()

    def trading() -> dict[str, int] | None:
        rows = stack.sql("SELECT bot, count(*) FROM orders GROUP BY bot")
        orders = {bot: int(n) for bot, n in rows}
        return orders if all(orders.get(bot, 0) > 0 for bot in names) else None

    orders = _wait("an order from every bot", trading, FIRST_TRADE_TIMEOUT_S, every=2)
    stack.record("every bot traded after", f"{time.monotonic() - t0:.1f} s more; orders {orders}")
    failed = stack.sql("SELECT bot, count(*) FROM ticks WHERE outcome = 'failed' GROUP BY bot")
    say(f"failed ticks so far: {failed or 'none'}")


def test_service_logs_are_json_lines(stack: Stack) -> None:
    for service in APP_LOGS:
        out = stack.compose("logs", "--no-log-prefix", "--no-color", service).stdout
        lines = [line for line in out.splitlines() if line.strip()]
        assert lines, f"{service} logged nothing"
        bad = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                bad.append(line)
                continue
            if not (isinstance(record, dict) and {"event", "level", "timestamp"} <= set(record)):
                bad.append(line)
        assert not bad, f"{service}: {len(bad)} of {len(lines)} lines not JSON: {bad[:3]}"
        say(f"{service}: {len(lines)} log lines, all JSON")
    worker_log = stack.compose("logs", "--no-log-prefix", "worker").stdout
    assert '"event": "tick.finished"' in worker_log


def test_api_requires_its_token(stack: Stack) -> None:
    url = f"http://127.0.0.1:{stack.ports['api']}/api/v1/bots"
    assert _http(url)[0] == 401
    assert _http(url, {"Authorization": "Bearer wrong-token"})[0] == 401
    status, body = _http(url, {"Authorization": f"Bearer {stack.secrets['API_TOKEN']}"})
    assert status == 200, body[:300]
    assert {bot["name"] for bot in json.loads(body)} == {p.stem for p in BOTS}
    say("api: 401 without or with a wrong token, 200 with API_TOKEN")


def test_flower_requires_its_password_and_shows_it_nowhere(stack: Stack) -> None:
    url = f"http://127.0.0.1:{stack.ports['flower']}/api/workers"
    password = stack.secrets["FLOWER_PASSWORD"]

    def basic(user: str, pw: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}

    assert _http(url)[0] == 401
    assert _http(url, basic("admin", "botengine"))[0] == 401, "the old default still works"
    assert _http(url, basic("admin", password))[0] == 200
    # No command line shows the password: not in the container, not on the host (where
    # `ps` lists every container's processes too).
    script = (
        "import os\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try: print(open(f'/proc/{pid}/cmdline', 'rb').read().replace(b'\\0', b' ').decode())\n"
        "    except OSError: pass\n"
    )
    inside = stack.compose("exec", "-T", "flower", "python", "-c", script).stdout
    assert "botengine flower" in inside
    assert password not in inside
    leaked = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if password.encode() in (proc / "cmdline").read_bytes():
                    leaked.append(proc.name)
            except OSError:
                continue
    assert not leaked, f"host processes with the password on their command line: {leaked}"
    say("flower: 401 without or with the old default, 200 with FLOWER_PASSWORD; not in cmdline")


def test_every_bot_ticks_again_after_a_worker_is_killed(stack: Stack) -> None:
    # Given three workers
    stack.compose("up", "-d", "--no-recreate", "--scale", "worker=3", "worker", timeout=300)

    def three_workers() -> list[str] | None:
        out = stack.compose(
            "exec", "-T", "beat", "celery", "-A", "engine.celery_app", "inspect", "ping",
            "--timeout", "5", "--json", check=False,
        ).stdout  # fmt: skip
        nodes = re.findall(r'"(celery@[^"]+)"', out)
        return nodes if len(nodes) >= 3 else None

    t0 = time.monotonic()
    nodes = _wait("three workers answering ping", three_workers, 120, every=3)
    stack.record("scale to 3 workers", f"{time.monotonic() - t0:.1f} s ({len(nodes)} nodes)")
    time.sleep(8)  # let the bots spread over them
    # When the worker that ran the most recent ticks is killed (SIGKILL, mid-run)
    rows = stack.sql(
        "SELECT worker, count(*) FROM ticks WHERE started_at > now() - interval '8 seconds' "
        "GROUP BY worker ORDER BY 2 DESC"
    )
    assert rows, "no recent ticks"
    busiest = rows[0][0].split("@")[-1].split(":")[0]  # "hostname:pid", hostname = container id
    victim = next(c for c in stack.container_ids("worker") if c.startswith(busiest[:12]))
    say(f"recent ticks per worker {rows}; killing {victim[:12]}")
    bots = stack.running_bots()
    fault_at = time.time()
    _run(["docker", "kill", victim])
    # Then every running bot ticks again within the chaos bound
    recovery = stack.recovery_after(fault_at, bots)
    worst = max(recovery.values())
    stack.record(
        "recovery after docker kill of a worker (s)",
        json.dumps({b: round(v, 1) for b, v in sorted(recovery.items())}),
    )
    assert worst <= RECOVERY_BOUND_S, f"a bot took {worst:.1f}s (bound {RECOVERY_BOUND_S}s)"
    assert sorted(stack.running_bots()) == sorted(bots), "a bot left `running`"
    state = _run(["docker", "inspect", "-f", "{{.State.Status}} {{.RestartCount}}", victim])
    say(f"killed worker afterwards (status, restarts): {state.stdout.strip()}")


def test_no_bot_is_lost_when_redis_restarts(stack: Stack) -> None:
    # Given Redis with AOF on
    out = stack.compose("exec", "-T", "redis", "redis-cli", "config", "get", "appendonly").stdout
    assert out.split() == ["appendonly", "yes"]

    def keys() -> int:
        return int(stack.compose("exec", "-T", "redis", "redis-cli", "dbsize").stdout)

    before = keys()
    bots = stack.running_bots()
    (redis,) = stack.container_ids("redis")
    # When the Redis container restarts (stop: SIGTERM, then start; the AOF is replayed)
    fault_at = time.time()
    _run(["docker", "restart", redis], timeout=120)
    back_at = time.time()
    _wait("redis healthy again", lambda: stack.health("redis") == "healthy", 60)
    # The AOF brought the keys back (claims, schedule mirror, queued messages).
    after = keys()
    say(f"redis keys before/after the restart: {before}/{after}")
    assert after >= before // 2 > 0, "Redis came back (nearly) empty: no AOF?"
    stack.record(
        "redis restart",
        f"docker restart {back_at - fault_at:.1f} s, healthy after {time.time() - fault_at:.1f} s",
    )
    # Then every running bot ticks again (a tick after Redis is back), within the bound
    recovery = stack.recovery_after(back_at, bots)
    worst = max(recovery.values())
    stack.record(
        "recovery after redis restart (s, from redis back up)",
        json.dumps({b: round(v, 1) for b, v in sorted(recovery.items())}),
    )
    assert worst <= RECOVERY_BOUND_S, f"a bot took {worst:.1f}s (bound {RECOVERY_BOUND_S}s)"
    assert sorted(stack.running_bots()) == sorted(bots), "a bot was lost"


def test_beat_is_healthy_and_its_probe_fails_when_beat_stops(stack: Stack) -> None:
    # Given beat's own healthcheck (the age of the file its scheduling loop touches), here
    # with a 4 s limit instead of 30 s so that the test need not wait that long
    _wait("beat healthy", lambda: stack.health("beat") == "healthy", 90, every=3)
    fresh = (
        "import os, sys, time; "
        "sys.exit(time.time() - os.path.getmtime('/tmp/celerybeat-schedule.alive') > 4)"
    )
    probe = ["python", "-c", fresh]
    assert stack.compose("exec", "-T", "beat", *probe).returncode == 0
    # When beat's process is stopped (SIGSTOP: alive, but neither scheduling nor answering)
    signal_beat = (
        "import os, signal, sys\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    cmd = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')\n"
        "    if int(pid) != os.getpid() and b'beat' in cmd and b'celery' in cmd[1]:\n"
        "        os.kill(int(pid), getattr(signal, sys.argv[1]))\n"
    )
    stack.compose("exec", "-T", "beat", "python", "-c", signal_beat, "SIGSTOP")
    try:
        time.sleep(6)
        # Then the probe fails
        stopped = stack.compose("exec", "-T", "beat", *probe, check=False)
        assert stopped.returncode != 0, stopped.stdout
    finally:
        stack.compose("exec", "-T", "beat", "python", "-c", signal_beat, "SIGCONT")
    # And passes again once beat runs
    _wait(
        "beat answering again",
        lambda: stack.compose("exec", "-T", "beat", *probe, check=False).returncode == 0,
        60,
        every=2,
    )
    say("beat: healthy; its probe fails while beat is stopped and passes once it runs")
