"""Prometheus metrics that add up across every worker process on every machine.

Workers do not serve metrics themselves (a scrape would see one process of many, and
prefork children come and go). Instead each event is recorded into a few Redis hashes
(HINCRBY/HINCRBYFLOAT) and the API's `/metrics`
renders those hashes with a custom collector at scrape time. Gauges that the database
already knows (bots by status, orders by status) are read from it at scrape time too.

Ticks are the hot path: a worker adds them up in a `TickBuffer` and writes the sums in
one pipeline every second or so, so a tick costs no round trip for its metrics.

Counters in Redis only grow; a Redis restart without persistence resets them, which
Prometheus treats as an ordinary counter reset.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import redis as redis_lib
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from engine.exits import KINDS as EXIT_KINDS
from engine.logging import get_logger
from engine.models import Bot, BotStatus, Order
from engine.protections import KINDS as PROTECTION_KINDS

log = get_logger("engine.metrics")

PREFIX = "metrics:"
TICKS = f"{PREFIX}ticks"  # outcome -> count
LATENESS = f"{PREFIX}tick_lateness"  # histogram hash (see _tick_fields)
DURATION = f"{PREFIX}tick_duration"
EXCHANGE_REQUESTS = f"{PREFIX}exchange_requests"  # "exchange|outcome" -> count
RATE_LIMIT = f"{PREFIX}rate_limit_waits"  # "count|exchange", "sum|exchange"
RECONCILER = f"{PREFIX}reconciler"  # kind -> count
EXITS = f"{PREFIX}exits"  # kind -> count
PROTECTIONS = f"{PREFIX}protections"  # kind -> count
RECONCILE_KINDS = ("restored", "fenced", "paused", "requeued", "advanced", "dispatched")

BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Upper bounds in seconds (plus +Inf): tick lateness and duration range 10 ms to a minute."""
_SEP = "|"

Pipeline = Any
"""A redis-py pipeline (typed loosely: redis-py's generics differ between versions)."""


def _bucket_field(value: float) -> str:
    """The field of the one bucket `value` falls in; cumulated at render time."""
    for bound in BUCKETS:
        if value <= bound:
            return f"le:{bound:g}"
    return "le:+Inf"


def _tick_fields(
    outcome: str, lateness_s: float, duration_s: float
) -> list[tuple[str, str, float]]:
    """(hash, field, increment) for one tick; a `sum` field takes a float increment."""
    fields: list[tuple[str, str, float]] = [(TICKS, outcome, 1)]
    for key, value in ((LATENESS, lateness_s), (DURATION, duration_s)):
        value = max(0.0, value)  # a tick started a hair before its due time is on time
        fields += [(key, _bucket_field(value), 1), (key, "count", 1), (key, "sum", value)]
    return fields


def _apply(pipe: Pipeline, fields: Iterable[tuple[tuple[str, str], float]]) -> None:
    for (key, name), amount in fields:
        if name == "sum":
            pipe.hincrbyfloat(key, name, amount)
        else:
            pipe.hincrby(key, name, int(amount))


def _run(redis: redis_lib.Redis | None, fill: Callable[[Pipeline], None]) -> None:
    """Send the commands `fill` adds in one pipeline.

    Metrics never break what they measure: a Redis failure is logged and dropped. No
    Redis (`botengine run`, in-process) means nothing to record into.
    """
    if redis is None:
        return
    own = redis.pipeline(transaction=False)
    fill(own)
    try:
        own.execute()
    except redis_lib.RedisError as exc:
        log.warning("metrics.dropped", error=str(exc))


def record_tick(
    redis: redis_lib.Redis | None, outcome: str, lateness_s: float, duration_s: float
) -> None:
    """Count one tick by outcome and observe its lateness and duration (seconds), now."""
    fields = [((k, f), v) for k, f, v in _tick_fields(outcome, lateness_s, duration_s)]
    _run(redis, lambda p: _apply(p, fields))


class TickBuffer:
    """Tick observations added up in this process and written at most every `flush_s`
    seconds, in one pipeline (`flush_s` 0: at once).

    The worker's heartbeat thread also flushes, so an idle worker's last ticks show
    within seconds. A SIGKILL loses at most `flush_s` of observations; the ticks table
    stays the authority.
    """

    def __init__(
        self,
        redis: redis_lib.Redis | None,
        flush_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.flush_s = flush_s
        self.clock = clock
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], float] = defaultdict(float)
        self._flushed_at = clock()

    def add(self, outcome: str, lateness_s: float, duration_s: float) -> None:
        """Observe one tick; flush when the last flush is `flush_s` old."""
        if self.redis is None:
            return
        with self._lock:
            for key, name, amount in _tick_fields(outcome, lateness_s, duration_s):
                self._pending[(key, name)] += amount
            due = self.clock() - self._flushed_at >= self.flush_s
        if due:
            self.flush()

    def flush(self) -> None:
        """Write what was added since the last flush."""
        with self._lock:
            pending, self._pending = self._pending, defaultdict(float)
            self._flushed_at = self.clock()
        if pending:
            _run(self.redis, lambda p: _apply(p, pending.items()))


