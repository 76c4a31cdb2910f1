"""CcxtGateway: the real ccxt binance client against the loopback simulator."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import ccxt
import pytest
import redis
from structlog.testing import capture_logs

from engine.domain import OrderType, Side
from engine.errors import (
    ExchangeBannedError,
    OperationalError,
    OrderRejectedError,
    OrderUnknownError,
    TemporaryError,
)
from engine.exchange.ccxt_gateway import CcxtGateway
from engine.exchange.clients import ClientSpec, build_exchange, clear_clients, client_for
from engine.exchange.gateway import OrderRequest, OrderStatus
from engine.exchange.ratelimit import RateLimiter, ban_until
from engine.exchange.retry import ReadRetry

SYMBOL = "BTC/USDT"


@pytest.fixture
def sim(simulator: Any) -> Iterator[Any]:
    """The session simulator, reset, with no cached clients (so counts start at zero)."""
    simulator.reset()
    clear_clients()
    yield simulator
    simulator.reset()


def make_gateway(
    sim: Any,
    redis_client: redis.Redis,
    *,
    secret: str = "simulator-secret",
    timeout_ms: int = 2000,
    attempts: int = 4,
) -> CcxtGateway:
    spec = ClientSpec(
        "simulator",
        api_key="simulator-key",
        secret=secret,
        base_url=sim.url,
        options={"timeout": timeout_ms},
    )
    return CcxtGateway(
        client_for(spec),
        limiter=RateLimiter(redis_client, "simulator"),
        retry=ReadRetry(attempts=attempts, initial_s=0.01, max_wait_s=0.05),
    )


def test_every_method_against_the_simulator(sim: Any, redis_client: redis.Redis) -> None:
    # Given a gateway on the simulator account
    gw = make_gateway(sim, redis_client)
    # When market data is read
    rules = gw.market_rules(SYMBOL)
    ticker = gw.fetch_ticker(SYMBOL)
    candles = gw.fetch_ohlcv(SYMBOL, "1m", 5)
    balances = gw.fetch_balances()
    # Then it is the simulator's Binance-shaped data, typed
    assert (rules.base, rules.quote, rules.price_step, rules.min_notional) == (
        "BTC",
        "USDT",
        0.01,
        5.0,
    )
    assert 0 < ticker.bid < ticker.ask
    assert len(candles) == 5
    assert candles == sorted(candles, key=lambda c: c.ts)
    assert balances["USDT"] == 100_000.0
    # When a market order is sent, it fills at once with its fee
    market = gw.create_order(OrderRequest(SYMBOL, Side.BUY, OrderType.MARKET, 0.01, "t-m-1"))
    assert market.status is OrderStatus.CLOSED
    assert market.filled == pytest.approx(0.01)
    assert market.fee > 0
    assert market.client_order_id == "t-m-1"
    # When a limit order rests far below the market
    price = round(ticker.bid * 0.8, 2)
    limit = gw.create_order(OrderRequest(SYMBOL, Side.BUY, OrderType.LIMIT, 0.01, "t-l-1", price))
    assert limit.status is OrderStatus.OPEN
    # Then it is found by client id, listed as open, and cancellable (twice, idempotently)
    found = gw.fetch_order(SYMBOL, "t-l-1")
    assert found is not None
    assert found.exchange_order_id == limit.exchange_order_id
    assert [o.client_order_id for o in gw.fetch_open_orders(SYMBOL)] == ["t-l-1"]
    assert gw.cancel_order(SYMBOL, "t-l-1").status is OrderStatus.CANCELED
    assert gw.cancel_order(SYMBOL, "t-l-1").status is OrderStatus.CANCELED
    assert gw.fetch_open_orders(SYMBOL) == []
    # And unknown ids are None on lookup, refused on cancel
    assert gw.fetch_order(SYMBOL, "never-sent") is None
    with pytest.raises(OrderRejectedError):
        gw.cancel_order(SYMBOL, "never-sent")
    # And markets were loaded once for all of that
    assert sim.request_count("/api/v3/exchangeInfo") == 1


def test_unlisted_symbol_and_unpayable_order(sim: Any, redis_client: redis.Redis) -> None:
    gw = make_gateway(sim, redis_client)
    # Given a symbol the exchange does not list → the bot cannot run
    with pytest.raises(OperationalError):
        gw.market_rules("DOGE/EUR")
    # Given an order the balance cannot pay → rejected, like any exchange refusal
    with pytest.raises(OrderRejectedError):
        gw.create_order(OrderRequest(SYMBOL, Side.BUY, OrderType.MARKET, 1000.0, "t-big"))


def test_markets_and_clients_are_cached_per_process(sim: Any, redis_client: redis.Redis) -> None:
    # Given two gateways (two ticks, two bots) on the same account
    a, b = make_gateway(sim, redis_client), make_gateway(sim, redis_client)
    # Then they share one ccxt client, and markets load once
    assert a.client is b.client
    a.market_rules(SYMBOL)
    b.market_rules("ETH/USDT")
    assert sim.request_count("/api/v3/exchangeInfo") == 1
    # While another account gets its own client
    assert make_gateway(sim, redis_client, secret="other").client is not a.client


def test_market_rules_do_not_wait_for_another_threads_request(
    sim: Any, redis_client: redis.Redis
) -> None:
    # Given loaded markets, and another thread inside a request (it holds the client lock)
    gw = make_gateway(sim, redis_client)
    gw.market_rules(SYMBOL)
    with gw.client.lock:
        # When a tick asks for a symbol's rules, it reads them without waiting
        done = threading.Event()
        reader = threading.Thread(target=lambda: (gw.market_rules(SYMBOL), done.set()))
        reader.start()
        assert done.wait(5.0)
    reader.join()


def test_wrong_secret_is_operational_without_retry_storm(
    sim: Any, redis_client: redis.Redis
) -> None:
    # Given a wrong API secret
    gw = make_gateway(sim, redis_client, secret="wrong-secret")
    # When a private call is made
    with pytest.raises(OperationalError):
        gw.fetch_balances()
    # Then the exchange saw exactly one signed request: no retries
    assert sim.request_count("/api/v3/account") == 1


def test_timeouts_on_reads_are_retried_within_bounds(sim: Any, redis_client: redis.Redis) -> None:
    # Given the next two ticker requests time out (client timeout 300 ms)
    gw = make_gateway(sim, redis_client, timeout_ms=300)
    gw.market_rules(SYMBOL)
    sim.sim.add_fault("timeout", count=2, path="/api/v3/ticker/24hr", hold_s=1.0)
    # When the ticker is read
    ticker = gw.fetch_ticker(SYMBOL)
    # Then it succeeded on the third attempt
    assert ticker.bid > 0
    assert sim.request_count("/api/v3/ticker/24hr") == 3


def test_persistent_5xx_gives_temporary_error_after_bounded_attempts(
    sim: Any, redis_client: redis.Redis
) -> None:
    # Given candles answering 503 forever
    gw = make_gateway(sim, redis_client, attempts=3)
    gw.market_rules(SYMBOL)
    sim.sim.add_fault("http_5xx", path="/api/v3/klines", status=503)
    # When read
    with pytest.raises(TemporaryError):
        gw.fetch_ohlcv(SYMBOL, "1m", 10)
    # Then exactly `attempts` requests were made
    assert sim.request_count("/api/v3/klines") == 3


def test_429_honours_retry_after_and_is_shared(sim: Any, redis_client: redis.Redis) -> None:
    # Given one 429 with Retry-After 1 s on the ticker
    gw = make_gateway(sim, redis_client)
    gw.market_rules(SYMBOL)
    sim.sim.add_fault("http_429", count=1, path="/api/v3/ticker/24hr", retry_after_s=1)
    # When read
    started = time.monotonic()
    with capture_logs() as logs:
        gw.fetch_ticker(SYMBOL)
    # Then the retry waited out Retry-After, and the cool-down was recorded for everyone
    assert time.monotonic() - started >= 0.95
    assert sim.request_count("/api/v3/ticker/24hr") == 2
    assert [e["event"] for e in logs] == ["exchange.rate_limited"]


def test_418_bans_every_bot_once(sim: Any, redis_url: str, redis_client: redis.Redis) -> None:
    # Given an IP ban (418, Retry-After 1 s) on the next ticker request
    gw = make_gateway(sim, redis_client)
    gw.market_rules(SYMBOL)
    sim.sim.add_fault("http_418", count=1, path="/api/v3/ticker/24hr", retry_after_s=1)
    other_process = CcxtGateway(
        gw.client, limiter=RateLimiter(redis.Redis.from_url(redis_url), "simulator")
    )
    with capture_logs() as logs:
        # When one bot hits it, it is not retried
        with pytest.raises(ExchangeBannedError):
            gw.fetch_ticker(SYMBOL)
        # And other bots are stopped before sending anything
        for _ in range(5):
            with pytest.raises(ExchangeBannedError):
                other_process.fetch_ticker(SYMBOL)
    # Then the exchange saw one request, the ban is recorded and was logged once
    assert sim.request_count("/api/v3/ticker/24hr") == 1
    assert ban_until(redis_client, "simulator") is not None
    assert [e["event"] for e in logs].count("exchange.banned") == 1
    # When the ban expires, trading resumes by itself
    time.sleep(1.05)
    assert ban_until(redis_client, "simulator") is None
    assert gw.fetch_ticker(SYMBOL).bid > 0


def test_create_order_is_never_retried(sim: Any, redis_client: redis.Redis) -> None:
    # Given order creation answering 503 (Binance: execution status unknown)
    gw = make_gateway(sim, redis_client)
    gw.market_rules(SYMBOL)
    sim.sim.add_fault("http_5xx", path="/api/v3/order", method="POST", status=503)
    # When an order is sent
    with pytest.raises(OrderUnknownError):
        gw.create_order(OrderRequest(SYMBOL, Side.BUY, OrderType.MARKET, 0.01, "t-u-1"))
    # Then it was sent exactly once
    assert sim.request_count("/api/v3/order", "POST") == 1


def test_threads_share_one_client_safely(sim: Any, redis_client: redis.Redis) -> None:
    # Given 16 threads (Celery threads pool) using one account's client
    gw = make_gateway(sim, redis_client)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                assert gw.fetch_ticker(SYMBOL).bid > 0
                assert gw.fetch_balances()["USDT"] > 0
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then every call succeeded, with markets loaded once
    assert errors == []
    assert sim.request_count("/api/v3/exchangeInfo") == 1


@pytest.mark.parametrize("exchange_id", ["binance", "okx", "kraken"])
def test_base_url_rewrites_every_rest_url(exchange_id: str) -> None:
    # Given any ccxt exchange id and a base URL (testnet, proxy, simulator)
    exchange = build_exchange(ClientSpec(exchange_id, base_url="http://127.0.0.1:9999/px"))
    # Then every REST URL points at that origin and keeps its own path
    urls = list(_strings(exchange.urls["api"]))
    assert urls
    assert all(u.startswith("http://127.0.0.1:9999/px") for u in urls)
    original = list(_strings(getattr(ccxt, exchange_id)().urls["api"]))
    assert len(urls) == len(original)


def test_binance_paths_survive_the_rewrite() -> None:
    exchange = build_exchange(ClientSpec("binance", base_url="http://127.0.0.1:8765"))
    assert exchange.urls["api"]["public"] == "http://127.0.0.1:8765/api/v3"
    assert exchange.urls["api"]["sapi"] == "http://127.0.0.1:8765/sapi/v1"


def test_sandbox_and_constructor_options() -> None:
    # Given sandbox mode and exchange_options
    exchange = build_exchange(
        ClientSpec("binance", sandbox=True, options={"timeout": 1234, "options": {"x": 1}})
    )
    # Then ccxt got both
    assert "testnet" in exchange.urls["api"]["public"]
    assert exchange.timeout == 1234
    assert exchange.options["x"] == 1
    assert exchange.enableRateLimit is False  # the shared Redis limiter replaces it


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, str):
        yield node
