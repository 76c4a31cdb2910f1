"""The strategy interface: a typed params model and one pure decision method.

A strategy never does I/O and never reads a clock: everything it may look at arrives
in the `MarketContext`, and everything it wants to remember between ticks goes back in
`Decision.state`, which the engine persists per bot (JSON). The same class therefore
runs live, on paper and in a backtest.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from engine.domain import MarketContext, OrderIntent

MAX_AMOUNT = 1e12
"""Largest price, amount or quote amount a param may state: far above any real market,
far below where float arithmetic on it (amount x price x fee) overflows or loses meaning."""


class StrategyParams(BaseModel):
    """Base of every strategy's params model: unknown keys are errors, values are frozen,
    and floats are finite (`.inf` would validate as "greater than 0", then fail every tick)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


P = TypeVar("P", bound=StrategyParams)


@dataclass(frozen=True, slots=True)
class Decision:
    """A strategy's answer for one tick: the orders it wants, the open orders it wants
    cancelled (each a tag or a client order id), and its new state.

    `state` replaces the persisted state when not None; it must be JSON-serialisable.
    Cancels are sent before the intents, through the same idempotent path as orders.
    """

    intents: tuple[OrderIntent, ...] = ()
    cancels: tuple[str, ...] = ()
    state: dict[str, Any] | None = None
    notes: dict[str, Any] = field(default_factory=dict)


class Strategy(ABC, Generic[P]):
    """Base class of all strategies.

    Subclasses set `name` (the registry name), `params_model`, and implement `decide`.
    """

    name: ClassVar[str]
    params_model: ClassVar[type[StrategyParams]]

    def __init__(self, params: P) -> None:
        self.params = params

    def candles_needed(self) -> int:
        """How many most recent candles `decide` needs in the context (0 = none)."""
        return 0

    @abstractmethod
    def decide(self, ctx: MarketContext, state: Mapping[str, Any]) -> Decision:
        """Return the order intents for this tick, given the market and persisted state."""