def record_reconcile(redis: redis_lib.Redis | None, report: dict[str, int]) -> None:
    """Count what one reconciler pass did (restored/requeued/advanced/dispatched)."""
    actions = {kind: n for kind, n in report.items() if n}

    def fill(p: Pipeline) -> None:
        for kind, n in actions.items():
            p.hincrby(RECONCILER, kind, n)

    if actions:
        _run(redis, fill)


def record_exit(redis: redis_lib.Redis | None, kind: str) -> None:
    """Count one protective exit that fired (stop_loss, take_profit, trailing_stop)."""
    _run(redis, lambda p: p.hincrby(EXITS, kind, 1))


def record_protection(redis: redis_lib.Redis | None, kind: str) -> None:
    """Count one protection that paused a bot (losing_streak, max_daily_loss, ...)."""
    _run(redis, lambda p: p.hincrby(PROTECTIONS, kind, 1))


def record_exchange_request(redis: redis_lib.Redis | None, exchange: str, outcome: str) -> None:
    """Count one request to an exchange by outcome (ok, temporary, rejected, ...)."""
    _run(redis, lambda p: p.hincrby(EXCHANGE_REQUESTS, f"{exchange}{_SEP}{outcome}", 1))


def record_rate_limit_wait(redis: redis_lib.Redis | None, exchange: str, seconds: float) -> None:
    """Count one wait for the shared rate-limit budget and add up its seconds."""

    def fill(p: Pipeline) -> None:
        p.hincrby(RATE_LIMIT, f"count{_SEP}{exchange}", 1)
        p.hincrbyfloat(RATE_LIMIT, f"sum{_SEP}{exchange}", max(0.0, seconds))

    _run(redis, fill)


def _num(raw: bytes) -> float:
    return float(raw.decode())


def _histogram(name: str, doc: str, raw: dict[bytes, bytes]) -> HistogramMetricFamily:
    fields = {k.decode(): _num(v) for k, v in raw.items()}
    running = 0.0
    buckets: list[tuple[str, float]] = []
    for bound in (*BUCKETS, math.inf):
        label = "+Inf" if bound == math.inf else f"{bound:g}"
        running += fields.get(f"le:{label}", 0.0)
        buckets.append((label, running))
    # `count` is bumped in the same pipeline as the bucket, so +Inf equals it; take the
    # bucket sum anyway so the exposition is self-consistent even mid-pipeline.
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=fields.get("sum", 0.0))


