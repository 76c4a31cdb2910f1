"""Run a strategy over historical candles through the trading kernel, one step per candle.

Step i happens when candle i has closed, exactly as a live tick aligned to candle close
(`align: candle`): `engine.kernel.step` runs on the backtest's ports, a candle exchange
(`engine.backtest.exchange`, fills by `engine.exchange.fills`) and an in-memory order
store (`engine.backtest.memory`), with the same order manager, risk checks and sizing as
a live bot. So a decision made on the same candles is the same decision, with the same
fills, as on paper or live; `tests/test_parity.py` checks that against real workers.

Per step: resting limit orders that candle i's path crosses fill first; then the
strategy sees the closed candles up to i, a ticker at the next price (candle i+1's
open), its position, free balances and resting orders, at `now` = candle i's close; its
intents pass the bot's risk limits and become orders. Equity = quote + base * close
(reserved funds included) is recorded. Strategy state goes through a JSON round trip
whenever it changes, as it does when the engine persists it. Everything is
deterministic: same inputs, same result.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from engine import kernel
from engine.backtest.exchange import CandleExchange
from engine.backtest.memory import MemoryOrderStore
from engine.domain import Candle, MarketRules, OrderType, Side
from engine.exchange.fills import FillModel
from engine.exits import ExitRules
from engine.orders import results
from engine.protections import Protections
from engine.risk import RiskLimits
from engine.schedule import timeframe_ms
from strategies.base import Strategy

BOT = "backtest"


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
    exits: dict[str, int] = field(default_factory=dict)  # protective exits fired, by kind
    # When a protection paused the bot (epoch ms) and why; the run trades no more after.
    protections: list[tuple[int, str]] = field(default_factory=list)
    # Every order and fill, as the live order manager recorded them (parity checks).
    store: MemoryOrderStore | None = field(default=None, compare=False, repr=False)


def run_backtest(
    strategy: Strategy[Any],
    candles: Sequence[Candle],
    *,
    symbol: str,
    balances: dict[str, float],
    fill_model: FillModel,
    risk: RiskLimits | None,
    rules: MarketRules | None = None,
    timeframe: str | None = None,
    offset_ms: int = 0,
    start: int = 0,
    end: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    exits: ExitRules | None = None,
    protections: Protections | None = None,
    order_timeout_s: float | None = None,
) -> BacktestResult:
    """Run `strategy` over `candles` (oldest first); see the module doc for a step.

    `risk=None` applies no bot limits (the market rules and the position still apply).
    `timeframe` defaults to the candles' median spacing; step i happens `offset_ms` after
    candle i closed (`align: candle` with its `offset`). Steps run for candles `start`
    to `end` (exclusive; default: all): the ones before are history the strategy can
    see, the ones after give the last step its next price.
    `progress(done, total)` is called about every 1 % and at the end. `exits`,
    `protections` and `order_timeout_s` are the bot's (engine/kernel.py applies them as
    live); a protection that pauses the bot ends its trading for the rest of the run,
    as a paused live bot waits for an explicit resume.
    """
    if not candles:
        raise ValueError("no candles to backtest")
    if any(v < 0 for v in balances.values()):
        raise ValueError("balances must not be negative")
    bars = candles if isinstance(candles, tuple) else tuple(candles)
    rules = rules or _rules_for(symbol)
    tf = timeframe or _timeframe(bars)
    exchange = CandleExchange(rules, fill_model, balances, bars, timeframe_ms(tf), offset_ms)
    store = MemoryOrderStore()
    limits = risk if risk is not None else RiskLimits(max_orders_per_tick=None)
    state: dict[str, Any] = {}
    dropped: Counter[str] = Counter()
    fired: Counter[str] = Counter()
    paused: list[tuple[int, str]] = []
    timestamps: list[int] = []
    equity: list[float] = []
    stop = len(bars) if end is None else min(end, len(bars))
    total = stop - start
    every = max(1, total // 100)
    for i in range(stop):
        exchange.at(i)
        if i < start:
            continue
        if paused:
            timestamps.append(bars[i].ts)
            equity.append(exchange.equity(bars[i].close))
            continue
        turn = kernel.Turn(
            bot=BOT,
            generation=1,
            slot=i,
            now_ms=exchange.now_ms,
            symbol=symbol,
            timeframe=tf,
            strategy=strategy,
            risk=limits,
            gateway=exchange,
            store=store,
            fence=_no_fence,
            grace_s=0.0,
            exits=exits,
            protections=protections,
            order_timeout_s=order_timeout_s,
            clock=exchange.stamp,
        )
        result = kernel.step(turn, state)
        fired.update(result.exits)
        if result.pause is not None:
            paused.append((exchange.now_ms, result.pause))
        if result.state is not None and result.state != state:
            state = json.loads(json.dumps(result.state))
        dropped.update(reason.split(":", 1)[0] for _, reason in result.dropped)
        timestamps.append(bars[i].ts)
        equity.append(exchange.equity(bars[i].close))
        done = i + 1 - start
        if progress is not None and (done % every == 0 or done == total):
            progress(done, total)
    return BacktestResult(
        strategy=getattr(type(strategy), "name", type(strategy).__name__),
        params=strategy.params.model_dump(mode="json"),
        symbol=symbol,
        base=rules.base,
        quote=rules.quote,
        fill_model=fill_model,
        timestamps=timestamps,
        equity=equity,
        trades=_trades(store),
        initial_balances=dict(balances),
        final_balances=exchange.totals(),
        initial_price=bars[start].close,
        final_price=bars[-1].close,
        open_orders=len(exchange.resting),
        rejected=exchange.rejected,
        dropped=dict(sorted(dropped.items())),
        final_state=state,
        exits=dict(sorted(fired.items())),
        protections=paused,
        store=store,
    )


def _no_fence() -> None:
    """A backtest's generation never changes."""


def _trades(store: MemoryOrderStore) -> list[Trade]:
    """The fills, in booking order, with each sell's result (engine.orders.results)."""
    out = []
    for fill, fee, realized in results(store.fills):
        order = store.orders[fill.order_id]
        out.append(
            Trade(
                ts=int(fill.filled_at.timestamp() * 1000),
                side=Side(fill.side),
                type=OrderType(order.type),
                amount=fill.amount,
                price=fill.price,
                fee=fee,
                quote_cost=fill.amount * fill.price,
                realized_pnl=realized,
                reason=order.reason,
                tag=order.tag,
            )
        )
    return out


def _timeframe(candles: Sequence[Candle]) -> str:
    """The candles' timeframe as `<seconds>s`, from their median spacing (1m for one)."""
    if len(candles) < 2:
        return "1m"
    gaps = [b.ts - a.ts for a, b in pairwise(candles)]
    return f"{max(1, round(statistics.median(gaps) / 1000))}s"


def _rules_for(symbol: str) -> MarketRules:
    base, sep, quote = symbol.partition("/")
    quote = quote.split(":", 1)[0]  # "BTC/USDT:USDT" (a derivative) settles in USDT
    if not sep or not base or not quote:
        raise ValueError(f"symbol {symbol!r} is not BASE/QUOTE; pass rules= for it")
    return MarketRules(symbol=symbol, base=base, quote=quote)
