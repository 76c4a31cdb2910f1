"""A loopback stand-in for the Telegram Bot API: getMe, getUpdates (long poll), sendMessage.

It keeps every update it was given and answers `getUpdates` with those at or after the
offset asked for, like Telegram, but never forgets one on its own: so a poller that
handled an update twice would show it here. Every call is recorded.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BOT_USERNAME = "fleet_bot"


class FakeBotApi:
    """The Bot API of one bot token, on 127.0.0.1 at `url`."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.updates: list[dict[str, Any]] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.sent: list[dict[str, Any]] = []
        # Queued answers (status, body) per method, used before the normal one.
        self.failures: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        self.changed = threading.Condition()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                params = json.loads(body or b"{}")
                prefix, _, method = self.path.lstrip("/").partition("/")
                if prefix != f"bot{fake.token}":
                    self._answer(
                        401, {"ok": False, "error_code": 401, "description": "Unauthorized"}
                    )
                    return
                with fake.changed:
                    fake.calls.append((method, params))
                    queued = fake.failures.get(method)
                    failure = queued.pop(0) if queued else None
                if failure is not None:
                    self._answer(*failure)
                    return
                if method == "getMe":
                    result: Any = {"id": 1, "is_bot": True, "username": BOT_USERNAME}
                elif method == "getUpdates":
                    result = fake._updates(params)
                elif method == "sendMessage":
                    with fake.changed:
                        fake.sent.append(params)
                        fake.changed.notify_all()
                    result = {"message_id": len(fake.sent), "chat": {"id": params["chat_id"]}}
                else:
                    self._answer(404, {"ok": False, "error_code": 404, "description": "Not Found"})
                    return
                self._answer(200, {"ok": True, "result": result})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        deadline = time.monotonic() + float(params.get("timeout") or 0)
        with self.changed:
            while True:
                found = [u for u in self.updates if u["update_id"] >= offset]
                left = deadline - time.monotonic()
                if found or left <= 0:
                    return found
                self.changed.wait(left)

    def push(self, text: str, chat_id: int, user: str = "alice", age_s: float = 0.0) -> int:
        """A user in chat `chat_id` sent `text` `age_s` ago; returns its update id."""
        with self.changed:
            update_id = 1000 + len(self.updates)
            self.updates.append(
                {
                    "update_id": update_id,
                    "message": {
                        "message_id": update_id,
                        "date": int(time.time() - age_s),
                        "chat": {"id": chat_id, "type": "private"},
                        "from": {"id": 7, "is_bot": False, "username": user},
                        "text": text,
                    },
                }
            )
            self.changed.notify_all()
        return update_id

    def fail(self, method: str, status: int, retry_after: int | None = None) -> None:
        """Answer the next `method` call with `status` (Telegram's error body)."""
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": f"HTTP {status}"}
        if retry_after is not None:
            body["parameters"] = {"retry_after": retry_after}
        self.failures.setdefault(method, []).append((status, body))

    def wait_sent(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until at least `count` messages were sent."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.sent) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
        return True

    def texts(self, chat_id: str | None = None) -> list[str]:
        """The texts sent (to one chat)."""
        return [
            str(m["text"]) for m in self.sent if chat_id is None or str(m["chat_id"]) == chat_id
        ]

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def fake_bot_api(token: str) -> Iterator[FakeBotApi]:
    """A running fake Bot API for `token`."""
    fake = FakeBotApi(token)
    try:
        yield fake
    finally:
        fake.close()
