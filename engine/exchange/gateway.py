"""The one gateway protocol every exchange implementation (ccxt, paper) satisfies.

The tick and the order manager speak only this protocol, so live trading, paper trading
and tests differ in the object passed in, never in the code path.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from engine.domain import Candle, MarketRules, OrderType, Side, Ticker


class OrderStatus(StrEnum):
    """Lifecycle of an order as recorded in the database."""

    PENDING_SUBMIT = "pending_submit"  # written, not yet sent
    UNKNOWN = "unknown"  # sent, answer lost: resolve by client order id, never resend
    OPEN = "open"
    CLOSED = "closed"  # fully filled
    CANCELED = "canceled"
    REJECTED = "rejected"
    EXPIRED = "expired"

    @property
    def is_final(self) -> bool:
        """True when the order can no longer change on the exchange."""
        return self in {
            OrderStatus.CLOSED,
            OrderStatus.CANCELED,
            OrderStatus.REJECTED,
            OrderStatus.EXPIRED,
        }


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """A fully specified order, ready to send (amount in base units, already rounded)."""

    symbol: str
    side: Side
    type: OrderType
    amount: float
    client_order_id: str
    price: float | None = None
    stop_price: float | None = None  # a stop-limit: rests untriggered until the price reaches it


@dataclass(frozen=True, slots=True)
class OrderReport:
    """What the exchange says about one order."""

    client_order_id: str
    exchange_order_id: str | None
    symbol: str
    side: Side
    type: OrderType
    status: OrderStatus
    amount: float
    filled: float = 0.0
    price: float | None = None
    average: float | None = None
    fee: float = 0.0
    fee_currency: str | None = None
    timestamp: int | None = None


@runtime_checkable
class Gateway(Protocol):
    """Market data, balances and orders on one exchange account."""

    exchange_id: str
    stop_orders: bool
    """Whether `create_order` places stop-limit orders (`stop_price`) that rest on the
    exchange: where ccxt says the exchange takes them, never on paper or in a backtest."""

    def market_rules(self, symbol: str) -> MarketRules:
        """Precision and minimums of `symbol` (markets are loaded once per process)."""
        ...

    def fetch_ticker(self, symbol: str) -> Ticker:
        """Best bid/ask and last price."""
        ...

    def fetch_ohlcv(self, symbol: str, timeframe: str, limit: int) -> list[Candle]:
        """The `limit` most recent candles, oldest first."""
        ...

    def fetch_balances(self) -> dict[str, float]:
        """Free balance per currency."""
        ...

    def create_order(self, request: OrderRequest) -> OrderReport:
        """Send one order. Never retried blindly: a timeout raises OrderUnknownError."""
        ...

    def fetch_order(self, symbol: str, client_order_id: str) -> OrderReport | None:
        """Look an order up by client order id; None when the exchange never saw it."""
        ...

    def cancel_order(self, symbol: str, client_order_id: str) -> OrderReport:
        """Cancel a resting order by client order id."""
        ...

    def fetch_open_orders(self, symbol: str) -> list[OrderReport]:
        """Every resting order of this account on `symbol`."""
        ...
