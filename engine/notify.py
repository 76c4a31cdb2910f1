"""Webhook notifications: bot errors, bot stops, order fills, exchange bans.

`notify(event, **fields)` never blocks its caller (a tick, a lifecycle command): it puts
the event on a bounded in-process queue and returns. One daemon thread per process
POSTs each event as JSON to `WEBHOOK_URL`, retrying network errors, timeouts, 429 and
5xx with exponential backoff and jitter (tenacity); other 4xx answers are logged and
dropped. Without `WEBHOOK_URL` it does nothing.

Why a thread and not a Celery task: the events most worth sending (exchange ban, bot
error) are the ones raised while something is broken, the broker included, and a
notification must not depend on the machinery it reports on. The price: events still
queued when a process is SIGKILLed are lost. A process that exits normally (the CLI
after `stop-bot`) waits up to `FLUSH_AT_EXIT_S` for its queue to drain. When the queue
is full (the webhook is down for long) new events are dropped and logged.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from engine.logging import get_logger, redactor
from engine.settings import get_settings

log = get_logger("engine.notify")

BOT_ERROR = "bot.error"
BOT_STOPPED = "bot.stopped"
ORDER_FILLED = "order.filled"
EXCHANGE_BANNED = "exchange.banned"
FLEET_STALLED = "fleet.stalled"
FLEET_RECOVERED = "fleet.recovered"
DB_OUTAGE = "fleet.db_outage"
FLEET_PAUSED = "fleet.paused"
EXIT = "bot.exit"
BOT_PAUSED = "bot.paused"
EVENTS = (
    BOT_ERROR,
    BOT_STOPPED,
    ORDER_FILLED,
    EXCHANGE_BANNED,
    FLEET_STALLED,
    FLEET_RECOVERED,
    DB_OUTAGE,
    FLEET_PAUSED,
    EXIT,
    BOT_PAUSED,
)
FLUSH_AT_EXIT_S = 5.0
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class DeliveryError(Exception):
    """Raised when a webhook delivery failed in a way worth retrying."""


class DeliveryRejectedError(Exception):
    """Raised when the webhook refused an event (4xx); retrying would not help."""


def post_json(url: str, payload: dict[str, Any], timeout_s: float) -> int:
    """POST `payload` as JSON with the standard library; returns the HTTP status."""
    if not url.startswith(("http://", "https://")):
        raise DeliveryRejectedError(f"webhook URL must be http(s), got {url[:16]!r}...")
    body = json.dumps(payload, default=str).encode()
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "botengine-webhook/1",
            "X-Botengine-Event": str(payload.get("event", "")),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError) as exc:  # refused, DNS, timeout
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from None


class Notifier:
    """A bounded queue and one delivery thread for one webhook URL."""

    def __init__(
        self,
        url: str,
        *,
        max_queue: int = 1000,
        attempts: int = 5,
        timeout_s: float = 5.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        post: Callable[[str, dict[str, Any], float], int] = post_json,
    ) -> None:
        self.url = url
        self.attempts = attempts
        self.timeout_s = timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.sleep = sleep
        self.post = post
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=max_queue)
        self.delivered = 0
        self.failed = 0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, payload: dict[str, Any]) -> bool:
        """Queue one event for delivery; False (and a log line) when the queue is full."""
        self._ensure_thread()
        try:
            self.queue.put_nowait(payload)
        except queue.Full:
            log.warning("notify.dropped", notify_event=payload.get("event"), reason="queue full")
            return False
        return True

    def deliver(self, payload: dict[str, Any]) -> bool:
        """POST one event, retrying temporary failures; True when the webhook took it."""

        def attempt() -> None:
            status = self.post(self.url, payload, self.timeout_s)
            if status in _RETRY_STATUS:
                raise DeliveryError(f"HTTP {status}")
            if not 200 <= status < 300:
                raise DeliveryRejectedError(f"HTTP {status}")

        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            # Exponential from backoff_initial_s, plus jitter so many processes spread out.
            wait=wait_exponential(multiplier=self.backoff_initial_s, max=self.backoff_max_s)
            + wait_random(0, self.backoff_initial_s),
            retry=retry_if_exception_type(DeliveryError),
            sleep=self.sleep,
            reraise=True,
        )
        try:
            retrying(attempt)
        except (DeliveryError, DeliveryRejectedError) as exc:
            self.failed += 1
            log.warning("notify.failed", notify_event=payload.get("event"), error=str(exc))
            return False
        self.delivered += 1
        return True

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
            self._thread = threading.Thread(target=self._loop, name="botengine-notify", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            payload = self.queue.get()
            try:
                self.deliver(payload)
            except Exception:  # the delivery thread must outlive any bug
                log.exception("notify.crashed", notify_event=payload.get("event"))
            finally:
                self.queue.task_done()


_notifiers: dict[str, Notifier] = {}
_notifiers_pid: int | None = None
_notifiers_lock = threading.Lock()


def notifier_for(url: str) -> Notifier:
    """This process's notifier for `url` (a fresh one after fork: threads do not survive)."""
    global _notifiers_pid
    with _notifiers_lock:
        if _notifiers_pid != os.getpid():
            _notifiers.clear()
            _notifiers_pid = os.getpid()
        if url not in _notifiers:
            _notifiers[url] = notifier = Notifier(url)
            atexit.register(notifier.flush, FLUSH_AT_EXIT_S)
        return _notifiers[url]


def event_payload(event: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of one event: name, UTC time, host, the fields; secrets redacted."""
    payload: dict[str, Any] = {
        "event": event,
        "time": datetime.now(UTC).isoformat(),
        "host": socket.gethostname(),
        **fields,
    }
    return dict(redactor(None, "", payload))


def notify(event: str, **fields: Any) -> bool:
    """Send `event` (see EVENTS) with `fields` to WEBHOOK_URL without waiting.

    Returns True when queued, False when no webhook is configured or the queue is full.
    Never raises: a notification must not break the tick or command that sends it.
    """
    try:
        url = get_settings().webhook_url
        if not url:
            return False
        return notifier_for(url).submit(event_payload(event, fields))
    except Exception:  # see docstring
        log.exception("notify.error", notify_event=event)
        return False
