"""Deterministic seeded price path per symbol, as a pure function of time.

Same seed + same symbol + same second -> same price, whatever was asked before and in
whichever process. That rules out a plain random walk from a start date (the price at
``t`` would depend on every step before it), so the path is built in two layers:

* one *anchor* log-price per UTC day, from multi-octave value noise keyed by a hash
  of (seed, symbol, octave, index): random access, wanders like a walk over days to
  months, and reverts to the configured level over years (so prices never drift to 0);
* within a day, a 1-second Brownian bridge between that day's anchor and the next
  one, drawn from a NumPy generator seeded by (seed, symbol, day).

A day is generated lazily (about 3 ms) and summarised into minute, hour and day bars,
so candles of any timeframe and the extremes over any time range are a few array
slices away. Summaries are cached in small LRUs; evicted days are simply regenerated.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections import OrderedDict
from statistics import NormalDist
from typing import Generic, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

DAY_S = 86_400
_OCTAVES = 9  # anchor noise up to 256-day wavelength
_MASK = (1 << 63) - 1
_NORMAL = NormalDist()

FloatArray = npt.NDArray[np.float64]
K = TypeVar("K")
V = TypeVar("V")


class Bar(NamedTuple):
    """Open, high, low and close mid prices plus base volume over a time range."""

    open: float
    high: float
    low: float
    close: float
    volume: float


def _merge(parts: list[Bar]) -> Bar:
    return Bar(
        parts[0].open,
        max(p.high for p in parts),
        min(p.low for p in parts),
        parts[-1].close,
        sum(p.volume for p in parts),
    )


def _rows_bar(rows: FloatArray, i: int, j: int) -> Bar:
    """Aggregate OHLCV rows ``[i, j)`` of a (n, 5) array."""
    if j - i == 1:
        o, h, lo, c, v = rows[i].tolist()
        return Bar(o, h, lo, c, v)
    block = rows[i:j]
    return Bar(
        float(block[0, 0]),
        float(block[:, 1].max()),
        float(block[:, 2].min()),
        float(block[-1, 3]),
        float(block[:, 4].sum()),
    )


def _aggregate(rows: FloatArray, k: int) -> FloatArray:
    """Group consecutive runs of ``k`` OHLCV rows into one row each."""
    g = rows.reshape(-1, k, 5)
    return np.column_stack(
        (g[:, 0, 0], g[:, :, 1].max(axis=1), g[:, :, 2].min(axis=1), g[:, -1, 3], g[:, :, 4].sum(1))
    )


class _LRU(Generic[K, V]):
    """A tiny bounded mapping: recent entries stay, the oldest is dropped."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self.data.get(key)
        if value is not None:
            self.data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self.data[key] = value
        self.data.move_to_end(key)
        if len(self.data) > self.size:
            self.data.popitem(last=False)


