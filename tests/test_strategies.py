"""Decisions of the built-in strategies on crafted series, params validation, the registry."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from engine.domain import Candle, MarketContext, OpenOrder, OrderIntent, OrderType, Side, Ticker
from strategies.base import Strategy
from strategies.dca import Dca, DcaParams
from strategies.grid import Grid, GridParams
from strategies.registry import BUILTINS, StrategyLookupError, build, resolve
from strategies.rsi_reversion import RsiReversion, RsiReversionParams
from strategies.sma_cross import SmaCross, SmaCrossParams

MINUTE = 60_000
TESTS_DIR = Path(__file__).parent


def candles_from(
    closes: Sequence[float],
    *,
    lows: Sequence[float] | None = None,
    highs: Sequence[float] | None = None,
) -> tuple[Candle, ...]:
    """One-minute candles with the given closes (and optionally lows/highs)."""
    return tuple(
        Candle(
            ts=i * MINUTE,
            open=c,
            high=highs[i] if highs else c,
            low=lows[i] if lows else c,
            close=c,
            volume=1.0,
        )
        for i, c in enumerate(closes)
    )


def ctx_for(
    candles: Sequence[Candle],
    *,
    position: float = 0.0,
    balances: Mapping[str, float] | None = None,
    open_orders: Sequence[OpenOrder] = (),
    price: float | None = None,
) -> MarketContext:
    """A context as of the last candle; bid = ask = last = `price` or the last close."""
    p = price if price is not None else candles[-1].close
    now = candles[-1].ts if candles else 0  # strategies needing no candles ignore `now`
    return MarketContext(
        symbol="BTC/USDT",
        now=now,
        candles=tuple(candles),
        ticker=Ticker("BTC/USDT", bid=p, ask=p, last=p, ts=now),
        position=position,
        balances=dict(balances if balances is not None else {"USDT": 10_000.0}),
        open_orders=tuple(open_orders),
    )


def walk(strategy: Strategy[Any], closes: Sequence[float]) -> list[tuple[int, OrderIntent]]:
    """Tick once per candle like a backtest (no fills), returning (index, intent) pairs."""
    candles = candles_from(closes)
    state: dict[str, Any] = {}
    out: list[tuple[int, OrderIntent]] = []
    for i in range(len(candles)):
        needed = strategy.candles_needed()
        window = candles[max(0, i + 1 - needed) : i + 1] if needed else ()
        ctx = ctx_for(window, position=1.0, price=candles[i].close)
        decision = strategy.decide(ctx, state)
        state = decision.state if decision.state is not None else state
        out.extend((i, intent) for intent in decision.intents)
    return out


# --- SMA crossover -------------------------------------------------------------------


def sma(fast: int = 1, slow: int = 2) -> SmaCross:
    return SmaCross(SmaCrossParams(fast=fast, slow=slow, amount=0.5))


def test_sma_cross_up_buys_on_first_tick() -> None:
    # Given fast=1/slow=2, the close jumps so fast (12) > slow (9.5) while before 7 < 8
    candles = candles_from([10, 9, 8, 7, 12])
    # When the strategy runs with no state
    decision = sma().decide(ctx_for(candles), {})
    # Then it buys the configured amount and remembers the side and candle
    assert [(i.side, i.type, i.amount) for i in decision.intents] == [
        (Side.BUY, OrderType.MARKET, 0.5)
    ]
    assert decision.state == {"relation": "above", "last_ts": 4 * MINUTE}


def test_sma_cross_acts_once_per_candle_and_once_per_crossing() -> None:
    strategy = sma()
    candles = candles_from([10, 9, 8, 7, 12, 13])
    first = strategy.decide(ctx_for(candles[:5]), {})
    assert first.state is not None
    # Given the crossing was already acted on
    # When a second tick sees the same candle, or the next candle stays above
    again = strategy.decide(ctx_for(candles[:5]), first.state)
    later = strategy.decide(ctx_for(candles), first.state)
    # Then neither buys again
    assert again.intents == ()
    assert later.intents == ()


def test_sma_cross_down_sells_whole_position() -> None:
    # Given fast was above slow and now falls below
    candles = candles_from([10, 11, 12, 8])
    state = {"relation": "above", "last_ts": 2 * MINUTE}
    # When the bot holds 0.75 base
    decision = sma().decide(ctx_for(candles, position=0.75), state)
    # Then it sells exactly the position
    assert [(i.side, i.amount) for i in decision.intents] == [(Side.SELL, 0.75)]
    # And when flat it sells nothing but still records the new side
    flat = sma().decide(ctx_for(candles, position=0.0), state)
    assert flat.intents == ()
    assert flat.state == {"relation": "below", "last_ts": 3 * MINUTE}


def test_sma_cross_warms_up_without_trading() -> None:
    decision = sma(fast=2, slow=5).decide(ctx_for(candles_from([1, 2, 3])), {})
    assert decision.intents == ()
    assert decision.state is None


def test_sma_cross_trades_every_crossing_of_a_series() -> None:
    # Given a zig-zag with two up-crossings and two down-crossings after warm-up
    closes = [10, 9, 8, 12, 13, 9, 8, 14, 15, 7]
    # When walked tick by tick
    sides = [(i, intent.side) for i, intent in walk(sma(), closes)]
    # Then it buys at each up-cross and sells at each down-cross, nothing else
    assert sides == [(3, Side.BUY), (5, Side.SELL), (7, Side.BUY), (9, Side.SELL)]


def test_sma_cross_params_validation_names_fields() -> None:
    # Given fast >= slow
    with pytest.raises(ValidationError) as err:
        SmaCrossParams.model_validate({"fast": 30, "slow": 10, "amount": 1})
    # Then the error points at `slow`
    assert err.value.errors()[0]["loc"] == ("slow",)
    # And neither / both sizes, unknown keys and bad ranges are rejected with locations
    with pytest.raises(ValidationError, match="exactly one of amount or quote_amount"):
        SmaCrossParams.model_validate({"fast": 1, "slow": 2})
    with pytest.raises(ValidationError, match="exactly one"):
        SmaCrossParams.model_validate({"fast": 1, "slow": 2, "amount": 1, "quote_amount": 5})
    with pytest.raises(ValidationError) as err:
        SmaCrossParams.model_validate({"fast": 0, "slow": 2, "amount": 1, "bogus": 1})
    locs = {e["loc"] for e in err.value.errors()}
    assert locs == {("fast",), ("bogus",)}


# --- RSI mean reversion --------------------------------------------------------------


def rsi_strategy() -> RsiReversion:
    return RsiReversion(RsiReversionParams(period=3, quote_amount=100))


def test_rsi_buys_when_oversold_once() -> None:
    # Given a steady fall: RSI(3) = 0 < 30
    candles = candles_from([10, 9, 8, 7, 6])
    decision = rsi_strategy().decide(ctx_for(candles), {})
    # Then it buys the quote amount and records the zone
    assert [(i.side, i.quote_amount) for i in decision.intents] == [(Side.BUY, 100)]
    assert decision.state == {"zone": "oversold", "last_ts": 4 * MINUTE}
    # And the next, still falling candle does not buy again
    more = rsi_strategy().decide(ctx_for(candles_from([10, 9, 8, 7, 6, 5])), decision.state)
    assert more.intents == ()


def test_rsi_sells_position_when_overbought() -> None:
    # Given a steady rise: RSI(3) = 100 > 70, coming from the oversold zone
    candles = candles_from([5, 6, 7, 8, 9])
    state = {"zone": "oversold", "last_ts": 0}
    decision = rsi_strategy().decide(ctx_for(candles, position=2.5), state)
    # Then it sells the whole position
    assert [(i.side, i.amount) for i in decision.intents] == [(Side.SELL, 2.5)]
    assert decision.state is not None
    assert decision.state["zone"] == "overbought"


def test_rsi_neutral_does_nothing_and_warm_up_waits() -> None:
    # Given alternating moves: RSI near 50
    neutral = rsi_strategy().decide(ctx_for(candles_from([10, 11, 10, 11, 10, 11])), {})
    assert neutral.intents == ()
    assert neutral.state is not None
    assert neutral.state["zone"] == "neutral"
    # Given fewer than period + 1 closes: no decision at all
    assert rsi_strategy().decide(ctx_for(candles_from([10, 9, 8])), {}).intents == ()


def test_rsi_params_thresholds_ordered() -> None:
    with pytest.raises(ValidationError) as err:
        RsiReversionParams.model_validate({"oversold": 60, "overbought": 40, "amount": 1})
    assert err.value.errors()[0]["loc"] == ("overbought",)
    with pytest.raises(ValidationError) as err:
        RsiReversionParams.model_validate({"period": 1, "amount": 1})
    assert err.value.errors()[0]["loc"] == ("period",)


# --- Grid ----------------------------------------------------------------------------


def grid(**overrides: Any) -> Grid:
    params = {"lower": 100, "upper": 140, "levels": 5, "amount": 1.0, **overrides}
    return Grid(GridParams.model_validate(params))


def buy_at(price: float) -> OpenOrder:
    return OpenOrder(f"b{price}", Side.BUY, OrderType.LIMIT, 1.0, price)


def sell_at(price: float) -> OpenOrder:
    return OpenOrder(f"s{price}", Side.SELL, OrderType.LIMIT, 1.0, price)


def summary(intents: Sequence[OrderIntent]) -> list[tuple[str, float | None, str]]:
    return [(i.side.value, i.price, i.tag) for i in intents]


def test_grid_levels_arithmetic_and_geometric() -> None:
    assert grid().levels() == [100, 110, 120, 130, 140]
    geometric = grid(lower=100, upper=400, levels=3, spacing="geometric")
    assert geometric.levels() == pytest.approx([100, 200, 400])


def test_grid_first_tick_buys_below_and_sells_above_with_inventory() -> None:
    # Given price 125 in a 100..140 grid of 10-wide cells, holding 1 base
    ctx = ctx_for(candles_from([125]), position=1.0)
    # When the grid starts
    decision = grid().decide(ctx, {})
    # Then it bids at 120, 110, 100 and offers its one unit at 140 (cell 130-140),
    # nearest to the price first
    assert summary(decision.intents) == [
        ("buy", 120, "grid:2:buy"),
        ("sell", 140, "grid:3:sell"),
        ("buy", 110, "grid:1:buy"),
        ("buy", 100, "grid:0:buy"),
    ]
    assert all(i.type is OrderType.LIMIT and i.amount == 1.0 for i in decision.intents)
    # And without inventory the top cell idles
    flat = grid().decide(ctx_for(candles_from([125])), {})
    assert [i.price for i in flat.intents] == [120, 110, 100]
    assert flat.state is not None
    assert flat.state["cells"][3]["side"] == "idle"


def first_tick_state() -> dict[str, Any]:
    decision = grid().decide(ctx_for(candles_from([125])), {})
    assert decision.state is not None
    return decision.state


def test_grid_keeps_quiet_while_orders_rest() -> None:
    state = first_tick_state()
    # Given all three buys resting and the price drifting inside the cell
    ctx = ctx_for(candles_from([125, 123]), open_orders=[buy_at(120), buy_at(110), buy_at(100)])
    # Then nothing new is sent
    assert grid().decide(ctx, state).intents == ()


def test_grid_filled_buy_arms_sell_one_level_up_and_back() -> None:
    state = first_tick_state()
    # Given the buy at 120 vanished after a candle dipped to 119, and the position grew
    candles = candles_from([125, 121], lows=[125, 119])
    ctx = ctx_for(candles, position=1.0, open_orders=[buy_at(110), buy_at(100)])
    # When the grid ticks
    decision = grid().decide(ctx, state)
    # Then cell 2 now offers the unit at 130
    assert summary(decision.intents) == [("sell", 130, "grid:2:sell")]
    assert decision.state is not None
    assert decision.state["buys_filled"] == 1
    # Given that sell later vanished after a candle reached 131 (position back to 0)
    candles = candles_from([125, 121, 129], highs=[125, 121, 131])
    ctx = ctx_for(candles, position=0.0, open_orders=[buy_at(110), buy_at(100)])
    again = grid().decide(ctx, decision.state)
    # Then the level re-arms: a buy at 120 again
    assert summary(again.intents) == [("buy", 120, "grid:2:buy")]
    assert again.state is not None
    assert again.state["sells_filled"] == 1


def test_grid_replaces_an_order_that_vanished_untouched() -> None:
    state = first_tick_state()
    # Given the buy at 120 is gone but no price since reached 120 (rejected or dropped)
    ctx = ctx_for(candles_from([125, 124], lows=[125, 122]), open_orders=[buy_at(110)])
    decision = grid().decide(ctx, state)
    # Then the missing buys are placed again, not treated as fills
    assert summary(decision.intents) == [("buy", 120, "grid:2:buy"), ("buy", 100, "grid:0:buy")]


def test_grid_touched_buy_without_position_is_placed_again() -> None:
    state = first_tick_state()
    # Given the price touched 120 but the position did not grow (it never filled)
    candles = candles_from([125, 121], lows=[125, 119])
    ctx = ctx_for(candles, position=0.0, open_orders=[buy_at(110), buy_at(100)])
    # Then no sell without inventory; the buy is placed again
    assert summary(grid().decide(ctx, state).intents) == [("buy", 120, "grid:2:buy")]


def test_grid_funds_nearest_buys_first_and_idles_the_rest() -> None:
    # Given only enough quote for one buy near the price
    ctx = ctx_for(candles_from([125]), balances={"USDT": 150.0})
    decision = grid().decide(ctx, {})
    # Then only the nearest buy is sent; unfunded cells idle instead of being rejected
    assert summary(decision.intents) == [("buy", 120, "grid:2:buy")]
    assert decision.state is not None
    assert [c["side"] for c in decision.state["cells"]] == ["idle", "idle", "buy", "idle"]


def test_grid_adopts_resting_orders_when_state_is_lost() -> None:
    # Given orders already rest on the levels but the state is empty
    ctx = ctx_for(candles_from([125]), open_orders=[buy_at(120), buy_at(110), buy_at(100)])
    # Then the grid does not duplicate them
    adopted = grid().decide(ctx, {})
    assert adopted.intents == ()
    assert adopted.state is not None
    # And an adopted order that later fills is seen as filled, not placed twice
    candles = candles_from([125, 121], lows=[125, 119])
    ctx = ctx_for(candles, position=1.0, open_orders=[buy_at(110), buy_at(100)])
    assert summary(grid().decide(ctx, adopted.state).intents) == [("sell", 130, "grid:2:sell")]


def test_grid_params_validation() -> None:
    with pytest.raises(ValidationError) as err:
        GridParams.model_validate({"lower": 200, "upper": 100, "amount": 1})
    assert err.value.errors()[0]["loc"] == ("upper",)
    with pytest.raises(ValidationError) as err:
        GridParams.model_validate({"lower": 1, "upper": 2, "levels": 1, "amount": 1})
    assert err.value.errors()[0]["loc"] == ("levels",)


# --- DCA -----------------------------------------------------------------------------


def test_dca_buys_every_n_ticks() -> None:
    # Given every=3
    strategy = Dca(DcaParams(quote_amount=25, every=3))
    # When it ticks seven times at a flat price
    buys = [i for i, intent in walk(strategy, [100.0] * 7)]
    # Then it buys on ticks 0, 3 and 6, each for the quote amount
    assert buys == [0, 3, 6]
    assert all(intent.quote_amount == 25 for _, intent in walk(strategy, [100.0] * 7))


def test_dca_offset_delays_the_first_buy() -> None:
    # Given every=3 and offset=2 (a bot staggered against others started with it)
    strategy = Dca(DcaParams(quote_amount=25, every=3, offset=2))
    # When it ticks eight times
    buys = [i for i, _ in walk(strategy, [100.0] * 8)]
    # Then its first buy is on tick 2, then every third tick
    assert buys == [2, 5]


def test_dca_buys_more_on_a_dip_below_last_buy() -> None:
    strategy = Dca(DcaParams(quote_amount=10, every=1, dip_pct=10, dip_multiplier=3))
    # Given the last buy was at 100
    state = {"ticks": 1, "last_buy_price": 100.0}
    # When the price is 10 % lower / only 5 % lower
    dip = strategy.decide(ctx_for(candles_from([90.0])), state)
    small = strategy.decide(ctx_for(candles_from([95.0])), state)
    # Then the dip buy is 3x, the other is normal
    assert [i.quote_amount for i in dip.intents] == [30]
    assert [i.quote_amount for i in small.intents] == [10]
    assert dip.state == {"ticks": 2, "last_buy_price": 90.0}


def test_dca_buys_more_below_sma() -> None:
    strategy = Dca(DcaParams(quote_amount=10, dip_sma=3, dip_multiplier=2))
    assert strategy.candles_needed() == 3
    # Given SMA(3) of 110, 110, 95 = 105 and price 95 -> dip
    below = strategy.decide(ctx_for(candles_from([110, 110, 95])), {})
    above = strategy.decide(ctx_for(candles_from([90, 90, 95])), {})
    assert [i.quote_amount for i in below.intents] == [20]
    assert [i.quote_amount for i in above.intents] == [10]


def test_dca_multiplier_needs_a_dip_rule() -> None:
    with pytest.raises(ValidationError) as err:
        DcaParams.model_validate({"quote_amount": 10, "dip_multiplier": 2})
    assert err.value.errors()[0]["loc"] == ("dip_multiplier",)


# --- Registry ------------------------------------------------------------------------


def test_registry_lists_builtins_by_name() -> None:
    assert set(BUILTINS) == {"sma_cross", "rsi_reversion", "grid", "dca"}
    for name, cls in BUILTINS.items():
        assert resolve(name) is cls
        assert cls.name == name
        assert cls.__doc__


def test_build_validates_params() -> None:
    strategy = build("sma_cross", {"fast": 5, "slow": 20, "quote_amount": 50})
    assert isinstance(strategy, SmaCross)
    assert strategy.params == SmaCrossParams(fast=5, slow=20, quote_amount=50)
    with pytest.raises(ValidationError) as err:
        build("grid", {"lower": 1, "upper": 2, "amount": -1})
    assert [e["loc"] for e in err.value.errors()] == [("amount",)]


@pytest.fixture
def tests_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make this directory importable whatever the pytest import mode."""
    monkeypatch.syspath_prepend(str(TESTS_DIR))


