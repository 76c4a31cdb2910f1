"""A run's result as JSON, a Markdown table and a PNG of lateness over time.

The JSON's top level holds the engine's figures (so `jq .lateness_ms.p99` answers the
main question) and `baseline` the same fields for the bare Celery chain; `ratios` puts
the two side by side and `targets` checks the issue's numbers.
"""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.profiles import BenchProfile

RESULTS = Path(__file__).resolve().parent / "results"

# The targets on a 2-core machine, 60 s interval, 50 ms exchange latency.
TARGETS = {
    "10k": {"p99_ms": 250.0, "run_pct": 99.9, "rss_mb": 500.0},
    "20k": {"p99_ms": 500.0, "run_pct": 99.9, "rss_mb": 1024.0},
}
MIN_THROUGHPUT_RATIO = 0.8


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return round(a / b, 3)


def build(
    run_id: str,
    profile: BenchProfile,
    engine: dict[str, Any],
    baseline: dict[str, Any],
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Assemble the result document (series are kept out: they go to the PNG)."""
    engine = {k: v for k, v in engine.items() if k != "series"}
    baseline = {k: v for k, v in baseline.items() if k != "series"}
    ratios = {
        "throughput_at_saturation": _ratio(
            engine["saturation"]["ticks_per_s"], baseline["saturation"]["ticks_per_s"]
        ),
        "lateness_p50": _ratio(engine["lateness_ms"]["p50"], baseline["lateness_ms"]["p50"]),
        "lateness_p99": _ratio(engine["lateness_ms"]["p99"], baseline["lateness_ms"]["p99"]),
        "worker_rss": _ratio(engine["worker_rss_mb"], baseline["worker_rss_mb"]),
        "worker_cpu": _ratio(engine["worker_cpu_cores"], baseline["worker_cpu_cores"]),
    }
    return {
        "run": run_id,
        "profile": profile.name,
        "settings": asdict(profile),
        **engine,
        "baseline": baseline,
        "ratios": ratios,
        "targets": check_targets(profile.name, engine, ratios),
        "meta": meta,
    }


def empty_side(engine: dict[str, Any]) -> dict[str, Any]:
    """A baseline with no figures (`--skip-baseline`), shaped like the engine's."""
    nan = float("nan")
    return {
        **dict.fromkeys(engine),
        "lateness_ms": dict.fromkeys(engine["lateness_ms"], nan),
        "tick_duration_ms": dict.fromkeys(engine["tick_duration_ms"], nan),
        "saturation": {"ticks_per_s": None, "worker_cpu_cores": None, "duplicates": 0},
        "window": {"start": {"seconds": None}},
        "bots": 0,
        "interval_s": 0.0,
    }


def check_targets(
    profile: str, engine: dict[str, Any], ratios: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Each target with the value reached and whether it passed."""
    checks: dict[str, dict[str, Any]] = {
        "no_duplicates": {
            "target": 0,
            "value": engine["duplicates"] + engine["saturation"]["duplicates"],
        },
        "throughput_ratio": {
            "target": MIN_THROUGHPUT_RATIO,
            "value": ratios["throughput_at_saturation"],
        },
    }
    checks["no_duplicates"]["ok"] = checks["no_duplicates"]["value"] == 0
    value = checks["throughput_ratio"]["value"]
    checks["throughput_ratio"]["ok"] = value is not None and value >= MIN_THROUGHPUT_RATIO
    if profile in TARGETS:
        t = TARGETS[profile]
        p99, pct, rss = (
            engine["lateness_ms"]["p99"],
            engine["slots_run_pct"],
            engine["worker_rss_mb"],
        )
        checks["lateness_p99_ms"] = {"target": t["p99_ms"], "value": p99, "ok": p99 <= t["p99_ms"]}
        checks["slots_run_pct"] = {"target": t["run_pct"], "value": pct, "ok": pct >= t["run_pct"]}
        checks["worker_rss_mb"] = {"target": t["rss_mb"], "value": rss, "ok": rss <= t["rss_mb"]}
    return checks


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 10 else f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(result: dict[str, Any]) -> str:
    """The result as a Markdown table: engine, baseline, and their ratio."""
    e, b = result, result["baseline"]
    s = result["settings"]
    rows: list[tuple[str, Any, Any]] = [
        (
            "bots x interval",
            f"{e['bots']} x {e['interval_s']:g} s",
            f"{b['bots']} x {b['interval_s']:g} s",
        ),
        ("slots expected (window)", e["slots_expected"], b["slots_expected"]),
        ("ticks run", e["ticks_run"], b["ticks_run"]),
        ("slots run %", e["slots_run_pct"], b["slots_run_pct"]),
        ("missed", e["missed"], b["missed"]),
        ("duplicates", e["duplicates"], b["duplicates"]),
        *[
            (f"lateness {k} ms", e["lateness_ms"][k], b["lateness_ms"][k])
            for k in ("p50", "p95", "p99", "max")
        ],
        *[
            (f"tick duration {k} ms", e["tick_duration_ms"][k], b["tick_duration_ms"][k])
            for k in ("p50", "p99")
        ],
        ("ticks/s (window)", e["ticks_per_s"], b["ticks_per_s"]),
        ("ticks/s at saturation", e["saturation"]["ticks_per_s"], b["saturation"]["ticks_per_s"]),
        (
            "worker CPU cores at saturation",
            e["saturation"]["worker_cpu_cores"],
            b["saturation"]["worker_cpu_cores"],
        ),
        ("worker RSS peak MB", e["worker_rss_mb"], b["worker_rss_mb"]),
        ("worker RSS KB/bot", e["worker_rss_kb_per_bot"], b["worker_rss_kb_per_bot"]),
        ("worker PSS peak MB", e["worker_pss_mb"], b["worker_pss_mb"]),
        ("worker CPU cores", e["worker_cpu_cores"], b["worker_cpu_cores"]),
        (
            "Redis used_memory peak MB",
            e["redis_used_memory_peak_mb"],
            b["redis_used_memory_peak_mb"],
        ),
        ("exchange requests/tick", e["exchange_requests_per_tick"], 0),
        (
            "start (s, per s)",
            f"{e['window']['start']['seconds']} s, {e['window']['start'].get('per_second', '-')}/s",
            f"{b['window']['start']['seconds']} s",
        ),
        ("stop all (s)", e["window"]["stop_s"], "-"),
    ]
    lines = [
        f"### botengine benchmark `{result['run']}` (profile {result['profile']})",
        "",
        f"{s['worker']['workers']} worker process(es), pool {s['worker']['pool']}, concurrency "
        f"{s['worker']['concurrency']}; exchange latency {s['latency_ms']:g} ms; "
        f"start mode {s['start_mode']}; DCA every {s['dca_every']} ticks; "
        f"GIL switch interval {s['switch_interval_s'] or 0.005:g} s; "
        f"window {e['duration_s']:g} s after a one-interval ramp.",
        "",
        "| metric | engine | baseline (bare Celery chain) | engine/baseline |",
        "|---|---:|---:|---:|",
    ]
    for name, ev, bv in rows:
        ratio = (
            _ratio(ev, bv) if isinstance(ev, int | float) and isinstance(bv, int | float) else None
        )
        lines.append(f"| {name} | {_fmt(ev)} | {_fmt(bv)} | {_fmt(ratio)} |")
    lines += ["", "| target | value | goal | ok |", "|---|---:|---:|:-:|"]
    for name, check in result["targets"].items():
        lines.append(
            f"| {name} | {_fmt(check['value'])} | {_fmt(check['target'])} | "
            f"{'yes' if check['ok'] else 'NO'} |"
        )
    cpu = {k: v for k, v in e["cpu_cores_by_role"].items() if v >= 0.005}
    lines += [
        "",
        "CPU cores by process role (engine window): "
        + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
        + f"; whole machine busy {e['machine_busy_cores']:.2f} of "
        f"{e['meta']['machine']['cpus']} cores"
        " (databases and anything else running included).",
        "",
    ]
    return "\n".join(lines)


def plot(
    path: Path,
    engine_series: list[tuple[float, float]],
    baseline_series: list[tuple[float, float]],
    title: str,
) -> None:
    """Lateness of every slot over the window, with a p99 line per 5 % of it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5))
    for series, label, color in (
        (baseline_series, "baseline", "tab:gray"),
        (engine_series, "engine", "tab:blue"),
    ):
        if not series:
            continue
        xs, ys = zip(*series, strict=True)
        ax.scatter(xs, ys, s=2, alpha=0.25, color=color, label=f"{label} (each slot)")
        ax.plot(*_p99_line(series), color=color, linewidth=1.5, label=f"{label} p99")
    ax.set_yscale("symlog", linthresh=10)
    ax.set_xlabel("due time (s since the window opened)")
    ax.set_ylabel("lateness = start - due (ms, symlog)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", markerscale=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _p99_line(series: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    span = max(x for x, _ in series) or 1.0
    width = span / 20
    buckets: dict[int, list[float]] = {}
    for x, y in series:
        buckets.setdefault(int(x // width), []).append(y)
    xs, ys = [], []
    for key in sorted(buckets):
        values = sorted(buckets[key])
        xs.append((key + 0.5) * width)
        ys.append(values[max(0, math.ceil(0.99 * len(values)) - 1)])
    return xs, ys


def write(
    result: dict[str, Any],
    engine_series: list[tuple[float, float]],
    baseline_series: list[tuple[float, float]],
    outdir: Path = RESULTS,
) -> dict[str, Path]:
    """Write `<run>.json`, `<run>.md` and `<run>.png`; returns their paths."""
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {ext: outdir / f"{result['run']}.{ext}" for ext in ("json", "md", "png")}
    paths["json"].write_text(json.dumps(clean(result), indent=2, allow_nan=False) + "\n")
    paths["md"].write_text(markdown(result))
    plot(
        paths["png"],
        engine_series,
        baseline_series,
        f"lateness, {result['bots']} bots x {result['interval_s']:g} s ({result['run']})",
    )
    return paths


def clean(value: Any) -> Any:
    """NaN (no data, e.g. percentiles of nothing) becomes null: strict JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def _git(*args: str) -> str:
    import subprocess

    done = subprocess.run(
        ["git", *args], cwd=RESULTS.parent.parent, capture_output=True, text=True, check=False
    )
    return done.stdout.strip()


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import os

    import celery
    import psutil

    return {
        "engine_commit": _git("rev-parse", "--short", "HEAD"),
        # Other engineers edit the engine while runs happen: note uncommitted changes.
        "engine_dirty": bool(_git("status", "--porcelain", "--", "engine", "strategies")),
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "platform": platform.platform(),
        "tuning_env": tuning_env(),
    }


def tuning_env() -> dict[str, str]:
    """Engine tuning set in the environment (every worker inherits it): the settings
    measured in seconds (`ETA_HORIZON_S`, `RECONCILE_EVERY_S`, ...) and glibc's
    `MALLOC_*`. No URLs, so no credentials."""
    return {
        key: value
        for key, value in sorted(os.environ.items())
        if (key.endswith("_S") and key.isupper()) or key.startswith("MALLOC_")
    }
