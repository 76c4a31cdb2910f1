"""The paper fill model: how a simulated order fills, what it costs and who can pay for it.

Pure functions shared by the live paper broker, the backtest's candle exchange and the
simulator's replay, so paper trading and backtests agree to the cent:

- a market order fills at once at the best ask (buy) or best bid (sell), moved against
  the taker by `slippage` (a fraction of the price). Its price is the next one after the
  decision: the live market's, or in a backtest the next candle's open;
- a limit order marketable when placed fills at once at its own price; otherwise it
  rests, and fills at its own price when a *closed* candle's range crosses it. Each
  candle is walked open → high → low → close, or open → low → high → close when it
  closes below its open (`path`), and resting orders fill in the order that walk reaches
  their prices (`crossings`). Filling at the limit price is conservative: a gap through
  it would have given a better one;
- the fee is `fee_rate` of the quote notional, charged in quote currency on both sides
  (one rate for maker and taker);
- an order the free balance cannot pay is rejected, like ccxt's `InsufficientFunds`.
  A resting order reserves what it may cost (`reservation`) until it fills or is
  cancelled.

Balance changes: a buy takes `quote_cost + fee` quote and gives `amount` base; a sell
takes `amount` base and gives `quote_cost - fee` quote.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from itertools import pairwise
from typing import TypeVar

from engine.domain import Candle, OrderIntent, Side, Ticker

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FillModel:
    """Fee and slippage of simulated fills, as fractions (0.001 = 0.1 %)."""

    fee_rate: float = 0.001
    slippage: float = 0.0005

    def __post_init__(self) -> None:
        for name in ("fee_rate", "slippage"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}")


@dataclass(frozen=True, slots=True)
class Fill:
    """One simulated execution; `quote_cost` is the notional `amount * price`."""

    side: Side
    amount: float
    price: float
    fee: float
    fee_currency: str
    quote_cost: float

    @property
    def quote_delta(self) -> float:
        """Change of the quote balance this fill causes (negative for a buy)."""
        if self.side is Side.BUY:
            return -(self.quote_cost + self.fee)
        return self.quote_cost - self.fee

    @property
    def base_delta(self) -> float:
        """Change of the base balance this fill causes (negative for a sell)."""
        return self.amount if self.side is Side.BUY else -self.amount


def resolve_amount(intent: OrderIntent, price: float) -> float:
    """The intent's base amount, converting a `quote_amount` at `price`."""
    if intent.amount is not None:
        return intent.amount
    assert intent.quote_amount is not None  # OrderIntent guarantees exactly one size
    return intent.quote_amount / price


def market_price(side: Side, ticker: Ticker, model: FillModel) -> float:
    """The price a market order gets: the far side of the book, plus slippage."""
    if side is Side.BUY:
        return ticker.ask * (1 + model.slippage)
    return ticker.bid * (1 - model.slippage)


def fill_at(side: Side, amount: float, price: float, model: FillModel, *, quote: str) -> Fill:
    """Fill `amount` at `price`: a limit order's own price, or a `market_price`."""
    return _fill(side, amount, price, amount * price, model, quote)


def crossed_by_ticker(side: Side, price: float, ticker: Ticker) -> bool:
    """Whether a limit order at `price` is crossed by the current best bid/ask."""
    return ticker.ask <= price if side is Side.BUY else ticker.bid >= price


def path(candle: Candle) -> tuple[float, float, float, float]:
    """The prices a candle went through, in the order assumed: open, high, low, close;
    or open, low, high, close when it closed below its open."""
    if candle.close < candle.open:
        return candle.open, candle.low, candle.high, candle.close
    return candle.open, candle.high, candle.low, candle.close


def reached_at(side: Side, price: float, candle: Candle) -> float | None:
    """Where along the candle's path (0 = open, 3 = close, fractions between) a limit
    order at `price` is first crossed; None when the candle does not cross it."""
    points = path(candle)
    if (candle.low > price) if side is Side.BUY else (candle.high < price):
        return None
    for k, (a, b) in enumerate(pairwise(points)):
        if side is Side.BUY:
            if a <= price:
                return float(k)
            if b <= price:
                return k + (a - price) / (a - b)
        else:
            if a >= price:
                return float(k)
            if b >= price:
                return k + (price - a) / (b - a)
    return 3.0


def crossings(
    orders: Sequence[T], candle: Candle, side_price: Callable[[T], tuple[Side, float]]
) -> list[tuple[float, T]]:
    """The resting `orders` a closed candle fills, in the order its path reaches them,
    each with where (`reached_at`: 0 at the open to 3 at the close); ties keep the
    given order (placement order, in every caller)."""
    hits = []
    for n, order in enumerate(orders):
        side, price = side_price(order)
        at = reached_at(side, price, candle)
        if at is not None:
            hits.append((at, n, order))
    hits.sort(key=lambda hit: (hit[0], hit[1]))
    return [(at, order) for at, _, order in hits]


def reservation(
    side: Side, amount: float, price: float, model: FillModel, *, base: str, quote: str
) -> tuple[str, float]:
    """What a resting limit order holds until it fills or is cancelled: a buy its cost
    plus fee in quote, a sell its amount in base."""
    if side is Side.BUY:
        return quote, -fill_at(side, amount, price, model, quote=quote).quote_delta
    return base, amount


def can_afford(fill: Fill, balances: Mapping[str, float], *, base: str, quote: str) -> bool:
    """Whether the free `balances` pay for `fill` (a buy its cost and fee, a sell its base)."""
    if fill.side is Side.BUY:
        return -fill.quote_delta <= balances.get(quote, 0.0)
    return fill.amount <= balances.get(base, 0.0)


def apply_fill(
    balances: Mapping[str, float], fill: Fill, *, base: str, quote: str
) -> dict[str, float]:
    """New balances after `fill`; never negative when `can_afford` approved the fill."""
    out = dict(balances)
    # b - a with a <= b is never negative in IEEE arithmetic, and can_afford compared
    # the very same `quote_delta`, so an affordable fill cannot overdraw.
    out[quote] = out.get(quote, 0.0) + fill.quote_delta
    out[base] = out.get(base, 0.0) + fill.base_delta
    return out


def floor_to_step(value: float, step: float) -> float:
    """`value` rounded down to a multiple of `step` (unchanged when step is 0)."""
    if step <= 0:
        return value
    # The nudge keeps 0.3 / 0.1 = 2.9999999999999996 from flooring to 2.
    return round(math.floor(value / step + 1e-9) * step, _decimals(step))


def round_to_step(value: float, step: float) -> float:
    """`value` rounded to the nearest multiple of `step` (unchanged when step is 0)."""
    if step <= 0:
        return value
    return round(round(value / step) * step, _decimals(step))


def _fill(
    side: Side, amount: float, price: float, cost: float, model: FillModel, quote: str
) -> Fill:
    return Fill(
        side=side,
        amount=amount,
        price=price,
        fee=cost * model.fee_rate,
        fee_currency=quote,
        quote_cost=cost,
    )


@lru_cache(maxsize=256)
def _decimals(step: float) -> int:
    """Decimal places of `step`, to strip float noise like 0.30000000000000004."""
    exponent = Decimal(repr(step)).normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0
