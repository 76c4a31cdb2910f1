"""Run a strategy over historical candles with the paper fill model, one tick per candle.

At candle i, in this order:

1. resting limit orders fill at their price if candle i's low (buys) / high (sells)
   reached it - they were placed after candle i-1 closed, so candle i is their first chance;
2. the strategy sees a `MarketContext` as of candle i's close: the last
   `window or strategy.candles_needed()` candles up to and including i, a ticker with
   bid = ask = last = close (the fill model's slippage stands in for the spread),
   `now` = the candle's open time (its `ts`), the position (free + locked base),
   the free balances and its resting orders;
3. its intents pass `apply_risk`; the kept ones execute: market orders fill at once at
   the close plus slippage; limit orders fill at once (at their price) if the close
   already crosses them, otherwise they rest with their funds locked; an order the free
   balance cannot pay is rejected, as the paper broker does;
4. equity = quote + base * close (locked funds included) is recorded.

Strategy state goes through a JSON round trip whenever it changes, as it does when the
engine persists it, so a strategy behaves here as it will live (tuples come back as
lists, keys as strings, and unserialisable state fails here, not in production).
Amounts are floored to `rules.amount_step` and limit prices rounded to
`rules.price_step`, as the exchange layer does. Everything is deterministic: same
inputs, same result.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.domain import (
    Candle,
    MarketContext,
    MarketRules,
    OpenOrder,
    OrderIntent,
    OrderType,
    Side,
    Ticker,
)
from engine.exchange.fills import (
    Fill,
    FillModel,
    can_afford,
    crossed_by_candle,
    crossed_by_ticker,
    fill_at,
    floor_to_step,
    market_fill,
    market_price,
    resolve_amount,
    round_to_step,
)
from engine.risk import RiskLimits, apply_risk
from strategies.base import Strategy

_DUST = 1e-12
_BUY, _SELL = Side.BUY, Side.SELL  # enum member lookups are slow in 3.11 hot loops


@dataclass(frozen=True, slots=True)
class Trade:
    """One fill in a backtest; `realized_pnl` (sells only) is net of fees, at average cost."""

    ts: int
    side: Side
    type: OrderType
    amount: float
    price: float
    fee: float
    quote_cost: float
    realized_pnl: float | None
    reason: str
    tag: str


@dataclass(slots=True)
class BacktestResult:
    """Everything a backtest produced; `report.compute_metrics` turns it into figures."""

    strategy: str
    params: dict[str, Any]
    symbol: str
    base: str
    quote: str
    fill_model: FillModel
    timestamps: list[int]
    equity: list[float]
    trades: list[Trade]
    initial_balances: dict[str, float]
    final_balances: dict[str, float]
    initial_price: float
    final_price: float
    open_orders: int = 0
    rejected: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    final_state: dict[str, Any] = field(default_factory=dict)


def run_backtest(
    strategy: Strategy[Any],
    candles: Sequence[Candle],
    *,
    symbol: str,
    balances: dict[str, float],
    fill_model: FillModel,
    risk: RiskLimits | None,
    rules: MarketRules | None = None,
    window: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BacktestResult:
    """Run `strategy` over `candles` (oldest first); see the module doc for the tick order.

    `risk=None` applies no bot limits (the market rules and the position still apply);
    `window` overrides how many candles the strategy sees. `progress(done, total)` is
    called about every 1 % and at the end.
    """
    if not candles:
        raise ValueError("no candles to backtest")
    if any(v < 0 for v in balances.values()):
        raise ValueError("balances must not be negative")
    bars = candles if isinstance(candles, tuple) else tuple(candles)  # slices are then tuples
    rules = rules or _rules_for(symbol)
    limits = risk if risk is not None else RiskLimits(max_orders_per_tick=None)
    size = strategy.candles_needed() if window is None else window
    account = _Account(rules, fill_model, balances, candles[0].close)
    state: dict[str, Any] = {}
    dropped: Counter[str] = Counter()
    timestamps: list[int] = []
    equity: list[float] = []
    total = len(candles)
    every = max(1, total // 100)
    for i, candle in enumerate(bars):
        account.fill_resting(candle)
        ticker = Ticker(symbol, candle.close, candle.close, candle.close, candle.ts)
        ctx = MarketContext(
            symbol=symbol,
            now=candle.ts,
            candles=bars[max(0, i + 1 - size) : i + 1] if size > 0 else (),
            ticker=ticker,
            position=account.position,
            balances=dict(account.free),
            open_orders=account.open_orders(),
            rules=rules,
        )
        decision = strategy.decide(ctx, state)
        if decision.state is not None and decision.state != state:
            state = json.loads(json.dumps(decision.state))
        if decision.intents:
            checked = apply_risk(decision.intents, ctx, limits)
            dropped.update(reason.split(":", 1)[0] for _, reason in checked.dropped)
            for intent in checked.kept:
                account.execute(intent, ticker, candle.ts)
        timestamps.append(candle.ts)
        equity.append(account.equity(candle.close))
        if progress is not None and ((i + 1) % every == 0 or i + 1 == total):
            progress(i + 1, total)
    return BacktestResult(
        strategy=getattr(type(strategy), "name", type(strategy).__name__),
        params=strategy.params.model_dump(mode="json"),
        symbol=symbol,
        base=rules.base,
        quote=rules.quote,
        fill_model=fill_model,
        timestamps=timestamps,
        equity=equity,
        trades=account.trades,
        initial_balances=dict(balances),
        final_balances=account.totals(),
        initial_price=candles[0].close,
        final_price=candles[-1].close,
        open_orders=len(account.resting),
        rejected=account.rejected,
        dropped=dict(sorted(dropped.items())),
        final_state=state,
    )


@dataclass(slots=True)
class _Resting:
    order_id: str
    intent: OrderIntent
    fill: Fill  # what it will be when crossed: known in advance, it fills at its price


class _Account:
    """Free and locked balances, resting orders and average-cost bookkeeping."""

    def __init__(
        self, rules: MarketRules, model: FillModel, balances: dict[str, float], price: float
    ) -> None:
        self.rules, self.model = rules, model
        self.base, self.quote = rules.base, rules.quote
        self.free = {self.base: 0.0, self.quote: 0.0, **balances}
        self.locked_base = self.locked_quote = 0.0
        self.resting: list[_Resting] = []
        self.trades: list[Trade] = []
        self.rejected = 0
        self._ids = 0
        self._open: tuple[OpenOrder, ...] | None = ()
        self._best_bid, self._best_ask = -math.inf, math.inf  # of the resting orders
        # Average cost of the position; initial holdings are valued at the first close.
        self.held = self.free[self.base]
        self.basis = self.held * price

    @property
    def position(self) -> float:
        return self.free[self.base] + self.locked_base

    def equity(self, price: float) -> float:
        return self.free[self.quote] + self.locked_quote + self.position * price

    def totals(self) -> dict[str, float]:
        out = dict(self.free)
        out[self.base] += self.locked_base
        out[self.quote] += self.locked_quote
        return out

    def open_orders(self) -> tuple[OpenOrder, ...]:
        if self._open is None:
            self._open = tuple(
                OpenOrder(r.order_id, r.intent.side, OrderType.LIMIT, r.fill.amount, r.fill.price)
                for r in self.resting
            )
        return self._open

    def fill_resting(self, candle: Candle) -> None:
        # Most candles cross nothing: compare with the best resting prices first.
        if candle.low > self._best_bid and candle.high < self._best_ask:
            return
        still: list[_Resting] = []
        for order in self.resting:
            fill = order.fill
            if not crossed_by_candle(fill.side, fill.price, candle):
                still.append(order)
                continue
            if fill.side is _BUY:
                self.locked_quote -= -fill.quote_delta
                self.free[self.base] += fill.amount
            else:
                self.locked_base -= fill.amount
                self.free[self.quote] += fill.quote_delta
            self._record(candle.ts, order.intent, fill)
        if len(still) != len(self.resting):
            self.resting = still
            self._changed()

    def execute(self, intent: OrderIntent, ticker: Ticker, ts: int) -> None:
        step = self.rules.amount_step
        if intent.type is OrderType.LIMIT and intent.price is not None:
            price = round_to_step(intent.price, self.rules.price_step)
        else:
            price = market_price(intent.side, ticker, self.model)
        if intent.quote_amount is not None and step <= 0 and intent.type is OrderType.MARKET:
            # Spends exactly the quote amount, as a quote-sized market order does.
            fill = market_fill(intent, ticker, self.model, quote=self.quote)
        else:
            amount = floor_to_step(resolve_amount(intent, price), step)
            fill = fill_at(intent.side, amount, price, self.model, quote=self.quote)
        if fill.amount <= 0 or not can_afford(fill, self.free, base=self.base, quote=self.quote):
            self.rejected += 1
            return
        if intent.type is OrderType.LIMIT and not crossed_by_ticker(intent.side, price, ticker):
            self._rest(intent, fill)
            return
        self.free[self.quote] += fill.quote_delta
        self.free[self.base] += fill.base_delta
        self._record(ts, intent, fill)

    def _rest(self, intent: OrderIntent, fill: Fill) -> None:
        if fill.side is _BUY:
            self.free[self.quote] += fill.quote_delta
            self.locked_quote += -fill.quote_delta
        else:
            self.free[self.base] -= fill.amount
            self.locked_base += fill.amount
        self._ids += 1
        self.resting.append(_Resting(f"bt-{self._ids}", intent, fill))
        self._changed()

    def _changed(self) -> None:
        self._open = None
        buys = [r.fill.price for r in self.resting if r.fill.side is _BUY]
        sells = [r.fill.price for r in self.resting if r.fill.side is _SELL]
        self._best_bid = max(buys, default=-math.inf)
        self._best_ask = min(sells, default=math.inf)

    def _record(self, ts: int, intent: OrderIntent, fill: Fill) -> None:
        realized: float | None = None
        if fill.side is _BUY:
            self.basis += fill.quote_cost + fill.fee
            self.held += fill.amount
        else:
            average = self.basis / self.held if self.held > 0 else fill.price
            sold_cost = average * fill.amount
            realized = fill.quote_cost - fill.fee - sold_cost
            self.basis -= sold_cost
            self.held -= fill.amount
            if self.held <= _DUST:  # flat: drop float residue so it cannot skew the average
                self.held = self.basis = 0.0
        self.trades.append(
            Trade(
                ts=ts,
                side=fill.side,
                type=intent.type,
                amount=fill.amount,
                price=fill.price,
                fee=fill.fee,
                quote_cost=fill.quote_cost,
                realized_pnl=realized,
                reason=intent.reason,
                tag=intent.tag,
            )
        )


def _rules_for(symbol: str) -> MarketRules:
    base, sep, quote = symbol.partition("/")
    quote = quote.split(":", 1)[0]  # "BTC/USDT:USDT" (a derivative) settles in USDT
    if not sep or not base or not quote:
        raise ValueError(f"symbol {symbol!r} is not BASE/QUOTE; pass rules= for it")
    return MarketRules(symbol=symbol, base=base, quote=quote)
