"""The outbox's start-up self-check: its messages against the ones Celery would send.

engine.outbox builds Celery's task message by hand from Celery's and kombu's internals
(`as_task_v2`, the virtual transport's envelope, the Redis transport's list key). A new
release of either library, or a setting (a default priority, a transport key prefix,
task compression, a delivery mode), can change what `apply_async` writes; workers would
then read outbox messages differently or never see them. So before a process uses the
outbox it sends two ticks (one due later, with an ETA, and one due now) both ways: with
the outbox, and with `tick.apply_async` on a copy of the app's broker connection whose
Redis client records commands instead of sending them. The messages are compared field
by field. Any difference, or a probe that fails, disables the outbox for the process,
which then sends ticks with `apply_async`, and says so in one `outbox.disabled` warning.

The check talks to no server and costs ~1.5 ms (~15 ms the first time in a process,
which warms the code paths that the first `apply_async` would warm anyway).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from importlib.metadata import version
from typing import Any

from kombu.transport import redis as kombu_redis

from engine import logging as elog
from engine.outbox import TickOutbox, expires_in, tick_id, tick_task

PROBE = ("outbox-self-check", 0, 0)
"""The (bot, generation, slot) of the probe ticks, which are recorded, never sent."""

COUNTDOWNS_S = (60.0, 0.0)
"""Probe ticks: one held by a worker until due (an ETA message), one due at once."""

CLOCK_SLACK_S = 1.0
"""How far apart the two messages' clock readings (ETA, expiry) may be: they are read
microseconds apart, and a wrong unit or time zone is off by far more."""

# Lineage: `apply_async` inside a running task records it as parent and root; the
# outbox leaves a chain of ticks unlinked (see engine.outbox).
_IGNORED = frozenset({"headers.root_id", "headers.parent_id"})
_INSTANTS = frozenset({"headers.eta", "headers.expires"})
_UNIQUE = frozenset({"properties.delivery_tag"})  # a fresh uuid per message

# What publishing a tick may ask of Redis besides its one LPUSH: the connection check
# and the tick queue's declaration (its size and its exchange binding, which workers
# write too). Any other command is one the outbox does not send.
_DECLARING = frozenset({"ping", "pipeline", "execute", "llen", "sadd"})


def verified(outbox: TickOutbox) -> TickOutbox | None:
    """The outbox if its messages are the ones `apply_async` sends, else None with one
    `outbox.disabled` warning naming the fields that differ."""
    try:
        found = differences(outbox)
    except Exception as exc:  # noqa: BLE001  # any failure to prove it is a "no"
        found = {"self_check": f"failed: {exc!r}"}
    if not found:
        return outbox
    elog.get_logger("engine.outbox").warning(
        "outbox.disabled",
        reason="tick messages would differ from apply_async's; sending with apply_async",
        differences=found,
        celery_version=version("celery"),
        kombu_version=version("kombu"),
    )
    return None


def differences(outbox: TickOutbox) -> dict[str, Any]:
    """Where the outbox's messages for the probe ticks differ from what `apply_async`
    hands the app's Redis transport: {field: {"outbox": ..., "celery": ...}}."""
    app = outbox.app
    if app.conf.task_always_eager:  # apply_async would run the task here, send nothing
        return {"task_always_eager": {"outbox": False, "celery": True}}
    found: dict[str, Any] = {}
    for countdown in COUNTDOWNS_S:
        now = time.time()
        due = now + countdown
        built = outbox.message(*PROBE, due, now)
        commands = published(app, due)
        found.update(compare_commands(commands))
        pushed = [args for name, args in commands if name == "lpush"]
        if len(pushed) == 1 and len(pushed[0]) == 2:
            found.update(compare(built.queue, built.body, *pushed[0]))
    return found


def published(app: Any, due: float) -> list[tuple[str, tuple[Any, ...]]]:
    """The Redis commands `tick.apply_async` issues for the probe tick due at `due`,
    sent the way `engine.runtime.celery_enqueue` sends a tick, recorded, not sent."""
    real = app.connection_for_write()
    try:
        probe = real.clone(transport=_probe_transport(real.get_transport_cls()))
    finally:
        real.release()
    with probe:
        channel = probe.channel()
        now = time.time()
        tick_task(app).apply_async(
            args=PROBE,
            task_id=tick_id(*PROBE),
            countdown=max(0.0, due - now),
            expires=expires_in(due, now),
            producer=app.amqp.Producer(channel, auto_declare=False),
            add_to_parent=False,  # a probe is no child of the task that may be running
        )
        recorder: _Recorder = channel.client
        # kombu applies this prefix in its client class, which the recorder replaces.
        prefix = getattr(channel, "global_keyprefix", "")
    return [(name, _keyed(prefix, name, args)) for name, args in recorder.calls]


