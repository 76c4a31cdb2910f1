"""Protections: rules that pause a bot that keeps losing, and a cooldown after a stop.

They read the bot's closed results (each sell's result after fees, engine.orders.results)
since the bot last started or resumed, so a resume is explicit and starts afresh:

- `losing_streak: 3`: the last 3 results were all losses;
- `max_daily_loss: 50`: results since 00:00 UTC add up to a loss of 50 (quote currency);
- `max_drawdown: {limit: 100, window: 7d}`: over the window, the running sum of results
  fell 100 below its high;
- `cooldown_after_stop: 30m`: for 30 minutes after a stop-loss exit, buys are dropped
  (the bot keeps running; nothing to resume).

A pause moves the bot to `paused` with the reason, in the transaction of the tick that
decided it (status, API, logs and notifications show it); `botengine resume` restarts
it. `pause_reason` is pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from engine.units import parse_duration

Duration = Annotated[float, BeforeValidator(parse_duration)]
DAY_MS = 86_400_000
KINDS = ("losing_streak", "max_daily_loss", "max_drawdown")
"""The protections that pause a bot (the cooldown only drops buys)."""


class _Rules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class MaxDrawdown(_Rules):
    """Pause when the running sum of results falls `limit` (quote) below its high."""

    limit: float = Field(gt=0, le=1e12, description="quote currency, e.g. 100")
    window: Duration = Field(7 * 86400.0, ge=60, le=366 * 86400.0)


class Protections(_Rules):
    """`protections:` of a bot config."""

    losing_streak: int | None = Field(None, ge=1, le=1000, description="losses in a row")
    max_daily_loss: float | None = Field(
        None, gt=0, le=1e12, description="quote currency lost since 00:00 UTC"
    )
    max_drawdown: MaxDrawdown | None = None
    cooldown_after_stop: Duration | None = Field(None, gt=0, le=30 * 86400.0)

    @property
    def active(self) -> bool:
        """Whether any protection is configured."""
        return any(
            v is not None
            for v in (
                self.losing_streak,
                self.max_daily_loss,
                self.max_drawdown,
                self.cooldown_after_stop,
            )
        )


def pause_reason(
    rules: Protections, closed: Sequence[tuple[int, float]], now_ms: int, quote: str
) -> str | None:
    """Why the bot must pause now (None: it need not), from its closed results
    `(time in epoch ms, result)` since it last started, oldest first."""
    streak = rules.losing_streak
    if streak is not None and len(closed) >= streak and all(r < 0 for _, r in closed[-streak:]):
        lost = -sum(r for _, r in closed[-streak:])
        return f"losing_streak: {streak} losing trades in a row ({lost:.8g} {quote} lost)"
    if rules.max_daily_loss is not None:
        day = now_ms - now_ms % DAY_MS
        today = sum(r for t, r in closed if t >= day)
        if -today >= rules.max_daily_loss:
            return (
                f"max_daily_loss: {-today:.8g} {quote} lost today "
                f"(limit {rules.max_daily_loss:.8g})"
            )
    drawdown = rules.max_drawdown
    if drawdown is not None:
        since = now_ms - drawdown.window * 1000
        total = high = deepest = 0.0
        for t, r in closed:
            if t < since:
                continue
            total += r
            high = max(high, total)
            deepest = max(deepest, high - total)
        if deepest >= drawdown.limit:
            return (
                f"max_drawdown: {deepest:.8g} {quote} below the high within "
                f"{drawdown.window:.0f} s (limit {drawdown.limit:.8g})"
            )
    return None
