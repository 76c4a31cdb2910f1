"""Seeded synthetic candles for demos, tests and benchmarks (offline, reproducible).

The price follows geometric Brownian motion whose drift and volatility switch between
three regimes - bull, bear and calm - as a Markov chain (a regime lasts about two weeks
on average, whatever the timeframe), so trend and mean-reversion strategies both get
something to do. Each candle opens at the previous close; its close is one GBM step;
its high and low reach beyond open/close by a random fraction of the step's volatility.
Prices are rounded to cents. The same arguments always give the same candles (Python's
`random.Random` is seeded and platform independent).

Regenerate the shipped sample:
`python -m engine.sample_data data/sample_btc_usdt_1h.csv --count 4320 --seed 7`.
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from engine.domain import Candle

YEAR_MS = 365 * 24 * 3600 * 1000
MEAN_REGIME_MS = 14 * 24 * 3600 * 1000
# (annual drift, annual volatility) of each regime.
REGIMES: dict[str, tuple[float, float]] = {
    "bull": (1.2, 0.55),
    "bear": (-1.0, 0.75),
    "calm": (0.0, 0.30),
}
START_PRICES = {"BTC": 40_000.0, "ETH": 2_500.0}


def generate_candles(
    symbol: str,
    start_ms: int,
    count: int,
    timeframe_ms: int,
    seed: int,
    *,
    start_price: float | None = None,
) -> list[Candle]:
    """`count` candles of `timeframe_ms` from `start_ms`; the start price defaults by base
    currency (BTC 40,000, ETH 2,500, anything else 100)."""
    if count < 0 or timeframe_ms <= 0:
        raise ValueError("count must be >= 0 and timeframe_ms > 0")
    rng = random.Random(seed)
    price = start_price or START_PRICES.get(symbol.split("/")[0].upper(), 100.0)
    dt = timeframe_ms / YEAR_MS
    switch = min(1.0, timeframe_ms / MEAN_REGIME_MS)
    names = sorted(REGIMES)
    regime = rng.choice(names)
    candles: list[Candle] = []
    open_ = round(price, 2)
    for i in range(count):
        if rng.random() < switch:
            regime = rng.choice([n for n in names if n != regime])
        mu, sigma = REGIMES[regime]
        step_sd = sigma * math.sqrt(dt)
        close = open_ * math.exp((mu - sigma * sigma / 2) * dt + step_sd * rng.gauss(0.0, 1.0))
        high = max(open_, close) * math.exp(abs(rng.gauss(0.0, 0.5)) * step_sd)
        low = min(open_, close) * math.exp(-abs(rng.gauss(0.0, 0.5)) * step_sd)
        volume = 10.0 * math.exp(rng.gauss(0.0, 0.5)) * (1 + abs(close / open_ - 1) / step_sd)
        # Rounding is monotonic, so low <= open, close <= high survives it; the floor
        # keeps a long bear run from rounding a price down to zero.
        close = max(round(close, 2), 0.01)
        candle = Candle(
            ts=start_ms + i * timeframe_ms,
            open=open_,
            high=max(round(high, 2), close),
            low=max(min(round(low, 2), open_, close), 0.01),
            close=close,
            volume=round(volume, 4),
        )
        candles.append(candle)
        open_ = close
    return candles


def write_candles_csv(path: str | Path, candles: Iterable[Candle]) -> None:
    """Write candles in the backtester's format (header, epoch-ms timestamps)."""
    with Path(path).open("w", encoding="utf-8", newline="") as f:
        f.write("timestamp,open,high,low,close,volume\n")
        for c in candles:
            f.write(f"{c.ts},{c.open!r},{c.high!r},{c.low!r},{c.close!r},{c.volume!r}\n")


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: write a synthetic candle CSV."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out", type=Path)
    parser.add_argument("--symbol", default="BTC/USDT")
    parser.add_argument("--start", default="2024-01-01T00:00:00+00:00", help="ISO 8601")
    parser.add_argument("--count", type=int, default=4320)
    parser.add_argument("--timeframe-ms", type=int, default=3_600_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    start = datetime.fromisoformat(args.start)
    start = start if start.tzinfo else start.replace(tzinfo=UTC)
    candles = generate_candles(
        args.symbol, int(start.timestamp() * 1000), args.count, args.timeframe_ms, args.seed
    )
    write_candles_csv(args.out, candles)


if __name__ == "__main__":
    main()
