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
from engine.supervise import ProcessGroup, console_script, wait_for

console = Console(width=None if sys.stdout.isatty() else 120)


def _http_ok(url: str) -> bool:
    import urllib.request  # lazy: only the demo waits on HTTP

    try:
        with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - loopback URL we built
            return True
    except OSError:
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
    children = ProcessGroup(env, workdir, new_session=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        children.spawn(
            "simulator", [console_script("botengine"), "simulator", "--port", str(sim_port)]
        )
        if not wait_for(lambda: _http_ok(f"http://127.0.0.1:{sim_port}/api/v3/ping"), 30):
            raise BotEngineError(f"the simulator did not start; see {workdir}/simulator.log")
        children.worker("worker", concurrency=16)
        children.beat()
        children.spawn("api", [console_script("botengine"), "api", "--port", str(api_port)])
        return _drive(configs, children, stop, duration, api_port, token, workdir)
    finally:
        children.stop_all()
        redis_server.stop()


def _drive(
    configs: list[BotConfig],
    children: ProcessGroup,
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
        f"Dashboard: http://127.0.0.1:{api_port}/ui (token {token}). "
        f"API: http://127.0.0.1:{api_port}/api/v1/bots with `Authorization: Bearer {token}` "
        f"(OpenAPI document: /api/v1/openapi.json). Logs: {workdir}/. "
        "Ctrl-C stops everything.\n"
    )
    with Live(console=console, refresh_per_second=2, transient=False) as live:
        while not stop.wait(1.0):
            children.check()
            live.update(Group(header, _table(rt), _warning(rt)))
            if duration is not None and time.monotonic() - started >= duration:
                break
    for config in configs:
        lifecycle.stop(rt, config.name)
    rows = _rows(rt)
    console.print(_table(rt))
    idle = [r["name"] for r in rows if r["ticks_ok"] == 0 or r["orders"] == 0]
    if idle:
        console.print(f"[red]not every bot ticked and traded: {', '.join(idle)}[/]")
        # Ctrl-C is the operator's choice, not a failure; a bounded run is a check.
        return 1 if duration is not None else 0
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


def _warning(rt: Any) -> Text:
    """A red line saying why the fleet is not ticking, or nothing."""
    from engine.health import fleet_health

    try:
        reasons = list(fleet_health(rt).reasons.values())
    except Exception as exc:  # noqa: BLE001 - shown, not raised: the table goes on
        reasons = [f"cannot check the fleet's health: {exc}"]
    return Text("\n".join(f"warning: {r}" for r in reasons), style="bold red")


def _table(rt: Any) -> Any:
    from engine.cli import status_table

    return status_table(_rows(rt))
