"""The trading kernel: one trading step, the same for live, paper and backtest.

    settle open orders → market context → timeouts → exits → protections
        → strategy (pure) → cancels → risk → orders → fills booked

It reaches the world only through its ports: a `Gateway` (ccxt, the paper broker, the
backtest's candle exchange), an `OrderStore` (the database, or memory in a backtest),
a fence (is this generation still the bot's?) and the time it is told. The tick
protocol (`engine.tick`) calls it inside its step 4; the backtest
(`engine.backtest.runner`) calls it once per candle. Sizing, risk limits, client order
ids, fencing, cancels, exits, protections and the booking of fills live below this one
function, so a decision made on the same candles is the same decision, and gets the
same fills, in every mode.

What the engine itself remembers between steps (the high since entry for a trailing
stop, when the bot last started, the last stop-loss) travels in the strategy's state
under the key `_engine`, so it is persisted in the tick's own transaction; the
strategy never sees it. Bots with no exits, protections or `order_timeout` never
write it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine import exits as exit_rules
from engine import logging as elog
from engine import orders
from engine.domain import (
    Candle,
    MarketContext,
    MarketRules,
    OpenOrder,
    OrderIntent,
    OrderType,
    Side,
)
from engine.exchange.fills import floor_to_step, round_to_step
from engine.exchange.gateway import Gateway, OrderStatus
from engine.exits import ExitRules
from engine.models import utcnow
from engine.orders import RECONCILE_GRACE_S, OrderStore
from engine.protections import Protections, pause_reason
from engine.risk import RiskLimits, apply_risk
from engine.schedule import timeframe_ms
from strategies.base import Decision, Strategy

log = elog.get_logger("engine.kernel")

ENGINE = "_engine"
"""Key of the engine's own state inside a bot's persisted state."""
_CANCELLED = (OrderStatus.CANCELED.value, OrderStatus.EXPIRED.value, OrderStatus.REJECTED.value)


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
    exits: ExitRules | None = None
    protections: Protections | None = None
    order_timeout_s: float | None = None  # unfilled limit orders older than this are cancelled
    clock: Callable[[], datetime] = utcnow  # stamps new orders (a backtest's own time)

    @property
    def guarded(self) -> bool:
        """Whether the engine has anything of its own to enforce for this bot."""
        return bool(
            (self.exits is not None and self.exits.active)
            or (self.protections is not None and self.protections.active)
            or self.order_timeout_s
        )


@dataclass(frozen=True, slots=True)
class Result:
    """What one step did: orders sent, the bot's new state (None: unchanged), the
    intents dropped (with reasons), the context the strategy saw, the exits that fired,
    the cancels sent and, when a protection tripped, why the bot must pause."""

    sent: int
    state: dict[str, Any] | None
    dropped: tuple[tuple[OrderIntent, str], ...]
    context: MarketContext
    exits: tuple[str, ...] = ()
    cancels: int = 0
    pause: str | None = None


def step(turn: Turn, state: dict[str, Any]) -> Result:
    """Run one trading step; `state` is the bot's persisted state."""
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
    if not turn.guarded:
        return _decide(turn, ctx, state, turn.strategy.decide(ctx, state), {})
    own, mine = _engine_state(turn, state)
    before = dict(own)
    fired = _stop_filled(turn, ctx, own)
    cancels = _time_out(turn, ctx) if turn.order_timeout_s else 0
    if cancels:
        ctx = _refreshed(turn, ctx)
    fills = turn.store.fills_of(turn.bot)
    exits = turn.exits if turn.exits is not None and turn.exits.active else None
    on_exchange = exits is not None and exits.on_exchange and gateway.stop_orders
    if exits is not None:
        exited = _exit(turn, ctx, own, fills, on_exchange)
        if exited is not None:
            sent, kind = exited
            fired += (kind,) if kind else ()
            return Result(sent, _merged(mine, None, own, before), (), ctx, fired, cancels)
    if turn.protections is not None and turn.protections.active:
        reason = _pause_reason(turn, turn.protections, own, fills, ctx)
        if reason is not None:
            log.warning("protection.tripped", reason=reason)
            return Result(0, _merged(mine, None, own, before), (), ctx, fired, cancels, reason)
    # The engine's protective stop is not the strategy's: it neither sees it nor has
    # its sells refused for the base the stop holds (the stop is cancelled first).
    seen = _without_stops(ctx) if on_exchange else ctx
    result = _decide(turn, seen, mine, turn.strategy.decide(seen, mine), own, ctx)
    sent = result.sent
    if on_exchange:
        assert exits is not None
        sent += _keep_stop(turn, _refreshed(turn, ctx), own, exits)
    return dataclasses.replace(
        result,
        sent=sent,
        state=_merged(mine, result.state, own, before),
        cancels=result.cancels + cancels,
        exits=fired,
    )


