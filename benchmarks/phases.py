"""The two sides of a benchmark run: the engine and its baseline, each in two phases.

Main phase: N bots at interval S, started over one interval, measured for D seconds
after that, then given a tail (so a slot due at the window's end has time to run) and
stopped. Saturation phase: many bots at a 1 s interval, far above capacity; the ticks
started per second are the throughput. Each side runs with its own worker processes
while the other side's are down, so they never compete for the CPU.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from benchmarks import fleet, metrics
from benchmarks.infra import Stack, harness_runtime, switch_interval_env
from benchmarks.profiles import BenchProfile
from benchmarks.sampler import Sampler
from engine.embedded import free_port
from engine.supervise import Proc, wait_for

BLOCKED_EVENTS = (
    "tick.duplicate",
    "tick.dropped",
    "tick.duplicate_record",
    "reconcile.advanced",
    "reconcile.restored",
    "bot.error",
)


WARMUP_S = 5.0
API_TOKEN = "benchmark-api-token-0123456789"


@dataclass
class Window:
    """When a phase was measured (epoch seconds) and what starting and stopping cost."""

    t_start: float
    w0: float
    w1: float
    start: dict[str, Any]
    stop_s: float = 0.0
    requests: int = 0


def _sleep_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        time.sleep(delay)


def tail_s(interval_s: float) -> float:
    """Grace after the window so its last slots can run before bots stop."""
    return min(interval_s, 30.0) + 2.0


def start_workers(stack: Stack, profile: BenchProfile, side: str, first: int = 0) -> list[Proc]:
    """N worker processes for one side, ready to consume."""
    spec = profile.worker
    env: dict[str, str] = {}
    if profile.switch_interval_s is not None:  # both sides alike
        env.update(switch_interval_env(stack.workdir, profile.switch_interval_s))
    if side == "engine":
        app, queues, marker = "engine.celery_app", "ticks,maintenance", "worker.ready"
    else:
        app, queues, marker = "benchmarks.baseline_app", "baseline", " ready."
        env["BASELINE_LOG_DIR"] = str(baseline_dir(stack))
    workers = [
        stack.procs.worker(
            f"{side}-w{first + i}",
            spec.concurrency,
            spec.pool,
            app,
            queues,
            log_level=profile.log_level,
            role=f"{side}-worker",
            extra_env=env,
        )
        for i in range(spec.workers)
    ]
    if workers:  # none: workers on other machines, started by the operator
        stack.procs.wait_ready(workers, marker)
    return workers


def purge_tick_queue(stack: Stack) -> int:
    """Drop every queued and unacknowledged tick message (call with workers stopped).

    Between phases only, after every bot of the last phase was stopped: what is left
    are messages the guard would drop, and a backlog of them would eat into the next
    phase's measurement. Returns how many were dropped.
    """
    client = redis.Redis.from_url(stack.redis_url)
    dropped = int(client.llen("ticks")) + int(client.hlen("unacked"))
    client.delete("ticks", "unacked", "unacked_index")
    return dropped


def baseline_dir(stack: Stack) -> Path:
    """Where baseline workers write their records."""
    path = stack.workdir / "baseline"
    path.mkdir(exist_ok=True)
    return path


# -- engine -------------------------------------------------------------------------


def engine_main(stack: Stack, profile: BenchProfile, prefix: str) -> Window:
    """Start N engine bots over one interval, run D seconds, stop them."""
    rt = harness_runtime()
    configs = fleet.fleet(
        prefix,
        profile.bots,
        profile.interval_s,
        dca_every=profile.dca_every,
        strategies=profile.strategies,
    )
    before = stack.sim("/_sim/stats")["total"]
    t_start = time.time()
    report = _start(stack, rt, configs, profile, profile.interval_s)
    # The window opens once every bot's first slot was due, plus a warm-up: first ticks
    # in a fresh worker load markets and parse configs, a cost paid once per process.
    w0 = (
        max(
            t_start + profile.interval_s + (2.0 if profile.start_mode == "bulk" else 0.0),
            time.time(),
        )
        + WARMUP_S
    )
    w1 = w0 + profile.duration_s
    _sleep_until(w1 + tail_s(profile.interval_s))
    stop_s, _ = fleet.stop_all(rt, [c.name for c in configs], profile.start_threads)
    after = stack.sim("/_sim/stats")["total"]
    return Window(t_start, w0, w1, report, round(stop_s, 1), after - before)


def engine_saturation(stack: Stack, profile: BenchProfile, prefix: str) -> Window:
    """Many engine bots at 1 s: demand far above capacity for `saturation_s`."""
    rt = harness_runtime()
    configs = fleet.fleet(
        prefix,
        profile.saturation_bots,
        1.0,
        dca_every=profile.dca_every,
        strategies=profile.strategies,
    )
    t_start = time.time()
    report = _start(stack, rt, configs, profile, 1.0)
    w0 = time.time() + 3.0  # past the start-up burst
    w1 = w0 + profile.saturation_s
    _sleep_until(w1)
    stop_s, _ = fleet.stop_all(rt, [c.name for c in configs], profile.start_threads)
    return Window(t_start, w0, w1, report, round(stop_s, 1))


def start_api(stack: Stack) -> Proc:
    """`botengine api` on the stack, for bots started through it (start_mode api)."""
    port = free_port()
    api = stack.procs.spawn(
        "api",
        [str(Path(sys.executable).with_name("botengine")), "api", "--port", str(port)],
        {"API_TOKEN": API_TOKEN, "LOG_LEVEL": "WARNING"},
    )
    stack.api_url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(f"{stack.api_url}/healthz", timeout=2).status_code in (200, 503)
        except httpx.HTTPError:
            return False

    if not wait_for(answers, 60):
        raise RuntimeError(f"the API did not start; see {stack.procs.log_path('api')}")
    return api


def _start(
    stack: Stack, rt: Any, configs: list[Any], profile: BenchProfile, spread: float
) -> dict[str, Any]:
    if profile.start_mode == "bulk":
        report = fleet.start_bulk(rt, configs, spread)
    elif profile.start_mode == "api":
        assert stack.api_url is not None, "start_mode api needs the stack's API (start_api)"
        start = fleet.api_start(stack.api_url, API_TOKEN)
        report = fleet.start_paced(rt, configs, spread, profile.start_threads, start=start)
    else:
        report = fleet.start_paced(rt, configs, spread, profile.start_threads)
    return {
        **asdict(report),
        "seconds": round(report.seconds, 2),
        "per_second": round(report.per_second, 1),
    }


def engine_figures(
    stack: Stack,
    sampler: Sampler,
    profile: BenchProfile,
    prefix: str,
    main: Window,
    sat_prefix: str,
    sat: Window,
) -> dict[str, Any]:
    """The engine side's figures, read after its workers stopped (logs complete)."""
    from engine.db import engine_for

    db = engine_for(stack.db_url)
    logs = stack.procs.logs("engine-worker")
    rows = metrics.engine_ticks(db, prefix)
    figures = metrics.slot_figures(
        rows,
        metrics.started_counts(logs, prefix),
        metrics.engine_origins(db, prefix),
        main.w0,
        main.w1,
    )
    sat_rows = metrics.engine_ticks(db, sat_prefix)
    sat_dups = metrics.started_counts(logs, sat_prefix)
    return _side(figures, rows, sampler, "engine-worker", main, profile) | {
        "exchange_requests_per_tick": round(main.requests / len(rows), 4) if rows else None,
        "saturation": _saturation(
            sat_rows,
            sat,
            profile,
            sum(n - 1 for n in sat_dups.values() if n > 1),
            sampler,
            "engine-worker",
        ),
        "log_events": metrics.event_counts(logs, BLOCKED_EVENTS),
        "outcomes": _outcomes(rows),
    }


