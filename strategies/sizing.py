"""Order sizing shared by the signal strategies: a fixed base amount or a fixed quote spend."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator

from engine.domain import OrderIntent, OrderType, Side
from strategies.base import MAX_AMOUNT, StrategyParams


class SizedParams(StrategyParams):
    """Params with an entry size: exactly one of `amount` (base) or `quote_amount` (quote)."""

    amount: float | None = Field(
        default=None, gt=0, le=MAX_AMOUNT, description="base units bought per entry"
    )
    quote_amount: float | None = Field(
        default=None, gt=0, le=MAX_AMOUNT, description="quote currency spent per entry"
    )

    @model_validator(mode="after")
    def _exactly_one_size(self) -> Self:
        if (self.amount is None) == (self.quote_amount is None):
            raise ValueError("set exactly one of amount or quote_amount")
        return self

    def buy(self, reason: str) -> OrderIntent:
        """A market buy of the configured entry size."""
        return OrderIntent(
            side=Side.BUY,
            type=OrderType.MARKET,
            amount=self.amount,
            quote_amount=self.quote_amount,
            reason=reason,
        )


def sell_position(position: float, reason: str) -> tuple[OrderIntent, ...]:
    """A market sell of the whole position, or nothing when flat."""
    if position <= 0:
        return ()
    return (OrderIntent(side=Side.SELL, type=OrderType.MARKET, amount=position, reason=reason),)
