"""Shared market data: one fetch per interval for many bots, resilient to a dead fetcher."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis

from engine.domain import Candle, MarketRules, Ticker
from engine.errors import TemporaryError
from engine.exchange.gateway import OrderReport, OrderRequest
from engine.exchange.marketdata import CachedGateway, MarketDataCache


class Counter:
    """A fetch function that counts its calls and takes `delay` seconds."""

    def __init__(self, delay: float = 0.0, error: Exception | None = None) -> None:
        self.calls = 0
        self.delay = delay
        self.error = error
        self.lock = threading.Lock()

    def __call__(self) -> Any:
        with self.lock:
            self.calls += 1
        time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return {"price": 42}


def run_together(n: int, fn: Any) -> list[Any]:
    """Run `fn` in `n` threads released at once; results (or exceptions) in order."""
    barrier = threading.Barrier(n)
    out: list[Any] = [None] * n

    def worker(i: int) -> None:
        barrier.wait()
        try:
            out[i] = fn()
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            out[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_many_readers_one_fetch(redis_url: str) -> None:
    # Given 50 bots (separate connections) asking for the same ticker at once
    fetch = Counter(delay=0.05)

    def read() -> Any:
        cache = MarketDataCache(redis.Redis.from_url(redis_url))
        return cache.get("md:test:BTC/USDT:ticker", 5.0, fetch)

    # When they all read
    results = run_together(50, read)
    # Then one fetched, and all got its value
    assert fetch.calls == 1
    assert results == [{"price": 42}] * 50


def test_stale_values_are_refetched(redis_url: str) -> None:
    # Given a value fetched 0.2 s ago
    cache = MarketDataCache(redis.Redis.from_url(redis_url))
    fetch = Counter()
    cache.get("k", 0.1, fetch)
    time.sleep(0.15)
    # When a reader accepting 0.1 s reads, and one accepting 10 s reads
    cache.get("k", 0.1, fetch)
    cache.get("k", 10.0, fetch)
    # Then only the strict one caused a second fetch
    assert fetch.calls == 2


def test_waiters_fetch_themselves_when_the_holder_died(redis_url: str) -> None:
    # Given a fetcher that took the lock and died (lock left, no value)
    client = redis.Redis.from_url(redis_url)
    client.set("k:lock", "dead-holder", px=300)
    cache = MarketDataCache(client, wait_s=2.0)
    fetch = Counter()
    # When a bot reads
    started = time.monotonic()
    assert cache.get("k", 1.0, fetch) == {"price": 42}
    # Then it took over once the dead holder's lock expired - one fetch, no long stall
    assert fetch.calls == 1
    assert 0.25 <= time.monotonic() - started < 1.5


def test_waiters_give_up_waiting_on_a_stuck_holder(redis_url: str) -> None:
    # Given a holder stuck with a long lock
    client = redis.Redis.from_url(redis_url)
    client.set("k:lock", "stuck", px=10_000)
    cache = MarketDataCache(client, wait_s=0.2)
    fetch = Counter()
    # When a bot reads, it fetches by itself after its short wait
    started = time.monotonic()
    assert cache.get("k", 1.0, fetch) == {"price": 42}
    assert fetch.calls == 1
    assert time.monotonic() - started < 1.0


def test_a_failed_fetch_is_shared_not_repeated(redis_url: str) -> None:
    # Given the exchange failing, and 20 bots reading together
    fetch = Counter(delay=0.05, error=TemporaryError("exchange down"))

    def read() -> Any:
        return MarketDataCache(redis.Redis.from_url(redis_url)).get("k", 5.0, fetch)

    results = run_together(20, read)
    # Then all failed temporarily, but the exchange saw one request
    assert all(isinstance(r, TemporaryError) for r in results)
    assert fetch.calls == 1


class Clock:
    """A wall clock the test moves."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def in_demand(redis_url: str, clock: Clock, fetch: Counter) -> MarketDataCache:
    """A cache whose value "k" (readers accept 1 s) was fetched at 1000.0 and read
    again in the second half of its life, at 1000.6; the clock is left there."""
    cache = MarketDataCache(redis.Redis.from_url(redis_url), clock=clock)
    cache.get("k", 1.0, fetch)
    clock.now = 1_000.6
    cache.get("k", 1.0, fetch)
    return cache