def _outcomes(rows: list[metrics.TickRow]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r.outcome] = out.get(r.outcome, 0) + 1
    return out


# -- baseline -----------------------------------------------------------------------


def baseline_main(
    stack: Stack, profile: BenchProfile, prefix: str
) -> tuple[Window, dict[str, tuple[float, float]]]:
    """N baseline chains, phases spread over one interval, for the same window and tail."""
    interval = profile.interval_s
    t_start = time.time()
    lead = 2.0  # enqueueing N messages takes a moment; the first slot is due after it
    w0 = t_start + lead + interval + WARMUP_S
    w1 = w0 + profile.duration_s
    origins = _launch_chains(prefix, profile.bots, interval, t_start + lead, w1 + tail_s(interval))
    start = {"mode": "enqueue", "bots": profile.bots, "seconds": round(time.time() - t_start, 2)}
    _sleep_until(w1 + tail_s(interval) + 1.0)
    return Window(t_start, w0, w1, start), origins


def baseline_saturation(stack: Stack, profile: BenchProfile, prefix: str) -> Window:
    """Many baseline chains at 1 s for `saturation_s`."""
    t_start = time.time()
    w0 = t_start + 5.0
    w1 = w0 + profile.saturation_s
    _launch_chains(prefix, profile.saturation_bots, 1.0, t_start + 2.0, w1)
    start = {
        "mode": "enqueue",
        "bots": profile.saturation_bots,
        "seconds": round(time.time() - t_start, 2),
    }
    _sleep_until(w1 + 2.0)
    return Window(t_start, w0, w1, start)


