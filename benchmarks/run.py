"""`python -m benchmarks.run --profile small|10k|20k [...]`: scale, lateness, memory.

One run measures the engine and its baseline (a bare Celery chain) on the same private
Redis, the same machine and the same worker settings, one after the other, and writes
`benchmarks/results/<run>.{json,md,png}`. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from benchmarks import phases, report
from benchmarks.infra import Stack, open_stack, own_postgres_database
from benchmarks.profiles import BENCH_PROFILES, BenchProfile
from benchmarks.sampler import Sampler


def parse_args(argv: list[str] | None) -> tuple[BenchProfile, argparse.Namespace]:
    """The profile named by `--profile`, with any flags given applied over it."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--profile", default="small", choices=sorted(BENCH_PROFILES))
    parser.add_argument(
        "--workers", type=int, help="worker processes (0: use workers started elsewhere)"
    )
    parser.add_argument("--pool", choices=["threads", "prefork", "gevent", "solo"])
    parser.add_argument("--concurrency", type=int, help="pool size per worker process")
    parser.add_argument("--bots", type=int)
    parser.add_argument("--interval", type=float, dest="interval_s", help="seconds")
    parser.add_argument("--duration", type=float, dest="duration_s", help="window, seconds")
    parser.add_argument("--latency-ms", type=float, help="injected exchange latency")
    parser.add_argument("--saturation-bots", type=int)
    parser.add_argument("--saturation-s", type=float)
    parser.add_argument("--start-mode", choices=["lifecycle", "bulk"])
    parser.add_argument("--dca-every", type=int, help="DCA buys every N ticks")
    parser.add_argument(
        "--switch-interval",
        type=float,
        dest="switch_interval_s",
        help="sys.setswitchinterval() in every worker, engine and baseline (default 0.005)",
    )
    parser.add_argument("--database-url", help="default: SQLite in the run's temp dir")
    parser.add_argument("--skip-baseline", action="store_true", help="engine side only")
    parser.add_argument("--redis-url", help="a dedicated, empty Redis db (default: embedded)")
    parser.add_argument("--simulator-host", default="127.0.0.1", help="bind address")
    parser.add_argument("--simulator-port", type=int, help="default: a free port")
    parser.add_argument("--keep", action="store_true", help="keep the run dir (logs, db)")
    parser.add_argument("--out", help="results directory (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.workers == 0 and not args.skip_baseline:
        parser.error("--workers 0 (external workers) needs --skip-baseline")
    overrides = {
        k: getattr(args, k)
        for k in (
            "workers",
            "pool",
            "concurrency",
            "bots",
            "interval_s",
            "duration_s",
            "latency_ms",
            "saturation_bots",
            "saturation_s",
            "start_mode",
            "dca_every",
            "switch_interval_s",
        )
    }
    return BENCH_PROFILES[args.profile].with_overrides(**overrides), args


def quiet_harness_logs() -> None:
    """The harness calls lifecycle functions that log per bot; only warnings here."""
    from engine.logging import configure_logging

    configure_logging("WARNING", "json")
    logging.getLogger("celery").setLevel(logging.WARNING)


Series = list[tuple[float, float]]


def run(profile: BenchProfile, args: argparse.Namespace) -> tuple[dict[str, Any], Series, Series]:
    """Both sides, one after the other, on one stack: (result, engine and baseline
    lateness series for the plot)."""
    run_id = f"{profile.name}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    tag = secrets.token_hex(2)  # bot names unique per run, also in a reused database
    started = time.time()
    load_before = [round(x, 2) for x in os.getloadavg()]  # others' load skews the figures
    with ExitStack() as scope:
        database_url = args.database_url
        if database_url is None and profile.database == "postgres":
            database_url = scope.enter_context(own_postgres_database())
        stack = scope.enter_context(
            open_stack(
                latency_ms=profile.latency_ms,
                database_url=database_url,
                log_level=profile.log_level,
                keep=args.keep,
                redis_url=args.redis_url,
                sim_host=args.simulator_host,
                sim_port=args.simulator_port,
            )
        )
        quiet_harness_logs()
        _say(f"{run_id}: run dir {stack.workdir}")
        sampler = Sampler(stack.procs, stack.redis_url).start()
        baseline = None if args.skip_baseline else baseline_side(stack, sampler, profile, tag)
        engine = engine_side(stack, sampler, profile, tag)
        sampler.stop()
    meta = {
        "machine": report.machine(),
        "loadavg_before": load_before,
        "wall_s": round(time.time() - started, 1),
        "command": " ".join(["python -m benchmarks.run", *sys.argv[1:]]),
        "database": (
            "given --database-url"
            if args.database_url
            else "postgresql (the run's own database)"
            if profile.database == "postgres"
            else "sqlite (temp)"
        ),
    }
    baseline = baseline or report.empty_side(engine)
    result = report.build(run_id, profile, engine, baseline, meta)
    return result, engine.get("series", []), baseline.get("series", [])


def baseline_side(
    stack: Stack, sampler: Sampler, profile: BenchProfile, tag: str
) -> dict[str, Any]:
    """The bare Celery chain: its workers, main and saturation phases, figures."""
    workers = phases.start_workers(stack, profile, "baseline")
    _say("baseline main phase")
    main, origins = phases.baseline_main(stack, profile, f"b{tag}")
    _say("baseline saturation phase")
    sat = phases.baseline_saturation(stack, profile, f"c{tag}")
    stack.procs.stop([w.name for w in workers])
    if stack.redis is not None:  # our private server: the engine starts on an empty one
        redis.Redis.from_url(stack.redis_url).flushall()
    return phases.baseline_figures(
        stack, sampler, profile, f"b{tag}", main, origins, f"c{tag}", sat
    )


def engine_side(stack: Stack, sampler: Sampler, profile: BenchProfile, tag: str) -> dict[str, Any]:
    """The engine: workers and beat, main and saturation phases, figures."""
    workers = phases.start_workers(stack, profile, "engine")
    beat = stack.procs.beat()
    if profile.start_mode == "api" and stack.api_url is None:
        phases.start_api(stack)
    _say("engine main phase")
    main = phases.engine_main(stack, profile, f"e{tag}")
    # Fresh workers and an empty queue, so the main phase's leftovers (messages of
    # stopped bots, held by the workers or queued) do not eat the saturation phase.
    stack.procs.stop([w.name for w in workers])
    dropped = phases.purge_tick_queue(stack)
    workers = phases.start_workers(stack, profile, "engine", first=len(workers))
    _say(f"engine saturation phase ({dropped} leftover messages dropped)")
    sat = phases.engine_saturation(stack, profile, f"s{tag}")
    # Stopped before reading: a worker's log is complete once it exited.
    stack.procs.stop([w.name for w in workers] + [beat.name])
    return phases.engine_figures(stack, sampler, profile, f"e{tag}", main, f"s{tag}", sat)


def _say(message: str) -> None:
    print(f"[bench] {datetime.now(UTC):%H:%M:%S} {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, write the results, print the table; 0 unless it crashed."""
    profile, args = parse_args(argv)
    result, engine_series, baseline_series = run(profile, args)
    outdir = report.RESULTS if args.out is None else Path(args.out)
    paths = report.write(result, engine_series, baseline_series, outdir)
    print(paths["md"].read_text())
    print(f"results: {paths['json']}  {paths['md']}  {paths['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
