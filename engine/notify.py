"""Notifications: bot errors, stops, exits, protections, fills, bans, fleet events.

`notify(event, **fields)` never blocks its caller (a tick, a lifecycle command): for
each channel that wants the event (a webhook, each Telegram chat, a mailbox; see
engine/channels.py and engine/routing.py) it puts the event on that channel's bounded
in-process queue and returns. One daemon thread per channel and process delivers it,
retrying network errors, timeouts, 429 (after the wait the channel asks for) and 5xx
with exponential backoff and jitter (tenacity); refusals (other 4xx, a bad SMTP login)
are logged and dropped. Without a configured channel it does nothing.

Why threads and not a Celery task: the events most worth sending (exchange ban, bot
error) are the ones raised while something is broken, the broker included, and a
notification must not depend on the machinery it reports on. The price: events still
queued when a process is SIGKILLed are lost. A process that exits normally (the CLI
after `stop-bot`) waits up to `FLUSH_AT_EXIT_S` for its queues to drain. When a queue
is full (its channel is down for long) new events for it are dropped and logged.
"""

from __future__ import annotations

import atexit
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from engine import channels, routing
from engine.channels import Channel, WebhookChannel, post_json
from engine.errors import DeliveryError, DeliveryRejectedError
from engine.events import (
    BOT_ERROR,
    BOT_EVENTS,
    BOT_PAUSED,
    BOT_STOPPED,
    DB_OUTAGE,
    EVENTS,
    EXCHANGE_BANNED,
    EXIT,
    FLEET_PAUSED,
    FLEET_RECOVERED,
    FLEET_STALLED,
    ORDER_FILLED,
)
from engine.logging import get_logger, redactor
from engine.settings import get_settings

log = get_logger("engine.notify")

__all__ = [
    "BOT_ERROR",
    "BOT_PAUSED",
    "BOT_STOPPED",
    "DB_OUTAGE",
    "EVENTS",
    "EXCHANGE_BANNED",
    "EXIT",
    "FLEET_PAUSED",
    "FLEET_RECOVERED",
    "FLEET_STALLED",
    "ORDER_FILLED",
    "DeliveryError",
    "DeliveryRejectedError",
    "Notifier",
    "flush",
    "notify",
    "post_json",
]
FLUSH_AT_EXIT_S = 5.0
RETRY_AFTER_MAX_S = 120.0
"""The longest wait a channel's retry_after is honoured with (Telegram's flood control
asks for seconds to minutes); beyond it the attempt is made anyway."""
Gate = Callable[[], bool]
"""Asked by the delivery thread, just before sending: whether to send after all."""


