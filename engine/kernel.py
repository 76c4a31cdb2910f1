"""The trading kernel: one trading step, the same for live, paper and backtest.

    settle open orders → market context → strategy (pure) → risk → orders → fills booked

It reaches the world only through its ports: a `Gateway` (ccxt, the paper broker, the
backtest's candle exchange), an `OrderStore` (the database, or memory in a backtest),
a fence (is this generation still the bot's?) and the time it is told. The tick
protocol (`engine.tick`) calls it inside its step 4; the backtest
(`engine.backtest.runner`) calls it once per candle. Sizing, risk limits, client order
ids, fencing and the booking of fills live below this one function, so a decision made
on the same candles is the same decision, and gets the same fills, in every mode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from engine import logging as elog
from engine import orders
from engine.domain import Candle, MarketContext, OrderIntent
from engine.exchange.gateway import Gateway
from engine.orders import RECONCILE_GRACE_S, OrderStore
from engine.risk import RiskLimits, apply_risk
from engine.schedule import timeframe_ms
from strategies.base import Strategy

log = elog.get_logger("engine.kernel")


@dataclass(frozen=True, slots=True)
class Turn:
    """One bot's trading step: who trades, when, with what, through which ports."""

    bot: str
    generation: int
    slot: int
    now_ms: int  # the slot's due time: strategies never read a clock
    symbol: str
    timeframe: str
    strategy: Strategy[Any]
    risk: RiskLimits
    gateway: Gateway
    store: OrderStore
    fence: Callable[[], None]  # raises FencedError once the generation is no longer current
    grace_s: float = RECONCILE_GRACE_S  # how long an unseen order may be on its way


@dataclass(frozen=True, slots=True)
class Result:
    """What one step did: orders sent, the strategy's new state (None: unchanged), the
    intents risk dropped (with reasons) and the context the strategy saw."""

    sent: int
    state: dict[str, Any] | None
    dropped: tuple[tuple[OrderIntent, str], ...]
    context: MarketContext


def step(turn: Turn, state: dict[str, Any]) -> Result:
    """Run one trading step; `state` is the strategy's persisted state."""
    gateway = turn.gateway
    # Settle what earlier steps left open or unknown, before deciding anything new.
    _, still_open = orders.settle(turn.store, turn.bot, gateway, grace_s=turn.grace_s)
    rules = gateway.market_rules(turn.symbol)
    ticker = gateway.fetch_ticker(turn.symbol)
    needed = turn.strategy.candles_needed()
    candles: Sequence[Candle] = ()
    if needed:
        # One more than needed: the newest may still be forming, and is dropped.
        fetched = gateway.fetch_ohlcv(turn.symbol, turn.timeframe, needed + 1)
        candles = closed_candles(fetched, turn.timeframe, turn.now_ms)[-needed:]
    ctx = MarketContext(
        symbol=turn.symbol,
        now=turn.now_ms,
        candles=tuple(candles),
        ticker=ticker,
        position=turn.store.position(turn.bot),
        balances=gateway.fetch_balances(),
        open_orders=still_open,
        rules=rules,
    )
    decision = turn.strategy.decide(ctx, state)
    checked = apply_risk(decision.intents, ctx, turn.risk)
    for intent, reason in checked.dropped:
        log.info("order.dropped", side=intent.side.value, reason=reason)
    sent = 0
    for index, intent in enumerate(checked.kept):
        placed = orders.submit(
            turn.store,
            gateway,
            bot=turn.bot,
            generation=turn.generation,
            slot=turn.slot,
            index=index,
            intent=intent,
            ticker=ticker,
            rules=rules,
            fence=turn.fence,
        )
        sent += placed is not None
    return Result(sent, decision.state, checked.dropped, ctx)


def closed_candles(candles: Sequence[Candle], timeframe: str, now_ms: int) -> Sequence[Candle]:
    """The candles that closed by `now_ms`: exchanges list the forming one last, and a
    decision on it would differ from the one a backtest makes on closed candles."""
    width = timeframe_ms(timeframe)
    end = len(candles)
    while end and candles[end - 1].ts + width > now_ms:
        end -= 1
    return candles[:end]
