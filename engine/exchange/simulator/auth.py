"""Binance request signing, checked exactly as the exchange does it.

``signature`` is the hex HMAC-SHA256, keyed by the API secret, of *totalParams*: the
query string concatenated with the request body, both as sent (still url-encoded),
with the ``signature`` parameter itself left out.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qsl

from . import errors
from .config import wall_clock

MAX_RECV_WINDOW_MS = 60_000
DEFAULT_RECV_WINDOW_MS = 5_000


def split_signature(encoded: str) -> tuple[str, str | None]:
    """``a=1&b=2&signature=ff`` -> (``a=1&b=2``, ``ff``); the payload keeps its order."""
    if "signature=" not in encoded:
        return encoded, None
    kept: list[str] = []
    signature: str | None = None
    for part in encoded.split("&"):
        if part.startswith("signature="):
            signature = part[len("signature=") :]
        else:
            kept.append(part)
    return "&".join(kept), signature


def sign(secret: str, payload: str) -> str:
    """The signature a client sends for ``payload`` (used by tests and tools)."""
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def verify(secret: str, query: str, body: str, check_timestamp: bool) -> dict[str, str]:
    """Check signature and timestamp of a signed request; return its parameters.

    Raises the Binance error a real server would: ``-1102`` for a missing
    signature or timestamp, ``-1022`` for a wrong signature, ``-1021`` for a stale
    or future timestamp.
    """
    query_payload, query_sig = split_signature(query)
    body_payload, body_sig = split_signature(body)
    signature = query_sig or body_sig
    if not signature:
        raise errors.missing_param("signature")
    expected = sign(secret, query_payload + body_payload)
    if not hmac.compare_digest(expected, signature.lower()):
        raise errors.bad_signature()
    params = dict(parse_qsl(query_payload, keep_blank_values=True))
    if body_payload:
        params.update(parse_qsl(body_payload, keep_blank_values=True))
    if check_timestamp:
        _check_timestamp(params)
    return params


def _check_timestamp(params: dict[str, str]) -> None:
    try:
        timestamp = int(params["timestamp"])
    except (KeyError, ValueError):
        raise errors.missing_param("timestamp") from None
    try:
        recv_window = int(params.get("recvWindow") or DEFAULT_RECV_WINDOW_MS)
    except ValueError:
        raise errors.bad_param("recvWindow") from None
    if recv_window > MAX_RECV_WINDOW_MS:
        raise errors.ApiError(400, -1131, "recvWindow must be less than 60000")
    # the client signs with its real clock, so compare with ours, not the market clock
    now = wall_clock()
    if timestamp > now + 1000:
        raise errors.ahead_of_server()
    if now - timestamp > recv_window:
        raise errors.outside_recv_window()
