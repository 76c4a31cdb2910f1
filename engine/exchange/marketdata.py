"""Market data shared by every bot through Redis, fetched once per interval (single flight).

A value is stored with the time it was fetched; each reader says how old a value it
accepts (`max_age_s`, e.g. a fraction of its interval). On a miss one process takes a
short Redis lock and fetches; the others poll briefly for the value it writes. If the
holder dies, its lock expires and a waiter takes over; if the wait runs out, a waiter
fetches by itself, so a stuck holder can delay bots but never block them. A failed
fetch is remembered for a moment so a hundred waiters do not each repeat it.

So N bots on one symbol ticking together cost one ticker request per interval. Each
process also keeps the values it saw, with their fetch time: a value young enough for
the reader is served from memory, without a Redis round trip.

A value in demand is refreshed off the tick path, shortly before it expires
(`keep_warm`): otherwise, once per `max_age`, every tick of every process reading it
waits a whole exchange round trip for one fetcher. At 2,000 bots x 1 s on four symbols
with 50 ms exchange latency, the refresher and reading market rules without the client
lock (`ccxt_gateway`) took the engine from ~615 to ~790 ticks/s (benchmarks/README.md).

"In demand" means read in the second half of its life: bots that read a value only
together, once per interval (a fleet started at once), or a single bot, cost no more
fetches than without refreshing, while a fleet spread over its interval costs one fetch
per `max_age` minus the lead, instead of one per `max_age` plus the gap until the next
reader.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import redis as redis_lib

from engine import admission
from engine.domain import Candle, MarketRules, Ticker
from engine.errors import TemporaryError
from engine.exchange.gateway import Gateway, OrderReport, OrderRequest
from engine.exchange.retry import current_deadline, time_budget
from engine.logging import get_logger

log = get_logger("engine.marketdata")

T = TypeVar("T")

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_NAP_S = 0.25
"""Longest sleep of the refresher: how soon it sees a value read for the first time."""

_FORGET_S = 600.0
"""A value nobody read for this long is no longer tracked."""

_AGE_MEMORY_S = 60.0
"""How long a reader's smaller `max_age` holds against larger ones asked since."""


@dataclass(slots=True)
class _Demand:
    """What this process knows of one key's readers, for the refresher."""

    fetch: Callable[[], Any]
    max_age_s: float  # the smallest asked within the last _AGE_MEMORY_S
    max_age_at: float
    read_at: float
    took_s: float = 0.05  # the last fetch's duration, from this process
    retry_at: float = 0.0


