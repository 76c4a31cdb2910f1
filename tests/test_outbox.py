"""engine/outbox.py: tick messages pushed straight into the broker's Redis list.

The message must be the one `apply_async` writes (a worker cannot tell them apart), and
a CAS loser must push nothing. Workers running outbox messages end to end are covered
by the chain and fault tests, whose workers use an outbox (broker = coordination Redis).
"""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime
from typing import Any

import redis

from engine.celery_app import TICK_QUEUE, app
from engine.coordination import Mirror, Next, Outgoing, RedisCoordinator
from engine.outbox import TickOutbox, outbox_for
from engine.runtime import celery_enqueue
from engine.settings import Settings


def _outbox() -> TickOutbox:
    outbox = outbox_for(Settings(celery_broker_url="redis://h:1/3", redis_url="redis://h:1/3"), app)
    assert outbox is not None
    return outbox


def _pop(client: redis.Redis) -> dict[str, Any]:
    raw = client.rpop(TICK_QUEUE)
    assert isinstance(raw, bytes)
    message: dict[str, Any] = json.loads(raw)
    return message


def _when(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_an_outbox_message_is_the_one_apply_async_writes(
    redis_url: str, redis_client: redis.Redis, monkeypatch: Any
) -> None:
    monkeypatch.setattr(app.conf, "broker_url", redis_url)
    due = time.time() + 3.0
    # Given one message sent by Celery and one built by the outbox for the same slot
    with app.connection_for_write(redis_url) as conn, app.producer_or_acquire() as producer:
        assert producer.connection.as_uri() == conn.as_uri()
        celery_enqueue("bot-1", 2, 7, due)
    sent = _pop(redis_client)
    outbox = _outbox()
    outbox.push(redis_client, [outbox.message("bot-1", 2, 7, due, time.time())])
    built = _pop(redis_client)
    # Then they agree field by field, but for the per-message tag and the clock readings
    for message in (sent, built):
        props, headers = message["properties"], message["headers"]
        assert props.pop("delivery_tag")
        assert 899_000 < int(props.pop("expiration")) <= 903_000
        assert abs(_when(headers.pop("eta")) - due) < 0.01
        assert 899.9 < _when(headers.pop("expires")) - due < 900.1  # EXPIRY_FLOOR_S past due
        message["body"] = json.loads(base64.b64decode(message["body"]))
    for key in ("properties", "headers", "body"):
        assert built[key] == sent[key], key
    assert built == sent
    assert built["headers"]["id"] == "tick:bot-1:2:7"
    assert built["body"][0] == ["bot-1", 2, 7]


def test_a_slot_already_due_has_no_eta() -> None:
    outbox = _outbox()
    message = json.loads(outbox.message("b", 1, 0, time.time() - 5, time.time()).body)
    assert message["headers"]["eta"] is None


def test_only_a_broker_on_the_coordination_redis_gets_an_outbox() -> None:
    same = Settings(celery_broker_url="redis://h:1/3", redis_url="redis://h:1/3")
    assert outbox_for(same, app) is not None
    assert outbox_for(same, app).queue == TICK_QUEUE  # type: ignore[union-attr]
    for broker, coordination in [
        ("redis://h:1/0", "redis://h:1/3"),  # another db: a script cannot push there
        ("rediss://h:1/3", "rediss://h:1/3"),  # kombu's own transport (TLS)
        ("amqp://guest@h//", "redis://h:1/3"),
    ]:
        settings = Settings(celery_broker_url=broker, redis_url=coordination)
        assert outbox_for(settings, app) is None


def test_only_the_cas_winner_pushes_its_successor(redis_client: redis.Redis) -> None:
    coordinator = RedisCoordinator(redis_client, 60)
    coordinator.publish(Mirror("running", 1, 1000.0, 5.0, 0), "b", 1000.0, parked=False)
    first = coordinator.begin("b", 1, 0, "w", 60)
    seen = coordinator.claim("b", 1, 0)
    assert coordinator.advance("b", 1, 0, 1, 1005.0, False, claim=seen)  # someone moved it
    # When slot 0 completes proposing slot 1 with its message, it loses the CAS
    lost = Next(1, 1005.0, False, Outgoing("q", "from-the-loser"))
    assert not coordinator.complete("b", 1, 0, first.lock, lost)
    assert redis_client.llen("q") == 0
    # When slot 1 completes, it wins and its message is on the queue
    second = coordinator.begin("b", 1, 1, "w", 60)
    won = Next(2, 1010.0, False, Outgoing("q", "from-the-winner"))
    assert coordinator.complete("b", 1, 1, second.lock, won)
    assert redis_client.lrange("q", 0, -1) == [b"from-the-winner"]
