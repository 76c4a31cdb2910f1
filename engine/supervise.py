"""Child processes of the engine (workers, beat, simulator, API), started and stopped as
one group, each logging to its own file. Used by the demo, the tests and the benchmarks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import BotEngineError

BIN = Path(sys.executable).parent


def console_script(name: str) -> str:
    """Path of a console script (celery, botengine) of the running interpreter's venv."""
    return str(BIN / name)


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
    """One child process, with its role (what it is, for accounting) and its log."""

    name: str
    role: str
    popen: subprocess.Popen[bytes]
    log: Path


class ProcessGroup:
    """Named child processes with logs in `logdir`; `stop_all` ends every one of them.

    Each is stopped by its own pid, never by name. Stopped and killed processes stay in
    `gone`, for their logs.
    """

    def __init__(
        self,
        env: dict[str, str],
        logdir: Path,
        *,
        new_session: bool = False,
        cwd: Path | None = None,
    ) -> None:
        self.env = env
        self.logdir = logdir
        # A new session keeps a terminal's Ctrl-C away from the children, so the parent
        # can stop them in order (bots first, then workers).
        self.new_session = new_session
        self.cwd = cwd
        self.procs: dict[str, Proc] = {}
        self.gone: list[Proc] = []

    def spawn(
        self,
        name: str,
        args: list[str],
        extra_env: dict[str, str] | None = None,
        *,
        role: str | None = None,
    ) -> Proc:
        """Start `args`, appending its stdout and stderr to `<logdir>/<name>.log`."""
        log = self.log_path(name)
        with log.open("ab") as out:
            popen = subprocess.Popen(
                args,
                env={**self.env, **(extra_env or {})},
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=self.new_session,
            )
        proc = self.procs[name] = Proc(name, role or name, popen, log)
        return proc

    def worker(
        self,
        name: str,
        concurrency: int = 8,
        pool: str = "threads",
        app: str = "engine.celery_app",
        queues: str = "ticks,maintenance",
        *,
        log_level: str = "info",
        role: str = "worker",
        extra_env: dict[str, str] | None = None,
    ) -> Proc:
        """Start a Celery worker (no gossip, mingle or heartbeat: the engine needs none)."""
        return self.spawn(
            name,
            [
                console_script("celery"),
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
            role=role,
        )

    def beat(self, name: str = "beat", app: str = "engine.celery_app") -> Proc:
        """Start celery beat (the reconciler's clock)."""
        return self.spawn(
            name,
            [
                console_script("celery"),
                "-A",
                app,
                "beat",
                "-l",
                "info",
                "--schedule",
                str(self.logdir / f"{name}-schedule"),
            ],
            role="beat",
        )

    def by_role(self, role: str) -> list[Proc]:
        """Running processes of one role."""
        return [p for p in self.procs.values() if p.role == role]

    def kill(self, name: str) -> None:
        """SIGKILL one process: no shutdown handlers, no acks, as a crash would."""
        proc = self.procs.pop(name)
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait()
        self.gone.append(proc)

    def check(self) -> None:
        """Raise when a child exited on its own."""
        for proc in self.procs.values():
            if proc.popen.poll() is not None:
                raise BotEngineError(
                    f"{proc.name} exited with code {proc.popen.returncode}; see {proc.log}"
                )

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
                if self.new_session:
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                else:
                    proc.popen.kill()
                proc.popen.wait()
        self.gone.extend(procs)

    def stop_all(self, timeout: float = 30.0) -> None:
        """Stop every process still running."""
        self.stop(list(self.procs), timeout)

    def log_path(self, name: str) -> Path:
        """Where a child's output goes."""
        return self.logdir / f"{name}.log"

    def log_records(self, name: str) -> list[dict[str, Any]]:
        """The JSON log lines a child wrote (every line is JSON)."""
        text = self.log_path(name).read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def logs(self, role: str) -> list[Path]:
        """Log files of every process of a role, running or gone."""
        return sorted({p.log for p in [*self.procs.values(), *self.gone] if p.role == role})

    def wait_ready(self, procs: list[Proc], marker: str, timeout: float = 90.0) -> None:
        """Wait until each process wrote `marker` to its log (e.g. `worker.ready`)."""

        def ready() -> bool:
            for proc in procs:
                if proc.popen.poll() is not None:
                    raise BotEngineError(f"{proc.name} exited: see {proc.log}")
            return all(marker in p.log.read_text(errors="replace") for p in procs)

        if not wait_for(ready, timeout, every=0.25):
            names = [p.name for p in procs]
            raise BotEngineError(f"processes not ready in {timeout:.0f} s: {names}")
