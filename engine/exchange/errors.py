"""ccxt exceptions mapped once to engine errors, grouped by what the caller must do.

- retry later: network, timeout, exchange unavailable or in maintenance, DDoS
  protection (`TemporaryError`); HTTP 429 (`RateLimitedError`, honouring Retry-After);
  HTTP 418, an IP ban (`ExchangeBannedError`: every bot on the exchange pauses).
- record and go on: the exchange refused one order (`OrderRejectedError`).
- stop the bot and alert: credentials, permissions, suspended account, an exchange
  that cannot do what the bot needs (`OperationalError`).

ccxt does not keep the HTTP status of the last response, and some classes (binance)
raise the same `DDoSProtection` for 418 and 429, so the gateway records the status
and headers of each response and hands them in here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

import ccxt

from engine.errors import (
    ExchangeBannedError,
    ExchangeError,
    OperationalError,
    OrderRejectedError,
    OrderUnknownError,
    RateLimitedError,
    TemporaryError,
)

DEFAULT_BAN_S = 120.0
"""Ban length assumed when a 418 carries no Retry-After (Binance bans last 2 min to 3 days)."""

_REJECTED = (
    ccxt.InvalidOrder,  # includes OrderNotFound, DuplicateOrderId, OrderImmediatelyFillable
    ccxt.InsufficientFunds,
    ccxt.BadSymbol,
    ccxt.OperationRejected,  # MarketClosed, NoChange
)
_OPERATIONAL = (
    ccxt.AuthenticationError,  # includes PermissionDenied, AccountSuspended, AccountNotEnabled
    ccxt.NotSupported,
)
_TEMPORARY = (
    ccxt.NetworkError,  # RequestTimeout, ExchangeNotAvailable, OnMaintenance, DDoSProtection,
    ccxt.BadResponse,  # RateLimitExceeded, InvalidNonce (clock skew)
    ccxt.CancelPending,
)


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), if any."""
    if not headers:
        return None
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def map_ccxt_error(
    exc: Exception,
    *,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
    creating: bool = False,
) -> Exception:
    """The engine error to raise for `exc`, raised by a ccxt call.

    `status`/`headers` are those of the HTTP response that caused it (None when no
    response arrived). With `creating=True` a transport failure becomes
    `OrderUnknownError` (the order may or may not exist: resolve by client order id) and
    any other exchange refusal becomes `OrderRejectedError`. Exceptions that are not
    ccxt's are returned unchanged.
    """
    if not isinstance(exc, ccxt.BaseError):
        return exc
    message = f"{type(exc).__name__}: {exc}"
    if status == 418:
        retry_after = parse_retry_after(headers)
        return ExchangeBannedError(message, DEFAULT_BAN_S if retry_after is None else retry_after)
    if status == 429 or isinstance(exc, ccxt.RateLimitExceeded):
        return RateLimitedError(message, parse_retry_after(headers))
    if isinstance(exc, _OPERATIONAL):
        return OperationalError(message)
    if isinstance(exc, _REJECTED):
        return OrderRejectedError(message)
    if isinstance(exc, _TEMPORARY):
        return OrderUnknownError(message) if creating else TemporaryError(message)
    # Any other answer of the exchange (a bare ExchangeError, BadRequest, ...): on create
    # the order was refused; on a read retrying will not help, so fail the call plainly.
    return OrderRejectedError(message) if creating else ExchangeError(message)
