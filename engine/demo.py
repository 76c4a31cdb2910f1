"""`make demo` / `botengine demo`: the whole engine on one laptop, nothing installed.

Starts a private embedded Redis, the exchange simulator, a worker, beat and the API as
child processes, starts the example bots, and shows a live status table. Ctrl-C (or
the end of `--duration`) stops the bots and every process it started.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from engine.config import BotConfig, load_bot_config
from engine.embedded import EmbeddedRedis, free_port
from engine.errors import BotEngineError

console = Console(width=None if sys.stdout.isatty() else 120)


class Children:
    """Child processes with their logs in one folder; all stopped together."""

    def __init__(self, logdir: Path, env: dict[str, str]) -> None:
        self.logdir = logdir
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, args: list[str]) -> None:
        """Start a child whose stdout and stderr go to `<logdir>/<name>.log`."""
        log = (self.logdir / f"{name}.log").open("wb")
        # A new session: Ctrl-C in the terminal reaches only the demo, which then stops
        # its children in order (bots first, then worker, then the rest).
        self.procs[name] = subprocess.Popen(
            args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def check(self) -> None:
        """Fail fast when a child died."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise BotEngineError(
                    f"{name} exited with code {proc.returncode}; "
                    f"see {self.logdir / (name + '.log')}"
                )

    def stop(self) -> None:
        """SIGTERM everything (warm shutdown), SIGKILL what is still there after 20 s."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _wait_http(url: str, timeout: float) -> bool:
    import urllib.request  # lazy: only the demo waits on HTTP

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - loopback URL we built
                return True
        except OSError:
            time.sleep(0.2)
    return False


def run_demo(bot_files: list[Path], duration: float | None, workdir: Path) -> int:
    """Run the demo; returns the exit code (0 when every bot ticked and traded)."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    configs = [load_bot_config(path) for path in bot_files]
    redis_server = EmbeddedRedis().start()
    sim_port, api_port = free_port(), free_port()
    token = secrets.token_urlsafe(24)
    env = dict(os.environ)
    env.update(
        {
            "CELERY_BROKER_URL": redis_server.url,
            "CELERY_RESULT_BACKEND": redis_server.url,
            "REDIS_URL": redis_server.url,
            "DATABASE_URL": f"sqlite:///{workdir / 'botengine.db'}",
            "SIMULATOR_URL": f"http://127.0.0.1:{sim_port}",
            "API_TOKEN": token,
            "LOG_FORMAT": "json",
        }
    )
    os.environ.update(env)
    from engine.settings import get_settings  # lazy: settings must see the demo's env

    get_settings.cache_clear()
    children = Children(workdir, env)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        children.spawn("simulator", [_bin("botengine"), "simulator", "--port", str(sim_port)])
        if not _wait_http(f"http://127.0.0.1:{sim_port}/api/v3/ping", 30):
            raise BotEngineError(f"the simulator did not start; see {workdir}/simulator.log")
        children.spawn(
            "worker",
            [
                _bin("celery"),
                "-A",
                "engine.celery_app",
                "worker",
                "-l",
                "info",
                "-Q",
                "ticks,maintenance",
                "--pool",
                "threads",
                "-c",
                "16",
                "-n",
                "demo@%h",
            ],
        )
        children.spawn(
            "beat",
            [
                _bin("celery"),
                "-A",
                "engine.celery_app",
                "beat",
                "-l",
                "info",
                "--schedule",
                str(workdir / "celerybeat-schedule"),
            ],
        )
        children.spawn("api", [_bin("botengine"), "api", "--port", str(api_port)])
        return _drive(configs, children, stop, duration, api_port, token, workdir)
    finally:
        children.stop()
        redis_server.stop()


def _drive(
    configs: list[BotConfig],
    children: Children,
    stop: threading.Event,
    duration: float | None,
    api_port: int,
    token: str,
    workdir: Path,
) -> int:
    from engine import lifecycle  # lazy: after the demo's settings are in place
    from engine.db import migrate
    from engine.runtime import get_runtime

    rt = get_runtime()
    migrate(rt.settings.database_url)
    for config in configs:
        lifecycle.start(rt, config, source="demo")
    started = time.monotonic()
    header = Text.from_markup(
        f"[bold]botengine demo[/] — {len(configs)} paper bots on the loopback simulator. "
        f"API: http://127.0.0.1:{api_port}/docs (token {token}). Logs: {workdir}/. "
        "Ctrl-C stops everything.\n"
    )
    with Live(console=console, refresh_per_second=2, transient=False) as live:
        while not stop.wait(1.0):
            children.check()
            live.update(Group(header, _table(rt)))
            if duration is not None and time.monotonic() - started >= duration:
                break
    for config in configs:
        lifecycle.stop(rt, config.name)
    rows = _rows(rt)
    console.print(_table(rt))
    idle = [r["name"] for r in rows if r["ticks_ok"] == 0 or r["orders"] == 0]
    if duration is not None and idle:
        console.print(f"[red]not every bot ticked and traded: {', '.join(idle)}[/]")
        return 1
    console.print(
        f"[green]every bot ticked and traded[/] ({sum(r['ticks_ok'] for r in rows)} "
        f"ticks, {sum(r['orders'] for r in rows)} orders)"
    )
    return 0


def _rows(rt: Any) -> list[dict[str, Any]]:
    from sqlmodel import Session, select

    from engine.models import Bot
    from engine.views import bot_summary

    with Session(rt.db) as session:
        return [bot_summary(b) for b in session.exec(select(Bot).order_by(Bot.name))]


def _table(rt: Any) -> Any:
    from engine.cli import status_table

    return status_table(_rows(rt))
