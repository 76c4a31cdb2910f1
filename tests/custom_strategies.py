"""Strategies used by the chain tests (custom strategies loaded by dotted path)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.domain import MarketContext, OrderIntent, OrderType, Side
from strategies.base import Decision, Strategy, StrategyParams


class NoParams(StrategyParams):
    """No parameters."""


class Raising(Strategy[NoParams]):
    """Raises on every tick."""

    name = "raising"
    params_model = NoParams

    def decide(self, ctx: MarketContext, state: Mapping[str, Any]) -> Decision:
        raise RuntimeError("boom")


class EveryOtherFails(Strategy[NoParams]):
    """Fails on every other tick, counting ticks in its state."""

    name = "every_other_fails"
    params_model = NoParams

    def decide(self, ctx: MarketContext, state: Mapping[str, Any]) -> Decision:
        count = int(state.get("count", 0))
        if int(ctx.now / 1000) % 2:
            raise RuntimeError("odd second")
        return Decision(state={"count": count + 1})


class BuyOnceParams(StrategyParams):
    """How much quote to spend on the one buy."""

    quote_amount: float = 400.0


class BuyOnce(Strategy[BuyOnceParams]):
    """Buys at market on its first tick, then holds: what the exits then do is the
    engine's alone."""

    name = "buy_once"
    params_model = BuyOnceParams

    def decide(self, ctx: MarketContext, state: Mapping[str, Any]) -> Decision:
        if state.get("bought"):
            return Decision()
        intent = OrderIntent(Side.BUY, quote_amount=self.params.quote_amount, reason="entry")
        return Decision(intents=(intent,), state={"bought": True})


class RequoteParams(StrategyParams):
    """A limit buy `below` the bid (a fraction), re-quoted every tick."""

    below: float = 0.5
    amount: float = 0.001
    replace: bool = True  # False: place one when none rests, and leave it be


class Requote(Strategy[RequoteParams]):
    """Keeps one limit buy tagged `bid` resting and replaces it every tick at a new
    price: cancel + new, through the engine's replace."""

    name = "requote"
    params_model = RequoteParams

    def decide(self, ctx: MarketContext, state: Mapping[str, Any]) -> Decision:
        n = int(state.get("n", 0))
        resting = any(o.tag == "bid" for o in ctx.open_orders)
        if resting and not self.params.replace:
            return Decision()
        price = round(ctx.ticker.bid * (self.params.below + 0.01 * (n % 5)), 2)
        replaces = "bid" if resting else ""
        intent = OrderIntent(
            Side.BUY,
            OrderType.LIMIT,
            amount=self.params.amount,
            price=price,
            tag="bid",
            replaces=replaces,
        )
        return Decision(intents=(intent,), state={"n": n + 1})


class BuyThenSellParams(StrategyParams):
    """Buy `quote_amount` at market on the first tick, sell it all on tick `sell_at`."""

    quote_amount: float = 400.0
    sell_at: int = 3


class BuyThenSell(Strategy[BuyThenSellParams]):
    """A round trip at chosen ticks (its own count in the state)."""

    name = "buy_then_sell"
    params_model = BuyThenSellParams

    def decide(self, ctx: MarketContext, state: Mapping[str, Any]) -> Decision:
        n = int(state.get("n", 0))
        intents: tuple[OrderIntent, ...] = ()
        if n == 0:
            intents = (OrderIntent(Side.BUY, quote_amount=self.params.quote_amount),)
        elif n == self.params.sell_at and ctx.position > 0:
            intents = (OrderIntent(Side.SELL, amount=ctx.position),)
        return Decision(intents=intents, state={"n": n + 1})
