"""RSI mean reversion: buy when Wilder's RSI turns oversold, sell when it turns overbought."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from engine.domain import MarketContext
from strategies.base import Decision, Strategy
from strategies.indicators import RSI_WARMUP_FACTOR, rsi
from strategies.sizing import SizedParams, sell_position

OVERSOLD, NEUTRAL, OVERBOUGHT = "oversold", "neutral", "overbought"


class RsiReversionParams(SizedParams):
    """RSI `period` and the `oversold` < `overbought` thresholds, plus the entry size."""

    period: int = Field(default=14, ge=2, le=500)
    oversold: float = Field(default=30.0, gt=0, lt=100)
    overbought: float = Field(default=70.0, gt=0, lt=100)

    @field_validator("overbought")
    @classmethod
    def _overbought_above_oversold(cls, overbought: float, info: ValidationInfo) -> float:
        oversold = info.data.get("oversold")
        if oversold is not None and overbought <= oversold:
            raise ValueError(f"must be greater than oversold ({oversold})")
        return overbought


class RsiReversion(Strategy[RsiReversionParams]):
    """Mean reversion on Wilder's RSI of the candle closes.

    Rule: RSI < `oversold` is the oversold zone, RSI > `overbought` the overbought zone,
    anything else neutral. Entering the oversold zone market-buys the entry size;
    entering the overbought zone market-sells the whole position (if any). Staying in a
    zone does nothing, so one dip buys once.

    The RSI is computed over the last `10 * period + 1` closes (see `indicators`); the
    strategy waits until it has at least `period + 1`.

    State: `zone` (the zone last seen; "neutral" before the first tick, so a bot started
    while the market is oversold buys at once) and `last_ts` (newest candle evaluated).

    Params: `period`, `oversold`, `overbought` and exactly one of `amount` / `quote_amount`.
    """

    name = "rsi_reversion"
    params_model = RsiReversionParams

    def candles_needed(self) -> int:
        """Enough history for the RSI's Wilder smoothing to forget its seed."""
        return RSI_WARMUP_FACTOR * self.params.period + 1

    def decide(self, ctx: MarketContext, state: Mapping[str, Any]) -> Decision:
        """Trade when the RSI zone changed into oversold or overbought."""
        p = self.params
        if not ctx.candles:
            return Decision()
        last_ts = ctx.candles[-1].ts
        if state.get("last_ts") == last_ts:
            return Decision()
        value = rsi([c.close for c in ctx.candles], p.period)
        if value is None:
            return Decision(notes={"warming_up": len(ctx.candles)})
        zone = OVERSOLD if value < p.oversold else OVERBOUGHT if value > p.overbought else NEUTRAL
        previous = state.get("zone", NEUTRAL)
        new_state = {"zone": zone, "last_ts": last_ts}
        notes = {"rsi": round(value, 4)}
        if zone == previous:
            return Decision(state=new_state, notes=notes)
        if zone == OVERSOLD:
            buy = (p.buy(f"rsi {value:.1f} oversold"),)
            return Decision(intents=buy, state=new_state, notes=notes)
        if zone == OVERBOUGHT:
            intents = sell_position(ctx.position, f"rsi {value:.1f} overbought")
            return Decision(intents=intents, state=new_state, notes=notes)
        return Decision(state=new_state, notes=notes)
