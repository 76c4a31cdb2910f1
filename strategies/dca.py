"""Dollar-cost averaging: buy a fixed quote amount every N ticks, more on dips."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from engine.domain import MarketContext, OrderIntent, OrderType, Side
from strategies.base import MAX_AMOUNT, Decision, Strategy, StrategyParams
from strategies.indicators import sma


class DcaParams(StrategyParams):
    """Spend `quote_amount` every `every` ticks; `dip_multiplier` times that on a dip."""

    quote_amount: float = Field(gt=0, le=MAX_AMOUNT, description="quote currency spent per buy")
    every: int = Field(default=1, ge=1, le=1_000_000, description="ticks between buys")
    offset: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="ticks before the first buy: staggers bots started together",
    )
    dip_pct: float | None = Field(
        default=None, gt=0, lt=100, description="a dip: price this % below the last buy price"
    )
    dip_sma: int | None = Field(
        default=None, ge=2, le=5000, description="a dip: price below the SMA of this many closes"
    )
    dip_multiplier: float = Field(default=1.0, ge=1, le=100)

    @field_validator("dip_multiplier")
    @classmethod
    def _multiplier_needs_a_dip_rule(cls, multiplier: float, info: ValidationInfo) -> float:
        if (
            multiplier != 1
            and info.data.get("dip_pct") is None
            and info.data.get("dip_sma") is None
        ):
            raise ValueError("has no effect without dip_pct or dip_sma")
        return multiplier


class Dca(Strategy[DcaParams]):
    """Accumulate: a market buy of `quote_amount` on tick `offset` (the first, by default)
    and every `every` ticks after it.

    Dip rule (optional): when the buy is due and the ask is at least `dip_pct` % below
    the price of the previous buy, or below the SMA of the last `dip_sma` closes, the
    buy is `dip_multiplier` times larger. Either condition suffices. The "previous buy
    price" is the ask when that buy was decided (the strategy never sees fills).

    Ticks are counted in state (`ticks`), so a paused or missed slot delays the schedule
    rather than doubling a later buy. State: `ticks`, `last_buy_price`. It never sells.
    """

    name = "dca"
    params_model = DcaParams

    def candles_needed(self) -> int:
        """Closes for the dip SMA, if that rule is on."""
        return self.params.dip_sma or 0

    def decide(self, ctx: MarketContext, state: Mapping[str, Any]) -> Decision:
        """Buy when the tick count hits the cadence; scale up on a dip."""
        p = self.params
        ticks = int(state.get("ticks", 0))
        last_buy: float | None = state.get("last_buy_price")
        if ticks < p.offset or (ticks - p.offset) % p.every != 0:
            return Decision(state={"ticks": ticks + 1, "last_buy_price": last_buy})
        price = ctx.ticker.ask
        dip = self._is_dip(ctx, price, last_buy)
        quote = p.quote_amount * (p.dip_multiplier if dip else 1.0)
        intent = OrderIntent(
            side=Side.BUY,
            type=OrderType.MARKET,
            quote_amount=quote,
            reason="dca dip" if dip else "dca",
        )
        return Decision(
            intents=(intent,),
            state={"ticks": ticks + 1, "last_buy_price": price},
            notes={"dip": dip},
        )

    def _is_dip(self, ctx: MarketContext, price: float, last_buy: float | None) -> bool:
        p = self.params
        if (
            p.dip_pct is not None
            and last_buy is not None
            and price <= last_buy * (1 - p.dip_pct / 100)
        ):
            return True
        if p.dip_sma is not None:
            average = sma([c.close for c in ctx.candles], p.dip_sma)
            if average is not None and price < average:
                return True
        return False
