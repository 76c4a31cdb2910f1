"""Backtest metrics and the report files: `summary.json`, `trades.csv`, `equity.png`.

Definitions (all in quote currency):

- total return: final equity / initial equity - 1, equity = quote + base * close;
- max drawdown: the largest fall from a running equity peak, as a fraction of that peak;
- trades: every fill; round trips: every sell, scored against the average cost of the
  position (buy fees included); win rate: share of round trips with positive net PnL;
- fees: sum of all fees;
- Sharpe: mean / sample standard deviation of per-candle equity returns, times
  sqrt(candles per year) with the candle interval taken as the median gap between
  timestamps and a 365-day year (crypto trades every day); risk-free rate 0.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

from engine.backtest.runner import BacktestResult

_YEAR_MS = 365 * 24 * 3600 * 1000
# Plotting every point of a year of minute candles is slow and invisible at 1600 px.
_MAX_PLOT_POINTS = 4000


@dataclass(frozen=True, slots=True)
class Metrics:
    """Headline figures of one backtest; None where a figure is undefined."""

    initial_equity: float
    final_equity: float
    total_return: float
    max_drawdown: float
    trades: int
    round_trips: int
    win_rate: float | None
    fees: float
    sharpe: float | None
    timeframe_ms: int | None


def compute_metrics(result: BacktestResult) -> Metrics:
    """The figures defined in the module doc, computed from `result`."""
    equity = result.equity
    initial = _initial_equity(result)
    final = equity[-1] if equity else initial
    peak, max_dd = initial, 0.0
    for value in equity:
        if value > peak:
            peak = value
        elif peak > 0:
            max_dd = max(max_dd, (peak - value) / peak)
    pnls = [t.realized_pnl for t in result.trades if t.realized_pnl is not None]
    wins = sum(1 for p in pnls if p > 0)
    timeframe = _timeframe(result.timestamps)
    return Metrics(
        initial_equity=initial,
        final_equity=final,
        total_return=final / initial - 1 if initial > 0 else 0.0,
        max_drawdown=max_dd,
        trades=len(result.trades),
        round_trips=len(pnls),
        win_rate=wins / len(pnls) if pnls else None,
        fees=math.fsum(t.fee for t in result.trades),
        sharpe=_sharpe(equity, timeframe),
        timeframe_ms=timeframe,
    )


def write_report(result: BacktestResult, out_dir: str | Path) -> Metrics:
    """Write `summary.json`, `trades.csv` and `equity.png` into `out_dir` (created)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = compute_metrics(result)
    (out / "summary.json").write_text(
        json.dumps(summary(result, metrics), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    _write_trades(result, out / "trades.csv")
    _plot_equity(result, out / "equity.png")
    return metrics


def summary(result: BacktestResult, metrics: Metrics) -> dict[str, Any]:
    """The JSON-ready summary: what ran, on what, and the metrics."""
    return {
        "strategy": result.strategy,
        "params": result.params,
        "symbol": result.symbol,
        "candles": len(result.timestamps),
        "start": iso(result.timestamps[0]) if result.timestamps else None,
        "end": iso(result.timestamps[-1]) if result.timestamps else None,
        "fill_model": asdict(result.fill_model),
        "initial_balances": result.initial_balances,
        "final_balances": result.final_balances,
        "initial_price": result.initial_price,
        "final_price": result.final_price,
        "open_orders_at_end": result.open_orders,
        "rejected_orders": result.rejected,
        "dropped_intents": result.dropped,
        "exits": result.exits,
        "protections": [{"at": iso(ts), "reason": reason} for ts, reason in result.protections],
        "metrics": {k: _finite(v) for k, v in asdict(metrics).items()},
    }


def _write_trades(result: BacktestResult, path: Path) -> None:
    fields = ["timestamp", "time", "side", "type", "amount", "price", "fee", "quote_cost"]
    fields += ["realized_pnl", "reason", "tag"]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(fields)
        for t in result.trades:
            pnl = "" if t.realized_pnl is None else repr(t.realized_pnl)
            numbers = [repr(x) for x in (t.amount, t.price, t.fee, t.quote_cost)]
            row = [t.ts, iso(t.ts), t.side.value, t.type.value, *numbers, pnl, t.reason, t.tag]
            writer.writerow(row)


def _plot_equity(result: BacktestResult, path: Path) -> None:
    # The object API with an explicit Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    stride = max(1, len(result.equity) // _MAX_PLOT_POINTS)
    # Matplotlib date numbers are days since its default epoch, 1970-01-01 UTC.
    xs = [ts / 86_400_000 for ts in result.timestamps[::stride]]
    ys = result.equity[::stride]
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(xs, ys, linewidth=1)
    ax.xaxis_date()
    ax.set_title(f"{result.strategy} on {result.symbol}: equity ({result.quote})")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})


def _initial_equity(result: BacktestResult) -> float:
    b = result.initial_balances
    return b.get(result.quote, 0.0) + b.get(result.base, 0.0) * result.initial_price


def _timeframe(timestamps: list[int]) -> int | None:
    if len(timestamps) < 2:
        return None
    return int(statistics.median(b - a for a, b in pairwise(timestamps)))


def _sharpe(equity: list[float], timeframe_ms: int | None) -> float | None:
    if timeframe_ms is None or timeframe_ms <= 0:
        return None
    returns = [b / a - 1 for a, b in pairwise(equity) if a > 0]
    if len(returns) < 2:
        return None
    # statistics.stdev is exact but uses fractions: far too slow for a year of minutes.
    mean = math.fsum(returns) / len(returns)
    sd = math.sqrt(math.fsum((r - mean) ** 2 for r in returns) / (len(returns) - 1))
    if sd == 0:
        return None
    return mean / sd * math.sqrt(_YEAR_MS / timeframe_ms)


def iso(ts: int) -> str:
    """Epoch milliseconds as an ISO 8601 time in UTC (`...Z`)."""
    return datetime.fromtimestamp(ts / 1000, UTC).isoformat().replace("+00:00", "Z")


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity; report such figures as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
