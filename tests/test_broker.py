"""engine/broker.py: kombu's Redis transport with one client per channel, on a real Redis."""

from __future__ import annotations

import contextlib
import socket
import uuid

import pytest
import redis
from kombu import Connection, Consumer, Queue
from kombu.message import Message

from engine import broker
from engine.celery_app import app


@pytest.fixture
def connection(redis_url: str) -> Connection:
    conn = Connection(redis_url, transport=broker.TRANSPORT)
    yield conn
    conn.release()


def test_a_channel_reuses_its_client_until_kombu_replaces_the_pool(
    connection: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[object] = []
    original = redis.Redis.__init__

    def counting(self: redis.Redis, *args: object, **kwargs: object) -> None:
        built.append(self)
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    channel = connection.channel()
    monkeypatch.setattr(redis.Redis, "__init__", counting)
    with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
        assert first is second
    assert len(built) == 1
    given = object()
    with channel.conn_or_acquire(given) as client:  # an explicit client passes through
        assert client is given
    # What kombu does after a lost connection or a fork: the next call builds a new
    # client on the new pool rather than keep one bound to dead sockets.
    channel._disconnect_pools()
    with channel.conn_or_acquire() as third:
        assert third is not first
        assert third.connection_pool is channel.pool
    assert len(built) == 2


def test_messages_go_through_and_are_acknowledged(connection: Connection) -> None:
    name = f"broker-test-{uuid.uuid4().hex[:8]}"
    queue = connection.SimpleQueue(name)
    try:
        for n in range(3):
            queue.put({"n": n})
        got = []
        for _ in range(3):
            message = queue.get(timeout=5)
            got.append(message.payload["n"])
            message.ack()
        assert got == [0, 1, 2]
        channel = connection.default_channel
        assert not channel.client.llen(name)
        # Acknowledged: nothing is left in the transport's unacked index to restore.
        assert not channel.client.hlen(channel.unacked_key)
    finally:
        queue.close()


def test_only_plain_redis_urls_get_this_transport() -> None:
    assert broker.transport_for("redis://127.0.0.1:6379/0") == broker.TRANSPORT
    assert broker.transport_for("rediss://example.com:6380/0") is None
    assert broker.transport_for("amqp://guest:guest@127.0.0.1:5672//") is None
    assert broker.transport_for("redis+socket:///tmp/redis.sock") is None


def test_the_engine_app_uses_it_for_its_redis_broker() -> None:
    assert app.conf.broker_url.startswith("redis://")
    with app.connection_for_write() as conn:
        assert isinstance(conn.default_channel, broker.Channel)


def _held(connection: Connection, name: str, task: str) -> tuple[object, object]:
    """Put one message of `task` on queue `name` and take it without acknowledging."""
    queue = connection.SimpleQueue(name)
    queue.put({"task": task}, headers={"task": task})
    return queue, queue.get(timeout=5)


def test_a_tick_message_leaves_no_copy_in_redis_while_held(connection: Connection) -> None:
    name = f"broker-test-{uuid.uuid4().hex[:8]}"
    channel = connection.default_channel
    tick_queue, tick = _held(connection, name, "engine.tick")
    other_queue, other = _held(connection, f"{name}-m", "engine.reconcile")
    try:
        unacked = channel.client.hkeys(channel.unacked_key)
        assert other.delivery_tag.encode() in unacked  # kombu's emulation, as before
        assert tick.delivery_tag.encode() not in unacked
        assert len(channel.qos._delivered) == 2  # both count against the prefetch limit
        tick.ack()
        other.ack()
        channel.qos._flush()
        assert not channel.qos._delivered
        assert not channel.client.hexists(channel.unacked_key, other.delivery_tag)
    finally:
        tick_queue.close()
        other_queue.close()


def test_held_tick_messages_go_back_to_their_queue_at_shutdown(redis_url: str) -> None:
    name = f"broker-test-{uuid.uuid4().hex[:8]}"
    conn = Connection(redis_url, transport=broker.TRANSPORT)
    queue = conn.SimpleQueue(name)
    for n in range(3):
        queue.put({"n": n}, headers={"task": "engine.tick"})
    _held_first, second, third = (queue.get(timeout=5) for _ in range(3))
    second.ack()  # acknowledged: must not come back
    third.reject(requeue=True)  # requeued at once, at the head of the queue
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.llen(name) == 1
        conn.release()  # closes the channel: kombu restores what is still held
        assert client.llen(name) == 2
        restored = Connection(redis_url, transport=broker.TRANSPORT).SimpleQueue(name)
        try:
            got = sorted(restored.get(timeout=5).payload["n"] for _ in range(2))
            assert got == [0, 2]
        finally:
            restored.close()
    finally:
        client.delete(name)
        client.close()


def test_closing_after_a_lost_connection_is_a_connection_error_not_a_crash(
    redis_url: str,
) -> None:
    # Given a consumer holding an unacknowledged (tracked) message
    name = f"broker-test-{uuid.uuid4().hex[:8]}"
    conn = Connection(redis_url, transport=broker.TRANSPORT)
    queue = conn.SimpleQueue(name)
    queue.put({"n": 1}, headers={"task": "engine.reconcile"})
    assert queue.get(timeout=5) is not None
    channel = conn.default_channel
    # When Celery handles a lost connection: collect() detaches the transport, then
    # close() closes the channel a second time and restores what it holds
    conn.collect()
    channel._disconnect_pools()  # the pool a dead connection leaves behind
    with pytest.raises(redis.exceptions.ConnectionError):
        channel.qos.restore_unacked()
    # Then a worker sees the connection error it recovers from, not an AttributeError
    conn.close()
    redis.Redis.from_url(redis_url).delete(name)


def test_a_channel_holds_no_more_than_max_held_messages_whatever_its_prefetch(
    redis_url: str,
) -> None:
    # Given a consumer allowed 100 unacknowledged messages (what Celery's prefetch
    # count becomes while it holds ETA messages) on a channel capped at 3
    conn = Connection(redis_url, transport=broker.TRANSPORT, transport_options={"max_held": 3})
    name = f"broker-test-{uuid.uuid4().hex[:8]}"
    held: list[Message] = []
    try:
        queue = conn.SimpleQueue(name)
        for n in range(6):
            queue.put({"n": n})
        channel = conn.channel()
        assert channel.max_held == 3
        consumer = Consumer(channel, [Queue(name)], callbacks=[lambda _, m: held.append(m)])
        consumer.qos(prefetch_count=100)
        with consumer:
            # When it reads all it can
            _drain(conn)
            # Then it holds 3, and the rest stay queued for other workers
            assert [m.payload["n"] for m in held] == [0, 1, 2]
            assert channel.client.llen(name) == 3
            # And each acknowledgement lets one more in
            held[0].ack()
            _drain(conn)
            assert [m.payload["n"] for m in held] == [0, 1, 2, 3]
        queue.close()
    finally:
        conn.release()


def _drain(conn: Connection) -> None:
    """Deliver what the transport lets through, until nothing comes for 0.5 s."""
    with contextlib.suppress(TimeoutError, socket.timeout):
        while True:
            conn.drain_events(timeout=0.5)
