"""engine/broker.py: kombu's Redis transport with one client per channel, on a real Redis."""

from __future__ import annotations

import uuid

import pytest
import redis
from kombu import Connection

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