class PricePath:
    """The mid-price path of one symbol; all times are epoch seconds."""

    def __init__(
        self,
        seed: int,
        symbol: str,
        price: float,
        daily_volatility: float = 0.03,
        base_volume: float = 10.0,
    ) -> None:
        self.seed = seed & _MASK
        self.symbol = symbol
        self.key = zlib.crc32(symbol.encode())
        self.log_level = math.log(price)
        self.vol = daily_volatility
        self.base_volume = base_volume
        # value-noise amplitude per octave: day-to-day moves of about ``vol``
        self._amps = [0.5 * daily_volatility * math.sqrt(1 << k) for k in range(_OCTAVES)]
        self._anchors: dict[int, float] = {}
        self._seconds: _LRU[int, FloatArray] = _LRU(4)  # 0.7 MB per day
        self._minutes: _LRU[int, FloatArray] = _LRU(64)  # 58 kB per day
        self._hours: _LRU[int, FloatArray] = _LRU(8192)  # 1 kB per day
        self._candles: _LRU[tuple[int, int], FloatArray] = _LRU(512)

    # -- generation ------------------------------------------------------------------

    def _gauss(self, octave: int, index: int) -> float:
        digest = hashlib.blake2b(
            f"{self.seed}:{self.key}:{octave}:{index}".encode(), digest_size=8
        ).digest()
        u = (int.from_bytes(digest, "big") + 0.5) / 2.0**64
        return _NORMAL.inv_cdf(u)

    def anchor(self, day: int) -> float:
        """Log mid price at 00:00:00 UTC of ``day`` (days since the epoch)."""
        cached = self._anchors.get(day)
        if cached is not None:
            return cached
        x = self.log_level
        for k, amp in enumerate(self._amps):
            j, r = divmod(day, 1 << k)
            g0, g1 = self._gauss(k, j), self._gauss(k, j + 1)
            x += amp * (g0 + (g1 - g0) * r / (1 << k))
        self._anchors[day] = x
        return x

    def _generate(self, day: int) -> FloatArray:
        rng = np.random.default_rng([self.seed, self.key, day & _MASK])
        steps = rng.standard_normal(DAY_S) * (self.vol / math.sqrt(DAY_S))
        walk = np.empty(DAY_S + 1)
        walk[0] = 0.0
        np.cumsum(steps, out=walk[1:])
        a0, a1 = self.anchor(day), self.anchor(day + 1)
        # Brownian bridge: the walk bent so that it ends exactly on the next anchor
        ramp = np.arange(DAY_S, dtype=np.float64) / DAY_S
        seconds: FloatArray = np.exp(a0 + walk[:DAY_S] + ramp * (a1 - a0 - walk[DAY_S]))
        volume = rng.gamma(2.0, self.base_volume / 2.0, size=DAY_S // 60)
        per_minute = seconds.reshape(-1, 60)
        minutes = np.column_stack(
            (
                per_minute[:, 0],
                per_minute.max(axis=1),
                per_minute.min(axis=1),
                per_minute[:, -1],
                volume,
            )
        )
        self._seconds.put(day, seconds)
        self._minutes.put(day, minutes)
        self._hours.put(day, _aggregate(minutes, 60))
        return seconds

    def _day_seconds(self, day: int) -> FloatArray:
        seconds = self._seconds.get(day)
        return seconds if seconds is not None else self._generate(day)

    def _day_minutes(self, day: int) -> FloatArray:
        minutes = self._minutes.get(day)
        if minutes is None:
            self._generate(day)
            minutes = self._minutes.get(day)
            assert minutes is not None
        return minutes

    def _day_hours(self, day: int) -> FloatArray:
        hours = self._hours.get(day)
        if hours is None:
            self._generate(day)
            hours = self._hours.get(day)
            assert hours is not None
        return hours

    # -- queries ---------------------------------------------------------------------

    def mid(self, t_s: int) -> float:
        """Mid price during second ``t_s``."""
        day, off = divmod(t_s, DAY_S)
        return float(self._day_seconds(day)[off])

    def bar(self, start_s: int, end_s: int) -> Bar | None:
        """OHLCV of the mid over seconds ``[start_s, end_s)``; None if the range is empty."""
        if end_s <= start_s:
            return None
        parts: list[Bar] = []
        t = start_s
        while t < end_s:
            day, off = divmod(t, DAY_S)
            day_end = (day + 1) * DAY_S
            if off == 0 and end_s >= day_end:
                parts.append(_rows_bar(self._day_hours(day), 0, 24))
                t = day_end
                continue
            stop = min(end_s, day_end)
            self._within_day(day, off, stop - day * DAY_S, parts)
            t = stop
        return parts[0] if len(parts) == 1 else _merge(parts)

    def _within_day(self, day: int, lo: int, hi: int, out: list[Bar]) -> None:
        # split [lo, hi) into seconds | whole minutes | whole hours | minutes | seconds
        m_lo, m_hi = -(-lo // 60) * 60, hi // 60 * 60
        if m_lo >= m_hi:
            out.append(self._seconds_bar(day, lo, hi))
            return
        if lo < m_lo:
            out.append(self._seconds_bar(day, lo, m_lo))
        h_lo, h_hi = -(-m_lo // 3600) * 3600, m_hi // 3600 * 3600
        minutes = self._day_minutes(day)
        if h_lo >= h_hi:
            out.append(_rows_bar(minutes, m_lo // 60, m_hi // 60))
        else:
            if m_lo < h_lo:
                out.append(_rows_bar(minutes, m_lo // 60, h_lo // 60))
            out.append(_rows_bar(self._day_hours(day), h_lo // 3600, h_hi // 3600))
            if h_hi < m_hi:
                out.append(_rows_bar(minutes, h_hi // 60, m_hi // 60))
        if m_hi < hi:
            out.append(self._seconds_bar(day, m_hi, hi))

    def _seconds_bar(self, day: int, lo: int, hi: int) -> Bar:
        seconds = self._day_seconds(day)[lo:hi]
        minutes = self._day_minutes(day)
        volume = 0.0
        for minute in range(lo // 60, (hi - 1) // 60 + 1):
            overlap = min(hi, minute * 60 + 60) - max(lo, minute * 60)
            volume += float(minutes[minute, 4]) * overlap / 60.0
        return Bar(
            float(seconds[0]),
            float(seconds.max()),
            float(seconds.min()),
            float(seconds[-1]),
            volume,
        )

    def day_candles(self, day: int, tf_s: int) -> FloatArray:
        """All ``tf_s`` candles of one day as an (n, 5) array.

        ``tf_s`` is a whole number of minutes that divides a day (1m ... 1d).
        """
        key = (day, tf_s)
        cached = self._candles.get(key)
        if cached is not None:
            return cached
        if tf_s % 3600 == 0:
            rows = _aggregate(self._day_hours(day), tf_s // 3600)
        else:
            rows = _aggregate(self._day_minutes(day), tf_s // 60)
        self._candles.put(key, rows)
        return rows