def _keyed(prefix: str, name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """An LPUSH's arguments with its list key as Redis would see it."""
    if name != "lpush" or not args:
        return args
    return (prefix + str(args[0]), *args[1:])


def compare_commands(commands: list[tuple[str, tuple[Any, ...]]]) -> dict[str, Any]:
    """A difference when publishing took other commands than one LPUSH and the queue
    declaration (the outbox sends one LPUSH and nothing else)."""
    sends = [name for name, _ in commands if name not in _DECLARING]
    if sends != ["lpush"]:
        return {"redis.commands": {"outbox": ["lpush"], "celery": sends}}
    return {}


def compare(queue: str, built: str, key: str, sent: Any) -> dict[str, Any]:
    """Field-by-field differences between the outbox's message (`built`, for Redis list
    `queue`) and the one kombu pushed (`sent`, to list `key`), ignoring only what differs
    legitimately: lineage, the delivery tag's value, and clock readings within slack."""
    found: dict[str, Any] = {}
    if queue != key:
        found["redis.key"] = {"outbox": queue, "celery": key}
    ours, theirs = _fields(built), _fields(sent)
    for field in sorted((ours.keys() | theirs.keys()) - _IGNORED):
        a, b = ours.get(field, "<missing>"), theirs.get(field, "<missing>")
        if not _same(field, a, b):
            found[field] = {"outbox": a, "celery": b}
    return found


def _same(field: str, a: Any, b: Any) -> bool:
    if field in _UNIQUE:
        return isinstance(a, str) and isinstance(b, str) and bool(a) and bool(b)
    if field in _INSTANTS:
        return a == b or _within(_instant(a), _instant(b), CLOCK_SLACK_S)
    if field == "properties.expiration":  # milliseconds from now, as a string
        return _within(_number(a), _number(b), CLOCK_SLACK_S * 1000)
    return bool(a == b)


def _within(a: float | None, b: float | None, slack: float) -> bool:
    return a is not None and b is not None and abs(a - b) <= slack


def _instant(value: Any) -> float | None:
    try:
        return datetime.fromisoformat(value).timestamp()
    except (TypeError, ValueError):
        return None


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _fields(raw: str | bytes) -> dict[str, Any]:
    """A serialized message as {dotted field: value}, its body decoded when it is
    base64-encoded JSON (a body in another form compares as sent)."""
    message = json.loads(raw)
    if (
        message.get("properties", {}).get("body_encoding") == "base64"
        and message.get("content-type") == "application/json"
    ):
        # Left encoded when it is not: it then differs from a decodable one.
        with suppress(binascii.Error, ValueError, TypeError):
            message["body"] = json.loads(base64.b64decode(message["body"], validate=True))
    return dict(_flatten("", message))


def _flatten(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _flatten(f"{prefix}.{key}" if prefix else str(key), item)
    else:
        yield prefix, value


class _Recorder:
    """A redis-py client stand-in: records each command, sends nothing, and answers
    the way the calls kombu makes while publishing expect (pipelines chain)."""

    connection = None  # kombu's channel close disconnects `client.connection`

    def __init__(self, calls: list[tuple[str, tuple[Any, ...]]], pipeline: bool = False):
        self.calls = calls
        self._pipeline = pipeline

    def __getattr__(self, name: str) -> Any:
        def command(*args: Any, **_: Any) -> Any:
            self.calls.append((name, args))
            if name == "pipeline":
                return _Recorder(self.calls, pipeline=True)
            if name == "execute":
                return []
            return self if self._pipeline else True

        return command

    def __enter__(self) -> _Recorder:
        return self

    def __exit__(self, *_: object) -> None:
        return None


def _probe_transport(base: type[Any]) -> type[Any]:
    """`base` (the app's Redis transport) with a channel whose client is a `_Recorder`."""
    if not issubclass(base, kombu_redis.Transport):
        raise TypeError(f"not a Redis transport: {base.__module__}.{base.__qualname__}")

    def create_client(self: Any, asynchronous: bool = False) -> _Recorder:
        recorder: _Recorder | None = self.__dict__.get("_recorder")
        if recorder is None:
            recorder = self.__dict__["_recorder"] = _Recorder([])
        return recorder

    @contextmanager
    def conn_or_acquire(self: Any, client: Any = None) -> Iterator[Any]:
        yield client or create_client(self)

    channel = type(
        "ProbeChannel",
        (base.Channel,),
        {"_create_client": create_client, "conn_or_acquire": conn_or_acquire},
    )
    return type("ProbeTransport", (base,), {"Channel": channel})