def _decide(
    turn: Turn,
    ctx: MarketContext,
    state: dict[str, Any],
    decision: Decision,
    own: dict[str, Any],
    full: MarketContext | None = None,
) -> Result:
    """The strategy's decision carried out: its cancels first, then its intents through
    the risk limits (and the cooldown after a stop-loss) to the order manager. `full`:
    the context with the engine's protective stop in it (`ctx` hides it), which is
    cancelled before a sell that needs the base it holds."""
    cancels, outcome = 0, dict[str, tuple[str, str]]()
    refs = set(decision.cancels) | {i.replaces for i in decision.intents if i.replaces}
    if refs:
        cancels, outcome = _cancel(turn, ctx, refs, "strategy")
        ctx = _refreshed(turn, ctx)
        if full is not None:
            full, ctx = ctx, _without_stops(ctx)
    intents, dropped = list(decision.intents), list[tuple[OrderIntent, str]]()
    if outcome:  # only a decision that cancelled has replaces to hold back
        intents, dropped = _replaceable(intents, outcome)
    if own.get("last_stop") is not None:  # only after a stop-loss is there a cooldown
        intents, cooled = _cooldown(turn, intents, own)
        dropped += cooled
    checked = apply_risk(intents, ctx, turn.risk)
    dropped += checked.dropped
    kept = list(checked.kept)
    if full is not None and any(i.side is Side.SELL for i in kept):
        stops = {o.client_order_id for o in full.open_orders if _is_stop(o)}
        if stops:
            cancels += _cancel(turn, full, stops, "strategy sells")[0]
            if any(_is_stop(o) for o in _refreshed(turn, full).open_orders):
                reason = "protective stop: its cancel is not confirmed yet"
                dropped += [(i, reason) for i in kept if i.side is Side.SELL]
                kept = [i for i in kept if i.side is not Side.SELL]
    for intent, reason in dropped:
        log.info("order.dropped", side=intent.side.value, reason=reason)
    sent = 0
    for index, intent in enumerate(kept):
        sent += _send(turn, ctx, index, intent) is not None
    return Result(sent, decision.state, tuple(dropped), ctx, (), cancels)


def _send(turn: Turn, ctx: MarketContext, index: int, intent: OrderIntent) -> Any:
    """Submit one intent as order `index` of this slot."""
    assert ctx.rules is not None
    return orders.submit(
        turn.store,
        turn.gateway,
        bot=turn.bot,
        generation=turn.generation,
        slot=turn.slot,
        index=index,
        intent=intent,
        ticker=ctx.ticker,
        rules=ctx.rules,
        fence=turn.fence,
        now=turn.clock(),
    )


# -- cancels --------------------------------------------------------------------------


def _cancel(
    turn: Turn, ctx: MarketContext, refs: set[str], reason: str
) -> tuple[int, dict[str, tuple[str, str]]]:
    """Cancel the bot's open orders named by client order id or tag; returns how many
    cancels were sent and (tag, status now) of each named order, by client order id.
    An order not yet known to rest (pending or unknown) gets its cancel recorded only:
    settling sends it once the order is found resting."""
    sent, outcome = 0, {}
    for order in ctx.open_orders:
        if order.client_order_id not in refs and order.tag not in refs:
            continue
        row = turn.store.by_cid(order.client_order_id)
        if row is None:
            continue
        if row.status == OrderStatus.OPEN.value:
            turn.fence()  # a stopped bot sends nothing, cancels included
            row = orders.cancel(turn.store, turn.gateway, row, reason)
            sent += 1
        elif row.cancel_reason is None:
            turn.store.request_cancel(row, reason)
        outcome[row.client_order_id] = (row.tag, row.status)
    return sent, outcome


def _replaceable(
    intents: Sequence[OrderIntent], outcome: dict[str, tuple[str, str]]
) -> tuple[list[OrderIntent], list[tuple[OrderIntent, str]]]:
    """Intents that may go now: a replace only once every order it names is gone
    without a fill (a filled one changed the position: the strategy decides again)."""
    kept: list[OrderIntent] = []
    dropped: list[tuple[OrderIntent, str]] = []
    for intent in intents:
        named = {
            cid: status
            for cid, (tag, status) in outcome.items()
            if intent.replaces and intent.replaces in (cid, tag)
        }
        if any(status == OrderStatus.CLOSED.value for status in named.values()):
            dropped.append((intent, f"replaces: {intent.replaces} filled meanwhile"))
        elif waiting := [cid for cid, status in named.items() if status not in _CANCELLED]:
            dropped.append((intent, f"replaces: cancel of {waiting[0]} not confirmed yet"))
        else:
            kept.append(intent)
    return kept, dropped


