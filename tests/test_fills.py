"""The paper fill model: prices, fees, crossing rules, affordability and balance updates."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.domain import Candle, OrderIntent, OrderType, Side, Ticker
from engine.exchange import fills
from engine.exchange.fills import (
    Fill,
    FillModel,
    apply_fill,
    can_afford,
    crossed_by_ticker,
    fill_at,
    floor_to_step,
    market_price,
    resolve_amount,
    round_to_step,
)

TICKER = Ticker("BTC/USDT", bid=99.0, ask=101.0, last=100.0, ts=0)
MODEL = FillModel(fee_rate=0.001, slippage=0.01)


def _market(intent: OrderIntent) -> Fill:
    price = market_price(intent.side, TICKER, MODEL)
    return fill_at(intent.side, resolve_amount(intent, price), price, MODEL, quote="USDT")


def test_market_buy_pays_ask_plus_slippage_and_fee_in_quote() -> None:
    # Given ask 101 and 1 % slippage
    fill = _market(OrderIntent(Side.BUY, amount=2.0))
    # Then the price is 102.01, the notional 204.02, the fee 0.1 % of it in USDT
    assert fill.price == pytest.approx(102.01)
    assert fill.quote_cost == pytest.approx(204.02)
    assert fill.fee == pytest.approx(0.20402)
    assert fill.fee_currency == "USDT"
    assert fill.quote_delta == pytest.approx(-(204.02 + 0.20402))
    assert fill.base_delta == 2.0


def test_market_sell_gets_bid_minus_slippage() -> None:
    fill = _market(OrderIntent(Side.SELL, amount=1.0))
    assert fill.price == pytest.approx(98.01)
    assert fill.quote_delta == pytest.approx(98.01 * 0.999)
    assert fill.base_delta == -1.0


def test_a_quote_sized_order_is_sized_at_the_price() -> None:
    # The order manager sizes it at the ask (before slippage), as the exchange is asked
    assert resolve_amount(OrderIntent(Side.BUY, quote_amount=50.0), 25.0) == 2.0


def test_limit_orders_fill_at_their_price_when_crossed() -> None:
    # A buy limit is crossed when the ask (or a candle's low) reaches it; a sell symmetric
    assert crossed_by_ticker(Side.BUY, 101.0, TICKER)
    assert not crossed_by_ticker(Side.BUY, 100.9, TICKER)
    assert crossed_by_ticker(Side.SELL, 99.0, TICKER)
    assert not crossed_by_ticker(Side.SELL, 99.1, TICKER)
    candle = Candle(ts=0, open=100, high=105, low=95, close=100, volume=1)
    assert fills.reached_at(Side.BUY, 95.0, candle) is not None
    assert fills.reached_at(Side.BUY, 94.9, candle) is None
    assert fills.reached_at(Side.SELL, 105.0, candle) is not None
    assert fills.reached_at(Side.SELL, 105.1, candle) is None
    fill = fill_at(Side.BUY, 1.5, 95.0, MODEL, quote="USDT")
    assert (fill.price, fill.quote_cost) == (95.0, 142.5)
    assert fill.fee == pytest.approx(0.1425)


def test_affordability_like_insufficient_funds() -> None:
    fill = fill_at(Side.BUY, 1.0, 100.0, MODEL, quote="USDT")  # needs 100.1 USDT
    assert can_afford(fill, {"USDT": 100.1}, base="BTC", quote="USDT")
    assert not can_afford(fill, {"USDT": 100.0}, base="BTC", quote="USDT")
    assert not can_afford(fill, {}, base="BTC", quote="USDT")
    sell = fill_at(Side.SELL, 1.0, 100.0, MODEL, quote="USDT")
    assert can_afford(sell, {"BTC": 1.0}, base="BTC", quote="USDT")
    assert not can_afford(sell, {"BTC": 0.999}, base="BTC", quote="USDT")


def test_apply_fill_moves_both_currencies() -> None:
    fill = fill_at(Side.BUY, 1.0, 100.0, MODEL, quote="USDT")
    after = apply_fill({"USDT": 200.0, "ETH": 3.0}, fill, base="BTC", quote="USDT")
    assert after == {"USDT": pytest.approx(99.9), "BTC": 1.0, "ETH": 3.0}


def test_steps() -> None:
    assert floor_to_step(0.3, 0.1) == 0.3  # not 0.2 from 2.9999999999999996 steps
    assert floor_to_step(0.12345, 0.001) == 0.123
    assert floor_to_step(7.0, 5.0) == 5.0
    assert floor_to_step(0.5, 0.0) == 0.5
    assert round_to_step(101.26, 0.1) == 101.3
    assert round_to_step(101.26, 0.0) == 101.26


def test_fill_model_validates_fractions() -> None:
    with pytest.raises(ValueError, match="fee_rate"):
        FillModel(fee_rate=-0.1)
    with pytest.raises(ValueError, match="slippage"):
        FillModel(slippage=1.0)


orders = st.lists(
    st.tuples(
        st.sampled_from([Side.BUY, Side.SELL]),
        st.floats(min_value=1e-6, max_value=5.0),
        st.booleans(),  # size in quote instead of base
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(
    orders=orders,
    price=st.floats(min_value=0.01, max_value=1e5),
    fee_rate=st.floats(min_value=0.0, max_value=0.01),
    slippage=st.floats(min_value=0.0, max_value=0.01),
    quote0=st.floats(min_value=0.0, max_value=1e6),
    base0=st.floats(min_value=0.0, max_value=10.0),
)
def test_balances_never_negative_and_costs_add_up(
    orders: list[tuple[Side, float, bool]],
    price: float,
    fee_rate: float,
    slippage: float,
    quote0: float,
    base0: float,
) -> None:
    # Given a flat market at `price` and random market orders, applied only when affordable
    model = FillModel(fee_rate=fee_rate, slippage=slippage)
    ticker = Ticker("X/Y", bid=price, ask=price, last=price, ts=0)
    balances = {"X": base0, "Y": quote0}
    fees = slippage_cost = 0.0
    fills: list[Fill] = []
    for side, size, in_quote in orders:
        intent = (
            OrderIntent(side, OrderType.MARKET, quote_amount=size * price)
            if in_quote
            else OrderIntent(side, OrderType.MARKET, amount=size)
        )
        fill_price = market_price(side, ticker, model)
        fill = fill_at(side, resolve_amount(intent, price), fill_price, model, quote="Y")
        if not can_afford(fill, balances, base="X", quote="Y"):
            continue
        balances = apply_fill(balances, fill, base="X", quote="Y")
        fills.append(fill)
        fees += fill.fee
        slippage_cost += abs(fill.price - price) * fill.amount
        # Then no balance ever goes negative
        assert balances["X"] >= 0
        assert balances["Y"] >= 0
    # And the value lost at the mark price is exactly fees plus slippage
    equity0 = quote0 + base0 * price
    equity1 = balances["Y"] + balances["X"] * price
    assert math.isclose(equity0 - equity1, fees + slippage_cost, rel_tol=1e-9, abs_tol=1e-6)
    # And every fee is the fee rate of its notional, in quote currency
    for fill in fills:
        assert fill.fee_currency == "Y"
        assert math.isclose(fill.fee, fill.quote_cost * fee_rate, rel_tol=1e-12, abs_tol=0.0)
        assert math.isclose(fill.price, market_price(fill.side, ticker, model), rel_tol=1e-12)


def test_a_candle_is_walked_open_high_low_close_or_open_low_high_close() -> None:
    # A candle closing at or above its open went up first, one closing below went down
    up = Candle(0, 100.0, 110.0, 90.0, 105.0, 1.0)
    down = Candle(0, 100.0, 110.0, 90.0, 95.0, 1.0)
    assert fills.path(up) == (100.0, 110.0, 90.0, 105.0)
    assert fills.path(down) == (100.0, 90.0, 110.0, 95.0)
    # A sell at 108 and a buy at 92: the rising candle reaches the sell first
    orders = [("buy92", Side.BUY, 92.0), ("sell108", Side.SELL, 108.0), ("far", Side.BUY, 80.0)]

    def side_price(o: tuple[str, Side, float]) -> tuple[Side, float]:
        return o[1], o[2]

    assert [o[0] for _, o in fills.crossings(orders, up, side_price)] == ["sell108", "buy92"]
    assert [o[0] for _, o in fills.crossings(orders, down, side_price)] == ["buy92", "sell108"]
    # Where along the path: at the open when it gaps through, never when not reached
    assert fills.reached_at(Side.BUY, 100.0, up) == 0.0
    assert fills.reached_at(Side.SELL, 105.0, up) == pytest.approx(0.5)
    assert fills.reached_at(Side.BUY, 80.0, up) is None


def test_a_resting_order_reserves_what_it_may_cost() -> None:
    model = FillModel(fee_rate=0.001, slippage=0.0)
    assert fills.reservation(Side.BUY, 2.0, 50.0, model, base="BTC", quote="USDT") == (
        "USDT",
        pytest.approx(100.1),
    )
    assert fills.reservation(Side.SELL, 2.0, 50.0, model, base="BTC", quote="USDT") == ("BTC", 2.0)
