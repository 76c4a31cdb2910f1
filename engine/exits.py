"""Protective exits: stop-loss, take-profit and a trailing stop, per bot.

The engine enforces them on every step, whatever the strategy says (engine/kernel.py):
levels are fractions of the position's average entry price (engine.orders.ledger) and
are compared with the bid, which is what a market sell gets. When one fires, the bot's
open orders are cancelled and its whole position is sold at market, once: while that
exit order is unresolved nothing else is sent. `check` is pure.

Exits are emulated by the engine: a position is protected while the engine runs.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from engine.units import parse_percent, percent_below

Gain = Annotated[float, BeforeValidator(percent_below(10, inclusive=True))]  # up to 1000 %
Loss = Annotated[float, BeforeValidator(percent_below(1))]  # below 100 %
KINDS = ("stop_loss", "take_profit", "trailing_stop")
TAG = "exit:"
"""Tag prefix of exit orders (`exit:stop_loss`)."""


class _Rules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TrailingStop(_Rules):
    """Follow the price up once it is `activate` above entry; sell when it falls
    `distance` below the highest bid seen since."""

    activate: Annotated[float, BeforeValidator(parse_percent)] = Field(
        ge=0, le=10, description="gain over entry that arms it, e.g. 2% (0%: at once)"
    )
    distance: Loss = Field(description="fall from the high that fires it, e.g. 1%")


class ExitRules(_Rules):
    """`exits:` of a bot config: `{stop_loss: 3%, take_profit: 8%, trailing_stop:
    {activate: 2%, distance: 1%}}`, percentages of the average entry price."""

    stop_loss: Loss | None = Field(None, description="loss that sells, e.g. 3%")
    take_profit: Gain | None = Field(None, description="gain that sells, e.g. 8% (<= 1000%)")
    trailing_stop: TrailingStop | None = None
    on_exchange: bool = Field(
        False, description="place a real stop order on the exchange (not supported yet)"
    )

    @model_validator(mode="after")
    def _emulated_only(self) -> ExitRules:
        if self.on_exchange:
            raise ValueError(
                "on_exchange: not supported yet: exits are emulated by the engine"
                " (remove on_exchange)"
            )
        return self

    @property
    def active(self) -> bool:
        """Whether any exit is configured."""
        return (
            self.stop_loss is not None
            or self.take_profit is not None
            or self.trailing_stop is not None
        )


def check(
    rules: ExitRules, position: float, entry: float, bid: float, peak: float
) -> tuple[str | None, float]:
    """The exit that fires now (None: none) and the highest bid since entry.

    `peak` is the highest bid seen while the position was held (0: none yet).
    """
    if position <= 0 or entry <= 0:
        return None, 0.0
    peak = max(peak, bid)
    if rules.stop_loss is not None and bid <= entry * (1 - rules.stop_loss):
        return "stop_loss", peak
    if rules.take_profit is not None and bid >= entry * (1 + rules.take_profit):
        return "take_profit", peak
    trailing = rules.trailing_stop
    if (
        trailing is not None
        and peak >= entry * (1 + trailing.activate)
        and bid <= peak * (1 - trailing.distance)
    ):
        return "trailing_stop", peak
    return None, peak
