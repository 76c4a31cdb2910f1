"""Indicator values against hand-worked and textbook figures, and their per-tick cost."""

from __future__ import annotations

import random
import timeit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.indicators import RSI_WARMUP_FACTOR, ema, rsi, rsi_series, sma

# Wilder's RSI(14) worked example as published by StockCharts ("RSI" ChartSchool article):
# closes and the RSI printed from the 15th close on, to two decimals.
WILDER_CLOSES = [
    44.3389, 44.0902, 44.1497, 43.6124, 44.3278, 44.8264, 45.0955, 45.4245, 45.8433,
    46.0826, 45.8931, 46.0328, 45.6140, 46.2820, 46.2820, 46.0028, 46.0328, 46.4116,
    46.2222, 45.6439, 46.2122, 46.2521, 45.7137, 46.4515, 45.7835, 45.3548, 44.0288,
    44.1783, 44.2181, 44.5672, 43.4205, 42.6628, 43.1314,
]  # fmt: skip
WILDER_RSI = [
    70.53, 66.32, 66.55, 69.41, 66.36, 57.97, 62.93, 63.26, 56.06, 62.38, 54.71, 50.42,
    39.99, 41.46, 41.87, 45.46, 37.30, 33.08, 37.77,
]  # fmt: skip


def test_sma_of_last_values() -> None:
    # Given five closes / When the 3-period SMA is taken / Then it averages the last three
    assert sma([1.0, 2.0, 3.0, 4.0, 5.0], 3) == pytest.approx(4.0)
    assert sma([2.0, 4.0], 2) == pytest.approx(3.0)


def test_sma_needs_enough_values() -> None:
    assert sma([1.0, 2.0], 3) is None
    with pytest.raises(ValueError, match="period"):
        sma([1.0], 0)


def test_ema_seeded_with_sma() -> None:
    # Given 1..5 and period 3 (alpha 0.5)
    # When the EMA is taken
    # Then seed = SMA(1,2,3) = 2, then 0.5*4 + 0.5*2 = 3, then 0.5*5 + 0.5*3 = 4
    assert ema([1.0, 2.0, 3.0, 4.0, 5.0], 3) == pytest.approx(4.0)
    assert ema([1.0, 2.0], 3) is None


def test_wilder_rsi_matches_textbook_example() -> None:
    # Given Wilder's classic 14-period example series
    # When RSI is computed for every close from the 15th
    series = rsi_series(WILDER_CLOSES, 14)
    # Then every value matches the published figure to two decimals
    assert [round(v, 2) for v in series] == WILDER_RSI
    assert rsi(WILDER_CLOSES, 14) == pytest.approx(series[-1])


def test_rsi_hand_computed_small_period() -> None:
    # Given closes 1, 2, 1, 3 and period 2
    # first averages over changes +1, -1: gain 0.5, loss 0.5 -> RSI 50
    # then change +2: gain (0.5*1 + 2)/2 = 1.25, loss 0.5/2 = 0.25 -> RS 5 -> RSI 83.33
    assert rsi_series([1.0, 2.0, 1.0, 3.0], 2) == pytest.approx([50.0, 100 - 100 / 6])


def test_rsi_edge_cases() -> None:
    assert rsi([1.0, 2.0, 3.0, 4.0], 3) == 100.0  # only gains
    assert rsi([5.0, 4.0, 3.0, 2.0], 3) == 0.0  # only losses
    assert rsi([2.0, 2.0, 2.0, 2.0], 3) == 50.0  # no moves at all
    assert rsi([1.0, 2.0, 3.0], 3) is None  # needs period + 1 values


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=2, max_value=30), st.integers(min_value=0, max_value=10_000))
def test_windowed_rsi_close_to_full_history(period: int, seed: int) -> None:
    # Given a long random walk
    rng = random.Random(seed)
    closes = [100.0]
    for _ in range(2000):
        closes.append(closes[-1] * (1 + rng.gauss(0, 0.01)))
    # When RSI is computed only over the window a strategy receives
    window = closes[-(RSI_WARMUP_FACTOR * period + 1) :]
    # Then it agrees with the full-history value to within 0.05 RSI points
    full, windowed = rsi(closes, period), rsi(window, period)
    assert full is not None
    assert windowed is not None
    assert abs(full - windowed) < 0.05


def test_indicator_cost_is_negligible() -> None:
    # Given the windows the built-in strategies hand in (SMA 10/30, RSI 14 over 141 closes)
    rng = random.Random(1)
    closes = [100 + rng.gauss(0, 1) for _ in range(RSI_WARMUP_FACTOR * 14 + 1)]
    n = 2000
    # When each is computed many times
    rsi_us = timeit.timeit(lambda: rsi(closes, 14), number=n) / n * 1e6
    sma_us = timeit.timeit(lambda: (sma(closes[-31:], 10), sma(closes[-31:], 30)), number=n)
    sma_us = sma_us / n * 1e6
    print(f"\nRSI(14) over {len(closes)} closes: {rsi_us:.1f} us; SMA 10+30: {sma_us:.2f} us")
    # Then a tick's indicator work is microseconds (bounds generous for slow CI machines)
    assert rsi_us < 1000
    assert sma_us < 100
