"""The order manager: written before sent, never sent twice, resolved by client order id."""

from __future__ import annotations

import re
from typing import Any, cast

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from engine import orders
from engine.domain import MarketRules, OrderIntent, OrderType, Side, Ticker
from engine.errors import FencedError
from engine.exchange.ccxt_gateway import CcxtGateway
from engine.exchange.clients import ClientSpec, client_for
from engine.exchange.gateway import Gateway, OrderReport, OrderRequest, OrderStatus
from engine.exchange.ratelimit import RateLimiter
from engine.exchange.retry import ReadRetry
from engine.models import Fill, Order

SYMBOL = "BTC/USDT"
BINANCE_ID = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")


def no_fence() -> None:
    """A fence that never trips (the bot stays at its generation)."""


def gateway(sim: Any, redis_client: redis.Redis, timeout_ms: int = 2000) -> CcxtGateway:
    spec = ClientSpec(
        "simulator",
        api_key="simulator-key",
        secret="simulator-secret",
        base_url=sim.url,
        options={"timeout": timeout_ms},
    )
    return CcxtGateway(
        client_for(spec),
        limiter=RateLimiter(redis_client, "simulator"),
        retry=ReadRetry(initial_s=0.01, max_wait_s=0.05),
    )


def rows(db: Engine, bot: str) -> list[Order]:
    with Session(db) as session:
        return list(session.exec(select(Order).where(Order.bot == bot).order_by(col(Order.id))))


def fills(db: Engine, bot: str) -> list[Fill]:
    with Session(db) as session:
        return list(session.exec(select(Fill).where(Fill.bot == bot)))


# -- client order ids -----------------------------------------------------------------


def test_client_order_id_is_readable_when_it_fits() -> None:
    assert orders.client_order_id("grid-sol", 3, 1042, 0) == "be-grid-sol-3-1042-0"


def test_client_order_id_is_hashed_to_fit() -> None:
    # Given a bot name too long for Binance's 36 characters
    bot = "a-very-long-bot-name-that-goes-on-and-on"
    ids = {orders.client_order_id(bot, 1, slot, 0) for slot in range(1000)}
    # Then every id fits, keeps a readable prefix, and stays distinct
    assert len(ids) == 1000
    assert all(BINANCE_ID.match(i) and i.startswith("be-a-very") for i in ids)
    assert orders.client_order_id(bot, 1, 5, 0) == orders.client_order_id(bot, 1, 5, 0)


def test_client_order_id_respects_alphanumeric_exchanges() -> None:
    # Given an exchange taking 32 letters and digits only (okx)
    cid = orders.client_order_id("my_bot-1", 2, 3, 4, 32, r"[A-Za-z0-9]")
    assert re.fullmatch(r"bemybot1[0-9a-f]{20}", cid)
    # And a tiny limit still gets a distinct, fitting id
    tiny = {orders.client_order_id("b", 1, s, 0, 12, r"[A-Za-z0-9]") for s in range(100)}
    assert len(tiny) == 100
    assert all(len(t) <= 12 for t in tiny)


@given(
    bot=st.from_regex(r"^[a-z0-9][a-z0-9_-]{0,62}$", fullmatch=True),
    gen=st.integers(0, 10**6),
    slot=st.integers(0, 10**9),
    index=st.integers(0, 50),
)
def test_client_order_ids_always_fit_binance(bot: str, gen: int, slot: int, index: int) -> None:
    cid = orders.client_order_id(bot, gen, slot, index)
    assert BINANCE_ID.match(cid)
    assert cid != orders.client_order_id(bot, gen, slot + 1, index)


# -- submit ---------------------------------------------------------------------------


def context(gw: CcxtGateway) -> tuple[MarketRules, Ticker]:
    return gw.market_rules(SYMBOL), gw.fetch_ticker(SYMBOL)


def submit(db: Engine, gw: Any, slot: int, intent: OrderIntent, **kw: Any) -> Order | None:
    rules, ticker = kw.pop("ctx")
    return orders.submit(
        db,
        gw,
        bot="b1",
        generation=1,
        slot=slot,
        index=kw.pop("index", 0),
        intent=intent,
        ticker=ticker,
        rules=rules,
        fence=kw.pop("fence", no_fence),
    )


def test_submit_records_fills_and_never_sends_twice(
    sim: Any, redis_client: redis.Redis, db: Engine
) -> None:
    # Given a live gateway on the simulator
    gw = gateway(sim, redis_client)
    ctx = context(gw)
    buy = OrderIntent(Side.BUY, quote_amount=100.0)
    # When a market buy is submitted
    row = submit(db, gw, 1, buy, ctx=ctx)
    # Then it closed with one fill carrying the fee
    assert row is not None
    assert row.status == OrderStatus.CLOSED.value
    (fill,) = fills(db, "b1")
    assert fill.amount == pytest.approx(row.filled)
    assert fill.fee > 0
    # When the same slot is submitted again (a redelivered tick)
    assert submit(db, gw, 1, buy, ctx=ctx) is None
    # Then nothing was sent again
    assert sim.request_count("/api/v3/order", "POST") == 1
    assert len(rows(db, "b1")) == 1
    assert len(fills(db, "b1")) == 1


