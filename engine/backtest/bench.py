"""Backtest speed: each built-in strategy over a year of synthetic 1-minute candles.

`python -m engine.backtest.bench [--count N]` prints seconds and candles per second per
strategy (candle generation excluded). The figures in the report of the issue that
introduced the backtester came from this script.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

from engine.backtest.runner import run_backtest
from engine.exchange.fills import FillModel
from engine.logging import configure_logging
from engine.risk import RiskLimits
from engine.sample_data import generate_candles
from strategies.registry import build

YEAR_OF_MINUTES = 525_600
CASES: list[tuple[str, dict[str, Any]]] = [
    ("sma_cross", {"fast": 10, "slow": 30, "quote_amount": 1000}),
    ("rsi_reversion", {"period": 14, "quote_amount": 1000}),
    ("grid", {"lower": 20_000, "upper": 60_000, "levels": 40, "amount": 0.01}),
    ("dca", {"quote_amount": 5, "every": 60, "dip_sma": 50, "dip_multiplier": 2}),
]


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print one line per strategy."""
    parser = argparse.ArgumentParser(description="backtest speed per built-in strategy")
    parser.add_argument("--count", type=int, default=YEAR_OF_MINUTES)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    configure_logging("WARNING", "console")  # as the CLI: an order log line per fill costs
    candles = generate_candles("BTC/USDT", 1_704_067_200_000, args.count, 60_000, args.seed)
    for spec, params in CASES:
        strategy = build(spec, params)
        started = time.perf_counter()
        result = run_backtest(
            strategy,
            candles,
            symbol="BTC/USDT",
            balances={"USDT": 10_000.0},
            fill_model=FillModel(),
            risk=RiskLimits(),
        )
        elapsed = time.perf_counter() - started
        print(
            f"{spec:14} {len(candles):>8} candles {elapsed:7.2f} s "
            f"{len(candles) / elapsed:>9,.0f} candles/s  {len(result.trades)} trades"
        )


if __name__ == "__main__":
    main()
