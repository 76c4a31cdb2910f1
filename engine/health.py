"""Is the fleet ticking? Stalled-fleet detection for healthz, metrics, status and the demo.

Bots stay `running` in the database whatever happens to the workers, so a fleet can stop
without anything failing: no worker reads the tick queue (started with the wrong `-Q`),
or workers read another broker than the one ticks are sent to. Two checks catch both:

- consumers: every live worker process announces the queues it consumes with its
  heartbeat (engine.runtime); running fleet bots with no live consumer of the tick queue
  cannot tick, which is known at once;
- stalled bots: running bots whose last tick is older than `STALL_INTERVALS` intervals
  plus the reconciler's grace, which catches whatever the first check cannot see.

`fleet_health` costs one SQL statement (the database filters, so no row per bot crosses
into Python) and two Redis round trips. `watch` turns a state into one `fleet.stalled`
log line and notification per episode, whichever process sees it first (the reconciler
pass, the API), and `fleet.recovered` when it clears.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis
from sqlalchemy import Float, bindparam, case, func, literal, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from engine import notify
from engine.coordination import RedisCoordinator
from engine.logging import get_logger
from engine.models import Bot, BotStatus
from engine.runtime import Runtime

log = get_logger("engine.health")

TICK_QUEUE = "ticks"  # engine.celery_app.TICK_QUEUE (not imported: it builds the Celery app)
STALL_INTERVALS = 2
"""A bot is stalled once its last tick is this many intervals old, plus the grace."""
STALLED_KEY = "fleet:stalled"  # set while a stalled episode is reported: its first reasons
SAMPLE = 5  # bots named in a reason


NO_TICK_CONSUMER = "no_tick_consumer"  # running fleet bots, no live tick consumer
STALLED_BOTS = "stalled_bots"  # running bots whose last tick is several intervals old


@dataclass(frozen=True)
class FleetHealth:
    """What the fleet looks like now; `reasons` is empty when it is ticking."""

    running: int
    fleet_running: int  # of which on the fleet's workers (not `botengine run`)
    stalled: int
    stalled_sample: tuple[str, ...]
    consumers: dict[str, int]  # queue -> live worker processes consuming it
    workers: int
    reasons: dict[str, str] = field(default_factory=dict)  # code -> human sentence

    @property
    def ok(self) -> bool:
        """True when nothing suggests the fleet stopped ticking."""
        return not self.reasons

    def view(self) -> dict[str, Any]:
        """JSON-able, for healthz, `status --json` and the API."""
        return {
            "ok": self.ok,
            "running": self.running,
            "stalled": self.stalled,
            "stalled_sample": list(self.stalled_sample),
            "workers": self.workers,
            "consumers": dict(self.consumers),
            "reasons": dict(self.reasons),
        }


class _Epoch(FunctionElement[float]):
    """Seconds since 1970 of a UTC timestamp column (stored naive, see UtcDateTime)."""

    type = Float()
    inherit_cache = True


@compiles(_Epoch)
def _epoch_default(element: _Epoch, compiler: Any, **kw: Any) -> str:
    return f"EXTRACT(EPOCH FROM {compiler.process(element.clauses, **kw)})"


@compiles(_Epoch, "sqlite")
def _epoch_sqlite(element: _Epoch, compiler: Any, **kw: Any) -> str:
    return f"((julianday({compiler.process(element.clauses, **kw)}) - 2440587.5) * 86400.0)"


def _stalled_query() -> Any:
    bots = Bot.__table__  # type: ignore[attr-defined]
    last = func.coalesce(_Epoch(bots.c.last_tick_at), literal(0.0))
    since = case((last > bots.c.origin, last), else_=bots.c.origin)
    threshold = bots.c.interval_s * STALL_INTERVALS + bindparam("p_grace")
    return select(
        func.count().label("running"),
        func.sum(case((bots.c.runner.is_(None), 1), else_=0)).label("fleet"),
        func.sum(case((bindparam("p_now") - since > threshold, 1), else_=0)).label("stalled"),
    ).where(bots.c.status == BotStatus.RUNNING.value)


def _sample_query() -> Any:
    bots = Bot.__table__  # type: ignore[attr-defined]
    last = func.coalesce(_Epoch(bots.c.last_tick_at), literal(0.0))
    since = case((last > bots.c.origin, last), else_=bots.c.origin)
    threshold = bots.c.interval_s * STALL_INTERVALS + bindparam("p_grace")
    return (
        select(bots.c.name)
        .where(bots.c.status == BotStatus.RUNNING.value, bindparam("p_now") - since > threshold)
        .order_by(bots.c.name)
        .limit(SAMPLE)
    )


_STALLED = _stalled_query()
_SAMPLE = _sample_query()


def fleet_health(rt: Runtime, now: float | None = None) -> FleetHealth:
    """The fleet's state now (raises when the database or Redis cannot be read)."""
    now = rt.clock() if now is None else now
    params = {"p_now": now, "p_grace": rt.settings.reconcile_grace_s}
    with rt.db.connect() as conn:
        row = conn.execute(_STALLED, params).one()
        running, fleet, stalled = int(row.running or 0), int(row.fleet or 0), int(row.stalled or 0)
        sample = tuple(conn.execute(_SAMPLE, params).scalars()) if stalled else ()
    workers: dict[str, tuple[str, ...]] = {}
    if isinstance(rt.coordinator, RedisCoordinator):
        workers = rt.coordinator.workers()
    consumers: dict[str, int] = {}
    for queues in workers.values():
        for queue in queues:
            consumers[queue] = consumers.get(queue, 0) + 1
    reasons: dict[str, str] = {}
    if fleet and not consumers.get(TICK_QUEUE) and isinstance(rt.coordinator, RedisCoordinator):
        seen = ", ".join(sorted(consumers)) or "none"
        reasons[NO_TICK_CONSUMER] = (
            f"{fleet} running bot(s) but no live worker consumes the '{TICK_QUEUE}' queue "
            f"(queues consumed: {seen}); start one with `make worker` or `celery -A "
            "engine.celery_app worker`"
        )
    if stalled:
        names = ", ".join(sample) + (", ..." if stalled > len(sample) else "")
        reasons[STALLED_BOTS] = (
            f"{stalled} running bot(s) have not ticked for over {STALL_INTERVALS} intervals "
            f"(+{rt.settings.reconcile_grace_s:g}s): {names}"
        )
    return FleetHealth(
        running=running,
        fleet_running=fleet,
        stalled=stalled,
        stalled_sample=sample,
        consumers=consumers,
        workers=len(workers),
        reasons=reasons,
    )


def watch(client: redis.Redis | None, health: FleetHealth) -> None:
    """Log (and notify) a stalled fleet once per episode, and its recovery.

    The first process to see the episode start marks it in Redis and reports it; later
    passes (of any process) stay quiet until the fleet ticks again, whatever reasons
    join in meanwhile: one page per incident, not one per reconciler pass.
    """
    if client is None:
        return
    if health.reasons:
        if client.set(STALLED_KEY, ",".join(sorted(health.reasons)), nx=True):
            log.error(
                "fleet.stalled",
                running=health.running,
                stalled=health.stalled,
                consumers=health.consumers,
                reasons=list(health.reasons.values()),
            )
            notify.notify(
                notify.FLEET_STALLED,
                running=health.running,
                stalled=health.stalled,
                reasons=health.reasons,
            )
    elif client.delete(STALLED_KEY):
        log.info("fleet.recovered", running=health.running)
        notify.notify(notify.FLEET_RECOVERED, running=health.running)
