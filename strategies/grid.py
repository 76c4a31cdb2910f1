"""Grid trading: resting limit buys below the price and limit sells above, re-armed on fills."""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from engine.domain import Candle, MarketContext, OpenOrder, OrderIntent, OrderType, Side
from strategies.base import MAX_AMOUNT, Decision, Strategy, StrategyParams

BUY, SELL, IDLE = "buy", "sell", "idle"
_BUY, _SELL = Side.BUY, Side.SELL  # enum member lookups are slow in 3.11 hot loops
# Amounts compared against the position tolerate float dust left by fills and fees.
_DUST = 1e-9
# A buy is funded only if the free quote covers its notional plus this much for fees
# (the strategy does not know the exchange's fee; 0.5 % covers common spot fees).
_FEE_MARGIN = 1.005


class GridParams(StrategyParams):
    """Band `lower` < `upper`, number of `levels`, their `spacing`, base `amount` per level."""

    lower: float = Field(gt=0, le=MAX_AMOUNT)
    upper: float = Field(gt=0, le=MAX_AMOUNT)
    levels: int = Field(default=10, ge=2, le=500)
    spacing: Literal["arithmetic", "geometric"] = "arithmetic"
    amount: float = Field(
        gt=0, le=MAX_AMOUNT, description="base units bought or sold at each level"
    )

    @field_validator("upper")
    @classmethod
    def _upper_above_lower(cls, upper: float, info: ValidationInfo) -> float:
        lower = info.data.get("lower")
        if lower is not None and upper <= lower:
            raise ValueError(f"must be greater than lower ({lower})")
        return upper