def _time_out(turn: Turn, ctx: MarketContext) -> int:
    """Cancel unfilled limit orders older than `order_timeout`."""
    assert turn.order_timeout_s is not None
    limit_ms = turn.order_timeout_s * 1000
    stale = {
        o.client_order_id
        for o in ctx.open_orders
        if o.type is OrderType.LIMIT
        and not o.canceling
        and not o.tag.startswith((exit_rules.TAG, exit_rules.STOP_TAG))
        and turn.now_ms - o.placed_at >= limit_ms
    }
    if not stale:
        return 0
    return _cancel(turn, ctx, stale, "order_timeout")[0]


def _refreshed(turn: Turn, ctx: MarketContext) -> MarketContext:
    """The context after cancels: open orders and position as they are now."""
    return dataclasses.replace(
        ctx,
        open_orders=turn.store.views(turn.store.live(turn.bot)),
        position=turn.store.position(turn.bot),
    )


# -- exits and protections ----------------------------------------------------------------


def _exit(
    turn: Turn,
    ctx: MarketContext,
    own: dict[str, Any],
    fills: Sequence[Any],
    on_exchange: bool,
) -> tuple[int, str | None] | None:
    """Enforce the bot's exits; (orders sent, the kind that fired) when this step
    belongs to an exit (one fired, or one is still being resolved), else None.

    With a protective stop resting on the exchange its levels are the exchange's to
    enforce; the engine sells itself only at the stop's limit (the price gapped past
    it) or for the take-profit."""
    assert turn.exits is not None
    assert ctx.rules is not None
    if any(o.tag.startswith(exit_rules.TAG) for o in ctx.open_orders):
        return 0, None  # an exit order is on its way: never a second one
    pnl = orders.pnl_from_fills(fills)
    rules = turn.exits
    if on_exchange and any(_is_stop(o) and not o.canceling for o in ctx.open_orders):
        rules = exit_rules.beyond_limit(rules)
    kind, peak = exit_rules.check(
        rules, pnl.position, pnl.average_cost, ctx.ticker.bid, float(own.get("peak", 0.0))
    )
    if peak != own.get("peak", 0.0):
        own["peak"] = peak
    if kind is None:
        return None
    market = ctx.rules
    amount = _sellable(pnl.position, ctx.ticker.bid, market)
    if amount is None:
        return None  # dust: nothing the exchange would take
    log.warning(
        f"exit.{kind}",
        entry=pnl.average_cost,
        bid=ctx.ticker.bid,
        peak=peak,
        amount=amount,
    )
    if kind == "stop_loss":
        own["last_stop"] = turn.now_ms
    others = {o.client_order_id for o in ctx.open_orders if not o.canceling}
    if others:
        # Free what the bot's orders hold, and stop them buying back in.
        _cancel(turn, ctx, others, f"exit:{kind}")
        ctx = _refreshed(turn, ctx)
        amount = floor_to_step(min(amount, ctx.position), market.amount_step)
        if ctx.open_orders or amount <= 0:
            return 0, kind  # a cancel is not confirmed: the next step sells
    intent = OrderIntent(
        side=Side.SELL,
        amount=amount,
        reason=f"exit {kind}: bid {ctx.ticker.bid:.8g}, entry {pnl.average_cost:.8g}",
        tag=f"{exit_rules.TAG}{kind}",
    )
    return int(_send(turn, ctx, 0, intent) is not None), kind


def _is_stop(order: OpenOrder) -> bool:
    return order.tag.startswith(exit_rules.STOP_TAG)


def _without_stops(ctx: MarketContext) -> MarketContext:
    """The context as the strategy sees it: without the engine's protective stop."""
    if not any(_is_stop(o) for o in ctx.open_orders):
        return ctx
    return dataclasses.replace(
        ctx, open_orders=tuple(o for o in ctx.open_orders if not _is_stop(o))
    )


def _sellable(position: float, price: float, market: MarketRules) -> float | None:
    """The position floored to the amount step; None when the exchange would not take it."""
    amount = floor_to_step(position, market.amount_step)
    if amount <= 0 or amount < market.min_amount or amount * price < market.min_notional:
        return None
    return amount


def _stop_filled(turn: Turn, ctx: MarketContext, own: dict[str, Any]) -> tuple[str, ...]:
    """The exit the exchange carried out since the last step: the protective stop the
    engine placed (`own["stop"]`) no longer rests and filled, whoever settled it (a
    worker settles every bot's orders when it starts)."""
    cid = own.get("stop")
    if cid is None or any(o.client_order_id == cid for o in ctx.open_orders):
        return ()
    del own["stop"]
    row = turn.store.by_cid(cid)
    if row is None or row.status != OrderStatus.CLOSED.value:
        return ()  # cancelled (moved, or the position left otherwise)
    kind = row.tag.removeprefix(exit_rules.STOP_TAG)
    log.warning(f"exit.{kind}", on_exchange=True, average=row.average, amount=row.filled)
    if kind == "stop_loss":
        own["last_stop"] = turn.now_ms
    return (kind,)


