"""The loopback exchange simulator, driven through the real, unmodified ccxt binance client."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import ccxt
import pytest
from structlog.testing import capture_logs

from engine.errors import ConfigError
from engine.exchange.simulator import (
    DEFAULT_API_KEY,
    DEFAULT_API_SECRET,
    FaultInjector,
    FaultRule,
    ManualClock,
    SimulatorConfig,
    SimulatorServer,
    make_ccxt_client,
)
from engine.exchange.simulator.runner import check_bind

START_MS = 1_767_225_600_000 + 12 * 3_600_000 + 345_678  # 2026-01-01 12:05:45.678 UTC
SYMBOL = "BTC/USDT"
MARKET_ID = "BTCUSDT"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START_MS)


@pytest.fixture
def server(clock: ManualClock) -> Iterator[SimulatorServer]:
    # the periodic sweep is off: fills must come from the lazy, request-driven path
    with SimulatorServer(seed=7, clock=clock, sweep_interval_s=0) as srv:
        yield srv


@pytest.fixture
def exchange(server: SimulatorServer) -> Iterator[Any]:
    client = make_ccxt_client(server.url, timeout_ms=3_000)
    client.load_markets()
    yield client
    client.session.close()


def admin(server: SimulatorServer, method: str, path: str, body: Any = None) -> Any:
    """Call a /_sim/ admin endpoint over HTTP, as another process would."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


# -- market data -------------------------------------------------------------------------


def test_load_markets_needs_only_exchange_info(exchange: Any, server: SimulatorServer) -> None:
    # Given a ccxt client configured by make_ccxt_client (markets loaded by the fixture)
    # Then exchangeInfo was the only request (no sapi, fapi, dapi or capital/config)
    assert server.sim.stats.by_endpoint == {"GET /api/v3/exchangeInfo": 1}
    # And the filters became ccxt precision and limits
    market = exchange.market(SYMBOL)
    assert market["precision"]["price"] == 0.01
    assert market["precision"]["amount"] == 0.00001
    assert market["limits"]["amount"]["min"] == 0.00001
    assert market["limits"]["cost"]["min"] == 5
    assert {"BTC/USDT", "ETH/USDT", "SOL/USDT", "ETH/BTC"} <= set(exchange.symbols)


def test_fetch_ticker_quotes_the_seeded_path(exchange: Any, server: SimulatorServer) -> None:
    # When the ticker is fetched
    ticker = exchange.fetch_ticker(SYMBOL)
    # Then bid < last < ask around the path's mid, on the tick grid
    mid = server.sim.mid_price(MARKET_ID)
    assert ticker["bid"] < ticker["last"] < ticker["ask"]
    assert abs(ticker["last"] - mid) < 0.01
    assert ticker["ask"] - ticker["bid"] <= mid * 0.0003
    assert ticker["low"] <= ticker["last"] <= ticker["high"]
    assert ticker["timestamp"] // 1000 == START_MS // 1000
    # And the request is counted per endpoint and per symbol
    assert server.request_count("/api/v3/ticker/24hr", symbol=MARKET_ID) == 1


def test_fetch_order_book_is_sorted_and_limited(exchange: Any) -> None:
    # When a 10-level book is fetched
    book = exchange.fetch_order_book(SYMBOL, 10)
    # Then both sides have 10 levels, best first, and the touch matches the ticker
    bids, asks = [p for p, _ in book["bids"]], [p for p, _ in book["asks"]]
    assert len(bids) == len(asks) == 10
    assert bids == sorted(bids, reverse=True)
    assert asks == sorted(asks)
    ticker = exchange.fetch_ticker(SYMBOL)
    assert (bids[0], asks[0]) == (ticker["bid"], ticker["ask"])


