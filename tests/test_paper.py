"""The paper broker: real data, simulated fills, persisted balances that never go negative."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from engine import orders
from engine.config import BotConfig
from engine.db import make_engine
from engine.domain import Candle, MarketRules, OrderIntent, OrderType, Side, Ticker
from engine.errors import OrderRejectedError
from engine.exchange.factory import data_max_age, gateway_for
from engine.exchange.fills import FillModel
from engine.exchange.gateway import OrderReport, OrderRequest, OrderStatus
from engine.exchange.paper import PaperGateway
from engine.settings import Settings

SYMBOL = "BTC/USDT"
RULES = MarketRules(
    SYMBOL, "BTC", "USDT", amount_step=1e-5, price_step=0.01, min_amount=1e-5, min_notional=5.0
)


class Market:
    """A data gateway whose price the test moves by hand, one closed candle a move."""

    exchange_id = "simulator"

    def __init__(self, mid: float = 100.0) -> None:
        self.mid = mid
        self.now = time.time()
        self.candles: list[Candle] = []

    def clock(self) -> float:
        return self.now

    def move(self, mid: float) -> None:
        """The price goes to `mid` within the current minute, whose candle then closes."""
        start = int(self.now * 1000) // 60_000 * 60_000
        low, high = min(self.mid, mid), max(self.mid, mid)
        self.candles.append(Candle(start, self.mid, high, low, mid, 1.0))
        self.mid = mid
        self.now = (start + 60_000) / 1000 + 0.001

    def market_rules(self, symbol: str) -> MarketRules:
        return RULES

    def fetch_ticker(self, symbol: str) -> Ticker:
        return Ticker(symbol, self.mid - 0.05, self.mid + 0.05, self.mid, 0)

    def fetch_ohlcv(self, symbol: str, timeframe: str, limit: int) -> list[Candle]:
        return self.candles[-limit:]

    def fetch_balances(self) -> dict[str, float]:
        raise AssertionError("paper never asks the exchange for balances")

    def create_order(self, request: OrderRequest) -> OrderReport:
        raise AssertionError("paper never sends orders to the exchange")

    def fetch_order(self, symbol: str, client_order_id: str) -> OrderReport | None:
        raise AssertionError("paper never asks the exchange for orders")

    def cancel_order(self, symbol: str, client_order_id: str) -> OrderReport:
        raise AssertionError("paper never cancels on the exchange")

    def fetch_open_orders(self, symbol: str) -> list[OrderReport]:
        raise AssertionError("paper never asks the exchange for orders")


def paper(db: Engine, market: Market, bot: str = "p1", **balances: float) -> PaperGateway:
    return PaperGateway(
        bot,
        market,
        db,
        balances=balances or {"USDT": 1000.0},
        model=FillModel(fee_rate=0.001, slippage=0.001),
        clock=market.clock,
    )


def order(cid: str, side: Side, amount: float, price: float | None = None) -> OrderRequest:
    kind = OrderType.MARKET if price is None else OrderType.LIMIT
    return OrderRequest(SYMBOL, side, kind, amount, cid, price)


def test_market_orders_fill_at_the_far_side_with_fee(db: Engine) -> None:
    # Given a paper account with 1000 USDT, ask 100.05
    gw = paper(db, Market())
    # When it buys 1 BTC at market
    report = gw.create_order(order("m1", Side.BUY, 1.0))
    # Then it paid ask + slippage plus the fee, in quote
    price = 100.05 * 1.001
    assert report.status is OrderStatus.CLOSED
    assert report.average == pytest.approx(price)
    assert report.fee == pytest.approx(price * 0.001)
    balances = gw.fetch_balances()
    assert balances["BTC"] == pytest.approx(1.0)
    assert balances["USDT"] == pytest.approx(1000 - price * 1.001)
    # And the same client id sent again is answered, not filled twice
    assert gw.create_order(order("m1", Side.BUY, 1.0)) == report
    assert gw.fetch_balances() == balances


def test_unpayable_orders_are_rejected_and_change_nothing(db: Engine) -> None:
    gw = paper(db, Market())
    with pytest.raises(OrderRejectedError):
        gw.create_order(order("big", Side.BUY, 20.0))
    with pytest.raises(OrderRejectedError):
        gw.create_order(order("short", Side.SELL, 0.1))
    assert gw.fetch_balances() == {"USDT": 1000.0}
    assert gw.fetch_order(SYMBOL, "big") is None  # the "exchange" never accepted it


def test_limit_orders_rest_reserve_and_fill_when_crossed(db: Engine) -> None:
    # Given a resting limit buy at 90 (market at 100)
    market = Market(100.0)
    gw = paper(db, market)
    report = gw.create_order(order("l1", Side.BUY, 2.0, 90.0))
    assert report.status is OrderStatus.OPEN
    # Then its cost and fee are reserved
    free, used = gw.balances_detail()["USDT"]
    assert used == pytest.approx(180 * 1.001)
    assert free + used == pytest.approx(1000)
    assert [o.client_order_id for o in gw.fetch_open_orders(SYMBOL)] == ["l1"]
    # When a candle falls through 90, the next call after its close fills it at its price
    market.move(89.0)
    filled = gw.fetch_order(SYMBOL, "l1")
    assert filled is not None
    assert (filled.status, filled.average) == (OrderStatus.CLOSED, 90.0)
    detail = gw.balances_detail()
    assert detail["BTC"] == pytest.approx((2.0, 0.0))
    assert detail["USDT"][0] == pytest.approx(1000 - 180 * 1.001)
    assert detail["USDT"][1] == pytest.approx(0.0, abs=1e-9)


def test_cancel_releases_the_reservation(db: Engine) -> None:
    gw = paper(db, Market(100.0), USDT=0.0, BTC=1.0)
    gw.create_order(order("s1", Side.SELL, 1.0, 150.0))
    assert gw.balances_detail()["BTC"] == (0.0, 1.0)
    assert gw.cancel_order(SYMBOL, "s1").status is OrderStatus.CANCELED
    assert gw.balances_detail()["BTC"] == (1.0, 0.0)
    with pytest.raises(OrderRejectedError):
        gw.cancel_order(SYMBOL, "nope")


def test_a_fee_change_while_orders_rest_keeps_books_sound(db: Engine) -> None:
    # Given two resting buys reserved at a 0.1 % fee
    market = Market(100.0)
    paper(db, market).create_order(order("f1", Side.BUY, 1.0, 90.0))
    paper(db, market).create_order(order("f2", Side.BUY, 1.0, 80.0))
    # When the bot's config raises the fee to 0.5 % (a new gateway, same bot)
    raised = PaperGateway(
        "p1",
        market,
        db,
        balances={"USDT": 1000.0},
        model=FillModel(fee_rate=0.005),
        clock=market.clock,
    )
    market.move(89.0)
    # Then the crossed one fills, the difference coming out of free funds
    filled = raised.fetch_order(SYMBOL, "f1")
    assert filled is not None
    assert filled.status is OrderStatus.CLOSED
    # And cancelling the other gives back no more than was reserved
    raised.cancel_order(SYMBOL, "f2")
    free, used = raised.balances_detail()["USDT"]
    assert used == pytest.approx(0.0, abs=1e-9)
    assert free == pytest.approx(1000 - 90 * 1.005)


def test_order_manager_over_paper(db: Engine) -> None:
    # Given the order manager trading through the paper broker
    market = Market(100.0)
    gw = paper(db, market)
    ticker = market.fetch_ticker(SYMBOL)

    def submit(slot: int, intent: OrderIntent) -> Any:
        return orders.submit(
            db,
            gw,
            bot="p1",
            generation=1,
            slot=slot,
            index=0,
            intent=intent,
            ticker=ticker,
            rules=RULES,
            fence=lambda: None,
        )

    # When it buys at market and rests a sell above
    submit(1, OrderIntent(Side.BUY, quote_amount=500.0))
    submit(2, OrderIntent(Side.SELL, OrderType.LIMIT, amount=2.0, price=110.0))
    # Then fills are booked once (paper books them, the manager does not repeat them)
    assert orders.position(db, "p1") == pytest.approx(gw.fetch_balances()["BTC"] + 2.0)
    # When the price rises through the sell and the bot reconciles
    market.move(111.0)
    assert orders.reconcile(db, "p1", gw) == 1
    pnl = orders.position_and_pnl(db, "p1", price=111.0)
    balances = gw.fetch_balances()
    assert pnl.position == pytest.approx(balances["BTC"])
    equity_change = balances["USDT"] - 1000 + balances["BTC"] * 111.0
    assert equity_change == pytest.approx(pnl.net)


actions = st.lists(
    st.one_of(
        st.tuples(st.just("market"), st.sampled_from(Side), st.floats(0.001, 3.0)),
        st.tuples(
            st.just("limit"), st.sampled_from(Side), st.floats(0.001, 3.0), st.floats(-0.2, 0.2)
        ),
        st.tuples(st.just("move"), st.floats(-0.3, 0.3)),
        st.tuples(st.just("cancel"), st.integers(0, 50)),
    ),
    max_size=25,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=actions, fee=st.floats(0, 0.01), slip=st.floats(0, 0.01))
def test_paper_books_always_balance(db: Engine, steps: list[Any], fee: float, slip: float) -> None:
    # Given a fresh paper bot with 1000 USDT and 2 BTC, and any sequence of orders,
    # cancels and price moves
    bot = f"h{uuid.uuid4().hex[:8]}"
    market = Market(100.0)
    gw = PaperGateway(
        bot,
        market,
        db,
        balances={"USDT": 1000.0, "BTC": 2.0},
        model=FillModel(fee_rate=fee, slippage=slip),
        clock=market.clock,
    )
    sent: list[str] = []
    for n, step in enumerate(steps):
        try:
            if step[0] == "market":
                gw.create_order(order(f"{bot}-{n}", step[1], step[2]))
            elif step[0] == "limit":
                price = round(market.mid * (1 + step[3]), 2)
                gw.create_order(order(f"{bot}-{n}", step[1], step[2], price))
                sent.append(f"{bot}-{n}")
            elif step[0] == "move":
                market.move(max(1.0, market.mid * (1 + step[1])))
            elif sent:
                gw.cancel_order(SYMBOL, sent[step[1] % len(sent)])
        except OrderRejectedError:
            pass
        # Then no balance, free or reserved, is ever negative
        for free, used in gw.balances_detail().values():
            assert free >= 0
            assert used >= -1e-9
    # And once nothing rests, the books add up: equity change = PnL - fees
    for report in gw.fetch_open_orders(SYMBOL):
        gw.cancel_order(SYMBOL, report.client_order_id)
    balances = gw.fetch_balances()
    pnl = orders.position_and_pnl(db, bot, price=market.mid)
    assert pnl.position == pytest.approx(balances["BTC"] - 2.0, abs=1e-9)
    assert orders.position(db, bot) == pytest.approx(pnl.position, abs=1e-9)
    equity_change = balances["USDT"] - 1000.0 + (balances["BTC"] - 2.0) * market.mid
    assert equity_change == pytest.approx(pnl.net, abs=1e-6)


# -- 100 paper bots on the simulator --------------------------------------------------


def config(name: str) -> BotConfig:
    return BotConfig.model_validate(
        {
            "name": name,
            "exchange": "simulator",
            "symbol": SYMBOL,
            "check_interval": "2s",
            "strategy": {
                "name": "sma_cross",
                "params": {"fast": 2, "slow": 3, "quote_amount": 100},
            },
        }
    )


@pytest.mark.sqlite_only
def test_hundred_paper_bots_cost_one_ticker_request_per_interval(
    sim: Any, redis_url: str, db_url: str
) -> None:
    # Given 100 paper bots on BTC/USDT, each with its own gateway and Redis connection
    settings_ = Settings(simulator_url=sim.url)
    db = make_engine(db_url)
    bots = [config(f"bot-{i}") for i in range(100)]
    gateways = [
        gateway_for(c, redis=redis.Redis.from_url(redis_url), db=db, settings=settings_)
        for c in bots
    ]
    errors: list[BaseException] = []

    def tick(i: int, data_phase: threading.Barrier, rest_phase: threading.Barrier) -> None:
        gw = gateways[i]
        try:
            data_phase.wait()  # every bot's slot is due now: market data first
            gw.fetch_ticker(SYMBOL)
            gw.fetch_ohlcv(SYMBOL, "1m", 3)
            rest_phase.wait()  # then the slower, per-bot part of the tick
            gw.market_rules(SYMBOL)
            gw.fetch_balances()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    # When they all tick together, on three consecutive intervals
    rounds = 3
    for n in range(rounds):
        phases = threading.Barrier(100), threading.Barrier(100)
        threads = [threading.Thread(target=tick, args=(i, *phases)) for i in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if n < rounds - 1:  # the next interval: the shared data has aged past max age
            time.sleep(data_max_age(2.0) + 0.1)
    # Then the simulator saw one ticker and one candle request per interval
    assert errors == []
    assert sim.request_count("/api/v3/ticker/24hr") == rounds
    assert sim.request_count("/api/v3/klines") == rounds
    assert sim.request_count("/api/v3/exchangeInfo") == 1
    assert sim.request_count("/api/v3/account") == 0  # paper balances never leave the DB
