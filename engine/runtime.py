"""The per-process runtime: connections, caches and the clock the tick runs with.

Built lazily once per worker process (after fork), never per tick. Tests build their
own with an injected clock and enqueue function.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis
from amqp.exceptions import ChannelError
from sqlalchemy import Engine

from engine import admission
from engine.coordination import Coordinator, RedisCoordinator
from engine.db import engine_for
from engine.exchange.ratelimit import BanWatch
from engine.metrics import TickBuffer
from engine.outbox import TickOutbox, expires_in, outbox_for, tick_id
from engine.settings import Settings, get_settings
from engine.store import DbOrderStore

if TYPE_CHECKING:
    from engine.config import BotConfig
    from engine.exchange.gateway import Gateway

Enqueue = Callable[[str, int, int, float], None]
"""enqueue(bot, generation, slot, due_epoch_s): schedule one tick message."""

HEARTBEAT_TTL_S = 10
HEARTBEAT_EVERY_S = 3.0


@dataclass
class Runtime:
    """Everything a tick, a lifecycle command or the reconciler needs from the outside."""

    settings: Settings
    redis: redis.Redis | None  # None in `botengine run`: no shared cache, limits or bans
    db: Engine
    coordinator: Coordinator
    enqueue: Enqueue
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    clock: Callable[[], float] = time.time
    # Who runs the chains this runtime ticks, as `bots.runner` records it: None for the
    # fleet's workers, the foreground process's id in `botengine run`.
    runner: str | None = None
    gateway_for: Callable[[BotConfig], Gateway] | None = None
    # Messages waiting in the tick queue (None: unknown); the reconciler backs off on it.
    backlog: Callable[[], int] | None = None
    # Set when tick messages can be pushed to the broker directly (see engine.outbox).
    outbox: TickOutbox | None = None
    # Per bot: (generation, tick.Setup), built once per process (see tick.bot_setup).
    setups: dict[str, tuple[int, Any]] = field(default_factory=dict)
    # The tick's check for an exchange ban, cached briefly (see ratelimit.BanWatch).
    bans: BanWatch = field(default_factory=BanWatch)
    tick_metrics: TickBuffer = field(init=False)
    order_store: DbOrderStore = field(init=False)

    def __post_init__(self) -> None:
        self.tick_metrics = TickBuffer(self.redis, self.settings.metrics_flush_s)
        self.order_store = DbOrderStore(self.db)

    def gateway(self, config: BotConfig) -> Gateway:
        """The gateway a bot trades through (process-wide caches live in the factory)."""
        if self.gateway_for is not None:
            return self.gateway_for(config)
        from engine.exchange.factory import gateway_for  # lazy: imports ccxt

        return gateway_for(config, redis=self.redis, db=self.db, settings=self.settings)


def redis_client(url: str) -> redis.Redis:
    """A pooled client with timeouts, so a dead Redis fails a call instead of hanging it."""
    return redis.Redis.from_url(
        url, socket_timeout=5, socket_connect_timeout=3, health_check_interval=30
    )


def claim_ttl(settings: Settings) -> int:
    """How long a slot claim lives: past the task time limit, so a dead tick stays visible."""
    return settings.tick_time_limit_s * 2 + 60


def celery_backlog() -> int:
    """Messages waiting in the tick queue of the broker (any Celery transport)."""
    from engine.celery_app import TICK_QUEUE, app  # lazy: tasks import this module

    with app.connection_for_write() as conn:
        try:
            channel = conn.default_channel
            declared = channel.queue_declare(TICK_QUEUE, passive=True)  # type: ignore[attr-defined]
        except ChannelError:  # no such queue yet: nothing was ever sent to it
            return 0
        return int(declared.message_count)


def celery_enqueue(bot: str, generation: int, slot: int, due: float) -> None:
    """Send one tick message with its deterministic id, countdown and expiry."""
    from engine.tasks import tick  # lazy: tasks import this module

    now = time.time()
    tick.apply_async(
        args=(bot, generation, slot),
        task_id=tick_id(bot, generation, slot),
        countdown=max(0.0, due - now),
        expires=expires_in(due, now),  # Celery reads a number as seconds from now
    )


def send_ticks(rt: Runtime, ticks: Sequence[tuple[str, int, int, float]]) -> None:
    """Send several (bot, generation, slot, due) tick messages: in one round trip through
    the outbox when there is one, else one `enqueue` each."""
    if rt.outbox is None or rt.redis is None:
        for bot, generation, slot, due in ticks:
            rt.enqueue(bot, generation, slot, due)
        return
    now = rt.clock()
    rt.outbox.push(rt.redis, [rt.outbox.message(*tick, now) for tick in ticks])


_lock = threading.Lock()
_runtime: Runtime | None = None
_pid: int | None = None


def get_runtime() -> Runtime:
    """The runtime of this process, created on first use (and again after a fork)."""
    global _runtime, _pid  # one runtime per process is the point
    with _lock:
        if _runtime is None or _pid != os.getpid():
            from engine.celery_app import app as celery_app  # lazy: tasks import this module

            settings = get_settings()
            admission.configure(settings.tick_concurrency)
            client = redis_client(settings.redis_url)
            _runtime = Runtime(
                settings=settings,
                redis=client,
                db=engine_for(settings.database_url),
                coordinator=RedisCoordinator(client, claim_ttl(settings)),
                enqueue=celery_enqueue,
                backlog=celery_backlog,
                outbox=outbox_for(settings, celery_app),
            )
            _pid = os.getpid()
        return _runtime


_heartbeat_pid: int | None = None


def start_heartbeat(runtime: Runtime, queues: tuple[str, ...] = ()) -> None:
    """Keep this worker process's heartbeat alive (once per process).

    The reconciler treats a slot claimed by a process without a heartbeat as abandoned,
    so a SIGKILLed worker's bots resume within seconds instead of a task time limit.
    The heartbeat names the queues the process consumes (engine.health).
    """
    global _heartbeat_pid
    coordinator = runtime.coordinator
    if not isinstance(coordinator, RedisCoordinator) or _heartbeat_pid == os.getpid():
        return
    _heartbeat_pid = os.getpid()

    def beat() -> None:
        while True:
            # Redis down: the claims are gone too, and the reconciler resyncs afterwards.
            with suppress(redis.RedisError):
                coordinator.heartbeat(runtime.worker_id, HEARTBEAT_TTL_S, queues)
            runtime.tick_metrics.flush()  # an idle worker's last ticks show too
            time.sleep(HEARTBEAT_EVERY_S)

    coordinator.heartbeat(runtime.worker_id, HEARTBEAT_TTL_S, queues)
    threading.Thread(target=beat, name="botengine-heartbeat", daemon=True).start()