def test_fetch_ohlcv_is_deterministic_per_seed(clock: ManualClock) -> None:
    # Given two simulators with the same seed and clock, and one with another seed
    with (
        SimulatorServer(seed=7, clock=clock, sweep_interval_s=0) as a,
        SimulatorServer(seed=7, clock=clock, sweep_interval_s=0) as b,
        SimulatorServer(seed=8, clock=clock, sweep_interval_s=0) as c,
    ):
        # When each serves the same candles
        since = START_MS - 6 * 3_600_000
        candles = [
            make_ccxt_client(s.url).fetch_ohlcv(SYMBOL, "15m", since=since, limit=20)
            for s in (a, b, c)
        ]
    # Then the same seed gives the same candles and another seed different ones
    assert candles[0] == candles[1]
    assert candles[0] != candles[2]
    # And they start at or after `since`, on the 15-minute grid, OHLC-consistent
    assert len(candles[0]) == 20
    assert candles[0][0][0] >= since
    for ts, o, h, low, close, volume in candles[0]:
        assert ts % 900_000 == 0
        assert low <= min(o, close) <= max(o, close) <= h
        assert volume > 0


def test_fetch_ohlcv_timeframes_aggregate_consistently(exchange: Any) -> None:
    # Given the last complete hour
    hour = (START_MS // 3_600_000 - 1) * 3_600_000
    # When it is fetched as one 1h candle and as sixty 1m candles
    (h1,) = exchange.fetch_ohlcv(SYMBOL, "1h", since=hour, limit=1)
    minutes = exchange.fetch_ohlcv(SYMBOL, "1m", since=hour, limit=60)
    # Then the hour is exactly the aggregate of its minutes
    assert h1[0] == minutes[0][0] == hour
    assert h1[1] == minutes[0][1]
    assert h1[2] == max(m[2] for m in minutes)
    assert h1[3] == min(m[3] for m in minutes)
    assert h1[4] == minutes[-1][4]


def test_latest_candle_is_open_and_follows_the_clock(
    exchange: Any, server: SimulatorServer, clock: ManualClock
) -> None:
    # Given the newest three 1m candles, the last one still open
    before = exchange.fetch_ohlcv(SYMBOL, "1m", limit=3)
    assert before[-1][0] == START_MS // 60_000 * 60_000
    # When two minutes pass
    clock.advance(120)
    after = exchange.fetch_ohlcv(SYMBOL, "1m", since=before[0][0], limit=5)
    # Then closed candles are unchanged and the open one has closed around its start
    assert after[:2] == before[:2]
    assert after[2][:2] == before[2][:2]
    assert after[2][2] >= before[2][2]
    assert after[2][3] <= before[2][3]
    # And the newest candle is the current minute, closing at the current price
    assert after[-1][0] == before[-1][0] + 120_000
    assert after[-1][4] == pytest.approx(server.sim.mid_price(MARKET_ID), abs=0.01)


# -- account and orders ------------------------------------------------------------------


def test_fetch_balance_starts_from_configured_balances(exchange: Any) -> None:
    balance = exchange.fetch_balance()
    assert balance["USDT"] == {"free": 100_000.0, "used": 0.0, "total": 100_000.0}
    assert balance["BTC"]["free"] == 10.0


def test_market_buy_fills_at_ask_and_charges_fee(exchange: Any, server: SimulatorServer) -> None:
    # Given the current ask
    _, ask = server.sim.quote(MARKET_ID)
    # When 0.1 BTC is bought at market
    order = exchange.create_order(SYMBOL, "market", "buy", 0.1)
    # Then it filled at the ask, with the 0.1 % fee taken in BTC
    assert order["status"] == "closed"
    assert order["filled"] == 0.1
    assert order["average"] == float(ask)
    assert order["fee"] == {"currency": "BTC", "cost": 0.0001}
    balance = exchange.fetch_balance()
    assert balance["BTC"]["total"] == pytest.approx(10 + 0.1 - 0.0001)
    assert balance["USDT"]["total"] == pytest.approx(100_000 - float(ask) * 0.1)


def test_market_buy_by_quote_amount(exchange: Any, server: SimulatorServer) -> None:
    # When 100 USDT worth of BTC is bought (Binance quoteOrderQty)
    order = exchange.create_market_buy_order_with_cost(SYMBOL, 100)
    # Then the quantity is rounded down to the lot step and costs at most 100 USDT
    _, ask = server.sim.quote(MARKET_ID)
    assert order["status"] == "closed"
    assert order["amount"] == float((Decimal(100) / ask).quantize(Decimal("0.00001"), "ROUND_DOWN"))
    assert 99 < order["cost"] <= 100


def _crossing_limit(server: SimulatorServer, seconds: int) -> tuple[str, float]:
    """A (side, price) limit order not marketable now but crossed within ``seconds``."""
    market = server.sim.markets[MARKET_ID]
    now_s = START_MS // 1000
    bid, ask = market.quote(now_s)
    low_ask, high_bid = market.extremes(now_s + 1, now_s + seconds + 1)
    if low_ask < ask:
        return "buy", float(low_ask)
    assert high_bid > bid, "the path neither fell nor rose: pick another window"
    return "sell", float(high_bid)


def test_limit_order_rests_then_fills_when_the_path_crosses(
    exchange: Any, server: SimulatorServer, clock: ManualClock
) -> None:
    # Given a limit order priced where the path will trade within ten minutes
    side, price = _crossing_limit(server, 600)
    order = exchange.create_order(SYMBOL, "limit", side, 0.01, price)
    # Then it rests, holding its funds
    assert order["status"] == "open"
    locked_asset = "USDT" if side == "buy" else "BTC"
    assert exchange.fetch_balance()[locked_asset]["used"] > 0
    # When the clock passes the crossing
    clock.advance(600)
    fetched = exchange.fetch_order(order["id"], SYMBOL)
    # Then it filled at its own price as a maker, and nothing stays locked
    assert fetched["status"] == "closed"
    assert fetched["filled"] == 0.01
    assert fetched["average"] == price
    assert exchange.fetch_balance()[locked_asset]["used"] == 0
    trades = exchange.fetch_my_trades(SYMBOL)
    assert [(t["order"], t["takerOrMaker"], t["price"]) for t in trades] == [
        (order["id"], "maker", price)
    ]


def test_fetch_by_client_id_open_orders_and_cancel(exchange: Any, server: SimulatorServer) -> None:
    # Given a buy limit far below the market, with our own client order id
    bid, _ = server.sim.quote(MARKET_ID)
    price = float((bid / 2).quantize(Decimal("0.01")))
    order = exchange.create_order(
        SYMBOL, "limit", "buy", 0.01, price, {"newClientOrderId": "bot1-g1-s1-0"}
    )
    # When it is looked up by client order id
    found = exchange.fetch_order(None, SYMBOL, {"clientOrderId": "bot1-g1-s1-0"})
    # Then it is the same open order, listed among open orders
    assert found["id"] == order["id"]
    assert found["clientOrderId"] == "bot1-g1-s1-0"
    assert [o["id"] for o in exchange.fetch_open_orders(SYMBOL)] == [order["id"]]
    assert [o["id"] for o in exchange.fetch_open_orders()] == [order["id"]]
    # When it is canceled
    canceled = exchange.cancel_order(order["id"], SYMBOL)
    # Then it is gone from open orders and its funds are free again
    assert canceled["status"] == "canceled"
    assert exchange.fetch_open_orders(SYMBOL) == []
    assert exchange.fetch_balance()["USDT"]["free"] == 100_000.0
    # And canceling again or fetching an unknown id is OrderNotFound
    with pytest.raises(ccxt.OrderNotFound):
        exchange.cancel_order(order["id"], SYMBOL)
    with pytest.raises(ccxt.OrderNotFound):
        exchange.fetch_order("999999", SYMBOL)


def test_post_only_order_that_would_take_is_rejected(
    exchange: Any, server: SimulatorServer
) -> None:
    _, ask = server.sim.quote(MARKET_ID)
    with pytest.raises(ccxt.OrderImmediatelyFillable):
        exchange.create_order(SYMBOL, "limit", "buy", 0.01, float(ask), {"postOnly": True})
    assert server.orders() == []


def test_insufficient_funds(exchange: Any, server: SimulatorServer) -> None:
    # When more BTC is bought than 100,000 USDT pays for
    with pytest.raises(ccxt.InsufficientFunds):
        exchange.create_order(SYMBOL, "market", "buy", 5)
    # Then no order exists and the balance is untouched
    assert server.orders() == []
    assert exchange.fetch_balance()["USDT"]["free"] == 100_000.0


def test_unknown_symbol_is_bad_symbol(exchange: Any) -> None:
    # Given a symbol ccxt does not know, ccxt refuses locally
    with pytest.raises(ccxt.BadSymbol):
        exchange.fetch_ticker("NOPE/USDT")
    # And one that reaches the simulator is refused by it with -1121
    with pytest.raises(ccxt.BadSymbol):
        exchange.publicGetTicker24hr({"symbol": "NOPEUSDT"})
    with pytest.raises(ccxt.BadSymbol):
        exchange.privateGetOpenOrders({"symbol": "NOPEUSDT"})


def test_wrong_secret_and_unknown_key_are_authentication_errors(server: SimulatorServer) -> None:
    wrong_secret = make_ccxt_client(server.url, api_secret="not-the-secret")
    with pytest.raises(ccxt.AuthenticationError, match="-1022"):
        wrong_secret.fetch_balance()
    unknown_key = make_ccxt_client(server.url, api_key="someone-else")
    with pytest.raises(ccxt.AuthenticationError, match="-2015"):
        unknown_key.fetch_balance()


def test_stale_timestamp_is_rejected(exchange: Any) -> None:
    # Given a client whose clock is two minutes behind (outside the 10 s recvWindow)
    exchange.options["timeDifference"] = 120_000
    with pytest.raises(ccxt.InvalidNonce):
        exchange.fetch_balance()


def test_duplicate_client_order_id_is_rejected(exchange: Any, server: SimulatorServer) -> None:
    # Given an order with a client order id
    exchange.create_order(SYMBOL, "market", "buy", 0.001, None, {"newClientOrderId": "dup-1"})
    # When the same id is sent again
    with pytest.raises(ccxt.InvalidOrder, match="Duplicate order sent"):
        exchange.create_order(SYMBOL, "market", "buy", 0.001, None, {"newClientOrderId": "dup-1"})
    # Then the log still holds exactly one order
    assert [o["clientOrderId"] for o in server.orders()] == ["dup-1"]


def test_client_order_id_longer_than_binance_allows_is_rejected(exchange: Any) -> None:
    with pytest.raises(ccxt.BadRequest, match="newClientOrderId"):
        exchange.create_order(SYMBOL, "market", "buy", 0.001, None, {"newClientOrderId": "x" * 37})


def test_accounts_are_separate(server: SimulatorServer, clock: ManualClock) -> None:
    with SimulatorServer(clock=clock, extra_accounts={"k2": "s2"}, sweep_interval_s=0) as srv:
        main, other = make_ccxt_client(srv.url), make_ccxt_client(srv.url, "k2", "s2")
        main.create_order(SYMBOL, "market", "buy", 0.01, None, {"newClientOrderId": "same"})
        other.create_order(SYMBOL, "market", "buy", 0.02, None, {"newClientOrderId": "same"})
        assert main.fetch_balance()["BTC"]["total"] < other.fetch_balance()["BTC"]["total"]
        assert len(srv.orders(client_order_id="same")) == 2


# -- faults ------------------------------------------------------------------------------


def test_503_is_exchange_not_available(exchange: Any, server: SimulatorServer) -> None:
    server.sim.add_fault("http_5xx", count=1)
    with pytest.raises(ccxt.ExchangeNotAvailable):
        exchange.fetch_ticker(SYMBOL)
    # the fault was for the next request only
    assert exchange.fetch_ticker(SYMBOL)["last"] > 0


def test_429_is_rate_limit_with_retry_after(exchange: Any, server: SimulatorServer) -> None:
    server.sim.add_fault("http_429", count=1, retry_after_s=7)
    with pytest.raises(ccxt.DDoSProtection, match="429"):
        exchange.fetch_ticker(SYMBOL)
    assert exchange.last_response_headers["Retry-After"] == "7"


def test_418_is_ip_ban_with_retry_after(exchange: Any, server: SimulatorServer) -> None:
    server.sim.add_fault("http_418", count=1, retry_after_s=120)
    with pytest.raises(ccxt.DDoSProtection, match="418"):
        exchange.fetch_balance()
    assert exchange.last_response_headers["Retry-After"] == "120"


def test_sticky_418_bans_every_request_until_lifted(exchange: Any, server: SimulatorServer) -> None:
    # Given a ban fired by an order request
    server.sim.add_fault("http_418", count=1, path="/api/v3/order", sticky=True, retry_after_s=60)
    with pytest.raises(ccxt.DDoSProtection, match="418"):
        exchange.create_order(SYMBOL, "market", "buy", 0.001)
    # Then unrelated reads are banned too, with the ban's remaining time
    with pytest.raises(ccxt.DDoSProtection, match="418"):
        exchange.fetch_ticker(SYMBOL)
    assert 0 < int(exchange.last_response_headers["Retry-After"]) <= 60
    # And clearing the faults lifts it
    server.sim.clear_faults()
    assert exchange.fetch_ticker(SYMBOL)["last"] > 0


def test_timeout_is_request_timeout_and_not_executed(server: SimulatorServer) -> None:
    # Given a client with a short timeout and an order endpoint that hangs once
    client = make_ccxt_client(server.url, timeout_ms=300)
    client.load_markets()
    server.sim.add_fault("timeout", count=1, path="/api/v3/order", method="POST", hold_s=1.0)
    # When an order is sent, the client times out, and the order was never executed
    with pytest.raises(ccxt.RequestTimeout):
        client.create_order(SYMBOL, "market", "buy", 0.001, None, {"newClientOrderId": "t-1"})
    assert server.orders() == []


@pytest.mark.parametrize(
    ("mode", "error"), [("drop", ccxt.NetworkError), ("delay", ccxt.RequestTimeout)]
)
def test_order_accepted_but_response_lost(
    server: SimulatorServer, mode: str, error: type[Exception]
) -> None:
    # Given an order endpoint whose next answer is lost (connection reset or too late)
    client = make_ccxt_client(server.url, timeout_ms=300)
    client.load_markets()
    server.sim.add_fault(
        "response_lost", count=1, path="/api/v3/order", method="POST", mode=mode, hold_s=1.0
    )
    # When an order is sent, the client sees a network error
    with pytest.raises(error):
        client.create_order(SYMBOL, "market", "buy", 0.001, None, {"newClientOrderId": "lost-1"})
    # Then the order exists anyway and is found by its client order id
    assert [o["status"] for o in server.orders(client_order_id="lost-1")] == ["FILLED"]
    found = client.fetch_order(None, SYMBOL, {"clientOrderId": "lost-1"})
    assert found["status"] == "closed"


def test_faults_are_scoped_by_path_and_method(exchange: Any, server: SimulatorServer) -> None:
    # Given order creation failing twice
    server.sim.add_fault("http_5xx", count=2, path="/api/v3/order", method="POST")
    # Then reads still work
    assert exchange.fetch_ticker(SYMBOL)["last"] > 0
    assert exchange.fetch_open_orders(SYMBOL) == []
    # And exactly the next two orders fail
    for _ in range(2):
        with pytest.raises(ccxt.ExchangeNotAvailable):
            exchange.create_order(SYMBOL, "market", "buy", 0.001)
    assert exchange.create_order(SYMBOL, "market", "buy", 0.001)["status"] == "closed"


def test_latency_delays_every_answer(exchange: Any, server: SimulatorServer) -> None:
    server.set_faults({"latency_ms": 150})
    started = time.perf_counter()
    exchange.fetch_ticker(SYMBOL)
    assert time.perf_counter() - started >= 0.15


def test_rates_are_reproducible_from_the_seed() -> None:
    # Given two injectors with one seed firing 5xx on half the requests
    def pattern() -> list[bool]:
        faults = FaultInjector(seed=3)
        faults.add(FaultRule("http_5xx", rate=0.5))
        return [faults.decide("GET", "/api/v3/depth").fault is not None for _ in range(40)]

    # Then they fire on exactly the same requests, and on some but not all
    first = pattern()
    assert first == pattern()
    assert 0 < sum(first) < 40


def test_fault_rules_reject_typos() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        FaultRule("http_503")
    with pytest.raises(ValueError, match="unknown fault rule keys"):
        FaultRule.from_json({"kind": "timeout", "hold": 3})


# -- admin endpoints ---------------------------------------------------------------------


def test_admin_endpoints_over_http(exchange: Any, server: SimulatorServer) -> None:
    # Given one order and a few reads
    exchange.fetch_ticker(SYMBOL)
    exchange.create_order(SYMBOL, "market", "buy", 0.001, None, {"newClientOrderId": "adm-1"})
    assert admin(server, "GET", "/_sim/health")["ok"] is True
    # Then the order log and counters are visible over HTTP
    log = admin(server, "GET", "/_sim/orders?clientOrderId=adm-1")
    assert log["count"] == 1
    assert log["orders"][0]["status"] == "FILLED"
    assert log["orders"][0]["fills"][0]["qty"] == "0.00100000"
    stats = admin(server, "GET", "/_sim/stats")
    assert stats["by_endpoint"]["POST /api/v3/order"] == 1
    assert stats["by_endpoint_symbol"]["GET /api/v3/ticker/24hr"] == {MARKET_ID: 1}
    assert stats["by_symbol"][MARKET_ID] == 2
    assert stats["orders"] == 1
    assert admin(server, "GET", "/_sim/trades")["count"] == 1
    assert float(admin(server, "GET", "/_sim/balances")["BTC"]["free"]) > 10

    # When faults are set over HTTP
    state = admin(
        server,
        "POST",
        "/_sim/faults",
        {"rules": [{"kind": "http_429", "count": 1, "path": "/api/v3/ticker/*"}]},
    )
    assert state["rules"][0]["remaining"] == 1
    # Then they apply, and their state shows what fired
    with pytest.raises(ccxt.DDoSProtection):
        exchange.fetch_ticker(SYMBOL)
    assert admin(server, "GET", "/_sim/faults")["rules"][0]["fired"] == 1
    assert admin(server, "DELETE", "/_sim/faults")["rules"] == []

    # And a malformed fault spec is refused with 400
    with pytest.raises(urllib.error.HTTPError) as refused:
        admin(server, "POST", "/_sim/faults", {"rules": [{"kind": "nope"}]})
    assert refused.value.code == 400
    refused.value.close()

    # When the clock is advanced over HTTP
    before = admin(server, "GET", "/_sim/clock")["now_ms"]
    assert admin(server, "POST", "/_sim/clock", {"advance_s": 90})["now_ms"] == before + 90_000

    # When the simulator is reset
    admin(server, "POST", "/_sim/reset")
    # Then orders, counters and balances start over
    assert admin(server, "GET", "/_sim/orders")["count"] == 0
    assert admin(server, "GET", "/_sim/stats")["total"] == 0
    assert admin(server, "GET", "/_sim/balances")["BTC"]["free"] == "10.00000000"


def test_server_stops_cleanly(clock: ManualClock) -> None:
    server = SimulatorServer(clock=clock).start()
    url = server.url
    server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/api/v3/ping", timeout=1)


# -- exposure beyond loopback (issue #24) -------------------------------------------------


def _status(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_a_public_bind_with_the_default_keys_is_refused(host: str) -> None:
    # When the simulator is asked to listen beyond loopback with the documented keys
    # Then it refuses before binding, saying what to set
    with pytest.raises(ConfigError, match="SIMULATOR_API_KEY and SIMULATOR_API_SECRET"):
        SimulatorServer(host=host, port=0)
    with pytest.raises(ConfigError, match="default keys"):
        SimulatorServer(host=host, port=0, api_key="k" * 20, api_secret=DEFAULT_API_SECRET)
    # Unless told the port is private (a container port published on loopback), loudly
    with capture_logs() as logs:
        assert check_bind(host, SimulatorConfig(), allow_default_keys=True) is True
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["simulator.public_bind"]
    assert check_bind("127.0.0.1", SimulatorConfig()) is False


def test_a_public_simulator_serves_admin_endpoints_only_with_the_token() -> None:
    # Given a simulator treated as listening beyond loopback (bound to loopback here, so
    # the test opens nothing to the network), once without and once with an admin token
    for token in (None, "admin-token-0123456789"):
        srv = SimulatorServer(
            port=0, api_key="k" * 20, api_secret="s" * 20, admin_token=token, sweep_interval_s=0
        )
        srv.public = True
        with srv:
            # Then /_sim/health stays open, and everything else needs the token
            assert _status(srv.url + "/_sim/health")[0] == 200
            status, body = _status(srv.url + "/_sim/orders")
            assert status == 403
            assert "admin" in body["error"]
            wrong = _status(srv.url + "/_sim/orders", {"X-Sim-Admin-Token": "nope"})
            assert wrong[0] == 403
            if token is not None:
                right = _status(srv.url + "/_sim/orders", {"X-Sim-Admin-Token": token})
                assert right[0] == 200


def test_the_order_log_names_accounts_without_their_keys(
    exchange: Any, server: SimulatorServer
) -> None:
    # Given an order on the default account
    exchange.create_order(SYMBOL, "market", "buy", 0.01, params={"newClientOrderId": "acct-1"})
    # When the admin order log is read
    log = admin(server, "GET", "/_sim/orders")
    # Then the account is a digest label; the API key appears nowhere
    assert log["orders"][0]["account"].startswith("acct-")
    assert DEFAULT_API_KEY not in json.dumps(log)
    label = log["orders"][0]["account"]
    assert admin(server, "GET", f"/_sim/orders?account={label}")["count"] == 1


# -- stop orders ---------------------------------------------------------------------------


def test_stop_limit_orders_rest_untriggered_then_trigger_as_binance_does() -> None:
    # Given a replayed path: 100.00, then 96.00 from second 100, 94.00 from 200, 90.00 from
    # 300, 110.00 from 400
    t0 = 1_900_000_000
    steps = [(0, 100.0), (100, 96.0), (200, 94.0), (300, 90.0), (400, 110.0)]
    rows = [
        ((t0 + s) * 1000, p, p, p, p, 1.0)
        for (start, p), (end, _) in zip(steps, [*steps[1:], (500, 0.0)], strict=True)
        for s in range(start, end)
    ]
    clock = ManualClock((t0 + 10) * 1000)
    config = SimulatorConfig(replay={"BTCUSDT": rows}, clock=clock, sweep_interval_s=0)
    with SimulatorServer(config, port=0) as server:
        ex = make_ccxt_client(server.url, timeout_ms=3_000)
        ex.load_markets()
        free = ex.fetch_balance()["BTC"]["free"]
        # A stop-loss sell at 97 (limit 96.5) and one at 95 (limit 93.5) rest untriggered,
        # their base locked; one already reached is refused
        near = ex.create_order(SYMBOL, "limit", "sell", 1.0, 96.5, {"stopLossPrice": 97.0})
        far = ex.create_order(SYMBOL, "limit", "sell", 1.0, 93.5, {"stopLossPrice": 95.0})
        assert [near["status"], far["status"]] == ["open", "open"]
        assert ex.fetch_balance()["BTC"]["free"] == pytest.approx(free - 2.0)
        with pytest.raises(ccxt.InvalidOrder, match="would trigger immediately"):
            ex.create_order(SYMBOL, "limit", "sell", 1.0, 100.5, {"stopLossPrice": 101.0})
        logged = {o["clientOrderId"]: o for o in server.orders()}
        assert logged[near["clientOrderId"]]["type"] == "STOP_LOSS_LIMIT"
        # When the price falls to 96: the near stop triggers, and its limit 96.5 is not
        # reached any more (the price gapped past it): it rests as a limit order
        clock.set((t0 + 110) * 1000)
        assert ex.fetch_order(near["id"], SYMBOL)["status"] == "open"
        assert ex.fetch_order(far["id"], SYMBOL)["status"] == "open"
        # When it falls to 94: the far one triggers and fills at the bid, at or above its limit
        clock.set((t0 + 210) * 1000)
        filled = ex.fetch_order(far["id"], SYMBOL)
        assert (filled["status"], filled["average"]) == ("closed", 94.0)
        # A take-profit sell triggers when the price rises to its stop
        clock.set((t0 + 310) * 1000)
        tp = ex.create_order(SYMBOL, "limit", "sell", 1.0, 104.0, {"takeProfitPrice": 105.0})
        assert tp["status"] == "open"
        clock.set((t0 + 410) * 1000)
        assert ex.fetch_order(tp["id"], SYMBOL)["status"] == "closed"
        # And a triggered stop resting as a limit fills like one once the path crosses it
        assert ex.fetch_order(near["id"], SYMBOL)["status"] == "closed"
        ex.session.close()
