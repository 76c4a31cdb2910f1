"""One kernel: the same strategy on the same candles decides and fills alike in a backtest
and on paper through real workers.

The simulator replays a CSV of 1-second candles at their own times; a paper bot of each
built-in strategy, aligned to candle close, trades it through a real worker. Then
`run_backtest` runs the same strategies over the same file, over the same steps, and
every order (side, type, amount, price, outcome) and every fill (side, amount, price,
fee) must be the same, in the same order.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, col, select

from engine import lifecycle
from engine.backtest import load_candles_csv, run_backtest
from engine.config import parse_bot_config
from engine.domain import Candle
from engine.exchange.fills import FillModel
from engine.exchange.simulator import SimulatorConfig, SimulatorServer
from engine.models import Fill, Order, Tick
from engine.sample_data import generate_candles
from strategies.registry import build
from tests.chain_support import Engine
from tests.support import wait_for

pytestmark = pytest.mark.sqlite_only

HISTORY = 40  # candles before the bots start: indicator warm-up
LIVE = 36  # candles the bots trade through
OFFSET_S = 0.1
STRATEGIES: dict[str, str] = {
    "par-sma": "sma_cross\n  params: {fast: 3, slow: 8, quote_amount: 500}",
    "par-rsi": "rsi_reversion\n  params: {period: 4, oversold: 40, overbought: 60, amount: 0.01}",
    "par-grid": "grid\n  params: {lower: 39000, upper: 41000, levels: 12, amount: 0.01}",
    "par-dca": "dca\n  params: {quote_amount: 200, every: 3}",
}


def _series(start_s: int) -> list[Candle]:
    """1-second candles with hourly-sized moves around 40,000, on the 0.01 tick."""
    raw = generate_candles("BTC/USDT", 0, HISTORY + LIVE + 10, 3_600_000, 11, start_price=40_000)
    out = []
    for i, c in enumerate(raw):
        o, close = round(c.open, 2), round(c.close, 2)
        high, low = round(max(c.high, o, close), 2), round(min(c.low, o, close), 2)
        out.append(Candle((start_s + i) * 1000, o, high, low, close, round(c.volume, 4)))
    return out


def _write_csv(path: Path, candles: list[Candle]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["timestamp", "open", "high", "low", "close", "volume"])
        for c in candles:
            writer.writerow(
                [c.ts, f"{c.open:.2f}", f"{c.high:.2f}", f"{c.low:.2f}", f"{c.close:.2f}", c.volume]
            )


def _config_text(name: str, strategy: str) -> str:
    return (
        f"name: {name}\nexchange: simulator\nsymbol: BTC/USDT\ntimeframe: 1s\n"
        f"align: candle\noffset: {OFFSET_S}s\nstrategy:\n  name: {strategy}\n"
        "paper: {balances: {USDT: 20000, BTC: 0.2}, fee_rate: 0.001, slippage: 0.0005}\n"
    )


@pytest.fixture
def replay(tmp_path: Path) -> Iterator[tuple[SimulatorServer, list[Candle], Path]]:
    """The simulator replaying the series, whose first live candle opens a few seconds
    from now (the history before it is in the past, known whole)."""
    first_live = math.ceil(time.time()) + 4
    candles = _series(first_live - HISTORY)
    path = tmp_path / "replay.csv"
    _write_csv(path, candles)
    loaded = load_candles_csv(path)
    rows = [(c.ts, c.open, c.high, c.low, c.close, c.volume) for c in loaded]
    with SimulatorServer(SimulatorConfig(replay={"BTCUSDT": rows}), port=0) as server:
        yield server, loaded, path


def _orders_and_fills(engine: Engine, bot: str) -> tuple[list[Any], list[Any]]:
    with Session(engine.rt.db) as session:
        orders = session.exec(select(Order).where(Order.bot == bot).order_by(col(Order.id))).all()
        fills = session.exec(select(Fill).where(Fill.bot == bot).order_by(col(Fill.id))).all()
        return [_order_key(o) for o in orders], [_fill_key(f) for f in fills]


def _order_key(o: Any) -> tuple[Any, ...]:
    return (
        o.side,
        o.type,
        round(o.amount, 10),
        o.price,
        o.status,
        o.filled and round(o.filled, 10),
    )


def _fill_key(f: Any) -> tuple[Any, ...]:
    return (f.side, round(f.amount, 10), round(f.price, 8), round(f.fee, 8))


def test_backtest_and_paper_on_real_workers_decide_and_fill_alike(
    engine: Engine, replay: tuple[SimulatorServer, list[Candle], Path]
) -> None:
    server, candles, _ = replay
    env = {"SIMULATOR_URL": server.url}
    engine.env.update(env)
    engine.rt.settings = engine.rt.settings.model_copy(update={"simulator_url": server.url})
    # Given a worker and one paper bot per built-in strategy, aligned to candle close
    # (ready before the first live candle: a worker still booting would start it late)
    engine.procs.wait_ready([engine.procs.worker("w1", extra_env=env)], "worker.ready")
    configs = {
        name: parse_bot_config(_config_text(name, spec), f"{name}.yaml")
        for name, spec in STRATEGIES.items()
    }
    for config in configs.values():
        lifecycle.start(engine.rt, config)
    # When they trade the replayed candles for a while
    first_tick: dict[str, int] = {}

    def ticks_of(bot: str) -> list[Tick]:
        with Session(engine.rt.db) as session:
            return list(session.exec(select(Tick).where(Tick.bot == bot).order_by(col(Tick.slot))))

    assert wait_for(lambda: all(len(ticks_of(n)) >= LIVE - 6 for n in configs), LIVE + 30)
    for name in configs:
        lifecycle.stop(engine.rt, name)
    rules = None
    compared: dict[str, tuple[int, int, int]] = {}
    for name, config in configs.items():
        ticks = ticks_of(name)
        # Every slot ran, in order, and early enough in its candle (a tick reading past the
        # next close would see another market than the backtest step)
        assert [t.outcome for t in ticks] == ["ok"] * len(ticks), [t.error for t in ticks]
        assert [t.slot for t in ticks] == list(range(len(ticks)))
        assert max(t.lateness_ms for t in ticks) < 1000 - OFFSET_S * 1000 - 100
        first_tick[name] = round(ticks[0].due_at.timestamp() * 1000)
        # Then the backtest over the same steps decides and fills alike
        width = 1000
        start = next(
            i for i, c in enumerate(candles) if c.ts + width + OFFSET_S * 1000 == first_tick[name]
        )
        if rules is None:
            rules = engine.rt.gateway(config).market_rules("BTC/USDT")
        result = run_backtest(
            build(config.strategy.name, config.strategy.params),
            candles,
            symbol="BTC/USDT",
            balances=dict(config.paper.balances),
            fill_model=FillModel(config.paper.fee_rate, config.paper.slippage),
            risk=config.risk,
            rules=rules,
            timeframe="1s",
            offset_ms=round(OFFSET_S * 1000),
            start=start,
            end=start + len(ticks),
        )
        paper_orders, paper_fills = _orders_and_fills(engine, name)
        store = result.store
        assert store is not None
        bt_orders = [_order_key(o) for o in store.orders.values()]
        bt_fills = [_fill_key(f) for f in store.fills]
        assert paper_orders, f"{name} placed no order: the test would prove nothing"
        assert bt_orders == paper_orders, name
        assert bt_fills == paper_fills, name
        compared[name] = (len(paper_orders), len(paper_fills), len(ticks))
    print(f"parity (orders, fills, ticks) per bot: {compared}")