class MarketDataCache:
    """A Redis cache with single-flight fetching; clocks and sleep are injectable."""

    def __init__(
        self,
        redis: redis_lib.Redis,
        *,
        lock_ttl_s: float = 3.0,
        wait_s: float = 5.0,
        error_ttl_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.lock_ttl_s = lock_ttl_s
        self.wait_s = wait_s
        self.error_ttl_s = error_ttl_s
        self.sleep = sleep
        self.clock = clock
        self._release = redis.register_script(_RELEASE)
        # key -> (fetch time, value): the newest value this process has seen.
        self._seen: dict[str, tuple[float, Any]] = {}
        self._demand: dict[str, _Demand] = {}
        self._demand_lock = threading.Lock()  # taken to add or drop keys, not per read
        self._warm_pid: int | None = None

    def get(self, key: str, max_age_s: float, fetch: Callable[[], Any]) -> Any:
        """The JSON-able value under `key`, fetched (once across processes) when older
        than `max_age_s`."""
        self._note_read(key, max_age_s, fetch)
        waited_until = self.clock() + self.wait_s
        outer = current_deadline()
        if outer is not None:  # a monotonic deadline: turn it into a wait length
            waited_until = min(waited_until, self.clock() + max(0.0, outer - time.monotonic()))
        poll = 0.005
        while True:
            hit = self._read(key, max_age_s)
            if hit is not None:
                return hit[0]
            with self._fetch_lock(key) as held:
                if held:
                    hit = self._read(key, max_age_s)  # written between our read and lock
                    return hit[0] if hit is not None else self._fetch(key, max_age_s, fetch)
            if self.clock() >= waited_until:
                # The holder is stuck or slow: fetch ourselves rather than miss the tick.
                return self._fetch(key, max_age_s, fetch)
            with admission.waiting():  # on another process's fetch
                self.sleep(poll)
            poll = min(poll * 2, 0.05)

    @contextmanager
    def _fetch_lock(self, key: str) -> Iterator[bool]:
        """Hold `key`'s single-flight lock for the block, unless another fetcher holds
        it; yields whether this one does."""
        token = uuid.uuid4().hex
        held = bool(self.redis.set(f"{key}:lock", token, nx=True, px=int(self.lock_ttl_s * 1000)))
        try:
            yield held
        finally:
            if held:
                self._release(keys=[f"{key}:lock"], args=[token])

    def _read(self, key: str, max_age_s: float) -> tuple[Any] | None:
        seen = self._seen.get(key)
        if seen is not None and self.clock() - seen[0] <= max_age_s:
            return (seen[1],)
        raw, error = cast(list[bytes | None], self.redis.mget(key, f"{key}:error"))
        if raw is not None:
            stored = json.loads(raw)
            fetched = float(stored["t"])
            self._seen[key] = (fetched, stored["v"])
            if self.clock() - fetched <= max_age_s:
                return (stored["v"],)
        if error is not None:
            raise TemporaryError(f"shared market data fetch failed: {error.decode()}")
        return None

    def _fetch(self, key: str, max_age_s: float, fetch: Callable[[], Any]) -> Any:
        started = self.clock()
        try:
            value = fetch()
        except TemporaryError as exc:
            ttl = max(1, int(min(self.error_ttl_s, max_age_s) * 1000))
            self.redis.set(f"{key}:error", str(exc)[:500], px=ttl)
            raise
        fetched = self.clock()
        payload = json.dumps({"t": fetched, "v": value}, separators=(",", ":"))
        # Keep values a while past max_age: readers with a longer max_age still hit.
        self.redis.set(key, payload, px=int(max(60.0, 2 * max_age_s) * 1000))
        self.redis.delete(f"{key}:error")
        self._seen[key] = (fetched, value)
        demand = self._demand.get(key)
        if demand is not None:
            demand.took_s = fetched - started
        return value

    def _note_read(self, key: str, max_age_s: float, fetch: Callable[[], Any]) -> None:
        now = self.clock()
        demand = self._demand.get(key)
        if demand is None:
            with self._demand_lock:
                self._demand[key] = _Demand(fetch, max_age_s, now, now)
            return
        demand.fetch = fetch
        demand.read_at = now
        if max_age_s <= demand.max_age_s or now - demand.max_age_at > _AGE_MEMORY_S:
            demand.max_age_s, demand.max_age_at = max_age_s, now

    def refresh_due(self) -> float:
        """Fetch again every value this process saw read in the second half of its life
        and which expires within its lead (twice its fetch time plus 50 ms, at most a
        quarter of its `max_age`); returns how long the caller may sleep before the next
        one comes due."""
        now = self.clock()
        wake = now + _NAP_S
        with self._demand_lock:
            for key in [k for k, d in self._demand.items() if now - d.read_at > _FORGET_S]:
                del self._demand[key]
            demands = list(self._demand.items())
        for key, demand in demands:
            seen = self._seen.get(key)
            if seen is None:
                continue
            expires = seen[0] + demand.max_age_s
            lead = min(demand.max_age_s / 4, 0.05 + 2 * demand.took_s)
            due = max(expires - lead, demand.retry_at)
            if now < due:
                wake = min(wake, due)
            elif now < expires and demand.read_at > expires - demand.max_age_s / 2:
                self._refresh(key, demand, fresh_s=demand.max_age_s - lead, expires=expires)
                if demand.retry_at > now:
                    wake = min(wake, demand.retry_at)
        return max(0.0, wake - self.clock())

    def _refresh(self, key: str, demand: _Demand, *, fresh_s: float, expires: float) -> None:
        try:
            if self._read(key, fresh_s) is not None:
                return  # another process refreshed it
            with self._fetch_lock(key) as held:
                if not held:
                    # Look for the holder's value once its fetch should be done.
                    demand.retry_at = self.clock() + max(0.01, demand.took_s)
                    return
                # Past `expires` the readers fetch for themselves: stop retrying then.
                with time_budget(max(0.0, expires - self.clock())):
                    self._fetch(key, demand.max_age_s, demand.fetch)
        except TemporaryError as exc:
            demand.retry_at = expires  # the readers will try (and see the error) themselves
            log.warning("marketdata.refresh_failed", key=key, error=str(exc))
        except redis_lib.RedisError:
            raise  # Redis down: every key would fail alike; the pass stops
        except Exception:  # a bug in one fetch must not starve the other keys
            demand.retry_at = expires
            log.exception("marketdata.refresh_crashed", key=key)

    def keep_warm(self) -> None:
        """Run `refresh_due` in a daemon thread of this process (once per process)."""
        with self._demand_lock:
            if self._warm_pid == os.getpid():
                return
            self._warm_pid = os.getpid()
        threading.Thread(target=self._warm_loop, name="botengine-marketdata", daemon=True).start()

    def _warm_loop(self) -> None:
        while True:
            wait = _NAP_S
            try:
                wait = self.refresh_due()
            except redis_lib.RedisError:
                pass  # Redis down: the readers see it and say so
            except Exception:  # the loop must outlive any one bad pass
                log.exception("marketdata.refresh_pass_crashed")
            self.sleep(max(0.005, wait))


_shared: dict[int, MarketDataCache] = {}
_shared_lock = threading.Lock()


def shared_cache(redis: redis_lib.Redis) -> MarketDataCache:
    """This process's cache on `redis`: one per client, so every bot's gateway shares
    the values it holds in memory, kept warm by one refresher thread."""
    with _shared_lock:
        cache = _shared.get(id(redis))
        if cache is None or cache.redis is not redis:
            cache = _shared[id(redis)] = MarketDataCache(redis)
    cache.keep_warm()
    return cache


class CachedGateway:
    """A Gateway whose ticker and candle reads go through the shared cache.

    Everything else (markets, balances, orders) passes straight to `inner`. `source`
    names where the data comes from (exchange id plus origin), so a testnet, a proxy
    and the real exchange never share entries.
    """

    def __init__(
        self,
        inner: Gateway,
        cache: MarketDataCache,
        *,
        source: str,
        ticker_max_age_s: float,
        ohlcv_max_age_s: float,
    ) -> None:
        self.inner = inner
        self.cache = cache
        self.source = source
        self.exchange_id = inner.exchange_id
        self.stop_orders = inner.stop_orders
        self.ticker_max_age_s = ticker_max_age_s
        self.ohlcv_max_age_s = ohlcv_max_age_s

    def market_rules(self, symbol: str) -> MarketRules:
        """Precision and minimums of `symbol` (cached per process by the inner gateway)."""
        return self.inner.market_rules(symbol)

    def fetch_ticker(self, symbol: str) -> Ticker:
        """Best bid/ask and last price, shared between bots."""
        key = f"md:{self.source}:{symbol}:ticker"

        def fetch() -> list[Any]:
            t = self.inner.fetch_ticker(symbol)
            return [t.symbol, t.bid, t.ask, t.last, t.ts]

        symbol_, bid, ask, last, ts = self.cache.get(key, self.ticker_max_age_s, fetch)
        return Ticker(symbol=symbol_, bid=bid, ask=ask, last=last, ts=ts)

    def fetch_ohlcv(self, symbol: str, timeframe: str, limit: int) -> list[Candle]:
        """The `limit` most recent candles, oldest first, shared between bots."""
        key = f"md:{self.source}:{symbol}:ohlcv:{timeframe}:{limit}"

        def fetch() -> list[list[Any]]:
            candles = self.inner.fetch_ohlcv(symbol, timeframe, limit)
            return [[c.ts, c.open, c.high, c.low, c.close, c.volume] for c in candles]

        rows = self.cache.get(key, self.ohlcv_max_age_s, fetch)
        return [Candle(int(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in rows]

    def fetch_balances(self) -> dict[str, float]:
        """Free balance per currency (never cached: it is per account)."""
        return self.inner.fetch_balances()

    def create_order(self, request: OrderRequest) -> OrderReport:
        """Send one order through the inner gateway."""
        return self.inner.create_order(request)

    def fetch_order(self, symbol: str, client_order_id: str) -> OrderReport | None:
        """Look an order up by client order id."""
        return self.inner.fetch_order(symbol, client_order_id)

    def cancel_order(self, symbol: str, client_order_id: str) -> OrderReport:
        """Cancel a resting order by client order id."""
        return self.inner.cancel_order(symbol, client_order_id)

    def fetch_open_orders(self, symbol: str) -> list[OrderReport]:
        """Every resting order of this account on `symbol`."""
        return self.inner.fetch_open_orders(symbol)
