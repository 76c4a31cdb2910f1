"""Celery tasks: thin wrappers that hand over to the engine's functions."""

from __future__ import annotations

import gc
from datetime import UTC, datetime
from typing import Any

from celery import Task, signals
from sqlalchemy.exc import OperationalError as DatabaseOperationalError

from engine.celery_app import app, consumed_queues
from engine.errors import DatabaseUnavailableError, TemporaryError
from engine.runtime import get_runtime, start_heartbeat

# Maintenance tasks ride out what passes (an exchange timeout, 429 or 5xx; a database
# restart) with Celery's own retry, so RETRY is a state the task API shows. Ticks do
# not: their next slot is their retry.
RETRIED: dict[str, Any] = {
    "autoretry_for": (TemporaryError, DatabaseUnavailableError, DatabaseOperationalError),
    "max_retries": 3,
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "retry_jitter": True,
}


# Acknowledged when it starts, unlike the other tasks (`task_acks_late`): a redelivered
# tick would find its slot claimed and do nothing, and a chain whose message was lost
# is the reconciler's. An early ack frees the thread's prefetch slot at once, so the
# consumer fetches the next message while this one runs instead of after it.
@app.task(name="engine.tick", ignore_result=True, acks_late=False)
def tick(bot: str, generation: int, slot: int) -> None:
    """Run one slot of one bot (see engine.tick.run_tick)."""
    # lazy: senders (CLI, API) import this module and need none of the tick's imports
    from engine.tick import run_tick

    run_tick(get_runtime(), bot, generation, slot)


@app.task(name="engine.ping", bind=True)
def ping(self: Task[Any, Any]) -> dict[str, str]:
    """Smoke test: the answering worker's node name and its UTC time."""
    return {"hostname": str(self.request.hostname), "time": datetime.now(UTC).isoformat()}


@app.task(name="engine.reconcile", ignore_result=True)
def reconcile() -> dict[str, int]:
    """Revive broken chains and dispatch parked slots (beat, every ~10 s)."""
    from engine.metrics import record_reconcile  # lazy: as above
    from engine.reconciler import reconcile as reconcile_pass

    rt = get_runtime()
    report = reconcile_pass(rt).__dict__
    record_reconcile(rt.redis, report)
    return report


@app.task(name="engine.dispatch", ignore_result=True)
def dispatch() -> int:
    """Send parked slots that came due (beat, every ~1 s), should no worker poll."""
    from engine.dispatcher import dispatch as dispatch_parked  # lazy: as above
    from engine.metrics import record_reconcile

    rt = get_runtime()
    sent = dispatch_parked(rt)
    record_reconcile(rt.redis, {"dispatched": sent})
    return sent


@app.task(name="engine.reconcile_orders", ignore_result=True)
def reconcile_orders() -> dict[str, int]:
    """Settle open and unknown orders of every bot against its exchange (worker start)."""
    from engine import maintenance

    return maintenance.reconcile_orders(get_runtime())


@signals.worker_init.connect
def _preload(**_: Any) -> None:
    """Import the tick path (ccxt included, ~60 MB) before a prefork pool forks: the
    children then share those pages instead of importing a copy each. `gc.freeze`
    keeps the collector from writing to (and so copying) every one of those objects."""
    import engine.exchange.factory
    import engine.tick  # noqa: F401

    gc.collect()
    gc.freeze()


@signals.worker_process_init.connect
def _on_process_start(**_: Any) -> None:
    """Start this process's heartbeat, so the reconciler can tell it is alive."""
    start_heartbeat(get_runtime(), tuple(consumed_queues(app)))


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    """Write the tick metrics this process still holds."""
    get_runtime().tick_metrics.flush()


@signals.worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    """Migrate, heartbeat, the parked-slot dispatcher, and settle orders a crashed
    predecessor may have left open or unknown."""
    from engine import dispatcher  # lazy: as above
    from engine.db import migrate
    from engine.logging import get_logger

    rt = get_runtime()
    start_heartbeat(rt, tuple(consumed_queues(app)))
    dispatcher.start(rt)
    try:
        # A worker started on a fresh database (before any CLI or API ran) has no tables.
        migrate(rt.settings.database_url)
    except Exception as exc:  # noqa: BLE001 - ticks report the database on their own
        get_logger("engine.worker").error("worker.migrate_failed", error=str(exc))
        return
    reconcile_orders.delay()


@app.task(name="engine.price_check", **RETRIED)
def price_check(
    symbol: str | None = None, exchange: str | None = None, bot: str | None = None
) -> list[dict[str, Any]]:
    """Current prices of one symbol, one bot's symbol, or every tracked symbol."""
    from engine import maintenance  # lazy: imports the exchange layer

    return maintenance.price_check(get_runtime(), symbol=symbol, exchange=exchange, bot=bot)


@app.task(name="engine.price_snapshot", ignore_result=True, **RETRIED)
def price_snapshot() -> int:
    """Store the price of every tracked symbol (beat, hourly)."""
    from engine import maintenance

    return maintenance.price_snapshot(get_runtime())


@app.task(name="engine.cleanup", ignore_result=True, **RETRIED)
def cleanup() -> dict[str, int]:
    """Delete ticks and snapshots past the retention period (beat, daily at 02:00)."""
    from engine import maintenance

    return maintenance.cleanup(get_runtime())


@app.task(name="engine.cache_cleanup", ignore_result=True)
def cache_cleanup() -> dict[str, int]:
    """Drop Redis state nothing will read again (beat, every 6 hours)."""
    from engine import maintenance

    return maintenance.cache_cleanup(get_runtime())
