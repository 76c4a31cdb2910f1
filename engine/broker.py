"""Celery's Redis transport: one redis-py client per channel instead of one per command,
and no Redis copy of a tick message while a worker holds it.

kombu's Redis channel builds a new `redis.Redis` object for every publish, every
delivery's unacked-index write and every acknowledgement (`Channel.conn_or_acquire`).
Building one costs ~0.1 ms of CPU (it copies ~170 response callbacks into a fresh
case-insensitive dict), as much as the Redis round trip it wraps; a tick pays it three
times. A client is only a view of the channel's connection pool and is safe to share
between threads, so this channel keeps one per pool and builds a new one only when
kombu replaces the pool (after a reconnect or a fork).

kombu's ack emulation writes every delivered message to an `unacked` hash and index
(one pipeline) and deletes it on ack (another), so a message a dead worker held comes
back after the visibility timeout. A tick needs neither round trip: the reconciler
resumes a chain whose message was lost within seconds (DESIGN.md, tick protocol step 7),
and a copy that came back an hour later would be refused by its slot claim. `QoS` keeps
tick messages in memory only; a warm shutdown and a requeue still put them back on
their queue. Every other task (maintenance, the API's) keeps kombu's emulation.

`QoS` can also cap how many messages a worker holds (`max_held`, a transport option), ETA
ones included, which Celery's prefetch limit does not count.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

TRANSPORT = "engine.broker:Transport"

# Task names whose messages are not copied to Redis while delivered (see the docstring).
UNTRACKED_TASKS = frozenset({"engine.tick"})


class QoS(kombu_redis.QoS):
    """kombu's Redis ack emulation, skipped for the messages of `UNTRACKED_TASKS`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._untracked: set[Any] = set()

    def can_consume(self) -> bool:
        """kombu's prefetch check, and no more than the channel's `max_held` messages.

        Celery lifts a worker's prefetch limit by one for every ETA message it holds, so
        without a cap the first worker to read a burst of ETA ticks may take all of it
        and run it late while its peers idle (benchmarks/README.md).
        """
        cap = self._channel.max_held
        if cap and len(self._held) - len(self._dirty or ()) >= cap:
            return False
        return bool(super().can_consume())

    def append(self, message: Any, delivery_tag: Any) -> None:
        """Hold the message; write its Redis copy unless it is untracked."""
        if message.headers.get("task") in UNTRACKED_TASKS:
            self._untracked.add(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)

    def ack(self, delivery_tag: Any) -> None:
        """Forget the message (and its Redis copy, when it has one)."""
        if delivery_tag in self._untracked:
            self._untracked.discard(delivery_tag)
            virtual.QoS.ack(self, delivery_tag)
        else:
            super().ack(delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        """Drop the message, or put it back at the head of its queue."""
        if delivery_tag not in self._untracked:
            super().reject(delivery_tag, requeue=requeue)
            return
        if requeue:
            with self._channel.conn_or_acquire() as client:
                self._put_back(self._held[delivery_tag], client, leftmost=True)
        self._untracked.discard(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def restore_unacked(self, client: Any = None) -> None:
        """At shutdown: every message still held goes back to its queue, an untracked
        one from memory (acknowledged ones are flushed first, so none comes back)."""
        self._held_flush()
        with self._channel.conn_or_acquire(client) as conn:
            pipe = conn.pipeline()
            for tag, message in list(self._held.items()):
                if tag in self._untracked:
                    self._put_back(message, pipe)
                else:
                    self.restore_by_tag(tag, client=conn)
            pipe.execute()
        self._held.clear()
        self._untracked.clear()

    # kombu's stubs type these as the virtual transport's; they are the Redis ones.
    @property
    def _channel(self) -> Any:
        return self.channel

    @property
    def _held(self) -> Any:
        return self._delivered

    def _held_flush(self) -> None:
        virtual.QoS._flush(self)  # type: ignore[attr-defined]

    def _put_back(self, message: Any, pipe: Any, leftmost: bool = False) -> None:
        delivery = message.delivery_info
        self._channel._do_restore_message(
            message._raw, delivery["exchange"], delivery["routing_key"], pipe, leftmost
        )


class Channel(kombu_redis.Channel):
    """A kombu Redis channel that reuses its synchronous client, with `QoS` above."""

    QoS = QoS
    _shared_client: Any = None
    # Messages a worker holds at once, ETA ones included (0: kombu's prefetch only).
    max_held = 0
    from_transport_options = (*kombu_redis.Channel.from_transport_options, "max_held")

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        """kombu's, but a connection error once kombu has detached the transport.

        When a worker loses Redis, Celery's `connection.collect()` detaches the
        transport (`client = None`) and then closes the channel again; that close
        restores held messages and `Hub.close()` runs queued acks, both of which rebuild
        the pool here. kombu then fails with an AttributeError that kills the worker
        ("Unrecoverable error: ... 'NoneType' object has no attribute 'hostname'");
        a connection error is what Celery expects there, and it reconnects.
        """
        if self.connection is None or self.connection.client is None:
            raise redis.exceptions.ConnectionError("broker connection already closed")
        base: Any = super()
        params: dict[str, Any] = base._connparams(asynchronous=asynchronous)
        return params

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """The given client, or this channel's shared one for its current pool."""
        if client:
            yield client
            return
        shared = self._shared_client
        if shared is None or shared.connection_pool is not self.pool:
            shared = self._shared_client = self._create_client()  # type: ignore[attr-defined]
        yield shared


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with `Channel` above."""

    Channel = Channel


def transport_for(broker_url: str) -> str | None:
    """The transport to use for `broker_url`: this one for plain `redis://` URLs, None
    (the URL's own) for every other broker (RabbitMQ, TLS or socket Redis, ...)."""
    return TRANSPORT if urlsplit(broker_url).scheme == "redis" else None