def test_fenced_orders_are_not_sent(sim: Any, redis_client: redis.Redis, db: Engine) -> None:
    # Given the bot was stopped just before sending
    gw = gateway(sim, redis_client)

    def fence() -> None:
        raise FencedError("stopped")

    # When an order is submitted
    with pytest.raises(FencedError):
        submit(db, gw, 1, OrderIntent(Side.BUY, amount=0.01), ctx=context(gw), fence=fence)
    # Then the row is rejected as fenced and the exchange saw nothing
    (row,) = rows(db, "b1")
    assert (row.status, row.error) == ("rejected", "fenced")
    assert sim.request_count("/api/v3/order", "POST") == 0


def test_refusals_and_tiny_orders_are_recorded(
    sim: Any, redis_client: redis.Redis, db: Engine
) -> None:
    gw = gateway(sim, redis_client)
    ctx = context(gw)
    # Given an order the account cannot pay: sent, refused, recorded
    refused = submit(db, gw, 1, OrderIntent(Side.BUY, amount=1000.0), ctx=ctx)
    assert refused is not None
    assert refused.status == "rejected"
    assert "balance" in (refused.error or "")
    # Given an order below the exchange minimum: recorded, not sent
    assert submit(db, gw, 2, OrderIntent(Side.BUY, quote_amount=1.0), ctx=ctx) is None
    assert [r.status for r in rows(db, "b1")] == ["rejected", "rejected"]
    assert sim.request_count("/api/v3/order", "POST") == 1


def test_lost_responses_are_resolved_without_duplicates(
    sim: Any, redis_client: redis.Redis, db: Engine
) -> None:
    # Given every order creation executes but its answer is lost (connection reset)
    gw = gateway(sim, redis_client)
    ctx = context(gw)
    low = round(ctx[1].bid * 0.8, 2)
    sim.sim.add_fault("response_lost", path="/api/v3/order", method="POST", mode="drop")
    # When 200 orders (market and resting limit) are submitted
    for slot in range(200):
        intent = (
            OrderIntent(Side.BUY, amount=0.001)
            if slot % 2
            else OrderIntent(Side.BUY, OrderType.LIMIT, amount=0.001, price=low)
        )
        row = submit(db, gw, slot, intent, ctx=ctx)
        assert row is not None
        assert row.status == "unknown"
    # And the bot reconciles, then its ticks are redelivered and submit again
    assert orders.reconcile(db, "b1", gw) == 200
    for slot in range(200):
        intent = OrderIntent(Side.BUY, amount=0.001)
        assert submit(db, gw, slot, intent, ctx=ctx) is None
    # Then exactly one order per client id exists on the exchange and in the database
    on_exchange = [o["clientOrderId"] for o in sim.orders()]
    in_db = [r.client_order_id for r in rows(db, "b1")]
    assert len(on_exchange) == len(set(on_exchange)) == 200
    assert sorted(on_exchange) == sorted(in_db)
    assert sim.request_count("/api/v3/order", "POST") == 200
    # And the database agrees with the exchange on every order
    statuses = {r.status for r in rows(db, "b1")}
    assert statuses == {"open", "closed"}
    assert len(fills(db, "b1")) == 100


def test_timeouts_on_create_are_resolved(sim: Any, redis_client: redis.Redis, db: Engine) -> None:
    # Given order answers delayed past the client's timeout (the order exists)
    gw = gateway(sim, redis_client, timeout_ms=150)
    ctx = context(gw)
    sim.sim.add_fault(
        "response_lost", path="/api/v3/order", method="POST", mode="delay", hold_s=0.3
    )
    for slot in range(5):
        row = submit(db, gw, slot, OrderIntent(Side.BUY, amount=0.001), ctx=ctx)
        assert row is not None
        assert row.status == "unknown"
    # When reconciled
    orders.reconcile(db, "b1", gw)
    # Then all are closed with their fills, each sent once
    assert [r.status for r in rows(db, "b1")] == ["closed"] * 5
    assert len(sim.orders()) == 5


def test_orders_that_never_arrived_are_rejected_not_resent(
    sim: Any, redis_client: redis.Redis, db: Engine
) -> None:
    # Given a 503 on create: the exchange did not execute it, but we cannot know
    gw = gateway(sim, redis_client)
    ctx = context(gw)
    sim.sim.add_fault("http_5xx", count=1, path="/api/v3/order", method="POST")
    row = submit(db, gw, 1, OrderIntent(Side.BUY, amount=0.001), ctx=ctx)
    assert row is not None
    assert row.status == "unknown"
    # When reconciled within the grace period, it stays unknown
    assert orders.reconcile(db, "b1", gw) == 0
    # When reconciled after the grace period, it is rejected - and never resent
    assert orders.reconcile(db, "b1", gw, grace_s=0) == 1
    (stored,) = rows(db, "b1")
    assert (stored.status, stored.error) == ("rejected", "never reached the exchange")
    assert sim.request_count("/api/v3/order", "POST") == 1