def test_a_value_read_since_its_fetch_is_refreshed_before_it_expires(redis_url: str) -> None:
    clock, fetch = Clock(), Counter()
    cache = in_demand(redis_url, clock, fetch)
    # When the refresher looks before its lead, it waits until the lead begins
    assert cache.refresh_due() == pytest.approx(0.25)  # its longest nap
    clock.now = 1_000.8
    assert cache.refresh_due() == pytest.approx(0.15)  # 1001 - 0.05 lead - 1000.8
    assert fetch.calls == 1
    # When it looks inside the lead, it fetches
    clock.now = 1_000.96
    cache.refresh_due()
    assert fetch.calls == 2
    # Then a reader after the first value's expiry does not wait on the exchange
    clock.now = 1_001.5
    assert cache.get("k", 1.0, fetch) == {"price": 42}
    assert fetch.calls == 2


def test_a_value_read_only_in_the_first_half_of_its_life_is_not_refreshed(
    redis_url: str,
) -> None:
    # Given a value read only at its fetch and soon after: bots ticking together
    clock, fetch = Clock(), Counter()
    cache = MarketDataCache(redis.Redis.from_url(redis_url), clock=clock)
    for clock.now in (1_000.0, 1_000.3):
        cache.get("k", 1.0, fetch)
    # When the refresher looks inside the lead, and again after the value expired
    for clock.now in (1_000.96, 1_001.2):
        cache.refresh_due()
    # Then it fetched nothing: their next reads fetch, as without a refresher
    assert fetch.calls == 1


def test_an_expired_value_is_left_to_its_readers(redis_url: str) -> None:
    clock, fetch = Clock(), Counter()
    cache = in_demand(redis_url, clock, fetch)
    clock.now = 1_001.01
    cache.refresh_due()
    assert fetch.calls == 1


def test_the_smallest_max_age_asked_is_kept_warm(redis_url: str) -> None:
    # Given readers accepting 10 s and one accepting 2 s
    clock, fetch = Clock(), Counter()
    cache = MarketDataCache(redis.Redis.from_url(redis_url), clock=clock)
    for clock.now, max_age in ((1_000.0, 10.0), (1_001.5, 2.0), (1_001.5, 10.0)):
        cache.get("k", max_age, fetch)
    # Then the value is refreshed before the strict reader would refetch it
    clock.now = 1_001.96
    cache.refresh_due()
    assert fetch.calls == 2


def test_one_process_refreshes_and_the_others_take_its_value(redis_url: str) -> None:
    # Given two processes whose bots read the same value
    clock, fetch = Clock(), Counter()
    caches = [in_demand(redis_url, clock, fetch) for _ in range(2)]
    # When both refreshers look inside the lead
    clock.now = 1_000.96
    for cache in caches:
        cache.refresh_due()
    # Then the exchange saw one refresh, and both hold its value
    assert fetch.calls == 2
    clock.now = 1_001.5
    for cache in caches:
        cache.get("k", 1.0, fetch)
    assert fetch.calls == 2


def test_a_refresh_under_another_fetchers_lock_waits_for_its_value(redis_url: str) -> None:
    clock, fetch = Clock(), Counter()
    cache = in_demand(redis_url, clock, fetch)
    cache.redis.set("k:lock", "another-process", px=10_000)
    clock.now = 1_000.96
    # Then it does not fetch, and looks again after about one fetch's time
    assert cache.refresh_due() <= 0.05
    assert fetch.calls == 1


def test_a_failed_refresh_leaves_the_valid_value_to_its_readers(redis_url: str) -> None:
    # Given a value in demand, and the exchange failing from now on
    clock, failing = Clock(), Counter(error=TemporaryError("exchange down"))
    cache = in_demand(redis_url, clock, Counter())
    cache.get("k", 1.0, failing)
    # When the refresh fails
    clock.now = 1_000.96
    cache.refresh_due()
    assert failing.calls == 1
    # Then readers still get the valid value, and the refresher does not try again
    assert cache.get("k", 1.0, failing) == {"price": 42}
    clock.now = 1_000.98
    cache.refresh_due()
    assert failing.calls == 1


