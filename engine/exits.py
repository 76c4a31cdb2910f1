"""Protective exits: stop-loss, take-profit and a trailing stop, per bot.

The engine enforces them on every step, whatever the strategy says (engine/kernel.py):
levels are fractions of the position's average entry price (engine.orders.ledger) and
are compared with the bid, which is what a market sell gets. When one fires, the bot's
open orders are cancelled and its whole position is sold at market, once: while that
exit order is unresolved nothing else is sent. `check` is pure.

Emulated by default: a position is protected while the engine runs. With
`on_exchange: true`, where the gateway places stop orders (`Gateway.stop_orders`: ccxt
says the exchange takes them), the engine keeps one stop-limit sell resting on the
exchange for the whole position at the stop-loss level (or the armed trailing stop's),
so the position stays protected while the engine is down; the take-profit stays
emulated (a spot account cannot hold a second sell for the same base). Elsewhere (paper,
backtest) `on_exchange` falls back to emulation.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from engine.domain import OpenOrder
from engine.units import parse_percent, percent_below

Gain = Annotated[float, BeforeValidator(percent_below(10, inclusive=True))]  # up to 1000 %
Loss = Annotated[float, BeforeValidator(percent_below(1))]  # below 100 %
KINDS = ("stop_loss", "take_profit", "trailing_stop")
TAG = "exit:"
"""Tag prefix of exit orders (`exit:stop_loss`)."""
STOP_TAG = "stop:"
"""Tag prefix of the protective stop resting on the exchange (`stop:stop_loss`)."""
STOP_INDEX = 10_001
"""Intent index of the protective stop in its slot: apart from any strategy's intents."""
STOP_SLACK = 0.005
"""The stop's limit sits this far under its stop price: room to fill once triggered."""
RESTOP = 0.001
"""A resting stop is moved only when its level changed by more than this fraction."""


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
        False, description="keep a stop-limit order resting on the exchange where it takes one"
    )

    @model_validator(mode="after")
    def _something_to_place(self) -> ExitRules:
        if self.on_exchange and self.stop_loss is None and self.trailing_stop is None:
            raise ValueError("on_exchange: needs a stop_loss or a trailing_stop to place")
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


def stop_level(rules: ExitRules, entry: float, peak: float) -> tuple[str, float] | None:
    """(kind, price) of the protective stop for a position bought at `entry` whose
    highest bid since was `peak`: the higher of the stop-loss and the armed trailing
    stop. None when neither applies."""
    if entry <= 0:
        return None
    levels = []
    if rules.stop_loss is not None:
        levels.append((entry * (1 - rules.stop_loss), "stop_loss"))
    trailing = rules.trailing_stop
    if trailing is not None and peak >= entry * (1 + trailing.activate):
        levels.append((peak * (1 - trailing.distance), "trailing_stop"))
    if not levels:
        return None
    level, kind = max(levels)
    return kind, level


def in_step(order: OpenOrder, amount: float, stop: float, amount_step: float) -> bool:
    """Whether a resting stop still covers `amount` at about `stop`."""
    if order.canceling or order.stop_price is None:
        return False
    left = order.amount - order.filled
    return abs(left - amount) <= max(amount_step / 2, 1e-12) and (
        abs(order.stop_price - stop) <= stop * RESTOP
    )


def beyond_limit(rules: ExitRules) -> ExitRules:
    """The emulated fallback while a stop rests on the exchange: the engine sells itself
    only once the bid is under the stop's limit (the exchange's stop could not fill)."""
    wider: dict[str, object] = {}
    if rules.stop_loss is not None:
        wider["stop_loss"] = 1 - (1 - rules.stop_loss) * (1 - STOP_SLACK)
    trailing = rules.trailing_stop
    if trailing is not None:
        distance = 1 - (1 - trailing.distance) * (1 - STOP_SLACK)
        wider["trailing_stop"] = trailing.model_copy(update={"distance": distance})
    return rules.model_copy(update=wider)
