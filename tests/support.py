"""Helpers for tests that run the engine in subprocesses."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from engine.supervise import console_script

ROOT = Path(__file__).resolve().parent.parent


def python_env(**extra: str) -> dict[str, str]:
    """Environment for a subprocess (worker, beat, CLI) of the engine under test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(extra)
    env["PYTHONPATH"] = str(ROOT)
    return env


bin_path = console_script


def wait_for(predicate: Callable[[], bool], timeout: float, every: float = 0.2) -> bool:
    """Poll until `predicate()` is true or `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()
