"""Tick messages written straight into the broker's Redis list.

`apply_async` costs ~0.5 ms of CPU per message (routing, the producer pool, kombu's
publish and retry wrappers), about a tenth of a tick's whole cost in a worker. When the
broker is the coordination Redis itself, the engine builds the same message and pushes
it: a tick's successor inside the `complete` script, so the compare-and-set winner's
message is sent in the same atomic step as the CAS, and parked slots one LPUSH per
dispatch batch. Building it costs ~0.05 ms.

The task part is Celery's own (`app.amqp.as_task_v2`); the envelope around it is
kombu's virtual-transport format (`Channel.prepare_message` and
`_inplace_augment_message`, then `_put`'s LPUSH). Each process checks at start that the
two are what `apply_async` writes with the installed versions, and sends with
`apply_async` when they are not (engine/outbox_check.py); tests/test_outbox.py also
compares them with what `apply_async` writes to a real Redis. One
difference is deliberate: `apply_async` inside a running task records it as the new
message's parent and root; an endless chain of ticks gains nothing from that link.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import redis
from kombu.utils.json import dumps

from engine.coordination import Outgoing
from engine.settings import Settings

TICK_TASK = "engine.tick"


def tick_id(bot: str, generation: int, slot: int) -> str:
    """The deterministic task id of one slot (DESIGN.md: the tick protocol)."""
    return f"tick:{bot}:{generation}:{slot}"


EXPIRY_FLOOR_S = 900.0
"""How long past its due time a tick message may still run: longer than any backlog
an undersized fleet should still work off."""


def expires_in(due: float, now: float) -> float:
    """Seconds from `now` after which a slot's message is dropped unrun.

    A safety net only: the tick's guard already drops a message whose slot the chain
    has moved past. It must outlast the queue: a message that expires unrun leaves its
    chain to the reconciler, and a late tick's successor, sent behind a backlog longer
    than the expiry, expires in turn. 20,000 bots at 60 s on a worker that can run ~200
    ticks/s ran 55 ticks/s with a one-minute expiry and 153/s with this one
    (benchmarks/README.md). At least `EXPIRY_FLOOR_S` past due, and four times the
    countdown for far-off slots.
    """
    countdown = max(0.0, due - now)
    return countdown + max(EXPIRY_FLOOR_S, 4 * countdown)


@dataclass(frozen=True)
class TickOutbox:
    """Builds tick messages for the tick queue and names the Redis list they go to."""

    app: Any  # the Celery app: its `amqp` builds the task part of the message
    queue: str  # the Redis list Celery's workers consume (kombu: queue name, priority 0)
    time_limits: tuple[int | None, int | None]  # the task's (hard, soft), as Celery sends them

    def message(self, bot: str, generation: int, slot: int, due: float, now: float) -> Outgoing:
        """The message `tick.apply_async` would write for this slot, serialized."""
        task_id = tick_id(bot, generation, slot)
        args = (bot, generation, slot)
        expires = expires_in(due, now)
        task = self.app.amqp.as_task_v2(
            task_id,
            TICK_TASK,
            args=args,
            eta=datetime.fromtimestamp(due, UTC) if due > now else None,
            expires=datetime.fromtimestamp(now + expires, UTC),
            reply_to=self.app.thread_oid,
            time_limit=self.time_limits[0],
            soft_time_limit=self.time_limits[1],
            ignore_result=True,
            argsrepr=repr(args),
            kwargsrepr="{}",
        )
        body = dumps(task.body).encode()
        envelope = dumps(
            {
                "body": base64.b64encode(body).decode(),
                "content-encoding": "utf-8",
                "content-type": "application/json",
                "headers": task.headers,
                "properties": {
                    **task.properties,
                    "delivery_mode": 2,
                    "expiration": str(int(expires * 1000)),
                    # A direct queue is published through the anonymous exchange.
                    "delivery_info": {"exchange": "", "routing_key": self.queue},
                    "priority": 0,
                    "body_encoding": "base64",
                    "delivery_tag": str(uuid.uuid4()),
                },
            }
        )
        return Outgoing(self.queue, envelope)

    def push(self, client: redis.Redis, messages: Sequence[Outgoing]) -> None:
        """Send built messages in one round trip."""
        if messages:
            client.lpush(self.queue, *(m.body for m in messages))


def outbox_for(settings: Settings, app: Any) -> TickOutbox | None:
    """The outbox when the broker is the coordination Redis (same URL, plain `redis://`)
    and its messages are the ones the installed Celery sends (engine.outbox_check), else
    None: ticks are then sent with `apply_async` through whatever broker is set."""
    from engine.outbox_check import verified  # lazy: it imports this module

    if settings.celery_broker_url != settings.redis_url:
        return None
    if urlsplit(settings.celery_broker_url).scheme != "redis":
        return None
    queue = app.amqp.router.route({}, TICK_TASK)["queue"].name
    # Celery sends the task's own limits: since 5.7 they default to the configured ones,
    # before that to none (the worker then applies its configured ones).
    task = tick_task(app)
    return verified(TickOutbox(app, queue, (task.time_limit, task.soft_time_limit)))


def tick_task(app: Any) -> Any:
    """The tick task as registered with `app` (by engine.tasks, imported on demand)."""
    import engine.tasks  # noqa: F401  # lazy: tasks import the runtime, which imports this

    return app.tasks[TICK_TASK]