def _launch_chains(
    prefix: str, n: int, interval: float, first_due: float, end: float
) -> dict[str, tuple[float, float]]:
    from benchmarks.baseline_app import enqueue

    origins = {}
    for i in range(n):
        name = f"{prefix}-{i:05d}"
        origins[name] = (first_due + i * interval / n, interval)
        enqueue(name, 0, origins[name][0], interval, end)
    return origins


def baseline_figures(
    stack: Stack,
    sampler: Sampler,
    profile: BenchProfile,
    prefix: str,
    main: Window,
    origins: dict[str, tuple[float, float]],
    sat_prefix: str,
    sat: Window,
) -> dict[str, Any]:
    """The baseline side's figures, from its record files."""
    all_rows, counts = metrics.baseline_ticks(baseline_dir(stack))
    rows = [r for r in all_rows if r.bot.startswith(f"{prefix}-")]
    mine = type(counts)({k: v for k, v in counts.items() if k[0].startswith(f"{prefix}-")})
    figures = metrics.slot_figures(rows, mine, origins, main.w0, main.w1)
    sat_rows = [r for r in all_rows if r.bot.startswith(f"{sat_prefix}-")]
    sat_dups = sum(v - 1 for k, v in counts.items() if k[0].startswith(f"{sat_prefix}-") and v > 1)
    return _side(figures, rows, sampler, "baseline-worker", main, profile) | {
        "exchange_requests_per_tick": 0.0,
        "saturation": _saturation(sat_rows, sat, profile, sat_dups, sampler, "baseline-worker"),
    }


# -- shared -------------------------------------------------------------------------


def _side(
    figures: metrics.SlotFigures,
    rows: list[metrics.TickRow],
    sampler: Sampler,
    role: str,
    window: Window,
    profile: BenchProfile,
) -> dict[str, Any]:
    usage = sampler.window(window.w0, window.w1)
    rss = usage.peak_rss_mb.get(role, 0.0)
    return {
        "bots": profile.bots,
        "interval_s": profile.interval_s,
        "duration_s": profile.duration_s,
        "slots_expected": figures.slots_expected,
        "ticks_run": figures.ticks_run,
        "ticks_skipped": figures.skipped,
        "slots_run_pct": round(figures.run_pct, 3),
        "duplicates": figures.duplicates,
        "missed": figures.missed,
        "lateness_ms": figures.lateness_ms,
        "tick_duration_ms": figures.duration_ms,
        "ticks_per_s": figures.ticks_per_s,
        "worker_rss_mb": rss,
        "worker_rss_kb_per_bot": round(rss * 1024 / profile.bots, 1),
        # RSS counts pages a prefork pool shares after fork once per child; PSS does not.
        "worker_pss_mb": usage.peak_pss_mb.get(role, 0.0),
        "worker_cpu_cores": round(usage.cores(role), 3),
        "cpu_cores_by_role": {k: round(usage.cores(k), 3) for k in sorted(usage.cpu_s)},
        "machine_busy_cores": usage.machine_busy_cores,
        "peak_rss_mb_by_role": usage.peak_rss_mb,
        "redis_used_memory_peak_mb": usage.redis_peak_mb,
        "window": {
            "w0": round(window.w0, 3),
            "w1": round(window.w1, 3),
            "start": window.start,
            "stop_s": window.stop_s,
        },
        "series": [
            (round(r.due - window.w0, 3), round(r.lateness_ms, 1))
            for r in rows
            if window.w0 <= r.due <= window.w1
        ],
    }


def _saturation(
    rows: list[metrics.TickRow],
    window: Window,
    profile: BenchProfile,
    duplicates: int,
    sampler: Sampler,
    role: str,
) -> dict[str, Any]:
    per_s = metrics.throughput(rows, window.w0, window.w1)
    usage = sampler.window(window.w0, window.w1)
    return {
        "bots": profile.saturation_bots,
        "interval_s": 1.0,
        "seconds": profile.saturation_s,
        "demand_per_s": profile.saturation_bots,
        "ticks_per_s": per_s,
        # Below demand means capacity was the limit: the figure is a throughput ceiling.
        "saturated": per_s < 0.95 * profile.saturation_bots,
        # Whether the workers ran out of CPU or waited (locks, the broker): see both.
        "worker_cpu_cores": round(usage.cores(role), 3),
        "machine_busy_cores": usage.machine_busy_cores,
        "duplicates": duplicates,
        "start": window.start,
        "lateness_ms": metrics.percentiles(
            [r.lateness_ms for r in rows if window.w0 <= r.started <= window.w1]
        ),
    }
