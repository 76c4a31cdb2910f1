"""The API's front door: request bodies are bounded and tokens checked before any byte of
a body is read, on every route.

A FastAPI dependency runs only once the framework has parsed the request, body included
(a pydantic body model is read whole first). An unauthenticated client could then make
the API buffer any number of large bodies (six 50 MB bodies took it from 225 MB to
1.05 GB). This ASGI middleware decides on the headers alone:

- a body needs a `Content-Length` no larger than `MAX_BODY_BYTES` (413 otherwise; 411
  for a chunked body without one), and the body is never longer than it said;
- every path but the open ones needs the bearer token (401 before the body is read).

The route dependency `require_token` still checks the token too (it documents the
scheme in OpenAPI, and guards an app mounted without this middleware).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.settings import Settings

MAX_BODY_BYTES = 256 * 1024
"""The largest body any route takes: a bot config (engine.api.configs) is the biggest."""
OPEN_PATHS = frozenset({"/healthz", "/ui", "/ui/", "/ui/app.js", "/ui/app.css"})
"""The health check, and the dashboard's static files (they hold no data; the page asks
for the token and sends it on every API call)."""


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`."""
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_ok(settings: Settings, authorization: str | None, client_host: str | None) -> bool:
    """Whether a request may pass: the bearer token matches (constant time), or no token
    is configured and the client is on loopback (`serve` refuses other binds then)."""
    token = settings.api_token
    if token is None:
        return is_loopback(client_host)
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode())


def refusal(settings: Settings) -> str:
    """Why a request without the right token is refused."""
    if settings.api_token is None:
        return "API_TOKEN is not set: only loopback clients are served"
    return "missing or wrong bearer token"


class Gate:
    """ASGI middleware: body bounds and the token, decided on the headers."""

    def __init__(self, app: ASGIApp, settings: Callable[[], Settings]) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 411/413/401 at once, or pass the request on with a bounded body."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        length = headers.get("content-length")
        if length is None and "chunked" in headers.get("transfer-encoding", "").lower():
            await _answer(send, 411, "length_required", "send the body with a Content-Length")
            return
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            await _answer(
                send, 413, "payload_too_large", f"a request body is at most {MAX_BODY_BYTES} B"
            )
            return
        client = scope.get("client")
        settings = self.settings()
        if scope["path"] not in OPEN_PATHS and not token_ok(
            settings, headers.get("authorization"), client[0] if client else None
        ):
            extra = [(b"www-authenticate", b"Bearer")]
            await _answer(send, 401, "unauthorized", refusal(settings), extra)
            return
        await self.app(scope, _bounded(receive, int(length or 0)), send)


def _bounded(receive: Receive, limit: int) -> Receive:
    """A receive that ends the body after `limit` bytes, whatever the client sends."""
    seen = 0

    async def bounded() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            body = message.get("body", b"")
            if seen + len(body) > limit:
                body = body[: max(0, limit - seen)]
                message = {"type": "http.request", "body": body, "more_body": False}
            seen += len(body)
        return message

    return bounded


async def _answer(
    send: Send,
    status: int,
    code: str,
    message: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps({"error": {"code": code, "message": message, "fields": []}}).encode()
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        # The unread body makes the connection unusable for another request.
        (b"connection", b"close"),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
