"""Named run sizes: what `--profile NAME` means, for benchmarks and chaos runs.

A profile fixes every knob a result depends on, so two results of one profile compare.
Command-line flags override single fields; the JSON result records the final values.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any


@dataclass(frozen=True)
class WorkerSpec:
    """How the Celery workers run: the same for the engine and its baseline."""

    workers: int = 2  # one process per core on the 2-core reference machine
    pool: str = "threads"
    # Two threads each: at saturation both sides run fastest so (engine 507, bare chain
    # 826 ticks/s; with 8 threads 356 and 586), and the ratio compares their best.
    concurrency: int = 2


@dataclass(frozen=True)
class BenchProfile:
    """One benchmark size: N bots at interval S for D seconds, plus a saturation phase."""

    name: str
    bots: int
    interval_s: float
    duration_s: float
    latency_ms: float = 0.0
    worker: WorkerSpec = field(default_factory=WorkerSpec)
    # The strategy each bot runs: DCA buying every `dca_every` ticks (paper fills), or
    # "mixed": the four built-ins in turn (DCA, SMA and RSI on candles, a grid of
    # resting limit orders), as an operator's fleet runs them.
    strategies: str = "dca"
    dca_every: int = 10
    # "sqlite" (in the run's temp dir) or "postgres": a database of the run's own on
    # the PostgreSQL at BENCH_POSTGRES_URL (default: this machine's, trust auth).
    database: str = "sqlite"
    # Saturation: this many bots at a 1 s interval for this long, engine and baseline
    # alike; ticks/s over the steady part is the throughput the two are compared on.
    saturation_bots: int = 1000
    saturation_s: float = 30.0
    # How bots are started: "lifecycle" (engine.lifecycle.start, paced over the first
    # interval from a thread pool), "bulk" (rows and mirrors written in batches) or
    # "api" (PUT and POST .../start against a `botengine api` process, paced alike).
    start_mode: str = "lifecycle"
    start_threads: int = 8
    log_level: str = "INFO"
    # sys.setswitchinterval() in worker processes (None: CPython's 5 ms default).
    switch_interval_s: float | None = None

    def with_overrides(self, **changes: Any) -> BenchProfile:
        """A copy with the non-None fields of `changes` replaced (worker fields too)."""
        return _override(self, changes)


def _override(profile: Any, changes: dict[str, Any]) -> Any:
    """`profile` with the non-None `changes` applied, WorkerSpec fields to its `worker`."""
    worker_fields = {f.name for f in fields(WorkerSpec)}
    given = {k: v for k, v in changes.items() if v is not None}
    worker = replace(profile.worker, **{k: v for k, v in given.items() if k in worker_fields})
    rest = {k: v for k, v in given.items() if k not in worker_fields}
    return replace(profile, worker=worker, **rest)


# The production shape (#23): PostgreSQL, the four strategies mixed, bots created and
# started through the API, two workers as `make worker` starts them.
PROD_3K = BenchProfile(
    "prod-3k",
    bots=3000,
    interval_s=10.0,
    duration_s=120.0,
    worker=WorkerSpec(workers=2, pool="threads", concurrency=32),
    strategies="mixed",
    database="postgres",
    start_mode="api",
    start_threads=16,
    saturation_bots=3000,
    saturation_s=30.0,
)

BENCH_PROFILES: dict[str, BenchProfile] = {
    # CI: small enough for a shared runner, big enough to show lateness and overhead.
    "small": BenchProfile(
        "small", bots=200, interval_s=2.0, duration_s=60.0, saturation_bots=1000, saturation_s=25.0
    ),
    # The targets: p99 lateness <= 250 ms / 500 ms, RSS <= 500 MB / 1 GB.
    "10k": BenchProfile(
        "10k",
        bots=10_000,
        interval_s=60.0,
        duration_s=300.0,
        latency_ms=50.0,
        saturation_bots=2000,
        saturation_s=40.0,
        # lifecycle.start manages 60-150 starts/s on this machine while workers tick,
        # short of the 167/s (333/s) that spreads the bots over one interval.
        start_mode="bulk",
    ),
    "20k": BenchProfile(
        "20k",
        bots=20_000,
        interval_s=60.0,
        duration_s=300.0,
        latency_ms=50.0,
        saturation_bots=2000,
        saturation_s=40.0,
        # lifecycle.start manages 60-150 starts/s on this machine while workers tick,
        # short of the 167/s (333/s) that spreads the bots over one interval.
        start_mode="bulk",
    ),
    "prod-3k": PROD_3K,
    "prod-10k": replace(
        PROD_3K,
        name="prod-10k",
        bots=10_000,
        interval_s=60.0,
        duration_s=300.0,
        latency_ms=50.0,
        saturation_s=40.0,
    ),
    # For tests/test_benchmarks.py: a minute of wall time end to end.
    "tiny": BenchProfile(
        "tiny", bots=20, interval_s=1.0, duration_s=15.0, saturation_bots=100, saturation_s=8.0
    ),
}


@dataclass(frozen=True)
class ChaosProfile:
    """One fault run: N bots at a short interval, with kills, a Redis restart and faults."""

    name: str
    bots: int
    interval_s: float
    duration_s: float
    kills: int
    redis_restarts: int
    # Beat SIGKILLed and started again `beat_down_s` later (compose restarts it).
    beat_kills: int = 0
    beat_down_s: float = 5.0
    # The run's PostgreSQL (a private server) stopped for `db_down_s`, then started again;
    # runs on SQLite or a given database URL skip it (it would stop someone else's server).
    db_restarts: int = 1
    db_down_s: float = 20.0
    # Every n-th bot ticks at 3x the interval, beyond the run's ETA horizon: each of its
    # slots is parked and only beat's dispatch sends it (0: none).
    parked_every: int = 3
    live_fraction: float = 0.5  # the rest are paper bots
    # Every other live bot has exits (tight stop-loss and take-profit, its stop resting on
    # the exchange): exits fire and stops move all through the faults.
    exits: dict[str, Any] = field(
        default_factory=lambda: {"stop_loss": 0.001, "take_profit": 0.001, "on_exchange": True}
    )
    seed: int = 7
    recovery_bound_s: float = 30.0
    worker: WorkerSpec = field(default_factory=lambda: WorkerSpec(workers=2, concurrency=8))
    # Exchange faults, as rates per matching request (see engine/exchange/simulator/faults.py).
    order_timeout_rate: float = 0.03
    order_response_lost_rate: float = 0.05
    read_429_rate: float = 0.02
    read_5xx_rate: float = 0.02

    def with_overrides(self, **changes: Any) -> ChaosProfile:
        """A copy with the non-None fields of `changes` replaced (worker fields too)."""
        return _override(self, changes)


CHAOS_PROFILES: dict[str, ChaosProfile] = {
    "small": ChaosProfile(
        "small",
        bots=30,
        interval_s=1.0,
        duration_s=90.0,
        kills=2,
        redis_restarts=1,
        beat_kills=1,
    ),
    "tiny": ChaosProfile(
        "tiny",
        bots=10,
        interval_s=1.0,
        duration_s=40.0,
        kills=1,
        redis_restarts=1,
        beat_kills=1,
        db_down_s=8.0,
    ),
    "medium": ChaosProfile(
        "medium",
        bots=300,
        interval_s=2.0,
        duration_s=180.0,
        kills=4,
        redis_restarts=2,
        beat_kills=1,
    ),
}