class Notifier:
    """A bounded queue and one delivery thread for one channel (a string is a webhook URL)."""

    def __init__(
        self,
        channel: Channel | str,
        *,
        max_queue: int = 1000,
        attempts: int = 5,
        timeout_s: float = 10.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.channel: Channel = WebhookChannel(channel) if isinstance(channel, str) else channel
        self.attempts = attempts
        self.timeout_s = timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.sleep = sleep
        self.queue: queue.Queue[tuple[dict[str, Any], Gate | None]] = queue.Queue(max_queue)
        self.delivered = 0
        self.failed = 0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # Exponential from backoff_initial_s, plus jitter so many processes spread out.
        self._backoff = wait_exponential(
            multiplier=backoff_initial_s, max=backoff_max_s
        ) + wait_random(0, backoff_initial_s)

    def submit(self, payload: dict[str, Any], gate: Gate | None = None) -> bool:
        """Queue one event for delivery; False (and a log line) when the queue is full.

        `gate`, when given, is asked by the delivery thread right before sending: the
        place for a check the caller must not wait for (a bot's stored routing).
        """
        self._ensure_thread()
        try:
            self.queue.put_nowait((payload, gate))
        except queue.Full:
            log.warning(
                "notify.dropped",
                notify_event=payload.get("event"),
                channel=self.channel.kind,
                reason="queue full",
            )
            return False
        return True

    def deliver(self, payload: dict[str, Any]) -> bool:
        """Send one event, retrying temporary failures; True when the channel took it."""
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=self._wait,
            retry=retry_if_exception_type(DeliveryError),
            sleep=self.sleep,
            reraise=True,
        )
        try:
            retrying(self.channel.send, payload, self.timeout_s)
        except (DeliveryError, DeliveryRejectedError) as exc:
            self.failed += 1
            log.warning(
                "notify.failed",
                notify_event=payload.get("event"),
                channel=self.channel.kind,
                error=str(exc),
            )
            return False
        self.delivered += 1
        return True

    def _wait(self, state: RetryCallState) -> float:
        """The backoff, or longer when the channel asked for it (Telegram's retry_after)."""
        wait = float(self._backoff(state))
        failure = state.outcome.exception() if state.outcome is not None else None
        asked = failure.retry_after if isinstance(failure, DeliveryError) else None
        return max(wait, min(asked, RETRY_AFTER_MAX_S)) if asked else wait

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued event was handled (delivered or given up on)."""
        deadline = time.monotonic() + timeout_s
        with self.queue.all_tasks_done:
            while self.queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.queue.all_tasks_done.wait(left)
        return True

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            name = f"botengine-notify-{self.channel.kind}"
            self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            payload, gate = self.queue.get()
            try:
                if gate is None or gate():
                    self.deliver(payload)
            except Exception:  # the delivery thread must outlive any bug
                log.exception("notify.crashed", notify_event=payload.get("event"))
            finally:
                self.queue.task_done()


_notifiers: dict[str, Notifier] = {}
_notifiers_pid: int | None = None
_notifiers_lock = threading.Lock()


def notifier_for(channel: Channel | str) -> Notifier:
    """This process's notifier for `channel` (a string: a webhook URL); a fresh one after
    fork, since threads do not survive it."""
    global _notifiers_pid
    key = f"webhook:{channel}" if isinstance(channel, str) else channel.key
    with _notifiers_lock:
        if _notifiers_pid != os.getpid():
            _notifiers.clear()
            _notifiers_pid = os.getpid()
        if key not in _notifiers:
            _notifiers[key] = notifier = Notifier(channel)
            atexit.register(notifier.flush, FLUSH_AT_EXIT_S)
        return _notifiers[key]


def flush(timeout_s: float = FLUSH_AT_EXIT_S) -> bool:
    """Wait until every notifier of this process has handled its queue."""
    deadline = time.monotonic() + timeout_s
    with _notifiers_lock:
        notifiers = list(_notifiers.values())
    return all(n.flush(max(0.0, deadline - time.monotonic())) for n in notifiers)


def event_payload(event: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of one event: name, UTC time, host, the fields; secrets redacted."""
    payload: dict[str, Any] = {
        "event": event,
        "time": datetime.now(UTC).isoformat(),
        "host": socket.gethostname(),
        **fields,
    }
    return dict(redactor(None, "", payload))


def notify(event: str, *, routes: routing.BotRoutes | None = None, **fields: Any) -> bool:
    """Send `event` (see EVENTS) with `fields` to every channel that wants it, without
    waiting.

    A bot event (`bot=` among the fields) follows the bot's `notify:` routing: `routes`
    when the caller has it, else the one this process remembers for the bot, else each
    channel's delivery thread looks it up (engine/routing.py). Returns True when queued
    for at least one channel, False when none wants it or every queue is full. Never
    raises: a notification must not break the tick or command that sends it.
    """
    try:
        settings = get_settings()
        targets = channels.configured(settings)
        if not targets:
            return False
        bot = fields.get("bot") if event in BOT_EVENTS else None
        if bot is not None and routes is None:
            routes = routing.known(str(bot))
        payload: dict[str, Any] | None = None
        queued = False
        for target in targets:
            gate: Gate | None = None
            if bot is not None and routes is None:
                gate = partial(_stored_route_wants, target, event, str(bot), settings.database_url)
            elif not routing.wants(target.channel.kind, event, routes, target.events):
                continue
            payload = payload or event_payload(event, fields)
            queued = notifier_for(target.channel).submit(payload, gate) or queued
        return queued
    except Exception:  # see docstring
        log.exception("notify.error", notify_event=event)
        return False


def _stored_route_wants(target: channels.Target, event: str, bot: str, database_url: str) -> bool:
    routes = routing.lookup(bot, database_url)
    return routing.wants(target.channel.kind, event, routes, target.events)