class Grid(Strategy[GridParams]):
    """A spot grid of `levels` prices from `lower` to `upper` (both included).

    Levels are evenly spaced (`arithmetic`) or at a constant ratio (`geometric`). Each pair
    of neighbouring levels L[i] < L[i+1] is a *cell* that is in one of three states:

    - `buy`: a limit buy of `amount` rests at L[i] (the cell holds quote, waits to buy);
    - `sell`: a limit sell of `amount` rests at L[i+1] (the cell holds base, waits to sell);
    - `idle`: nothing rests (no inventory for a sell and the price is at or below L[i]).

    First tick (or after the levels changed): every cell with L[i] below the bid gets a
    buy; the cells above the price get a sell at L[i+1] while the position (less base
    already resting in sells) covers `amount`, lowest cell first; the rest are idle.

    Every later tick, for each cell:

    - its order still rests (an open order of that side whose price is nearest that
      level): nothing to do;
    - its order is gone and the market touched its price since it was placed (a candle
      in the context that began at or after the placement candle with low <= buy price /
      high >= sell price, or the ticker's ask <= buy price / bid >= sell price): it
      filled, so the cell flips and the opposite order is placed - a filled buy at L[i]
      places a sell at L[i+1], a filled sell at L[i+1] places a buy at L[i]. A buy counts
      as filled only if the position can cover the sell that follows; otherwise the buy
      is placed again;
    - its order is gone but the market never touched it (rejected, dropped by risk
      limits, cancelled by hand): the same order is placed again. A sell that the
      position no longer covers makes the cell idle instead;
    - an idle cell whose L[i] is below the bid arms a buy at L[i].

    Buys are funded from the free quote balance nearest-to-price first (notional plus a
    0.5 % fee margin); a buy the balance cannot pay is not sent and its cell goes idle,
    to be re-armed on a later tick, so an under-funded grid does not spam rejections.

    Open orders are recognised by side and price (the nearest level within a quarter of
    the level spacing), because `OpenOrder` carries no tag; intents still carry the tag
    `grid:<cell>:<side>` for the record. New intents are sorted nearest-to-price first, so
    a per-tick order limit places the most relevant ones and the rest follow next ticks.
    Resting limit orders of this bot that sit on no level (left over from other params:
    the levels moved) are cancelled, which frees what they hold for the new levels. A
    price outside the band simply leaves every cell on one side until it returns.

    State: `levels`, `cells` ([{side, since}] where `since` is the newest candle's time
    when the cell's order was placed), `buys_filled`, `sells_filled`. It changes only when
    something happens, which keeps per-tick persistence cheap.
    """

    name = "grid"
    params_model = GridParams

    def __init__(self, params: GridParams) -> None:
        super().__init__(params)
        self._levels = _layout(params)
        # Open orders match a level within a quarter of the narrowest gap.
        self._tolerance = min(b - a for a, b in pairwise(self._levels)) / 4
        self._last_match: tuple[tuple[OpenOrder, ...], set[tuple[str, int]], tuple[str, ...]] = (
            (),
            set(),
            (),
        )

    def candles_needed(self) -> int:
        """A few recent candles, to see whether a vanished order's price was touched."""
        return 5

    def levels(self) -> list[float]:
        """The grid's prices, lowest first."""
        return list(self._levels)

    def decide(self, ctx: MarketContext, state: Mapping[str, Any]) -> Decision:
        """Keep one order per cell resting, flipping cells whose order filled."""
        levels = self._levels
        now_ts = ctx.candles[-1].ts if ctx.candles else ctx.now
        resting = self._resting(ctx.open_orders)
        sellable = ctx.position - _resting_base(ctx.open_orders)
        buys_filled = int(state.get("buys_filled", 0))
        sells_filled = int(state.get("sells_filled", 0))
        cells: list[dict[str, Any]]
        if state.get("levels") == levels and len(state.get("cells", ())) == len(levels) - 1:
            cells = list(state["cells"])  # entries are replaced, never mutated
        else:
            cells = self._initial_cells(ctx, resting, now_ts)
        intents: list[OrderIntent] = []
        wanted_buys: list[int] = []
        amount = self.params.amount
        for i, cell in enumerate(cells):
            side = cell["side"]
            if side == BUY:
                if (BUY, i) in resting:
                    continue
                if (
                    _touched(_BUY, levels[i], int(cell["since"]), ctx)
                    and sellable >= amount - _DUST
                ):
                    buys_filled += 1
                    sellable -= amount
                    cells[i] = {"side": SELL, "since": now_ts}
                    intents.append(self._order(_SELL, levels[i + 1], i))
                else:
                    wanted_buys.append(i)
            elif side == SELL:
                if (SELL, i + 1) in resting:
                    continue
                if _touched(_SELL, levels[i + 1], int(cell["since"]), ctx):
                    sells_filled += 1
                    wanted_buys.append(i)
                elif sellable < amount - _DUST:
                    cells[i] = {"side": IDLE, "since": now_ts}
                else:
                    sellable -= amount
                    cells[i] = {"side": SELL, "since": now_ts}
                    intents.append(self._order(_SELL, levels[i + 1], i))
            elif levels[i] < ctx.ticker.bid:
                wanted_buys.append(i)
        # Fund buys nearest to the price first; a cell the free quote cannot pay idles
        # rather than sending an order the exchange would reject every tick.
        mid = ctx.ticker.mid
        budget = ctx.balances.get(_quote_currency(ctx), 0.0)
        for i in sorted(wanted_buys, key=lambda k: abs(levels[k] - mid)):
            cost = amount * levels[i] * _FEE_MARGIN
            if cost <= budget:
                budget -= cost
                cells[i] = {"side": BUY, "since": now_ts}
                intents.append(self._order(_BUY, levels[i], i))
            elif cells[i]["side"] != IDLE:
                cells[i] = {"side": IDLE, "since": now_ts}
        intents.sort(key=lambda o: abs((o.price or mid) - mid))
        new_state = {
            "levels": levels,
            "cells": cells,
            "buys_filled": buys_filled,
            "sells_filled": sells_filled,
        }
        return Decision(intents=tuple(intents), state=new_state, cancels=self._last_match[2])

    def _resting(self, orders: tuple[OpenOrder, ...]) -> set[tuple[str, int]]:
        """Levels with a resting order (and, kept beside, the orders on no level);
        reused while the (immutable) orders tuple is the very same object, as between
        backtest ticks where no order changed."""
        if orders is not self._last_match[0]:
            self._last_match = (orders, *_resting(orders, self._levels, self._tolerance))
        return self._last_match[1]

    def _initial_cells(
        self, ctx: MarketContext, resting: set[tuple[str, int]], now: int
    ) -> list[dict[str, Any]]:
        """Lay the grid out around the price; cells above it get sells while base lasts.

        Orders already resting on a level (state lost, params changed back) are adopted.
        New `buy`/`sell` cells carry a `since` no candle reaches, so the decide loop places
        their orders without mistaking them for fills.
        """
        levels = self._levels
        budget = ctx.position - _resting_base(ctx.open_orders)
        cells: list[dict[str, Any]] = []
        for i in range(len(levels) - 1):
            if (SELL, i + 1) in resting:
                cells.append({"side": SELL, "since": now})
            elif (BUY, i) in resting:
                cells.append({"side": BUY, "since": now})
            elif levels[i] < ctx.ticker.bid:
                cells.append({"side": BUY, "since": _NEVER})
            elif budget >= self.params.amount - _DUST:
                budget -= self.params.amount
                cells.append({"side": SELL, "since": _NEVER})
            else:
                cells.append({"side": IDLE, "since": now})
        return cells

    def _order(self, side: Side, price: float, cell: int) -> OrderIntent:
        return OrderIntent(
            side=side,
            type=OrderType.LIMIT,
            amount=self.params.amount,
            price=price,
            reason=f"grid {side.value} @ {price:.8g}",
            tag=f"grid:{cell}:{side.value}",
        )


