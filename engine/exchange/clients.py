"""ccxt clients, cached per worker process (never per tick): the one process-wide cache.

A client is keyed by exchange id, a digest of its keys, base URL, sandbox flag and a
digest of its constructor options, so two bots on one account share one client (and
its loaded markets) while a rotated secret gets a fresh one.

Thread safety (Celery's threads pool): a ccxt sync client is not thread-safe - it
keeps the last response's headers on the instance, shares one `requests.Session`, and
some exchanges derive nonces from instance state. Each client therefore carries a lock
held for the duration of one ccxt call. That serialises the calls of one account
within one process, which costs little here: market data is shared through Redis (one
request per interval for all bots), and the account's real budget is the shared Redis
rate limit anyway. In exchange, the status and Retry-After of *our* response are read
reliably, and markets are loaded and held once per client instead of once per thread.
Rate-limit and retry sleeps happen outside the lock. The cache is dropped in a forked
child (Celery prefork), since sockets must not be shared across processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import ccxt

from engine.errors import OperationalError
from engine.exchange.catalog import SIMULATOR, ccxt_class_id
from engine.exchange.errors import map_ccxt_error
from engine.secretkeys import is_secret_key

T = TypeVar("T")

SIMULATOR_OPTIONS: dict[str, Any] = {
    # The simulator speaks Binance spot only: load_markets must ask for spot
    # exchangeInfo alone - no futures, margin pairs or sapi currencies.
    "defaultType": "spot",
    "fetchMarkets": {"types": ["spot"]},
    "fetchMargins": False,
    "fetchCurrencies": False,
    "fetchOpenOrders": {"warnWithoutSymbol": False},
}
SIMULATOR_RATE_LIMIT_MS = 1
"""ccxt `rateLimit` (ms between requests) for the loopback simulator: it serves thousands
of requests per second, and benchmarks need that. Override with `exchange_options`."""


@dataclass(frozen=True)
class ClientSpec:
    """Everything that makes one ccxt client differ from another."""

    exchange_id: str
    api_key: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    base_url: str | None = None
    sandbox: bool = False
    options: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def account_digest(self) -> str:
        """A digest of the keys: names the account without revealing it."""
        if not self.api_key:
            return "public"
        raw = f"{self.api_key}\0{self.secret or ''}\0{self.password or ''}"
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    @property
    def origin(self) -> str:
        """Where requests go: the base URL, `sandbox` or `default`."""
        return self.base_url or ("sandbox" if self.sandbox else "default")

    def cache_key(self) -> tuple[str, str, str, bool, str]:
        """The process cache key (no secret in it)."""
        options = json.dumps(self.options, sort_keys=True, default=str)
        digest = hashlib.sha256(options.encode()).hexdigest()[:16]
        return (self.exchange_id, self.account_digest, self.origin, self.sandbox, digest)


class Client:
    """One ccxt instance, its call lock, and what its last HTTP response said."""

    def __init__(self, spec: ClientSpec, exchange: Any) -> None:
        self.spec = spec
        self.exchange = exchange
        self.lock = threading.Lock()
        self.markets_lock = threading.Lock()  # one (re)load of markets at a time
        self.markets_loaded_at: float | None = None
        self.last_status: int | None = None
        self.last_headers: dict[str, str] | None = None
        original = exchange.on_rest_response

        # ccxt keeps no HTTP status, and binance raises one DDoSProtection for 418 and
        # 429: record status and headers here to tell them apart and read Retry-After.
        def record(code: int, reason: str, url: str, method: str, headers: Any, *rest: Any) -> Any:
            self.last_status = code
            self.last_headers = dict(headers or {})
            return original(code, reason, url, method, headers, *rest)

        exchange.on_rest_response = record

    def call(self, fn: Callable[[Any], T], *, creating: bool = False) -> T:
        """Run `fn(exchange)` under the lock; ccxt errors become engine errors."""
        with self.lock:
            self.last_status, self.last_headers = None, None
            try:
                return fn(self.exchange)
            except ccxt.BaseError as exc:
                raise map_ccxt_error(
                    exc, status=self.last_status, headers=self.last_headers, creating=creating
                ) from exc


def rewrite_urls(urls: Any, base_url: str) -> Any:
    """Point every URL in a (nested) ccxt `urls['api']` at `base_url`'s origin.

    Each URL keeps its own path (behind `base_url`'s path, if any), so every endpoint
    family of any ccxt class (public, private, sapi, fapi, ...) reaches one origin.
    """
    base = urlsplit(base_url.rstrip("/"))
    if isinstance(urls, dict):
        return {key: rewrite_urls(value, base_url) for key, value in urls.items()}
    if isinstance(urls, list):
        return [rewrite_urls(value, base_url) for value in urls]
    if isinstance(urls, str) and "://" in urls:
        parts = urlsplit(urls)
        return urlunsplit((base.scheme, base.netloc, base.path + parts.path, parts.query, ""))
    return urls


def build_exchange(spec: ClientSpec) -> Any:
    """A fresh ccxt instance for `spec` (no network access).

    Whatever the options say, keys come only from the spec (a declared credential set),
    `verbose` is off (ccxt's verbose mode printed signed URLs and request bodies into
    error-level worker log lines) and HTTP redirects are not followed.
    """
    inline = sorted(key for key in spec.options if is_secret_key(key))
    if inline:
        raise OperationalError(
            f"exchange_options may not carry credentials ({', '.join(inline)}):"
            " name a declared credential set in the bot config instead"
        )
    config: dict[str, Any] = {key: value for key, value in spec.options.items()}
    config["verbose"] = False
    # The shared Redis limiter replaces ccxt's per-instance one, which would also sleep
    # while holding the client lock.
    config.setdefault("enableRateLimit", False)
    if spec.exchange_id == SIMULATOR:
        config["options"] = {**SIMULATOR_OPTIONS, **dict(config.get("options") or {})}
        config.setdefault("rateLimit", SIMULATOR_RATE_LIMIT_MS)
    if spec.api_key:
        config.update(apiKey=spec.api_key, secret=spec.secret or "")
        if spec.password:
            config["password"] = spec.password
    exchange = getattr(ccxt, ccxt_class_id(spec.exchange_id))(config)
    exchange.verbose = False
    # No exchange API redirects; following one would carry the key header (requests
    # drops only Authorization on a cross-host redirect) to wherever it points.
    exchange.session.max_redirects = 0
    if spec.sandbox:
        exchange.set_sandbox_mode(True)
    if spec.base_url:
        exchange.urls["api"] = rewrite_urls(exchange.urls["api"], spec.base_url)
    return exchange


_clients: dict[tuple[str, str, str, bool, str], Client] = {}
_clients_lock = threading.Lock()


def client_for(spec: ClientSpec) -> Client:
    """The process-wide client for `spec`, built on first use."""
    key = spec.cache_key()
    client = _clients.get(key)
    if client is None:
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = Client(spec, build_exchange(spec))
    return client


def clear_clients() -> None:
    """Forget every cached client (tests; automatically in a forked child)."""
    global _clients_lock
    _clients.clear()
    _clients_lock = threading.Lock()  # a lock held by another thread at fork time stays held


os.register_at_fork(after_in_child=clear_clients)