def test_a_crashing_refresh_does_not_starve_the_other_values(redis_url: str) -> None:
    # Given two values in demand, and a bug in the fetch of one of them
    clock, good = Clock(), Counter()
    cache = in_demand(redis_url, clock, Counter())
    broken = Counter(error=RuntimeError("bug"))
    cache.get("k", 1.0, broken)
    for clock.now in (1_000.0, 1_000.6):
        cache.get("other", 1.0, good)
    # When the refresher passes twice inside their lead
    for clock.now in (1_000.96, 1_000.98):
        cache.refresh_due()
    # Then the sound value was refreshed, and the buggy one tried once, not every pass
    assert good.calls == 2
    assert broken.calls == 1


def test_the_refresher_thread_fetches_so_that_readers_do_not(redis_url: str) -> None:
    # Given a value read 20 times a second by readers accepting 0.5 s, kept warm
    cache = MarketDataCache(redis.Redis.from_url(redis_url))
    fetchers: list[str] = []

    def fetch() -> Any:
        fetchers.append(threading.current_thread().name)
        time.sleep(0.02)
        return {"price": 42}

    def refreshers() -> int:
        return [t.name for t in threading.enumerate()].count("botengine-marketdata")

    before = refreshers()
    cache.keep_warm()
    cache.keep_warm()
    assert refreshers() == before + 1  # one thread per cache and process
    for _ in range(50):
        cache.get("k", 0.5, fetch)
        time.sleep(0.05)
    # Then after the first read, the refresher fetched and the readers hardly ever did
    assert fetchers[0] == "MainThread"
    refreshes = fetchers.count("botengine-marketdata")
    assert refreshes >= 3
    assert len(fetchers) - 1 - refreshes <= 1


class StaticData:
    """A data gateway returning fixed values and counting calls."""

    exchange_id = "fake"
    stop_orders = False

    def __init__(self) -> None:
        self.tickers = 0
        self.candles = 0

    def market_rules(self, symbol: str) -> MarketRules:
        return MarketRules(symbol, "BTC", "USDT")

    def fetch_ticker(self, symbol: str) -> Ticker:
        self.tickers += 1
        return Ticker(symbol, 99.5, 100.5, 100.0, 1_700_000_000_000)

    def fetch_ohlcv(self, symbol: str, timeframe: str, limit: int) -> list[Candle]:
        self.candles += 1
        return [Candle(60_000 * i, 1.0, 2.0, 0.5, 1.5, 10.0) for i in range(limit)]

    def fetch_balances(self) -> dict[str, float]:
        return {"USDT": 1.0}

    def create_order(self, request: OrderRequest) -> OrderReport:
        raise NotImplementedError

    def fetch_order(self, symbol: str, client_order_id: str) -> OrderReport | None:
        return None

    def cancel_order(self, symbol: str, client_order_id: str) -> OrderReport:
        raise NotImplementedError

    def fetch_open_orders(self, symbol: str) -> list[OrderReport]:
        return []


def test_cached_gateway_round_trips_tickers_and_candles(redis_url: str) -> None:
    # Given two bots' gateways over the same source
    inner = StaticData()
    gateways = [
        CachedGateway(
            inner,
            MarketDataCache(redis.Redis.from_url(redis_url)),
            source="fake:default",
            ticker_max_age_s=5,
            ohlcv_max_age_s=5,
        )
        for _ in range(2)
    ]
    # When both read ticker and candles
    tickers = [g.fetch_ticker("BTC/USDT") for g in gateways]
    candles = [g.fetch_ohlcv("BTC/USDT", "1m", 3) for g in gateways]
    # Then the values survive the cache exactly, and each was fetched once
    assert tickers[0] == tickers[1] == inner.fetch_ticker("BTC/USDT")
    assert candles[0] == candles[1] == inner.fetch_ohlcv("BTC/USDT", "1m", 3)
    assert (inner.tickers, inner.candles) == (2, 2)  # 1 cached fetch + 1 direct, each
    assert gateways[0].fetch_balances() == {"USDT": 1.0}


@pytest.mark.parametrize("limit", [1, 5])
def test_candle_keys_include_the_limit(redis_url: str, limit: int) -> None:
    inner = StaticData()
    gateway = CachedGateway(
        inner,
        MarketDataCache(redis.Redis.from_url(redis_url)),
        source="fake:default",
        ticker_max_age_s=5,
        ohlcv_max_age_s=5,
    )
    assert len(gateway.fetch_ohlcv("BTC/USDT", "1m", limit)) == limit