class EngineCollector(Collector):
    """Renders the Redis-held counters and the database gauges at scrape time."""

    def __init__(
        self, redis: redis_lib.Redis, db: Engine, fleet: Callable[[], Any] | None = None
    ) -> None:
        self.redis = redis
        self.db = db
        self.fleet = fleet

    def collect(self) -> Iterator[Metric]:
        """Yield every engine metric (a failing store is reported, not raised)."""
        yield from self._from_redis()
        yield from self._from_db()
        if self.fleet is not None:
            yield from self._from_fleet(self.fleet)

    def _from_fleet(self, fleet: Callable[[], Any]) -> Iterator[Metric]:
        try:
            health = fleet()  # an engine.health.FleetHealth
        except Exception as exc:  # noqa: BLE001 - the stores' own gauges say which failed
            log.warning("metrics.fleet_unavailable", error=str(exc))
            return
        ok = GaugeMetricFamily("botengine_fleet_ok", "1 when the fleet is ticking (healthz)")
        ok.add_metric([], int(health.ok))
        yield ok
        stalled = GaugeMetricFamily(
            "botengine_fleet_stalled_bots", "Running bots whose last tick is several intervals old"
        )
        stalled.add_metric([], health.stalled)
        yield stalled
        workers = GaugeMetricFamily(
            "botengine_worker_processes", "Worker processes with a live heartbeat"
        )
        workers.add_metric([], health.workers)
        yield workers
        consumers = GaugeMetricFamily(
            "botengine_queue_consumers", "Live worker processes consuming a queue", labels=["queue"]
        )
        for queue in sorted({"ticks", "maintenance", *health.consumers}):
            consumers.add_metric([queue], health.consumers.get(queue, 0))
        yield consumers

    def _from_redis(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "botengine_metrics_redis_up", "1 when the Redis holding worker metrics answered"
        )
        keys = (
            TICKS,
            LATENESS,
            DURATION,
            EXCHANGE_REQUESTS,
            RATE_LIMIT,
            RECONCILER,
            EXITS,
            PROTECTIONS,
        )
        try:
            pipe = self.redis.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            ticks, lateness, duration, requests, waits, reconciler, exits, protections = (
                pipe.execute()
            )
        except redis_lib.RedisError as exc:
            log.warning("metrics.redis_unavailable", error=str(exc))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        counter = CounterMetricFamily(
            "botengine_ticks", "Ticks run, by outcome", labels=["outcome"]
        )
        for outcome, n in sorted(ticks.items()):
            counter.add_metric([outcome.decode()], _num(n))
        yield counter
        yield _histogram(
            "botengine_tick_lateness_seconds", "Start of a tick after its due time", lateness
        )
        yield _histogram("botengine_tick_duration_seconds", "Run time of a tick", duration)
        counter = CounterMetricFamily(
            "botengine_exchange_requests",
            "Requests to exchanges, by outcome",
            labels=["exchange", "outcome"],
        )
        for field, n in sorted(requests.items()):
            exchange, _, outcome = field.decode().partition(_SEP)
            counter.add_metric([exchange, outcome], _num(n))
        yield counter
        yield from _rate_limit(waits)
        counter = CounterMetricFamily(
            "botengine_reconciler_actions",
            "Chains the reconciler brought back, by kind",
            labels=["kind"],
        )
        for kind in RECONCILE_KINDS:
            counter.add_metric([kind], _num(reconciler.get(kind.encode(), b"0")))
        yield counter
        yield _by_kind("botengine_exits", "Protective exits that fired, by kind", exits, EXIT_KINDS)
        yield _by_kind(
            "botengine_protections",
            "Protections that paused a bot, by kind",
            protections,
            PROTECTION_KINDS,
        )

    def _from_db(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("botengine_metrics_db_up", "1 when the database answered")
        try:
            with Session(self.db) as session:
                bots = dict(
                    session.exec(select(Bot.status, func.count()).group_by(Bot.status)).all()
                )
                orders = dict(
                    session.exec(
                        select(Order.status, func.count()).group_by(col(Order.status))
                    ).all()
                )
        except Exception as exc:  # noqa: BLE001 - any DB failure: report it, render the rest
            log.warning("metrics.db_unavailable", error=str(exc))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        running = GaugeMetricFamily("botengine_running_bots", "Bots whose status is running")
        running.add_metric([], bots.get(BotStatus.RUNNING.value, 0))
        yield running
        by_status = GaugeMetricFamily("botengine_bots", "Bots by status", labels=["status"])
        for status in BotStatus:
            by_status.add_metric([status.value], bots.get(status.value, 0))
        yield by_status
        gauge = GaugeMetricFamily("botengine_orders", "Orders by status", labels=["status"])
        for order_status, n in sorted(orders.items()):
            gauge.add_metric([str(order_status)], n)
        yield gauge


def _by_kind(
    name: str, doc: str, raw: dict[bytes, bytes], kinds: Sequence[str]
) -> CounterMetricFamily:
    counter = CounterMetricFamily(name, doc, labels=["kind"])
    for kind in kinds:
        counter.add_metric([kind], _num(raw.get(kind.encode(), b"0")))
    return counter


def _rate_limit(raw: dict[bytes, bytes]) -> Sequence[Metric]:
    count = CounterMetricFamily(
        "botengine_rate_limit_waits",
        "Waits for the shared rate-limit budget",
        labels=["exchange"],
    )
    total = CounterMetricFamily(
        "botengine_rate_limit_wait_seconds",
        "Seconds spent waiting for the shared rate-limit budget",
        labels=["exchange"],
    )
    for field, value in sorted(raw.items()):
        kind, _, exchange = field.decode().partition(_SEP)
        (count if kind == "count" else total).add_metric([exchange], _num(value))
    return [count, total]


def render(
    redis: redis_lib.Redis,
    db: Engine,
    *,
    process: bool = True,
    fleet: Callable[[], Any] | None = None,
) -> bytes:
    """The Prometheus text exposition: engine metrics plus this process's own, and the
    fleet's health when `fleet` (engine.health.fleet_health, bound) is given."""
    registry = CollectorRegistry()
    registry.register(EngineCollector(redis, db, fleet))
    if process:
        from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR

        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(collector)
    return generate_latest(registry)
