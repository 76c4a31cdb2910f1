"""engine/outbox.py: tick messages pushed straight into the broker's Redis list.

The message must be the one `apply_async` writes (a worker cannot tell them apart), and
a CAS loser must push nothing. Workers running outbox messages end to end are covered
by the chain and fault tests, whose workers use an outbox (broker = coordination Redis).
engine/outbox_check.py proves the message at start-up and turns the outbox off when it
differs: it must pass on the installed Celery and fail closed on any difference.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime
from importlib.metadata import version
from typing import Any

import pytest
import redis
from celery._state import _task_stack
from structlog.testing import capture_logs

from engine import outbox_check
from engine.celery_app import TICK_QUEUE, app
from engine.coordination import Mirror, Next, Outgoing, RedisCoordinator
from engine.outbox import TickOutbox, outbox_for
from engine.outbox_check import PROBE, compare, differences, published
from engine.runtime import celery_enqueue
from engine.settings import Settings

SAME = Settings(celery_broker_url="redis://h:1/3", redis_url="redis://h:1/3")


def _outbox() -> TickOutbox:
    outbox = outbox_for(SAME, app)
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


def _disabled(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == "outbox.disabled"]


def test_the_self_check_passes_on_the_installed_celery_and_kombu() -> None:
    # When a process builds its outbox
    with capture_logs() as logs:
        outbox = outbox_for(SAME, app)
    # Then the check found the messages equal and said nothing
    assert outbox is not None
    assert differences(outbox) == {}
    assert _disabled(logs) == []


def test_the_self_check_passes_inside_a_running_task() -> None:
    # Given a worker thread running a task (a threads-pool worker may build its runtime
    # in its first task), so that apply_async records that task as parent and root
    ping = app.tasks["engine.ping"]
    ping.push_request(id="parent-task", root_id="root-task", called_directly=False)
    _task_stack.push(ping)
    try:
        [(_, payload)] = [args for name, args in published(app, time.time()) if name == "lpush"]
        assert json.loads(payload)["headers"]["parent_id"] == "parent-task"
        # Then the outbox's unlinked message still passes (the deliberate difference)
        assert differences(_outbox()) == {}
    finally:
        _task_stack.pop()
        ping.pop_request()


def test_the_self_check_costs_about_a_millisecond() -> None:
    outbox = _outbox()
    started = time.perf_counter()
    for _ in range(10):
        differences(outbox)
    assert (time.perf_counter() - started) / 10 < 0.02  # ~1.5 ms here; the bound is for CI


def test_the_probe_records_what_apply_async_writes_to_redis(
    redis_url: str, redis_client: redis.Redis, monkeypatch: Any
) -> None:
    # Given a tick sent by Celery to a real Redis, and the same tick through the probe
    monkeypatch.setattr(app.conf, "broker_url", redis_url)
    due = time.time() + 3.0
    with app.connection_for_write(redis_url) as conn, app.producer_or_acquire() as producer:
        assert producer.connection.as_uri() == conn.as_uri()
        celery_enqueue(*PROBE, due)
    sent = redis_client.rpop(TICK_QUEUE)
    pushed = [args for name, args in published(app, due) if name == "lpush"]
    # Then the probe saw one push, of the same message to the same list
    assert len(pushed) == 1
    key, recorded = pushed[0]
    assert compare(TICK_QUEUE, recorded, key, sent) == {}


def test_a_message_that_differs_turns_the_outbox_off_with_one_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an outbox whose messages carry a header Celery's do not
    build = TickOutbox.message

    def perturbed(self: TickOutbox, *args: Any) -> Outgoing:
        message = json.loads(build(self, *args).body)
        message["headers"]["retries"] = 1
        return Outgoing(self.queue, json.dumps(message))

    monkeypatch.setattr(TickOutbox, "message", perturbed)
    # When a process builds its outbox
    with capture_logs() as logs:
        outbox = outbox_for(SAME, app)
    # Then it has none (ticks go through apply_async), and one warning says why
    assert outbox is None
    [warning] = _disabled(logs)
    assert warning["log_level"] == "warning"
    assert warning["differences"] == {"headers.retries": {"outbox": 1, "celery": 0}}
    assert warning["celery_version"] == version("celery")
    assert warning["kombu_version"] == version("kombu")
    assert len(logs) == 1


def test_a_broker_key_prefix_turns_the_outbox_off(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a transport option that makes kombu push to another Redis list
    options = {**app.conf.broker_transport_options, "global_keyprefix": "botengine:"}
    monkeypatch.setitem(app.conf, "broker_transport_options", options)
    # Then the outbox, which would push where no worker reads, is off
    with capture_logs() as logs:
        assert outbox_for(SAME, app) is None
    [warning] = _disabled(logs)
    assert warning["differences"]["redis.key"] == {"outbox": "ticks", "celery": "botengine:ticks"}


def test_a_self_check_that_cannot_run_turns_the_outbox_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*_: Any) -> None:
        raise AttributeError("'Channel' object has no attribute '_put'")

    monkeypatch.setattr(outbox_check, "published", broken)
    with capture_logs() as logs:
        assert outbox_for(SAME, app) is None
    [warning] = _disabled(logs)
    assert "AttributeError" in warning["differences"]["self_check"]


def test_clock_readings_may_differ_by_the_slack_and_no_more() -> None:
    outbox = _outbox()
    now = time.time()
    built = outbox.message("b", 1, 0, now + 60, now)
    for shift, differs in [(0.001, False), (outbox_check.CLOCK_SLACK_S + 0.5, True)]:
        later = outbox.message("b", 1, 0, now + 60 + shift, now + shift)
        found = compare(built.queue, built.body, later.queue, later.body)
        assert bool(found) == differs, shift
        if differs:  # the expiration is relative to the clock: the same in both
            assert set(found) == {"headers.eta", "headers.expires"}
