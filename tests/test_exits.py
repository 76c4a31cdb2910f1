"""Protective exits and protections: the pure rules, the kernel in a backtest, the
config errors. (Real workers against the simulator: tests/test_exits_live.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from engine.backtest import BacktestResult, run_backtest
from engine.config import parse_bot_config
from engine.domain import Candle, MarketRules
from engine.errors import BotConfigError
from engine.exchange.fills import FillModel
from engine.exits import ExitRules, TrailingStop, check
from engine.protections import MaxDrawdown, Protections, pause_reason
from tests.custom_strategies import BuyOnce, BuyOnceParams, Requote, RequoteParams

RULES = MarketRules("BTC/USDT", "BTC", "USDT", amount_step=1e-5, price_step=0.01, min_notional=5)
MINUTE = 60_000


def candles(path: list[float]) -> list[Candle]:
    """1-minute candles that open at each price of `path` and close at the next."""
    out = []
    for i, (a, b) in enumerate(zip(path, [*path[1:], path[-1]], strict=True)):
        out.append(Candle(i * MINUTE, a, max(a, b), min(a, b), b, 1.0))
    return out


def backtest(path: list[float], strategy: Any = None, **kw: Any) -> BacktestResult:
    """`strategy` (default: buy 1,000 USDT once) over 1-minute candles along `path`."""
    return run_backtest(
        strategy or BuyOnce(BuyOnceParams(quote_amount=1000)),
        candles(path),
        symbol="BTC/USDT",
        balances={"USDT": 10_000},
        fill_model=FillModel(0.001, 0.0),
        risk=None,
        rules=RULES,
        timeframe="1m",
        **kw,
    )


# -- the rules, pure ------------------------------------------------------------------


def test_stop_loss_and_take_profit_fire_at_their_levels() -> None:
    rules = ExitRules(stop_loss=0.03, take_profit=0.08)
    assert check(rules, 1.0, 100.0, 97.01, 0.0)[0] is None
    assert check(rules, 1.0, 100.0, 97.0, 0.0)[0] == "stop_loss"
    assert check(rules, 1.0, 100.0, 107.99, 0.0)[0] is None
    assert check(rules, 1.0, 100.0, 108.0, 0.0)[0] == "take_profit"
    # no position, nothing to protect
    assert check(rules, 0.0, 100.0, 50.0, 0.0) == (None, 0.0)


def test_trailing_stop_arms_at_its_gain_and_follows_the_high() -> None:
    rules = ExitRules(trailing_stop=TrailingStop(activate=0.02, distance=0.01))
    # below the activation gain a 1 % fall does nothing
    kind, peak = check(rules, 1.0, 100.0, 101.5, 0.0)
    assert kind is None
    assert peak == 101.5
    assert check(rules, 1.0, 100.0, 100.4, peak)[0] is None
    # armed at 102, it follows the high to 110 and fires 1 % under it
    kind, peak = check(rules, 1.0, 100.0, 110.0, peak)
    assert kind is None
    assert peak == 110.0
    assert check(rules, 1.0, 100.0, 108.91, peak)[0] is None
    assert check(rules, 1.0, 100.0, 108.9, peak) == ("trailing_stop", 110.0)


def test_protections_pause_for_their_reasons() -> None:
    day = 86_400_000
    now = 10 * day + 5_000
    streak = Protections(losing_streak=2)
    assert pause_reason(streak, [(1, -1.0), (2, 3.0), (3, -1.0)], now, "USDT") is None
    reason = pause_reason(streak, [(1, 3.0), (2, -1.0), (3, -2.5)], now, "USDT")
    assert reason == "losing_streak: 2 losing trades in a row (3.5 USDT lost)"
    daily = Protections(max_daily_loss=50)
    # yesterday's losses do not count towards today's
    assert pause_reason(daily, [(now - day, -100.0), (now - 1, -49.0)], now, "USDT") is None
    reason = pause_reason(daily, [(now - 2, -30.0), (now - 1, -20.0)], now, "USDT")
    assert reason is not None
    assert reason.startswith("max_daily_loss: 50 USDT lost today")
    drawdown = Protections(max_drawdown=MaxDrawdown(limit=100, window=3600))
    results = [(now - 7_200_000, -500.0), (now - 3000, 80.0), (now - 2000, -60.0)]
    assert pause_reason(drawdown, results, now, "USDT") is None
    results.append((now - 1000, -45.0))  # 80 high, 80 - 60 - 45 = -25: 105 below
    reason = pause_reason(drawdown, results, now, "USDT")
    assert reason is not None
    assert reason.startswith("max_drawdown: 105 USDT")


# -- the kernel, in a backtest ----------------------------------------------------------


def test_a_stop_loss_sells_the_whole_position_once() -> None:
    # Given a bot that bought at 40,000, with a 3 % stop
    path = [40_000.0] * 5 + [39_000.0, 38_700.0, 38_000.0, 37_000.0, 36_000.0]
    result = backtest(path, exits=ExitRules(stop_loss=0.03))
    # Then it sold once, everything, when the price fell 3 % under the entry
    sells = [t for t in result.trades if t.side.value == "sell"]
    buys = [t for t in result.trades if t.side.value == "buy"]
    assert len(buys) == 1
    assert len(sells) == 1
    assert sells[0].tag == "exit:stop_loss"
    assert sells[0].price == 38_700.0
    assert sells[0].amount == pytest.approx(buys[0].amount, rel=1e-4)
    assert result.exits == {"stop_loss": 1}


def test_a_trailing_stop_follows_the_price_up_and_fires_on_the_way_down() -> None:
    up = [40_000.0, 40_000.0, 40_400.0, 41_000.0, 42_000.0, 43_000.0, 44_000.0]
    down = [43_800.0, 43_600.0, 43_500.0, 43_000.0, 42_000.0]
    rules = ExitRules(stop_loss=0.05, trailing_stop=TrailingStop(activate=0.02, distance=0.01))
    result = backtest(up + down, exits=rules)
    sells = [t for t in result.trades if t.side.value == "sell"]
    # 1 % under the 44,000 high is 43,560: the first price at or below it sells
    assert [(s.tag, s.price) for s in sells] == [("exit:trailing_stop", 43_500.0)]


def test_a_protection_pauses_the_backtest_and_no_order_follows() -> None:
    # Given a stop-loss that loses, and a one-loss streak protection
    path = [40_000.0] * 3 + [38_000.0] * 10
    result = backtest(
        path,
        exits=ExitRules(stop_loss=0.03),
        protections=Protections(losing_streak=1),
    )
    # Then the step after the losing exit paused the bot, and nothing traded after it
    fired = result.protections
    assert len(fired) == 1
    assert fired[0][1].startswith("losing_streak: 1 losing trades")
    assert len(result.trades) == 2
    assert result.trades[-1].ts < fired[0][0]


def test_cooldown_after_a_stop_drops_the_buys() -> None:
    # Given a DCA-like buyer (buys again whenever flat) stopped out
    path = [40_000.0] * 3 + [38_000.0] * 6

    class Rebuy(BuyOnce):
        def decide(self, ctx, state):  # type: ignore[no-untyped-def]
            return super().decide(ctx, {} if ctx.position <= 1e-9 else {"bought": True})

    result = backtest(
        path,
        Rebuy(BuyOnceParams(quote_amount=1000)),
        exits=ExitRules(stop_loss=0.03),
        protections=Protections(cooldown_after_stop=3 * 60),
    )
    # Then the buys after the stop wait three minutes
    sides = [(t.side.value, t.ts // MINUTE) for t in result.trades]
    stop_at = next(m for s, m in sides if s == "sell")
    rebuys = [m for s, m in sides if s == "buy" and m > stop_at]
    assert rebuys
    assert rebuys[0] >= stop_at + 3
    assert result.dropped.get("cooldown_after_stop", 0) >= 2


def test_replace_and_order_timeout_cancel_through_the_kernel() -> None:
    # A limit buy far below the market, replaced every step: one order rests at a time
    result = backtest([40_000.0] * 8, Requote(RequoteParams(below=0.5, amount=0.01)))
    store = result.store
    assert store is not None
    statuses = [o.status for o in store.orders.values()]
    assert statuses == ["canceled"] * 7 + ["open"]
    assert all(o.cancel_reason == "strategy" for o in store.orders.values() if o.status != "open")
    # And with order_timeout an order that rests too long is cancelled, then placed anew
    timed = backtest(
        [40_000.0] * 8,
        Requote(RequoteParams(below=0.5, amount=0.01, replace=False)),
        order_timeout_s=120,
    )
    assert timed.store is not None
    rows = list(timed.store.orders.values())
    # placed at steps 0, 2, 4, 6: each cancelled two minutes (two steps) after it was placed
    assert [(o.slot, o.status, o.cancel_reason) for o in rows] == [
        (0, "canceled", "order_timeout"),
        (2, "canceled", "order_timeout"),
        (4, "canceled", "order_timeout"),
        (6, "open", None),
    ]


# -- configs ----------------------------------------------------------------------------

BASE = (
    "name: x\nexchange: simulator\nsymbol: BTC/USDT\n"
    "strategy: {name: dca, params: {quote_amount: 10}}\n"
)
BELOW_100 = "must be above 0% and below 100%"


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ("exits:\n  stop_loss: -3%\n", f"x.yaml:6: exits.stop_loss: {BELOW_100} (got -3%)"),
        ("exits:\n  stop_loss: 150%\n", f"x.yaml:6: exits.stop_loss: {BELOW_100} (got 150%)"),
        (
            "exits:\n  take_profit: 2000%\n",
            "x.yaml:6: exits.take_profit: must be above 0% and at most 1000%",
        ),
        (
            "exits:\n  trailing_stop: {activate: 2%}\n",
            "x.yaml:6: exits.trailing_stop.distance: Field required",
        ),
        (
            "exits:\n  trailing_stop: {activate: 2%, distance: 0%}\n",
            f"x.yaml:6: exits.trailing_stop.distance: {BELOW_100}",
        ),
        ("exits:\n  stop_loss: three\n", "x.yaml:6: exits.stop_loss: must be a percentage like 3%"),
        ("exits:\n  stop_loss: 3%\n  stop: 2%\n", "x.yaml:7: exits.stop: unknown key"),
        ("protections:\n  losing_streak: 0\n", "x.yaml:6: protections.losing_streak"),
        (
            "protections:\n  max_drawdown: {window: 1d}\n",
            "x.yaml:6: protections.max_drawdown.limit: Field required",
        ),
        ("order_timeout: soon\n", "x.yaml:5: order_timeout: must be a duration"),
    ],
)
def test_bad_exit_configs_name_file_line_and_field(extra: str, error: str) -> None:
    with pytest.raises(BotConfigError) as caught:
        parse_bot_config(BASE + extra, "x.yaml")
    assert error in str(caught.value)


def test_exits_config_reads_percentages() -> None:
    config = parse_bot_config(
        BASE
        + "exits: {stop_loss: 3%, take_profit: 8%, trailing_stop: {activate: 2%, distance: 1%}}\n"
        + "protections: {losing_streak: 3, cooldown_after_stop: 30m}\norder_timeout: 10m\n",
        "x.yaml",
    )
    assert config.exits == ExitRules(
        stop_loss=0.03,
        take_profit=0.08,
        trailing_stop=TrailingStop(activate=0.02, distance=0.01),
    )
    assert config.protections.cooldown_after_stop == 1800
    assert config.order_timeout == 600
