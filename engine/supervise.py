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
from pathlib import Path
from typing import Any

from engine.errors import BotEngineError

BIN = Path(sys.executable).parent


def console_script(name: str) -> str:
    """Path of a console script (celery, botengine) of the running interpreter's venv."""
    return str(BIN / name)


class ProcessGroup:
    """Named child processes with logs in `logdir`; `stop_all` ends every one of them."""

    def __init__(self, env: dict[str, str], logdir: Path, *, new_session: bool = False) -> None:
        self.env = env
        self.logdir = logdir
        # A new session keeps a terminal's Ctrl-C away from the children, so the parent
        # can stop them in order (bots first, then workers).
        self.new_session = new_session
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> None:
        """Start `args`, appending its stdout and stderr to `<logdir>/<name>.log`."""
        with self.log_path(name).open("ab") as log:
            self.procs[name] = subprocess.Popen(
                args,
                env={**self.env, **(extra_env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self.new_session,
            )

    def worker(
        self,
        name: str,
        concurrency: int = 8,
        pool: str = "threads",
        app: str = "engine.celery_app",
        queues: str = "ticks,maintenance",
    ) -> None:
        """Start a Celery worker."""
        self.spawn(
            name,
            [
                console_script("celery"),
                "-A",
                app,
                "worker",
                "-l",
                "info",
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
        )

    def beat(self, name: str = "beat", app: str = "engine.celery_app") -> None:
        """Start celery beat (the reconciler's clock)."""
        self.spawn(
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
        )

    def kill(self, name: str) -> None:
        """SIGKILL one process: no shutdown handlers, no acks, as a crash would."""
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def check(self) -> None:
        """Raise when a child exited on its own."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise BotEngineError(
                    f"{name} exited with code {proc.returncode}; see {self.log_path(name)}"
                )

    def stop_all(self, timeout: float = 20.0) -> None:
        """SIGTERM everything (warm shutdown); SIGKILL what is still there after `timeout`."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                if self.new_session:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
                proc.wait()
        self.procs.clear()

    def log_path(self, name: str) -> Path:
        """Where a child's output goes."""
        return self.logdir / f"{name}.log"

    def log_records(self, name: str) -> list[dict[str, Any]]:
        """The JSON log lines a child wrote (every line is JSON)."""
        text = self.log_path(name).read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]
