"""The Celery app: `celery -A engine.celery_app worker -l info` starts a worker.

Each setting below is chosen for self-rescheduling tick chains; the comment says why.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from celery import Celery, concurrency, signals
from celery.apps import worker as celery_worker_module
from celery.apps.beat import Beat
from celery.apps.worker import Worker
from celery.beat import PersistentScheduler
from celery.schedules import crontab
from kombu import Exchange, Queue

from engine import logging as elog
from engine.broker import transport_for
from engine.settings import get_settings

TICK_QUEUE = "ticks"
MAINTENANCE_QUEUE = "maintenance"
QUEUES = (TICK_QUEUE, MAINTENANCE_QUEUE)

settings = get_settings()

app = Celery("botengine", include=["engine.tasks"])
app.conf.update(
    broker_url=settings.celery_broker_url,
    # kombu's Redis transport, minus a new client object per publish and per ack.
    broker_transport=transport_for(settings.celery_broker_url),
    result_backend=settings.celery_result_backend,
    # JSON only: a pickle payload from a compromised broker would be code execution.
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # Ticks and maintenance never wait behind each other: a reconciler pass must run
    # even when thousands of ticks are queued.
    task_default_queue=MAINTENANCE_QUEUE,
    task_routes={"engine.tick": {"queue": TICK_QUEUE}},
    # Declared, so that a worker started without -Q (`celery -A engine.celery_app worker`,
    # as Celery's docs have it) consumes both; without this it would consume only the
    # default queue and no bot would ever tick. `-Q` still narrows it.
    task_queues=[Queue(name, Exchange(name), routing_key=name) for name in QUEUES],
    # A task is acknowledged after it ran, so a worker killed mid-task leaves the message
    # for redelivery. Ticks are the exception (engine/tasks.py): their slot claim would
    # refuse the copy, and the reconciler resumes their chains.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # Unacked (and ETA) messages come back after this many seconds (celery #2481);
    # countdowns are kept below it by the ETA horizon (see engine/schedule.py).
    broker_transport_options={
        "visibility_timeout": settings.visibility_timeout_s,
        "max_held": settings.worker_max_held,  # engine.broker's transport only
    },
    result_backend_transport_options={"visibility_timeout": settings.visibility_timeout_s},
    # Prefetch one message per thread; ETA messages are held regardless of this limit.
    worker_prefetch_multiplier=1,
    # The per-bot lock TTL is derived from this, so a stuck tick can never hold a bot.
    task_time_limit=settings.tick_time_limit_s,
    task_soft_time_limit=max(1, settings.tick_time_limit_s - 5),
    # Results are for the API's task endpoints; ticks ignore theirs (see engine/tasks.py).
    task_track_started=True,
    # Stores a task's retry count with its state (the task API's `retries`).
    result_extended=True,
    result_expires=3600,
    # On shutdown give running ticks time to finish and hand ETA messages back to the
    # broker instead of letting them wait out the visibility timeout (celery #3501).
    worker_soft_shutdown_timeout=10.0,
    worker_enable_soft_shutdown_on_idle=True,
    worker_cancel_long_running_tasks_on_connection_loss=True,
    broker_connection_retry_on_startup=True,
    # Our own JSON logging replaces Celery's handlers (see on_setup_logging).
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=True,
    timezone=settings.timezone,
    enable_utc=True,
    # Beat proves it is alive by touching a file from its scheduling loop (see below).
    beat_scheduler="engine.celery_app:LivenessScheduler",
    beat_schedule={
        "reconcile": {
            "task": "engine.reconcile",
            "schedule": settings.reconcile_every_s,
            # A late beat must not pile up passes: an old one is useless.
            "options": {"expires": settings.reconcile_every_s},
        },
        "dispatch": {
            "task": "engine.dispatch",
            "schedule": settings.dispatch_every_s,
            "options": {"expires": settings.reconcile_every_s},
        },
        "price-snapshot": {
            "task": "engine.price_snapshot",
            "schedule": settings.snapshot_every_s or crontab(minute="0"),
            "options": {"expires": 1800},
        },
        "cleanup": {
            "task": "engine.cleanup",
            "schedule": settings.cleanup_every_s or crontab(minute="0", hour="2"),
            "options": {"expires": 3600},
        },
        "cache-cleanup": {
            "task": "engine.cache_cleanup",
            "schedule": settings.cache_cleanup_every_s or crontab(minute="15", hour="*/6"),
            "options": {"expires": 3600},
        },
    },
)


class LivenessScheduler(PersistentScheduler):
    """Celery's persistent scheduler, which also touches `<schedule file>.alive` from
    every pass of beat's loop (at most once a second).

    Beat is the one clock of the reconciler: a dead or stuck beat must fail its health
    check. The file's age says whether the loop still turns, on any Celery version and
    without a broadcast (compose: `docker/compose.yaml`, beat's healthcheck).
    """

    _touched = 0.0

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One pass of beat's loop; returns how long beat may sleep."""
        interval: float = super().tick(*args, **kwargs)
        now = time.monotonic()
        if now - self._touched >= 1.0:
            Path(f"{getattr(self, 'schedule_filename', 'celerybeat-schedule')}.alive").touch()
            self._touched = now
        return interval


class _JsonWorker(Worker):
    """Worker whose ASCII banner is replaced by a JSON `worker.ready` line."""

    def on_before_init(self, quiet: bool = False, **kwargs: Any) -> None:
        # Before Celery's own start-up checks, whose warnings would otherwise be plain text.
        _install_logging(settings.log_level)
        super().on_before_init(quiet=True, **kwargs)


class _JsonBeat(Beat):
    """Beat without its ASCII banner, which no log shipper can parse."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _install_logging(settings.log_level)
        kwargs["quiet"] = True
        super().__init__(*args, **kwargs)


def _say_as_json(msg: str, f: Any = None) -> None:
    """Stand-in for Celery's `safe_say`, which prints shutdown notices as bare text."""
    elog.get_logger("celery.worker").warning(msg.strip())


# The shutdown handlers call the module-level `safe_say`; replacing it is the only hook
# that keeps "worker: Warm shutdown" a JSON line.
celery_worker_module.safe_say = _say_as_json  # type: ignore[attr-defined]
app.Worker = app.subclass_with_self(_JsonWorker)  # type: ignore[misc]
app.Beat = app.subclass_with_self(_JsonBeat)  # type: ignore[misc]


class _QuietTicks(logging.Filter):
    """Drop Celery's per-task "received"/"succeeded" INFO lines for ticks.

    Every tick logs `tick.started` and `tick.finished` with more context; Celery's two
    lines per tick would double the log volume of the hottest path for nothing.
    Warnings and errors about ticks still pass.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        data = getattr(record, "data", None)
        return not (isinstance(data, dict) and data.get("name") == "engine.tick")


def _install_logging(level: str) -> None:
    elog.configure_logging(level, settings.log_format)
    elog.register_secrets(settings.secret_values())
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietTicks) for f in logger.filters):
            logger.addFilter(_QuietTicks())


@signals.setup_logging.connect
def on_setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
    """Install structlog JSON logging instead of Celery's plain-text handlers."""
    if isinstance(loglevel, int):
        _install_logging(logging.getLevelName(loglevel))
    else:
        _install_logging(loglevel or settings.log_level)


@signals.celeryd_after_setup.connect
def on_worker_setup(sender: str, instance: Any, **_: Any) -> None:
    """Route stray prints to the JSON log and announce the worker in one JSON line."""
    app.log.redirect_stdouts_to_logger(logging.getLogger("celery.redirected"))
    elog.get_logger("engine.worker").info(
        "worker.ready",
        hostname=sender,
        pool=_pool_name(instance.pool_cls),
        concurrency=instance.concurrency,
        queues=consumed_queues(instance.app),
    )


def _pool_name(pool_cls: Any) -> str | None:
    """`threads`, `prefork`, ... for a pool class (or the name Celery was given)."""
    if pool_cls is None:
        return None
    if isinstance(pool_cls, str):
        return pool_cls
    path = f"{pool_cls.__module__}:{pool_cls.__name__}"
    aliases: dict[str, str] = getattr(concurrency, "ALIASES", {})
    return next((alias for alias, target in aliases.items() if target == path), path)


def consumed_queues(celery: Celery) -> list[str]:
    """The queues this worker consumes: its -Q selection, else every declared queue."""
    queues = celery.amqp.queues
    selected = queues.consume_from or queues
    return sorted(selected.keys())


@signals.task_prerun.connect
def on_task_start(task_id: str, task: Any, **_: Any) -> None:
    """Bind the task id and name to every log line the task writes."""
    elog.clear()
    elog.bind(task_id=task_id, task_name=task.name)


@signals.task_postrun.connect
def on_task_end(**_: Any) -> None:
    """Forget the finished task's log context (threads are reused)."""
    elog.clear()
