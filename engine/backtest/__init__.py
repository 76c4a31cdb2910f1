"""Backtests: the same strategy classes over historical candles with the paper fill model."""

from engine.backtest.data import CandleFileError, load_candles_csv
from engine.backtest.report import Metrics, compute_metrics, write_report
from engine.backtest.runner import BacktestResult, Trade, run_backtest

__all__ = [
    "BacktestResult",
    "CandleFileError",
    "Metrics",
    "Trade",
    "compute_metrics",
    "load_candles_csv",
    "run_backtest",
    "write_report",
]
