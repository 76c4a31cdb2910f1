"""Helpers for tests that run the engine in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def python_env(**extra: str) -> dict[str, str]:
    """Environment for a subprocess (worker, beat, CLI) of the engine under test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(extra)
    env["PYTHONPATH"] = str(ROOT)
    return env


def bin_path(name: str) -> str:
    """A console script of the venv running the tests."""
    return str(Path(sys.executable).parent / name)


class Processes:
    """Real engine processes (workers, beat) for one test, all stopped at the end."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env = env
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def worker(self, name: str = "w1", concurrency: int = 8, pool: str = "threads") -> None:
        """Start a Celery worker consuming ticks and maintenance."""
        self._spawn(
            name,
            [
                bin_path("celery"),
                "-A",
                "engine.celery_app",
                "worker",
                "-l",
                "info",
                "-Q",
                "ticks,maintenance",
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

    def beat(self) -> None:
        """Start celery beat (the reconciler's clock)."""
        self._spawn(
            "beat",
            [
                bin_path("celery"),
                "-A",
                "engine.celery_app",
                "beat",
                "-l",
                "info",
                "--schedule",
                str(self.logdir / "beat-schedule"),
            ],
        )

    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.logdir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            args, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )

    def kill(self, name: str) -> None:
        """SIGKILL a process: no shutdown handlers, no acks, as a crash would."""
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        """Terminate everything (warm shutdown), killing what does not exit in time."""
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def log_records(self, name: str) -> list[dict[str, object]]:
        """The JSON log lines a process wrote."""
        path = self.logdir / f"{name}.log"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(predicate: Callable[[], bool], timeout: float, every: float = 0.2) -> bool:
    """Poll until `predicate()` is true or `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()
