"""Plain value types shared by strategies, the exchange layer, the tick and the backtester.

They carry no behaviour and import nothing from the rest of the engine, so a strategy can
depend on them and stay pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Side(StrEnum):
    """Direction of an order."""

    BUY = "buy"
    SELL = "sell"


class OrderType(StrEnum):
    """How an order is priced."""

    MARKET = "market"
    LIMIT = "limit"


@dataclass(frozen=True, slots=True)
class Candle:
    """One OHLCV bar; `ts` is the bar's open time in epoch milliseconds."""

    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float


@dataclass(frozen=True, slots=True)
class Ticker:
    """Best bid/ask and last trade price of a symbol at `ts` (epoch ms)."""

    symbol: str
    bid: float
    ask: float
    last: float
    ts: int

    @property
    def mid(self) -> float:
        """Midpoint between best bid and best ask."""
        return (self.bid + self.ask) / 2


@dataclass(frozen=True, slots=True)
class MarketRules:
    """What the exchange accepts for one symbol: precision steps and minimums."""

    symbol: str
    base: str
    quote: str
    amount_step: float = 0.0
    price_step: float = 0.0
    min_amount: float = 0.0
    min_notional: float = 0.0


@dataclass(frozen=True, slots=True)
class OpenOrder:
    """An order of this bot still resting on the book; `tag` is its intent's tag and
    `placed_at` when it was written (epoch ms). `canceling`: a cancel was sent and is
    not confirmed yet (the order may still fill meanwhile)."""

    client_order_id: str
    side: Side
    type: OrderType
    amount: float
    price: float | None
    filled: float = 0.0
    tag: str = ""
    placed_at: int = 0
    canceling: bool = False
    stop_price: float | None = None


@dataclass(frozen=True, slots=True)
class OrderIntent:
    """What a strategy wants done; the engine decides whether and how it is sent.

    Exactly one of `amount` (base currency) or `quote_amount` (quote currency) is set.
    `price` is required for limit orders. `tag` lets a stateful strategy recognise
    its own orders later (e.g. a grid level). `replaces` (a tag or client order id)
    makes it a replace: the engine cancels the open orders it names first, and sends
    this one only once every one of them is confirmed cancelled (dropped if one filled
    meanwhile: the strategy decides again on the new position).
    """

    side: Side
    type: OrderType = OrderType.MARKET
    amount: float | None = None
    quote_amount: float | None = None
    price: float | None = None
    reason: str = ""
    tag: str = ""
    replaces: str = ""
    stop_price: float | None = None  # with a limit sell: a stop-limit below the market

    def __post_init__(self) -> None:
        if (self.amount is None) == (self.quote_amount is None):
            raise ValueError("exactly one of amount or quote_amount must be set")
        size = self.amount if self.amount is not None else self.quote_amount
        if size is None or size <= 0:
            raise ValueError("order size must be positive")
        if self.type is OrderType.LIMIT and (self.price is None or self.price <= 0):
            raise ValueError("a limit order needs a positive price")
        if self.stop_price is not None and (
            self.type is not OrderType.LIMIT or self.stop_price <= 0
        ):
            raise ValueError("a stop price needs a limit order and must be positive")


@dataclass(frozen=True, slots=True)
class MarketContext:
    """Read-only view of the market and the bot's holdings handed to a strategy.

    `now` is epoch milliseconds (the slot's due time in live mode, the candle time in a
    backtest), so strategies never read a clock. `position` is the bot's base-currency
    holding; `balances` maps currency to free amount.
    """

    symbol: str
    now: int
    candles: tuple[Candle, ...]
    ticker: Ticker
    position: float
    balances: dict[str, float] = field(default_factory=dict)
    open_orders: tuple[OpenOrder, ...] = ()
    rules: MarketRules | None = None
