"""Strategies used by the chain tests (custom strategies loaded by dotted path)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.domain import MarketContext
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
