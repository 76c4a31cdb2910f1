"""Parked slots, sent when they come due: a loop in every worker process.

A slot further away than the ETA horizon is parked in Redis (`engine.tick.plan_next`).
Sent early as an ETA message it would be taken by whichever worker reads first: Celery
lifts a worker's prefetch limit for every ETA message it holds, so the worker whose
consumer is idle reads a whole batch and later runs it late while its peers idle. At
20,000 bots x 60 s with beat sending batches 5 s ahead, each second's 333 slots went to
one of the two workers, alternately (benchmarks/README.md). Sent `LEAD_S` before its due
time instead, a message is held at most that long, and each worker takes messages as
its threads free up, so the load spreads evenly.

Every worker process polls; `unpark_due` hands each slot to one caller only. Beat's
`engine.dispatch` and each reconciler pass send due slots too, for when no worker polls.
"""

from __future__ import annotations

import os
import threading
import time

import redis

from engine.coordination import RedisCoordinator
from engine.logging import get_logger
from engine.metrics import record_reconcile
from engine.runtime import Runtime, send_ticks
from engine.schedule import due_at

log = get_logger("engine.dispatcher")

POLL_S = 0.05
"""How often each worker process looks for due parked slots while some come due."""

LEAD_S = 0.05
"""How long before its due time a parked slot is sent: one poll, so no poll sends it late."""

# Slots taken out of the parked set per script call: one call blocks Redis for its run.
_BATCH = 500

_started_pid: int | None = None


def dispatch(rt: Runtime) -> int:
    """Send every parked slot due within `LEAD_S`; returns how many were sent."""
    coordinator = rt.coordinator
    assert isinstance(coordinator, RedisCoordinator)
    until = rt.clock() + LEAD_S
    sent = 0
    while True:
        popped, batch = coordinator.unpark_due(until, _BATCH)
        send_ticks(
            rt,
            [
                (bot, m.generation, m.next_slot, due_at(m.origin, m.interval, m.next_slot))
                for bot, m in batch
            ],
        )
        sent += len(batch)
        if popped < _BATCH:
            return sent


def start(rt: Runtime) -> None:
    """Poll for due parked slots in a daemon thread of this process (once per process)."""
    global _started_pid  # one loop per process is the point
    if not isinstance(rt.coordinator, RedisCoordinator) or _started_pid == os.getpid():
        return
    _started_pid = os.getpid()
    threading.Thread(target=_loop, args=(rt,), name="botengine-dispatcher", daemon=True).start()


def _loop(rt: Runtime) -> None:
    while True:
        wait = POLL_S
        try:
            sent = dispatch(rt)
            if sent:
                record_reconcile(rt.redis, {"dispatched": sent})
            else:
                wait = idle_wait(rt)
        except redis.RedisError:
            pass  # Redis down: the parked set is gone too; the reconciler restores it
        except Exception:  # the loop must outlive any one bad pass
            log.exception("dispatcher.failed")
        time.sleep(wait)


def idle_wait(rt: Runtime) -> float:
    """How long a poll that found nothing due may sleep: until the earliest parked slot
    comes due. A slot parked from now on is due more than the ETA horizon away
    (`engine.schedule.parks`), so the horizon bounds the sleep."""
    coordinator = rt.coordinator
    assert isinstance(coordinator, RedisCoordinator)
    now = rt.clock()
    until = now + rt.settings.eta_horizon_s
    earliest = coordinator.earliest_parked()
    if earliest is not None:
        until = min(until, earliest)
    return max(POLL_S, until - LEAD_S - now)
