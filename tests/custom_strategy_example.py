"""A custom strategy living outside `strategies/`, loaded by dotted path in the registry tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from engine.domain import MarketContext, OrderIntent, Side
from strategies.base import Decision, Strategy, StrategyParams


class BuyEveryTickParams(StrategyParams):
    """How much quote to spend each tick."""

    quote_amount: float = Field(default=10.0, gt=0)


class BuyEveryTick(Strategy[BuyEveryTickParams]):
    """Market-buy `quote_amount` on every tick."""

    name = "buy_every_tick"
    params_model = BuyEveryTickParams

    def decide(self, ctx: MarketContext, state: Mapping[str, Any]) -> Decision:
        """Always buy."""
        intent = OrderIntent(side=Side.BUY, quote_amount=self.params.quote_amount)
        return Decision(intents=(intent,))


class NotAStrategy:
    """Has the right shape of name but is not a Strategy subclass."""

    name = "imposter"