@pytest.mark.usefixtures("tests_on_path")
def test_resolve_custom_strategy_by_dotted_path() -> None:
    # Given a Strategy subclass in a module outside strategies/
    cls = resolve("custom_strategy_example:BuyEveryTick")
    # Then it resolves and builds like a built-in
    strategy = build("custom_strategy_example:BuyEveryTick", {"quote_amount": 7})
    assert isinstance(strategy, cls)
    assert strategy.decide(ctx_for(candles_from([1.0])), {}).intents[0].quote_amount == 7


@pytest.mark.usefixtures("tests_on_path")
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "unknown strategy 'nope': expected one of dca, grid, rsi_reversion, sma_cross"),
        ("custom_strategy_example:NotAStrategy", "is not a Strategy subclass"),
        ("custom_strategy_example:Missing", "has no attribute 'Missing'"),
        ("no_such_pkg.mod:Thing", "cannot import 'no_such_pkg.mod'"),
        ("custom_strategy_example:", "bad strategy path"),
        ("strategies.base:Strategy", "is abstract"),
    ],
)
def test_resolve_failures_are_one_line(spec: str, message: str) -> None:
    with pytest.raises(StrategyLookupError, match=message) as err:
        resolve(spec)
    assert "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)


def test_resolve_import_error_inside_module_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a module that fails to compile
    (tmp_path / "broken_strategy_mod.py").write_text("def oops(:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # When resolved by path
    with pytest.raises(StrategyLookupError, match="SyntaxError") as err:
        resolve("broken_strategy_mod:Thing")
    # Then the message is still one line
    assert "\n" not in str(err.value)
    sys.modules.pop("broken_strategy_mod", None)


@pytest.mark.usefixtures("tests_on_path")
def test_api_configs_may_not_name_custom_strategies(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the HTTP API resolves with allow_custom=False and the module is not loaded yet
    monkeypatch.delitem(sys.modules, "custom_strategy_example", raising=False)
    # When a config names a dotted path
    with pytest.raises(StrategyLookupError, match="refused"):
        resolve("custom_strategy_example:BuyEveryTick", allow_custom=False)
    with pytest.raises(StrategyLookupError, match="refused"):
        build("os:system", {}, allow_custom=False)
    # Then it is refused before anything is imported, and registered names still work
    assert "custom_strategy_example" not in sys.modules
    assert resolve("dca", allow_custom=False) is Dca
