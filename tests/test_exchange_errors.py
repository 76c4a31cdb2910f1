"""The one mapping of ccxt exceptions to engine errors, by what the caller must do."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import ccxt
import pytest

from engine.errors import (
    ExchangeBannedError,
    ExchangeError,
    OperationalError,
    OrderRejectedError,
    OrderUnknownError,
    RateLimitedError,
    TemporaryError,
)
from engine.exchange.errors import DEFAULT_BAN_S, map_ccxt_error, parse_retry_after


@pytest.mark.parametrize(
    "exc",
    [
        ccxt.NetworkError,
        ccxt.RequestTimeout,
        ccxt.ExchangeNotAvailable,
        ccxt.OnMaintenance,
        ccxt.DDoSProtection,
        ccxt.InvalidNonce,
        ccxt.BadResponse,
    ],
)
def test_transient_failures_are_temporary(exc: type[Exception]) -> None:
    # Given a transport-level ccxt failure on a read
    # When it is mapped
    mapped = map_ccxt_error(exc("boom"))
    # Then the caller retries later
    assert type(mapped) is TemporaryError


@pytest.mark.parametrize("exc", [ccxt.RequestTimeout, ccxt.NetworkError, ccxt.ExchangeNotAvailable])
def test_transient_failure_on_create_leaves_the_order_unknown(exc: type[Exception]) -> None:
    # Given a lost answer while creating an order
    mapped = map_ccxt_error(exc("lost"), creating=True)
    # Then the order's fate is unknown (resolved by client id, never resent)
    assert isinstance(mapped, OrderUnknownError)


def test_429_is_rate_limited_with_retry_after() -> None:
    # Given binance's DDoSProtection raised for an HTTP 429 with Retry-After: 7
    exc = ccxt.DDoSProtection("binance 429 Too Many Requests")
    # When mapped with the response's status and headers
    mapped = map_ccxt_error(exc, status=429, headers={"Retry-After": "7"})
    # Then it is a RateLimitedError carrying the wait
    assert isinstance(mapped, RateLimitedError)
    assert mapped.retry_after == 7.0


def test_rate_limit_exceeded_without_header() -> None:
    # Given ccxt's RateLimitExceeded and no Retry-After header
    mapped = map_ccxt_error(ccxt.RateLimitExceeded("slow down"))
    # Then it is rate limited with no known wait
    assert isinstance(mapped, RateLimitedError)
    assert mapped.retry_after is None


def test_418_is_a_ban_with_retry_after() -> None:
    # Given an HTTP 418 (IP ban) answer
    mapped = map_ccxt_error(
        ccxt.DDoSProtection("binance 418"), status=418, headers={"retry-after": "120"}
    )
    # Then every bot must pause for Retry-After
    assert isinstance(mapped, ExchangeBannedError)
    assert mapped.retry_after == 120.0


def test_418_without_header_uses_default_ban() -> None:
    mapped = map_ccxt_error(ccxt.DDoSProtection("418"), status=418)
    assert isinstance(mapped, ExchangeBannedError)
    assert mapped.retry_after == DEFAULT_BAN_S


@pytest.mark.parametrize(
    "exc",
    [
        ccxt.InvalidOrder,
        ccxt.InsufficientFunds,
        ccxt.BadSymbol,
        ccxt.OrderNotFound,
        ccxt.DuplicateOrderId,
        ccxt.OrderImmediatelyFillable,
        ccxt.MarketClosed,
    ],
)
def test_refused_orders_are_rejected(exc: type[Exception]) -> None:
    # Given the exchange refused one order
    mapped = map_ccxt_error(exc("no"), creating=True)
    # Then it is recorded and the bot goes on
    assert isinstance(mapped, OrderRejectedError)


@pytest.mark.parametrize(
    "exc",
    [
        ccxt.AuthenticationError,
        ccxt.PermissionDenied,
        ccxt.AccountSuspended,
        ccxt.AccountNotEnabled,
        ccxt.NotSupported,
    ],
)
def test_account_problems_are_operational(exc: type[Exception]) -> None:
    # Given the account cannot trade at all
    mapped = map_ccxt_error(exc("bad key"))
    # Then the bot must stop in error (and nothing retries it)
    assert isinstance(mapped, OperationalError)


def test_other_exchange_errors() -> None:
    # Given an unclassified exchange answer
    plain = ccxt.ExchangeError("weird")
    # Then on create the order was refused, on a read the call fails without retry
    assert isinstance(map_ccxt_error(plain, creating=True), OrderRejectedError)
    read = map_ccxt_error(plain)
    assert type(read) is ExchangeError
    assert not isinstance(read, TemporaryError)


def test_non_ccxt_exceptions_pass_through() -> None:
    exc = ValueError("bug")
    assert map_ccxt_error(exc) is exc


def test_retry_after_as_http_date() -> None:
    # Given a Retry-After given as an HTTP date 30 s ahead
    now = datetime(2025, 1, 1, tzinfo=UTC)
    header = format_datetime(now + timedelta(seconds=30), usegmt=True)
    # Then the wait is 30 s
    assert parse_retry_after({"Retry-After": header}, now=now.timestamp()) == 30.0
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after(None) is None
