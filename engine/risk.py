"""Pre-trade risk checks: which of a strategy's intents may be sent this tick, and why not.

`apply_risk` is pure; the caller logs or records the dropped intents and their reasons.
Each reason starts with a short code (`max_orders_per_tick: ...`) so callers can count
drops by kind.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from engine.domain import MarketContext, OrderIntent, OrderType, Side
from engine.exchange.fills import floor_to_step, resolve_amount

# Relative slack when comparing amounts, so "sell the whole position" survives float dust.
_EPS = 1e-9


class RiskLimits(BaseModel):
    """Per-bot limits; None switches a limit off."""

    # Finite and bounded: `.inf` or 1e308 validated, then overflowed in every tick.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    max_position: float | None = Field(
        default=None,
        gt=0,
        le=1e12,
        description="most base currency the bot may hold or have bid for",
    )
    max_orders_per_tick: int | None = Field(
        default=5, ge=0, le=10_000, description="most orders sent in one tick (None: no limit)"
    )
    max_order_quote: float | None = Field(
        default=None, gt=0, le=1e12, description="largest order notional in quote currency"
    )


@dataclass(frozen=True, slots=True)
class RiskResult:
    """The intents that passed, in order, and the dropped ones with a reason each."""

    kept: tuple[OrderIntent, ...]
    dropped: tuple[tuple[OrderIntent, str], ...]


def apply_risk(
    intents: Iterable[OrderIntent], ctx: MarketContext, limits: RiskLimits
) -> RiskResult:
    """Check intents in order against the limits, the market rules and the position.

    Prices: a limit order at its price, a market buy at the ask, a market sell at the bid.
    Amounts are floored to the market's amount step first, as the exchange would.
    Position bookkeeping runs over the kept intents: a sell may not exceed the position
    less base already resting in open sells and less earlier kept sells; `max_position`
    caps the position plus resting buys plus kept buys (as if every buy filled).
    """
    rules = ctx.rules
    sellable = ctx.position - _resting(ctx, Side.SELL)
    reachable = ctx.position + _resting(ctx, Side.BUY)
    kept: list[OrderIntent] = []
    dropped: list[tuple[OrderIntent, str]] = []
    for intent in intents:
        price = _price(intent, ctx)
        amount = resolve_amount(intent, price)
        if rules is not None:
            amount = floor_to_step(amount, rules.amount_step)
        notional = amount * price
        reason = _check(intent, amount, notional, sellable, reachable, ctx, limits)
        cap = limits.max_orders_per_tick
        if reason is None and cap is not None and len(kept) >= cap:
            reason = f"max_orders_per_tick: limit {cap} reached"
        if reason is not None:
            dropped.append((intent, reason))
            continue
        kept.append(intent)
        if intent.side is Side.SELL:
            sellable -= amount
        else:
            reachable += amount
    return RiskResult(kept=tuple(kept), dropped=tuple(dropped))


def _check(
    intent: OrderIntent,
    amount: float,
    notional: float,
    sellable: float,
    reachable: float,
    ctx: MarketContext,
    limits: RiskLimits,
) -> str | None:
    """The first rule `intent` breaks, as a reason, or None."""
    rules = ctx.rules
    if amount <= 0:
        return "min_amount: amount rounds to zero at the market's step"
    if rules is not None and amount < rules.min_amount * (1 - _EPS):
        return f"min_amount: {amount:.8g} < {rules.min_amount:.8g} {rules.base}"
    if rules is not None and notional < rules.min_notional * (1 - _EPS):
        return f"min_notional: {notional:.8g} < {rules.min_notional:.8g} {rules.quote}"
    if limits.max_order_quote is not None and notional > limits.max_order_quote * (1 + _EPS):
        return f"max_order_quote: {notional:.8g} > {limits.max_order_quote:.8g}"
    if intent.side is Side.SELL and amount > sellable + _EPS * max(amount, 1.0):
        return f"position: sell {amount:.8g} > sellable {max(sellable, 0.0):.8g}"
    if (
        intent.side is Side.BUY
        and limits.max_position is not None
        and reachable + amount > limits.max_position * (1 + _EPS)
    ):
        return f"max_position: {reachable:.8g} + {amount:.8g} > {limits.max_position:.8g}"
    return None


def _price(intent: OrderIntent, ctx: MarketContext) -> float:
    if intent.type is OrderType.LIMIT and intent.price is not None:
        return intent.price
    return ctx.ticker.ask if intent.side is Side.BUY else ctx.ticker.bid


def _resting(ctx: MarketContext, side: Side) -> float:
    """Base amount still open in this bot's orders on one side."""
    return sum(max(o.amount - o.filled, 0.0) for o in ctx.open_orders if o.side is side)