_NEVER = 2**62  # a `since` no candle reaches: a freshly laid-out cell has nothing to detect


def _layout(p: GridParams) -> list[float]:
    n = p.levels - 1
    if p.spacing == "geometric":
        ratio = p.upper / p.lower
        prices = [p.lower * ratio ** (i / n) for i in range(n)]
    else:
        step = (p.upper - p.lower) / n
        prices = [p.lower + step * i for i in range(n)]
    return [*prices, p.upper]  # exactly `upper`, whatever the float steps summed to


def _resting(
    orders: Sequence[OpenOrder], levels: list[float], tolerance: float
) -> tuple[set[tuple[str, int]], tuple[str, ...]]:
    """(side, level index) of each open order sitting on a grid level, and the client
    order ids of the resting limit orders on none (to cancel)."""
    found: set[tuple[str, int]] = set()
    off: list[str] = []
    last = len(levels) - 1
    for order in orders:
        price = order.price
        if price is None or order.amount - order.filled <= 0:
            continue
        j = min(bisect.bisect_left(levels, price), last)
        if j > 0 and price - levels[j - 1] < levels[j] - price:
            j -= 1
        if abs(levels[j] - price) <= tolerance:
            found.add((order.side, j))  # a StrEnum: equal to and hashed as "buy"/"sell"
        elif order.type is OrderType.LIMIT and not order.canceling:
            off.append(order.client_order_id)
    return found, tuple(off)


def _quote_currency(ctx: MarketContext) -> str:
    if ctx.rules is not None:
        return ctx.rules.quote
    return ctx.symbol.partition("/")[2].split(":", 1)[0]


def _resting_base(orders: Sequence[OpenOrder]) -> float:
    """Base currency locked in this bot's open sell orders."""
    return sum(o.amount - o.filled for o in orders if o.side is _SELL)


def _touched(side: Side, price: float, since: int, ctx: MarketContext) -> bool:
    """Whether the market reached `price` from the order's side since time `since`."""
    if side is _BUY:
        return ctx.ticker.ask <= price or any(c.low <= price for c in _since(ctx.candles, since))
    return ctx.ticker.bid >= price or any(c.high >= price for c in _since(ctx.candles, since))


def _since(candles: Sequence[Candle], since: int) -> list[Candle]:
    # >= rather than >: the candle that was forming when the order was placed may be the
    # one that filled it, and missing that would place the same order twice.
    return [c for c in candles if c.ts >= since]
