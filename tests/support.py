"""Helpers for tests that run the engine in subprocesses."""

from __future__ import annotations

import os
from pathlib import Path

from engine.supervise import console_script
from engine.supervise import wait_for as wait_for  # re-exported for the tests

ROOT = Path(__file__).resolve().parent.parent


def python_env(**extra: str) -> dict[str, str]:
    """Environment for a subprocess (worker, beat, CLI) of the engine under test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(extra)
    env["PYTHONPATH"] = str(ROOT)
    return env


bin_path = console_script
