"""Backtests: a hand-computed run, limit orders, determinism, reports, CSV loading, samples."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field

from engine.backtest import (
    BacktestResult,
    CandleFileError,
    compute_metrics,
    load_candles_csv,
    run_backtest,
    write_report,
)
from engine.domain import Candle, MarketContext, MarketRules, OrderIntent, OrderType, Side
from engine.exchange.fills import FillModel
from engine.risk import RiskLimits
from engine.sample_data import generate_candles, write_candles_csv
from strategies.base import Decision, Strategy, StrategyParams
from strategies.registry import build
from strategies.sma_cross import SmaCross, SmaCrossParams

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample_btc_usdt_1h.csv"
HOUR = 3_600_000
NO_SLIPPAGE = FillModel(fee_rate=0.001, slippage=0.0)


def bars(closes: Sequence[float], lows: Sequence[float] | None = None) -> list[Candle]:
    return [Candle(i * HOUR, c, c, lows[i] if lows else c, c, 1.0) for i, c in enumerate(closes)]


class LimitParams(StrategyParams):
    """Where to bid."""

    price: float = Field(gt=0)


class BidOnce(Strategy[LimitParams]):
    """Places one limit buy of 1 unit at `price` on the first tick."""

    name = "bid_once"
    params_model = LimitParams

    def decide(self, ctx: MarketContext, state: Mapping[str, Any]) -> Decision:
        """Bid once, then remember it."""
        if state.get("placed"):
            return Decision()
        intent = OrderIntent(Side.BUY, OrderType.LIMIT, amount=1.0, price=self.params.price)
        return Decision(intents=(intent,), state={"placed": True})


class FlipParams(StrategyParams):
    """Base amount bought on even ticks."""

    amount: float = 1.0


class Flip(Strategy[FlipParams]):
    """Buys on even ticks and sells the whole position on odd ticks."""

    name = "flip"
    params_model = FlipParams

    def decide(self, ctx: MarketContext, state: Mapping[str, Any]) -> Decision:
        """Alternate."""
        tick = int(state.get("tick", 0))
        if tick % 2 == 0:
            intents: tuple[OrderIntent, ...] = (OrderIntent(Side.BUY, amount=self.params.amount),)
        else:
            intents = (OrderIntent(Side.SELL, amount=ctx.position),) if ctx.position else ()
        return Decision(intents=intents, state={"tick": tick + 1})


def run(strategy: Strategy[Any], candles: Sequence[Candle], **kw: Any) -> BacktestResult:
    options: dict[str, Any] = {
        "symbol": "BTC/USDT",
        "balances": {"USDT": 100.0},
        "fill_model": NO_SLIPPAGE,
        "risk": None,
    }
    options.update(kw)
    return run_backtest(strategy, candles, **options)


def test_sma_cross_backtest_matches_hand_computation() -> None:
    # Given SMA 1/2 crossing on closes 10, 9, 11, 12, 10, 13 (each candle opens at its
    # close) with 0.1 % fees, no slippage
    strategy = SmaCross(SmaCrossParams(fast=1, slow=2, amount=1.0))
    # When backtested with 100 USDT
    result = run(strategy, bars([10, 9, 11, 12, 10, 13]))
    # Then (worked by hand; a step runs at its candle's close, a market order fills at
    # the next price, the next candle's open):
    #  step 1: 9 < 9.5 below (baseline); step 2: 11 > 10 above -> buy 1, fills @ 12
    #  (candle 3's open), fee 0.012; step 4: 10 < 11 below -> sell 1 @ 13 (candle 5's
    #  open), fee 0.013; step 5: 13 > 11.5 -> buy 1 @ 13 (no next candle: the close)
    trades = [(t.ts // HOUR, t.side.value, t.amount, t.price) for t in result.trades]
    assert trades == [(3, "buy", 1.0, 12.0), (5, "sell", 1.0, 13.0), (5, "buy", 1.0, 13.0)]
    assert result.final_balances["USDT"] == pytest.approx(100 - 12.012 + 12.987 - 13.013)
    assert result.final_balances["BTC"] == pytest.approx(1.0)
    assert result.equity == pytest.approx([100, 100, 98.988, 99.988, 100.975, 100.962])
    # The round trip: 1 gained, less both its fees
    assert result.trades[1].realized_pnl == pytest.approx(1.0 - 0.013 - 0.012)
    m = compute_metrics(result)
    assert m.total_return == pytest.approx(0.00962)
    assert m.max_drawdown == pytest.approx((100 - 98.988) / 100)
    assert (m.trades, m.round_trips, m.win_rate) == (3, 1, 1.0)
    assert m.fees == pytest.approx(0.038)
    assert m.timeframe_ms == HOUR


def test_sharpe_annualised_at_candle_frequency() -> None:
    # Given daily candles and an equity curve 100 -> 110 -> 99 -> 108.9
    result = run(Flip(FlipParams()), bars([1, 1, 1, 1]), balances={"USDT": 100.0})
    result.timestamps = [i * 86_400_000 for i in range(4)]
    result.equity = [100.0, 110.0, 99.0, 108.9]
    # Then Sharpe = mean / sample sd of (0.1, -0.1, 0.1) * sqrt(365)
    returns = [0.1, -0.1, 0.1]
    mean = sum(returns) / 3
    sd = math.sqrt(sum((r - mean) ** 2 for r in returns) / 2)
    assert compute_metrics(result).sharpe == pytest.approx(mean / sd * math.sqrt(365))


def test_limit_order_rests_with_funds_locked_then_fills_at_its_price() -> None:
    # Given a bid at 95 placed at the first close (100)
    candles = bars([100, 98, 97, 99], lows=[100, 96, 94, 99])
    result = run(BidOnce(LimitParams(price=95)), candles)
    # Then it fills on the candle whose low reaches 95 (the third), at exactly 95
    assert [(t.ts // HOUR, t.price, t.type) for t in result.trades] == [(2, 95.0, OrderType.LIMIT)]
    # And equity never lost the locked 95.095 USDT while the order rested
    assert result.equity[:2] == pytest.approx([100.0, 100.0])
    assert result.final_balances == pytest.approx({"USDT": 100 - 95.095, "BTC": 1.0})
    assert result.open_orders == 0


def test_marketable_limit_fills_at_once_and_unaffordable_orders_are_rejected() -> None:
    # A bid above the next price fills at once, at its limit price, as the next candle opens
    result = run(BidOnce(LimitParams(price=105)), bars([100, 100]), balances={"USDT": 200.0})
    assert [(t.ts, t.price) for t in result.trades] == [(HOUR, 105.0)]
    # A bid the balance cannot pay is rejected like InsufficientFunds, nothing changes
    poor = run(BidOnce(LimitParams(price=95)), bars([100, 90]), balances={"USDT": 50.0})
    assert poor.trades == []
    assert poor.rejected == 1
    assert poor.final_balances == {"USDT": 50.0, "BTC": 0.0}


def test_risk_drops_are_counted_by_reason() -> None:
    rules = MarketRules("BTC/USDT", "BTC", "USDT", min_notional=500)
    result = run(Flip(FlipParams()), bars([100, 100, 100]), rules=rules, risk=RiskLimits())
    assert result.trades == []
    assert result.dropped == {"min_notional": 2}


def test_realized_pnl_and_fees_add_up_to_the_equity_change() -> None:
    # Given a strategy that buys and sells on alternate candles and ends flat
    candles = generate_candles("BTC/USDT", 0, 200, HOUR, seed=3)
    result = run(Flip(FlipParams(amount=0.001)), candles, fill_model=FillModel())
    assert result.final_balances["BTC"] == pytest.approx(0.0, abs=1e-12)
    # Then the equity change is exactly the sum of realized PnL (fees included in it)
    realized = sum(t.realized_pnl or 0.0 for t in result.trades)
    assert result.equity[-1] - 100.0 == pytest.approx(realized, abs=1e-9)
    assert len(result.trades) == 200


def test_backtests_are_deterministic(tmp_path: Path) -> None:
    # Given the sample data and a grid
    candles = load_candles_csv(SAMPLE)
    params = {"lower": 22_000, "upper": 60_000, "levels": 20, "amount": 0.02}

    def once(out: Path) -> BacktestResult:
        result = run_backtest(
            build("grid", params),
            candles,
            symbol="BTC/USDT",
            balances={"USDT": 10_000.0},
            fill_model=FillModel(),
            risk=RiskLimits(),
        )
        write_report(result, out)
        return result

    # When run twice
    first, second = once(tmp_path / "a"), once(tmp_path / "b")
    # Then results and every report file are identical
    assert first == second
    assert first.trades
    for name in ("summary.json", "trades.csv", "equity.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_report_files(tmp_path: Path) -> None:
    strategy = SmaCross(SmaCrossParams(fast=1, slow=2, amount=1.0))
    result = run(strategy, bars([10, 9, 11, 12, 10, 13]))
    metrics = write_report(result, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["strategy"] == "sma_cross"
    assert summary["params"] == {"amount": 1.0, "quote_amount": None, "fast": 1, "slow": 2}
    assert summary["metrics"]["trades"] == metrics.trades == 3
    assert summary["start"] == "1970-01-01T00:00:00Z"
    lines = (tmp_path / "out" / "trades.csv").read_text().splitlines()
    assert lines[0] == (
        "timestamp,time,side,type,amount,price,fee,quote_cost,realized_pnl,reason,tag"
    )
    assert len(lines) == 4
    assert (tmp_path / "out" / "equity.png").read_bytes()[:4] == b"\x89PNG"


def test_progress_and_input_checks() -> None:
    calls: list[tuple[int, int]] = []
    strategy = SmaCross(SmaCrossParams(fast=1, slow=2, amount=1.0))
    run(strategy, bars([10.0] * 250), progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (250, 250)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    with pytest.raises(ValueError, match="no candles"):
        run(strategy, [])
    with pytest.raises(ValueError, match="BASE/QUOTE"):
        run(strategy, bars([1.0]), symbol="BTCUSDT")


def test_speed_sample(capsys: pytest.CaptureFixture[str]) -> None:
    # Given 50,000 one-minute candles (the year-long figure is in engine/backtest/bench.py)
    candles = generate_candles("BTC/USDT", 0, 50_000, 60_000, seed=1)
    strategy = SmaCross(SmaCrossParams(fast=10, slow=30, quote_amount=100))
    started = time.perf_counter()
    run(strategy, candles, balances={"USDT": 10_000.0})
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        print(f"\nsma_cross backtest: {50_000 / elapsed:,.0f} candles/s")
    # Then it runs far faster than a year of minutes per minute would need (8,760/s)
    assert elapsed < 10


# --- CSV loading ---------------------------------------------------------------------

HEADER = "timestamp,open,high,low,close,volume\n"


def write(tmp_path: Path, body: str, header: str = HEADER) -> Path:
    path = tmp_path / "c.csv"
    path.write_text(header + body, encoding="utf-8")
    return path


def test_load_epoch_ms_and_iso_timestamps_with_range(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "1704067200000,1,2,0.5,1.5,10\n"
        "2024-01-01T01:00:00Z,1.5,2,1,1.8,11\n"
        "2024-01-01T02:00:00,1.8,1.9,1.7,1.7,0\n"
        "\n",
    )
    candles = load_candles_csv(path)
    assert [c.ts for c in candles] == [1704067200000, 1704070800000, 1704074400000]
    assert candles[1] == Candle(1704070800000, 1.5, 2.0, 1.0, 1.8, 11.0)
    # start inclusive, end exclusive, in any accepted form
    ranged = load_candles_csv(path, start="2024-01-01T01:00:00Z", end=1704074400000)
    assert [c.ts for c in ranged] == [1704070800000]


T0, T1, T2 = 1704067200000, 1704070800000, 1704074400000


@pytest.mark.parametrize(
    ("body", "header", "message"),
    [
        ("", "time,open,high,low,close,volume\n", ":1: header must be exactly"),
        (f"{T0},1,1,1,1,1\nxyz,1,1,1,1,1\n", HEADER, ":3: timestamp 'xyz' is neither"),
        ("1704067200,1,1,1,1,1\n", HEADER, ":2: timestamp 1704067200 looks like epoch seconds"),
        (f"{T0},1,1,1,1\n", HEADER, ":2: expected 6 fields, got 5"),
        (f"{T0},1,abc,1,1,1\n", HEADER, ":2: high 'abc' is not a number"),
        (f"{T0},1,1,1,1,nan\n", HEADER, ":2: volume must be finite"),
        (f"{T0},1,1,2,1,1\n", HEADER, ":2: inconsistent OHLC"),
        (f"{T0},0,1,0,1,1\n", HEADER, ":2: prices must be positive"),
        (f"{T0},1,1,1,1,1\n{T2},1,1,1,1,1\n{T1},1,1,1,1,1\n", HEADER, f":4: timestamp {T1} is"),
        (f"{T0},1,1,1,1,1\n{T0},1,1,1,1,1\n", HEADER, f":3: timestamp {T0} is not after"),
    ],
)
def test_malformed_files_name_file_and_line(
    tmp_path: Path, body: str, header: str, message: str
) -> None:
    path = write(tmp_path, body, header)
    with pytest.raises(CandleFileError, match=message) as err:
        load_candles_csv(path)
    assert str(err.value).startswith(f"{path}:")


def test_missing_file_is_a_candle_file_error(tmp_path: Path) -> None:
    with pytest.raises(CandleFileError, match="cannot read"):
        load_candles_csv(tmp_path / "nope.csv")


# --- Sample data ---------------------------------------------------------------------


def test_generator_is_seeded_and_round_trips_through_csv(tmp_path: Path) -> None:
    a = generate_candles("ETH/USDT", T0, 500, 60_000, seed=5)
    assert a == generate_candles("ETH/USDT", T0, 500, 60_000, seed=5)
    assert a != generate_candles("ETH/USDT", T0, 500, 60_000, seed=6)
    assert a[0].open == 2500.0
    assert all(c.low <= min(c.open, c.close) <= max(c.open, c.close) <= c.high for c in a)
    assert all(b.open == prev.close and b.ts - prev.ts == 60_000 for prev, b in pairwise(a))
    write_candles_csv(tmp_path / "s.csv", a)
    assert load_candles_csv(tmp_path / "s.csv") == a


def test_shipped_sample_is_the_documented_synthetic_series() -> None:
    candles = load_candles_csv(SAMPLE)
    assert len(candles) == 4320
    assert candles[0].ts == 1_704_067_200_000
    assert candles == generate_candles("BTC/USDT", 1_704_067_200_000, 4320, HOUR, seed=7)
