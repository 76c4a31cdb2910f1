"""The benchmark and chaos harnesses, end to end in their tiniest configurations.

Each runs as a subprocess exactly as `make bench` / `make chaos` would, on its own
private Redis and simulator. What is asserted is that the harnesses work and report
every figure (and that the chaos invariants hold), not how fast the engine is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.pgserver import binaries
from tests.support import ROOT, python_env

pytestmark = pytest.mark.slow

BENCH_KEYS = (
    "profile",
    "bots",
    "interval_s",
    "duration_s",
    "slots_expected",
    "ticks_run",
    "duplicates",
    "missed",
    "lateness_ms",
    "worker_rss_mb",
    "exchange_requests_per_tick",
)


def _run(module: str, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_bench_tiny_reports_every_field_for_engine_and_baseline(tmp_path: Path) -> None:
    # Given the tiny profile (20 bots at 1 s, cut to 6 s, and a 3 s saturation phase)
    # When the benchmark runs
    done = _run(
        "benchmarks.run",
        ["--profile", "tiny", "--duration", "6", "--saturation-s", "3", "--out", str(tmp_path)],
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Then it wrote JSON, Markdown and a PNG
    [result_path] = list(tmp_path.glob("tiny-*.json"))
    result = json.loads(result_path.read_text())
    assert result_path.with_suffix(".md").exists()
    assert result_path.with_suffix(".png").stat().st_size > 0
    # And both sides carry the figures, with the engine's slots all accounted for
    for side in (result, result["baseline"]):
        for key in BENCH_KEYS[1:]:
            assert key in side, key
        assert set(side["lateness_ms"]) >= {"p50", "p95", "p99", "max"}
        assert side["slots_expected"] > 0
        assert side["ticks_run"] + side["missed"] + side["ticks_skipped"] >= side["slots_expected"]
    assert result["profile"] == "tiny"
    assert result["duplicates"] == 0
    assert result["worker_rss_mb"] > 0
    assert result["ratios"]["throughput_at_saturation"] is not None


def test_chaos_tiny_keeps_every_invariant(tmp_path: Path) -> None:
    # Given 10 bots at 1 s (1 in 3 at 3 s, parked) for 40 s, half of them live
    # When a worker and beat are SIGKILLed and Redis restarts empty, amid exchange faults
    done = _run("benchmarks.chaos", ["--profile", "tiny", "--out", str(tmp_path)], timeout=240)
    # Then every invariant held (exit 0) and the report says which faults happened
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    [result_path] = list(tmp_path.glob("chaos-tiny-*.json"))
    result = json.loads(result_path.read_text())
    assert result["ok"] is True
    faults = {f["fault"].split()[0] for f in result["faults"]}
    expected = {"kill", "redis_restart", "beat_kill"}
    if binaries() is not None:  # the run brings its own PostgreSQL and stops it once
        expected.add("db_restart")
    assert faults == expected
    assert all(check["ok"] for check in result["invariants"])
