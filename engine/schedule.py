"""Slot arithmetic: slot k of a generation is due at `origin + k * interval`.

Pure functions, so the schedule never drifts with tick durations: lateness is measured
against these due times, and missed slots are counted rather than replayed.
"""

from __future__ import annotations

import math

# A slot that became due less than this fraction of an interval ago (capped) still runs,
# late; an older one is missed. Without it a tick finishing a few ms after its
# successor's due time would skip a whole interval.
CATCH_UP_FRACTION = 0.5
CATCH_UP_CAP_S = 30.0


def due_at(origin: float, interval: float, slot: int) -> float:
    """Epoch seconds at which `slot` is due."""
    return origin + slot * interval


def first_slot_after(origin: float, interval: float, now: float) -> int:
    """The smallest slot whose due time is strictly after `now` (never negative)."""
    if now < origin:
        return 0
    return math.floor((now - origin) / interval) + 1


def next_runnable(origin: float, interval: float, now: float) -> int:
    """The first slot still worth running at `now`: not yet due, or only slightly late."""
    tolerance = min(interval * CATCH_UP_FRACTION, CATCH_UP_CAP_S)
    return first_slot_after(origin, interval, now - tolerance)


def parks(due: float, now: float, horizon_s: float) -> bool:
    """Whether a slot due at `due` is parked at `now` rather than sent as an ETA message:
    only when it is more than the ETA horizon away. Every caller decides with this, so
    the dispatcher may sleep up to the horizon (engine/dispatcher.py)."""
    return due - now > horizon_s


def successor(origin: float, interval: float, slot: int, now: float) -> tuple[int, int]:
    """The slot to run after `slot`, and how many slots in between are missed."""
    nxt = max(slot + 1, next_runnable(origin, interval, now))
    return nxt, nxt - slot - 1


_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def timeframe_ms(timeframe: str) -> int:
    """The width of a candle timeframe (`1s`, `5m`, `4h`, `1d`) in milliseconds."""
    count, unit = timeframe[:-1], timeframe[-1]
    if not count.isdigit() or unit not in _UNIT_S:
        raise ValueError(f"unknown timeframe {timeframe!r}")
    return int(count) * _UNIT_S[unit] * 1000


def aligned_origin(now: float, width_s: float, offset_s: float) -> float:
    """The first time at or after `now` that is `offset_s` past a candle boundary (epoch
    multiples of `width_s`): slot 0 of a bot aligned to candle close."""
    return math.ceil((now - offset_s) / width_s) * width_s + offset_s