def _keep_stop(turn: Turn, ctx: MarketContext, own: dict[str, Any], rules: ExitRules) -> int:
    """Keep one stop-limit sell resting on the exchange for the whole position at its
    exit level (the stop-loss, or the trailing stop once armed), so the position stays
    protected while the engine is down: placed when a position opens, replaced when the
    position or the level moves (the trailing stop only upwards, in steps of at least
    `exits.RESTOP`), cancelled when the position is gone. Returns the orders sent."""
    assert ctx.rules is not None
    market = ctx.rules
    pnl = orders.pnl_from_fills(turn.store.fills_of(turn.bot))
    stops = [o for o in ctx.open_orders if _is_stop(o)]
    want = exit_rules.stop_level(rules, pnl.average_cost, float(own.get("peak", 0.0)))
    amount = _sellable(pnl.position, ctx.ticker.bid, market) if want else None
    if want is None or amount is None:
        if stops:
            _cancel(turn, ctx, {o.client_order_id for o in stops}, "position gone")
        return 0
    kind, level = want
    stop = round_to_step(level, market.price_step)
    current = stops[0] if len(stops) == 1 else None
    if current is not None and exit_rules.in_step(current, amount, stop, market.amount_step):
        return 0
    live = [o for o in stops if not o.canceling]
    if live:
        _cancel(turn, ctx, {o.client_order_id for o in live}, "restop")
    if any(_is_stop(o) for o in _refreshed(turn, ctx).open_orders):
        return 0  # the old stop's cancel is not confirmed: the next step places the new one
    limit = round_to_step(level * (1 - exit_rules.STOP_SLACK), market.price_step)
    intent = OrderIntent(
        side=Side.SELL,
        type=OrderType.LIMIT,
        amount=amount,
        price=limit,
        stop_price=stop,
        reason=f"protective {kind}: stop {stop:.8g}, limit {limit:.8g}",
        tag=f"{exit_rules.STOP_TAG}{kind}",
    )
    placed = _send(turn, ctx, exit_rules.STOP_INDEX, intent)
    if placed is None:
        return 0
    own["stop"] = placed.client_order_id
    return 1


def _pause_reason(
    turn: Turn,
    rules: Protections,
    own: dict[str, Any],
    fills: Sequence[Any],
    ctx: MarketContext,
) -> str | None:
    since = int(own.get("since", 0))
    closed = [
        (ms, result)
        for fill, _, result in orders.results(fills)
        if result is not None and (ms := int(fill.filled_at.timestamp() * 1000)) >= since
    ]
    quote = ctx.rules.quote if ctx.rules is not None else ""
    return pause_reason(rules, closed, turn.now_ms, quote)


def _cooldown(
    turn: Turn, intents: Sequence[OrderIntent], own: dict[str, Any]
) -> tuple[list[OrderIntent], list[tuple[OrderIntent, str]]]:
    """Buys are dropped for `cooldown_after_stop` after a stop-loss exit."""
    wait = turn.protections.cooldown_after_stop if turn.protections is not None else None
    last = own.get("last_stop")
    if wait is None or last is None or turn.now_ms - int(last) >= wait * 1000:
        return list(intents), []
    left = (int(last) + wait * 1000 - turn.now_ms) / 1000
    reason = f"cooldown_after_stop: {left:.0f} s left after a stop-loss"
    return (
        [i for i in intents if i.side is not Side.BUY],
        [(i, reason) for i in intents if i.side is Side.BUY],
    )


def _engine_state(turn: Turn, state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the engine's own state, the strategy's state). A new generation (start, resume)
    starts the protections' count afresh."""
    own = dict(state.get(ENGINE) or {})
    mine = {k: v for k, v in state.items() if k != ENGINE} if ENGINE in state else state
    if own.get("gen") != turn.generation:
        own["gen"], own["since"] = turn.generation, turn.now_ms
    return own, mine


def _merged(
    mine: dict[str, Any],
    decided: dict[str, Any] | None,
    own: dict[str, Any],
    before: dict[str, Any],
) -> dict[str, Any] | None:
    """The state to persist: None when neither the strategy's nor the engine's changed."""
    if decided is None and own == before:
        return None
    return {**(decided if decided is not None else mine), ENGINE: own}


def closed_candles(candles: Sequence[Candle], timeframe: str, now_ms: int) -> Sequence[Candle]:
    """The candles that closed by `now_ms`: exchanges list the forming one last, and a
    decision on it would differ from the one a backtest makes on closed candles."""
    width = timeframe_ms(timeframe)
    end = len(candles)
    while end and candles[end - 1].ts + width > now_ms:
        end -= 1
    return candles[:end]
