"""Helpers for tests that run the engine in subprocesses."""

from __future__ import annotations

import os
import sys
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