def test_cancel_open_and_open_orders(sim: Any, redis_client: redis.Redis, db: Engine) -> None:
    # Given two resting limit orders
    gw = gateway(sim, redis_client)
    ctx = context(gw)
    low = round(ctx[1].bid * 0.8, 2)
    for index in range(2):
        intent = OrderIntent(Side.BUY, OrderType.LIMIT, amount=0.001, price=low)
        submit(db, gw, 1, intent, ctx=ctx, index=index)
    assert len(orders.open_orders(db, "b1")) == 2
    # When the bot stops with on_stop: cancel
    assert orders.cancel_open(db, "b1", gw) == 2
    # Then nothing rests, on the exchange or in the database
    assert gw.fetch_open_orders(SYMBOL) == []
    assert orders.open_orders(db, "b1") == ()


# -- positions and PnL ---------------------------------------------------------------


def fill(side: str, amount: float, price: float, fee: float = 0.0, ccy: str = "USDT") -> Fill:
    return Fill(
        order_id=1,
        bot="b",
        symbol=SYMBOL,
        side=side,
        amount=amount,
        price=price,
        fee=fee,
        fee_currency=ccy,
    )


def test_pnl_average_cost() -> None:
    # Given buys at 100 and 110, then a sell of half at 120, fees in quote
    pnl = orders.pnl_from_fills(
        [fill("buy", 1, 100, 0.1), fill("buy", 1, 110, 0.11), fill("sell", 1, 120, 0.12)],
        price=130,
    )
    # Then the position is 1 at 105, 15 realized, 25 unrealized, 0.33 fees
    assert pnl.position == pytest.approx(1)
    assert pnl.average_cost == pytest.approx(105)
    assert pnl.realized == pytest.approx(15)
    assert pnl.unrealized == pytest.approx(25)
    assert pnl.fees == pytest.approx(0.33)
    assert pnl.net == pytest.approx(39.67)


def test_pnl_with_fee_in_base_keeps_the_books_balanced() -> None:
    # Given a Binance buy charging its fee in BTC, then a partial sell
    trades = [
        fill("buy", 1, 100, 0.001, "BTC"),
        fill("buy", 1, 120, 0.001, "BTC"),
        fill("sell", 0.5, 130, 0.065),
    ]
    pnl = orders.pnl_from_fills(trades, price=125)
    # Then equity change (quote + base at 125) equals realized + unrealized - fees
    quote = -100 - 120 + 0.5 * 130 - 0.065
    base = 1 - 0.001 + 1 - 0.001 - 0.5
    assert pnl.position == pytest.approx(base)
    assert quote + base * 125 == pytest.approx(pnl.net)


class Scripted:
    """A gateway answering create/fetch with scripted reports (partial fills)."""

    exchange_id = "binance"

    def __init__(self, reports: list[OrderReport]) -> None:
        self.reports = reports
        self.created = 0

    def create_order(self, request: OrderRequest) -> OrderReport:
        self.created += 1
        return self.reports.pop(0)

    def fetch_order(self, symbol: str, client_order_id: str) -> OrderReport | None:
        return self.reports.pop(0)

    def fetch_open_orders(self, symbol: str) -> list[OrderReport]:
        return []


def test_partial_fills_are_booked_incrementally(db: Engine) -> None:
    # Given a limit order that fills 0.4 at 100, then the rest for an average of 101
    cid = "be-b1-1-1-0"

    def report(status: OrderStatus, filled: float, average: float, fee: float) -> OrderReport:
        return OrderReport(
            cid,
            "42",
            SYMBOL,
            Side.BUY,
            OrderType.LIMIT,
            status,
            1.0,
            filled=filled,
            price=102.0,
            average=average,
            fee=fee,
            fee_currency="USDT",
        )

    gw = Scripted(
        [report(OrderStatus.OPEN, 0.4, 100.0, 0.04), report(OrderStatus.CLOSED, 1.0, 101.0, 0.101)]
    )
    rules = MarketRules(SYMBOL, "BTC", "USDT", 1e-5, 0.01)
    ticker = Ticker(SYMBOL, 100.0, 100.1, 100.0, 0)
    intent = OrderIntent(Side.BUY, OrderType.LIMIT, amount=1.0, price=102.0)
    # When it is submitted, and reconciled twice (the second time nothing changed)
    orders.submit(
        db,
        cast(Gateway, gw),
        bot="b1",
        generation=1,
        slot=1,
        index=0,
        intent=intent,
        ticker=ticker,
        rules=rules,
        fence=no_fence,
    )
    assert orders.reconcile(db, "b1", cast(Gateway, gw)) == 1
    assert orders.reconcile(db, "b1", cast(Gateway, gw)) == 0
    # Then two fills: 0.4 at 100, and 0.6 at the price that makes the average 101
    booked = sorted(fills(db, "b1"), key=lambda f: f.amount)
    assert [f.amount for f in booked] == pytest.approx([0.4, 0.6])
    assert booked[1].price == pytest.approx((101.0 - 40.0) / 0.6)
    assert sum(f.fee for f in booked) == pytest.approx(0.101)
    assert gw.created == 1
