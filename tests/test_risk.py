"""Risk limits drop intents with reasons; market rules and the position are enforced too."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from pydantic import ValidationError

from engine.domain import (
    MarketContext,
    MarketRules,
    OpenOrder,
    OrderIntent,
    OrderType,
    Side,
    Ticker,
)
from engine.risk import RiskLimits, apply_risk

RULES = MarketRules("BTC/USDT", "BTC", "USDT", amount_step=0.001, min_amount=0.001, min_notional=10)


def ctx(
    *,
    position: float = 0.0,
    open_orders: Sequence[OpenOrder] = (),
    rules: MarketRules | None = RULES,
    price: float = 100.0,
) -> MarketContext:
    ticker = Ticker("BTC/USDT", bid=price - 1, ask=price + 1, last=price, ts=0)
    return MarketContext(
        symbol="BTC/USDT",
        now=0,
        candles=(),
        ticker=ticker,
        position=position,
        balances={"USDT": 1000.0, "BTC": position},
        open_orders=tuple(open_orders),
        rules=rules,
    )


def buy(
    amount: float | None = None, quote: float | None = None, price: float | None = None
) -> OrderIntent:
    kind = OrderType.LIMIT if price is not None else OrderType.MARKET
    return OrderIntent(Side.BUY, kind, amount=amount, quote_amount=quote, price=price)


def sell(amount: float) -> OrderIntent:
    return OrderIntent(Side.SELL, OrderType.MARKET, amount=amount)


def reasons(result_dropped: Sequence[tuple[OrderIntent, str]]) -> list[str]:
    return [reason.split(":", 1)[0] for _, reason in result_dropped]


def test_all_pass_within_limits() -> None:
    intents = [buy(amount=0.5), sell(0.2)]
    result = apply_risk(intents, ctx(position=1.0), RiskLimits())
    assert result.kept == tuple(intents)
    assert result.dropped == ()


def test_max_orders_per_tick_keeps_the_first() -> None:
    # Given three valid intents and a limit of two
    intents = [buy(amount=0.5), buy(amount=0.6), buy(amount=0.7)]
    result = apply_risk(intents, ctx(), RiskLimits(max_orders_per_tick=2))
    # Then the first two pass and the third is dropped with the limit as reason
    assert result.kept == tuple(intents[:2])
    assert [(i, r) for i, r in result.dropped] == [
        (intents[2], "max_orders_per_tick: limit 2 reached")
    ]
    # And None means no limit; 0 means nothing at all
    assert len(apply_risk(intents, ctx(), RiskLimits(max_orders_per_tick=None)).kept) == 3
    assert apply_risk(intents, ctx(), RiskLimits(max_orders_per_tick=0)).kept == ()


def test_market_minimums_after_step_rounding() -> None:
    # Given min notional 10 USDT, min amount 0.001 BTC, amount step 0.001
    intents = [
        buy(quote=5),  # 5 / 101 = 0.0495 BTC -> notional ~4.95 < 10
        buy(amount=0.0004),  # floors to 0 at the 0.001 step
        buy(amount=0.2),  # 0.2 * 101 = 20.2: fine
    ]
    result = apply_risk(intents, ctx(), RiskLimits())
    assert result.kept == (intents[2],)
    assert reasons(result.dropped) == ["min_notional", "min_amount"]
    # And without market rules the same small orders pass
    assert len(apply_risk(intents, ctx(rules=None), RiskLimits()).kept) == 3


def test_max_order_quote() -> None:
    result = apply_risk([buy(amount=2.0), buy(quote=150)], ctx(), RiskLimits(max_order_quote=200))
    assert reasons(result.dropped) == ["max_order_quote"]
    assert "202 > 200" in result.dropped[0][1]


def test_sells_never_exceed_the_position() -> None:
    # Given 1 BTC of which 0.3 rests in an open sell
    resting = OpenOrder("o1", Side.SELL, OrderType.LIMIT, 0.5, 150.0, filled=0.2)
    # When two sells of 0.4 are wanted
    result = apply_risk(
        [sell(0.4), sell(0.4)], ctx(position=1.0, open_orders=[resting]), RiskLimits()
    )
    # Then only 0.7 is sellable: the first passes, the second is dropped
    assert len(result.kept) == 1
    assert reasons(result.dropped) == ["position"]


def test_selling_the_exact_position_survives_float_dust() -> None:
    position = 0.1 + 0.2  # 0.30000000000000004
    assert apply_risk([sell(0.3)], ctx(position=position), RiskLimits()).dropped == ()
    assert apply_risk([sell(position)], ctx(position=0.3), RiskLimits()).dropped == ()


def test_max_position_counts_resting_and_kept_buys() -> None:
    # Given 0.5 BTC held, 0.2 bid in an open order and a cap of 1 BTC
    resting = OpenOrder("o1", Side.BUY, OrderType.LIMIT, 0.2, 90.0)
    context = ctx(position=0.5, open_orders=[resting])
    # When buys of 0.2 and 0.2 are wanted
    result = apply_risk(
        [buy(amount=0.2), buy(amount=0.2, price=95)], context, RiskLimits(max_position=1)
    )
    # Then 0.5 + 0.2 + 0.2 = 0.9 fits and the next 0.2 would reach 1.1
    assert len(result.kept) == 1
    assert reasons(result.dropped) == ["max_position"]


def test_limit_orders_are_valued_at_their_price() -> None:
    # A limit buy of 0.1 at 50 is 5 USDT (< 10) although the ask is 101
    result = apply_risk([buy(amount=0.1, price=50)], ctx(), RiskLimits())
    assert reasons(result.dropped) == ["min_notional"]


def test_limits_model_rejects_unknown_and_bad_values() -> None:
    with pytest.raises(ValidationError) as err:
        RiskLimits.model_validate({"max_orders": 3, "max_position": -1})
    assert {e["loc"] for e in err.value.errors()} == {("max_orders",), ("max_position",)}
