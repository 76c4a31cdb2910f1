"""The units a bot config writes values in: durations (`30s`, `5m`, `1h`) and
percentages (`3%`), parsed into seconds and fractions."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_PERCENT = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*%\s*$")


def parse_duration(value: object) -> float:
    """Turn `30s`, `5m`, `1h`, `1.5` or `90` into seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a duration like 30s, 5m or 1h")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return float(match.group(1)) * _UNITS[match.group(2)]
    raise ValueError("must be a duration like 30s, 5m or 1h")


def parse_percent(value: object) -> float:
    """Turn `3%` into 0.03; a plain number is taken as the fraction itself (0.03)."""
    if isinstance(value, bool):
        raise ValueError("must be a percentage like 3%")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("must be a percentage like 3%")
        return float(value)
    if isinstance(value, str) and (match := _PERCENT.match(value)):
        return float(match.group(1)) / 100
    raise ValueError("must be a percentage like 3% (or a fraction like 0.03)")


def percent_below(high: float, *, inclusive: bool = False) -> Callable[[object], float]:
    """A validator of a percentage above 0 % and below `high` (a fraction), whose error
    says so in percent: `must be above 0% and below 100% (got 150%)`."""

    def check(value: object) -> float:
        fraction = parse_percent(value)
        if not (0 < fraction <= high if inclusive else 0 < fraction < high):
            edge = "at most" if inclusive else "below"
            raise ValueError(
                f"must be above 0% and {edge} {high * 100:g}% (got {fraction * 100:g}%)"
            )
        return fraction

    return check
