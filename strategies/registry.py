"""Find strategy classes by registered name or by dotted path, and build them from params.

Bot configs name a strategy either by its registered name (`sma_cross`) or by a dotted
path to a custom class (`my_pkg.mod:MyStrategy`). Configs that arrive over the HTTP API
resolve with `allow_custom=False`: importing an arbitrary module is code execution.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from strategies.base import Strategy, StrategyParams
from strategies.dca import Dca
from strategies.grid import Grid
from strategies.rsi_reversion import RsiReversion
from strategies.sma_cross import SmaCross

BUILTINS: Mapping[str, type[Strategy[Any]]] = {
    cls.name: cls for cls in (SmaCross, RsiReversion, Grid, Dca)
}


class StrategyLookupError(ValueError):
    """Raised when a strategy spec names no usable strategy class (one-line message)."""


def resolve(spec: str, *, allow_custom: bool = True) -> type[Strategy[Any]]:
    """The strategy class for a registered name or a `pkg.module:Class` path."""
    spec = spec.strip()
    if spec in BUILTINS:
        return BUILTINS[spec]
    if ":" not in spec:
        raise StrategyLookupError(
            f"unknown strategy {spec!r}: expected one of {_names()}"
            + (" or a dotted path 'pkg.module:Class'" if allow_custom else "")
        )
    if not allow_custom:
        raise StrategyLookupError(
            f"custom strategy {spec!r} refused here: only registered strategies are allowed"
            f" ({_names()})"
        )
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise StrategyLookupError(f"bad strategy path {spec!r}: expected 'pkg.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure means "not usable"; chained below
        raise StrategyLookupError(
            f"cannot import {module_name!r} for strategy {spec!r}: {_one_line(exc)}"
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise StrategyLookupError(f"module {module_name!r} has no attribute {attr!r}")
    if not (inspect.isclass(obj) and issubclass(obj, Strategy)):
        raise StrategyLookupError(f"{spec!r} is not a Strategy subclass")
    if inspect.isabstract(obj):
        raise StrategyLookupError(f"{spec!r} is abstract: it must implement decide()")
    params_model = getattr(obj, "params_model", None)
    if not (inspect.isclass(params_model) and issubclass(params_model, StrategyParams)):
        raise StrategyLookupError(f"{spec!r} has no params_model subclassing StrategyParams")
    strategy: type[Strategy[Any]] = obj
    return strategy


def build(spec: str, params: Mapping[str, Any], *, allow_custom: bool = True) -> Strategy[Any]:
    """Resolve `spec` and instantiate it with validated params.

    Raises `StrategyLookupError` for the spec and lets pydantic's `ValidationError`
    (with field locations) propagate for bad params.
    """
    cls = resolve(spec, allow_custom=allow_custom)
    return cls(cls.params_model.model_validate(dict(params)))


def _names() -> str:
    return ", ".join(sorted(BUILTINS))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
