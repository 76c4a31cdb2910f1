"""A minimal Telegram Bot API client: one `call(method, params)`, errors mapped once.

Used by the Telegram alert channel (`sendMessage`) and the command poller (`getUpdates`,
`getMe`). The standard library is enough for three JSON methods, and keeps the worker
free of another HTTP stack.

The bot token is part of every URL path (`/bot<token>/sendMessage`), so a URL must never
reach a log line or an exception message: this module builds URLs only inside `call`,
and every error text it raises has the token scrubbed out, whether or not the log
redactor knows it yet.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from engine.errors import DeliveryError, DeliveryRejectedError

_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
DEFAULT_API_URL = "https://api.telegram.org"


class BotApi:
    """One bot's endpoint of the Bot API (or a loopback stand-in for tests)."""

    def __init__(self, base_url: str, token: str) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("the Bot API URL must be http(s)")
        self.base_url = base_url.rstrip("/")
        self._token = token

    def __repr__(self) -> str:
        return f"BotApi({self.base_url!r}, token=***)"

    def call(self, method: str, params: dict[str, Any], timeout_s: float) -> Any:
        """POST `params` as JSON to `method`; returns the answer's `result`.

        Raises DeliveryError for what may pass (network, timeout, 429 with the server's
        `retry_after`, 5xx) and DeliveryRejectedError for the rest (bad token, unknown
        chat, malformed request).
        """
        request = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
            f"{self.base_url}/bot{self._token}/{method}",
            data=json.dumps(params).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "botengine-telegram/1"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
                status, body = int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            status, body = int(exc.code), exc.read()
            retry_after = exc.headers.get("Retry-After") if exc.headers else None
            self._raise(method, status, body, retry_after)
        except (urllib.error.URLError, OSError) as exc:  # refused, DNS, timeout
            raise DeliveryError(self._scrub(f"{method}: {type(exc).__name__}: {exc}")) from None
        answer = _json(body)
        if status != 200 or not isinstance(answer, dict) or answer.get("ok") is not True:
            self._raise(method, status, body, None)
        return answer.get("result")

    def _raise(self, method: str, status: int, body: bytes, retry_after: str | None) -> None:
        answer = _json(body)
        answer = answer if isinstance(answer, dict) else {}
        description = str(answer.get("description") or f"HTTP {status}")[:300]
        message = self._scrub(f"{method}: HTTP {status}: {description}")
        if status in _RETRY_STATUS:
            # Telegram says how long to wait in the body; a proxy may say it in the header.
            hint = (answer.get("parameters") or {}).get("retry_after", retry_after)
            raise DeliveryError(message, retry_after=_seconds(hint))
        raise DeliveryRejectedError(message, status=status)

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _seconds(value: object) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
