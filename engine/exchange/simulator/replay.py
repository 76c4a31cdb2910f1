"""Replay mode: a symbol's prices come from recorded candles instead of the seeded path.

`SimulatorConfig(replay={"BTCUSDT": candles})` (or `botengine simulator --replay
BTCUSDT=file.csv`) serves those candles at their own times, as the backtest's candle
exchange sees them (engine/backtest/exchange.py), so a paper bot on the simulator and a
backtest on the same file decide and fill alike (tests/test_parity.py):

- a candle is known whole once it has closed; the one still forming shows its open only
  (klines list it as open = high = low = close = open), and the price until it closes
  is that open: bid = ask = last (no spread);
- resting orders on the simulator fill when a closed candle's range crosses them, as
  the fill model says (engine/exchange/fills.py).

Before the first candle the price is the first open; after the last, the last close.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from itertools import pairwise

from .prices import Bar, FloatArray


class ReplayPath:
    """The price path interface of `PricePath`, over candles (open time in epoch s)."""

    cacheable = False  # klines must not use the per-day summaries of a seeded path

    def __init__(self, candles: Sequence[tuple[int, float, float, float, float, float]]) -> None:
        if not candles:
            raise ValueError("a replay needs at least one candle")
        rows = sorted(candles)
        self.starts = [int(r[0]) // 1000 for r in rows]
        self.rows = rows
        gaps = [b - a for a, b in pairwise(self.starts)]
        self.width = min(gaps) if gaps else 60

    def _at(self, t_s: int) -> int:
        """Index of the candle containing second `t_s` (-1 before the first)."""
        return bisect.bisect_right(self.starts, t_s) - 1

    def mid(self, t_s: int) -> float:
        """The open of the candle forming at `t_s` (its range is not known yet)."""
        i = self._at(t_s)
        if i < 0:
            return float(self.rows[0][1])
        if t_s >= self.starts[i] + self.width:  # past the last candle
            return float(self.rows[i][4])
        return float(self.rows[i][1])

    def bar(self, start_s: int, end_s: int) -> Bar | None:
        """OHLCV over seconds `[start_s, end_s)`: every candle that closed in it whole,
        then the open of the one forming at its end."""
        if end_s <= start_s:
            return None
        parts: list[Bar] = []
        first = max(0, self._at(start_s))
        for i in range(first, len(self.rows)):
            begin, close = self.starts[i], self.starts[i] + self.width
            if begin >= end_s:
                break
            if close <= end_s and close > start_s:
                _, o, h, low, c, v = self.rows[i]
                parts.append(Bar(o, h, low, c, v))
        last = self._at(end_s - 1)
        if not parts or (last >= 0 and self.starts[last] + self.width > end_s):
            price = self.mid(end_s - 1)  # the candle forming at the end: its open only
            parts.append(Bar(price, price, price, price, 0.0))
        return Bar(
            parts[0].open,
            max(p.high for p in parts),
            min(p.low for p in parts),
            parts[-1].close,
            sum(p.volume for p in parts),
        )

    def day_candles(self, day: int, tf_s: int) -> FloatArray:
        """Not served from summaries in replay (see `cacheable`)."""
        raise NotImplementedError("replayed symbols build klines from bar()")
