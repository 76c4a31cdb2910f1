"""SMA crossover: buy when the fast average crosses above the slow one, sell on the way down."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from engine.domain import MarketContext
from strategies.base import Decision, Strategy
from strategies.indicators import sma
from strategies.sizing import SizedParams, sell_position

ABOVE, BELOW = "above", "below"


class SmaCrossParams(SizedParams):
    """`fast` < `slow` SMA periods (in candles) plus the entry size."""

    fast: int = Field(default=10, ge=1, le=1000)
    slow: int = Field(default=30, ge=2, le=5000)

    @field_validator("slow")
    @classmethod
    def _slow_above_fast(cls, slow: int, info: ValidationInfo) -> int:
        fast = info.data.get("fast")
        if fast is not None and slow <= fast:
            raise ValueError(f"must be greater than fast ({fast})")
        return slow


class SmaCross(Strategy[SmaCrossParams]):
    """Trend following on two simple moving averages of the candle closes.

    Rule: the fast SMA is either above or below the slow SMA (a tie keeps the previous
    side). When it moves from below to above, market-buy the entry size (`amount` base
    or `quote_amount` quote); when it moves from above to below, market-sell the whole
    position. Nothing happens while it stays on one side, so there are no repeated buys.

    State: `relation` (the side last seen) and `last_ts` (the newest candle already
    evaluated; a second tick on the same candle does nothing). On the very first tick the
    previous candle's side is the baseline, so a crossing on that candle still counts.

    Params: `fast`, `slow` (periods, fast < slow) and exactly one of `amount` / `quote_amount`.
    """

    name = "sma_cross"
    params_model = SmaCrossParams

    def candles_needed(self) -> int:
        """The slow window plus one candle, to know the side before the newest candle."""
        return self.params.slow + 1

    def decide(self, ctx: MarketContext, state: Mapping[str, Any]) -> Decision:
        """Trade only when the fast/slow relation changed since it was last seen."""
        p = self.params
        if len(ctx.candles) < p.slow:
            return Decision(notes={"warming_up": len(ctx.candles)})
        last_ts = ctx.candles[-1].ts
        if state.get("last_ts") == last_ts:
            return Decision()
        closes = [c.close for c in ctx.candles]
        baseline: str | None = state.get("relation")
        if baseline is None and len(closes) > p.slow:
            baseline = _relation(closes[:-1], p.fast, p.slow, None)
        relation = _relation(closes, p.fast, p.slow, baseline)
        new_state = {"relation": relation, "last_ts": last_ts}
        if baseline == BELOW and relation == ABOVE:
            return Decision(intents=(p.buy("sma_cross up"),), state=new_state)
        if baseline == ABOVE and relation == BELOW:
            return Decision(intents=sell_position(ctx.position, "sma_cross down"), state=new_state)
        return Decision(state=new_state)


def _relation(closes: list[float], fast: int, slow: int, previous: str | None) -> str | None:
    fast_avg, slow_avg = sma(closes, fast), sma(closes, slow)
    if fast_avg is None or slow_avg is None or fast_avg == slow_avg:
        return previous
    return ABOVE if fast_avg > slow_avg else BELOW
