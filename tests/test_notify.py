"""Webhook notifications, delivered to a tiny loopback HTTP server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from engine import notify
from engine.embedded import free_port
from engine.logging import register_secrets
from engine.settings import Settings


class Hook:
    """A loopback webhook: answers with the queued statuses (then 200), records bodies."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.statuses: list[int] = []
        self.delay_s = 0.0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(hook.delay_s)
                status = hook.statuses.pop(0) if hook.statuses else 200
                if status == 200:
                    hook.received.append(json.loads(body))
                    hook.headers.append(dict(self.headers))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.received) >= count:
                return True
            time.sleep(0.01)
        return False


@pytest.fixture
def hook() -> Iterator[Hook]:
    """A webhook receiver on a free loopback port."""
    h = Hook()
    yield h
    h.server.shutdown()
    h.server.server_close()


@pytest.fixture
def webhook(hook: Hook, monkeypatch: pytest.MonkeyPatch) -> Hook:
    """WEBHOOK_URL pointed at the loopback receiver."""
    monkeypatch.setattr(notify, "get_settings", lambda: Settings(webhook_url=hook.url))
    return hook


def test_notify_posts_the_event_as_json(webhook: Hook) -> None:
    # When a bot error is notified
    queued = notify.notify(notify.BOT_ERROR, bot="alpha", generation=3, error="boom")
    # Then it is queued and arrives as JSON with the event, its fields, time and host
    assert queued
    assert webhook.wait(1)
    event = webhook.received[0]
    assert {k: event[k] for k in ("event", "bot", "generation", "error")} == {
        "event": "bot.error",
        "bot": "alpha",
        "generation": 3,
        "error": "boom",
    }
    assert event["time"].endswith("+00:00")
    assert event["host"]
    assert webhook.headers[0]["X-Botengine-Event"] == "bot.error"
    assert webhook.headers[0]["Content-Type"] == "application/json"


def test_notify_never_blocks_the_caller(webhook: Hook) -> None:
    # Given a webhook that takes 300 ms to answer
    webhook.delay_s = 0.3
    # When three events are notified
    started = time.monotonic()
    for i in range(3):
        notify.notify(notify.ORDER_FILLED, bot="beta", client_order_id=f"be-beta-1-{i}-0")
    elapsed = time.monotonic() - started
    # Then the caller was not held up, and every event arrives, in order
    assert elapsed < 0.2
    assert webhook.wait(3, timeout=10)
    assert [e["client_order_id"] for e in webhook.received] == [
        "be-beta-1-0-0",
        "be-beta-1-1-0",
        "be-beta-1-2-0",
    ]


def test_without_a_webhook_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given no WEBHOOK_URL
    monkeypatch.setattr(notify, "get_settings", lambda: Settings(webhook_url=None))
    # Then notify does nothing and says so
    assert notify.notify(notify.BOT_STOPPED, bot="x") is False


def test_temporary_failures_are_retried_with_backoff(hook: Hook) -> None:
    # Given a webhook that fails twice with 503 and 429, then accepts
    hook.statuses = [503, 429]
    sleeps: list[float] = []
    notifier = notify.Notifier(hook.url, attempts=5, backoff_initial_s=0.5, sleep=sleeps.append)
    # When an event is delivered
    ok = notifier.deliver({"event": "exchange.banned", "exchange": "binance"})
    # Then it arrives once, after two waits that grow
    assert ok
    assert [e["event"] for e in hook.received] == ["exchange.banned"]
    assert len(sleeps) == 2
    assert 0.5 <= sleeps[0] < sleeps[1] + 0.5  # exponential (with jitter)


def test_refusals_are_not_retried_and_dead_hooks_give_up(hook: Hook) -> None:
    # Given a webhook that answers 400, and a URL nobody listens on
    hook.statuses = [400]
    sleeps: list[float] = []
    refused = notify.Notifier(hook.url, sleep=sleeps.append)
    dead = notify.Notifier(f"http://127.0.0.1:{free_port()}/", attempts=3, sleep=sleeps.append)
    # When each delivers an event
    # Then the refusal is dropped at once, and the dead hook is tried `attempts` times
    assert refused.deliver({"event": "bot.stopped"}) is False
    assert sleeps == []
    assert dead.deliver({"event": "bot.stopped"}) is False
    assert len(sleeps) == 2
    assert (refused.failed, dead.failed) == (1, 1)


def test_a_full_queue_drops_new_events_instead_of_blocking(hook: Hook) -> None:
    # Given a notifier with room for one event and a webhook stuck on the first
    hook.delay_s = 1.0
    notifier = notify.Notifier(hook.url, max_queue=1)
    # When four events are submitted at once
    results = [notifier.submit({"event": "order.filled", "n": i}) for i in range(4)]
    # Then the first is in flight, the second waits, the rest are dropped; flush drains
    assert results[0]
    assert results.count(False) >= 2
    assert notifier.flush(10)
    assert len(hook.received) == results.count(True)


def test_secrets_in_fields_are_redacted() -> None:
    # Given a registered secret and a URL with a password in an error text
    register_secrets(["s3cr3t-api-key-value"])
    payload = notify.event_payload(
        notify.BOT_ERROR,
        {
            "error": "auth failed for s3cr3t-api-key-value via redis://:hunter22@host:6379/0",
            "api_key": "abc123456",
        },
    )
    # Then neither reaches the webhook
    text = json.dumps(payload)
    assert "s3cr3t-api-key-value" not in text
    assert "hunter22" not in text
    assert payload["api_key"] == "***"
