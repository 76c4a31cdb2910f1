"""The trading kernel's invariants, whatever a strategy does (hypothesis), and its pieces:
closed candles only, candle-aligned schedules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.backtest import run_backtest
from engine.config import parse_bot_config
from engine.domain import Candle, MarketContext, MarketRules, OrderIntent, OrderType, Side
from engine.errors import BotConfigError
from engine.exchange.fills import FillModel
from engine.kernel import closed_candles
from engine.lifecycle import first_origin
from engine.orders import pnl_from_fills
from engine.risk import RiskLimits
from engine.schedule import aligned_origin
from strategies.base import Decision, Strategy, StrategyParams

MINUTE = 60_000
RULES = MarketRules("BTC/USDT", "BTC", "USDT", amount_step=1e-5, price_step=0.01, min_notional=1)


class Script(StrategyParams):
    """What to do at each step: a list of (kind, side, size, price offset) per step."""

    steps: list[list[tuple[str, str, float, float]]]


class Scripted(Strategy[Script]):
    """Places whatever the script says, and checks the free balances it is shown."""

    name = "scripted"
    params_model = Script
    seen_negative = False

    def decide(self, ctx: MarketContext, state: Mapping[str, Any]) -> Decision:
        """The step's orders from the script."""
        if any(v < 0 for v in ctx.balances.values()) or ctx.position < -1e-9:
            Scripted.seen_negative = True
        n = int(state.get("n", 0))
        intents = []
        for kind, side, size, offset in self.params.steps[n % len(self.params.steps)]:
            s = Side(side)
            if s is Side.SELL:
                size = min(size, ctx.position)
                if size <= 0:
                    continue
            if kind == "market":
                intents.append(OrderIntent(s, amount=size))
            else:
                price = ctx.ticker.last * (1 + offset)
                intents.append(OrderIntent(s, OrderType.LIMIT, amount=size, price=price))
        return Decision(intents=tuple(intents), state={"n": n + 1})


def _candles(moves: list[tuple[float, float, float]]) -> list[Candle]:
    out, price = [], 100.0
    for i, (change, up, down) in enumerate(moves):
        close = max(1.0, price * (1 + change))
        high = max(price, close) * (1 + up)
        low = min(price, close) * (1 - down)
        out.append(Candle(i * MINUTE, price, high, low, close, 1.0))
        price = close
    return out


step = st.lists(
    st.tuples(
        st.sampled_from(["market", "limit"]),
        st.sampled_from(["buy", "sell"]),
        st.floats(0.001, 5.0),
        st.floats(-0.05, 0.05),
    ),
    max_size=3,
)
moves = st.lists(
    st.tuples(st.floats(-0.08, 0.08), st.floats(0, 0.05), st.floats(0, 0.05)),
    min_size=2,
    max_size=60,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    script=st.lists(step, min_size=1, max_size=8),
    path=moves,
    fee=st.floats(0, 0.01),
    slip=st.floats(0, 0.01),
)
def test_books_add_up_whatever_the_strategy_does(
    script: list[Any], path: list[Any], fee: float, slip: float
) -> None:
    # Given any sequence of market and limit orders over any candles
    Scripted.seen_negative = False
    candles = _candles(path)
    result = run_backtest(
        Scripted(Script(steps=script)),
        candles,
        symbol="BTC/USDT",
        balances={"USDT": 1000.0},
        fill_model=FillModel(fee_rate=fee, slippage=slip),
        risk=RiskLimits(max_orders_per_tick=None),
        rules=RULES,
    )
    store = result.store
    assert store is not None
    # Then no balance went negative, at any step or at the end
    assert not Scripted.seen_negative
    assert all(v >= -1e-9 for v in result.final_balances.values())
    # And the position is the sum of the fills, and what the account holds
    signed = sum(f.amount if f.side == "buy" else -f.amount for f in store.fills)
    assert store.position("backtest") == pytest.approx(signed, abs=1e-9)
    assert result.final_balances["BTC"] == pytest.approx(signed, abs=1e-9)
    # And the balance change is exactly realized + unrealized PnL less the fees
    last = candles[-1].close
    pnl = pnl_from_fills(store.fills, price=last)
    equity_change = result.final_balances["USDT"] + result.final_balances["BTC"] * last - 1000.0
    assert equity_change == pytest.approx(pnl.net, abs=1e-6)
    assert result.equity[-1] == pytest.approx(1000.0 + pnl.net, abs=1e-6)


def test_strategies_see_closed_candles_only() -> None:
    candles = [Candle(i * MINUTE, 1, 1, 1, 1, 1) for i in range(5)]
    # At 4:30 the candle of 4:00 is still forming; at 5:00 it has closed
    assert len(closed_candles(candles, "1m", 4 * MINUTE + 30_000)) == 4
    assert len(closed_candles(candles, "1m", 5 * MINUTE)) == 5


def test_a_candle_aligned_bot_ticks_just_after_each_close() -> None:
    # A 1h bot started at 10:17 with a 2 s offset first ticks at 11:00:02
    ten_17 = 10 * 3600 + 17 * 60
    assert aligned_origin(ten_17, 3600, 2) == 11 * 3600 + 2
    # Started at 11:00:01 it still makes the 11:00 close
    assert aligned_origin(11 * 3600 + 1, 3600, 2) == 11 * 3600 + 2
    config = parse_bot_config(
        "name: a\nexchange: simulator\nsymbol: BTC/USDT\ntimeframe: 1h\nalign: candle\n"
        "offset: 2s\nstrategy: {name: dca, params: {quote_amount: 10}}\n",
        "a.yaml",
    )
    # Its interval is the timeframe, and the schedule starts at the next close
    assert config.check_interval == 3600
    assert first_origin(config, ten_17) == 11 * 3600 + 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("check_interval: 30s\nalign: candle\n", "a.yaml:4: check_interval: must be a multiple"),
        ("align: candle\noffset: 90s\n", "a.yaml:5: offset: must be shorter than the timeframe"),
        ("offset: 5s\n", "a.yaml:4: offset: only applies with align: candle"),
    ],
)
def test_bad_alignment_is_a_field_error(extra: str, message: str) -> None:
    text = (
        "name: a\nexchange: simulator\nsymbol: BTC/USDT\n"
        + extra
        + "strategy: {name: dca, params: {quote_amount: 10}}\n"
    )
    with pytest.raises(BotConfigError) as raised:
        parse_bot_config(text, "a.yaml")
    assert any(p.startswith(message) for p in raised.value.problems), raised.value.problems
