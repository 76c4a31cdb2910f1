"""`gateway_for`: the one place a bot config becomes a Gateway.

paper (the default) → `PaperGateway` over the exchange's real market data;
live → `CcxtGateway` on the bot's account. Either way ticker and candle reads go
through the shared Redis cache (one request per interval for all bots on a symbol) and
every request through the shared Redis rate limit.

Process-wide state lives in `clients` (ccxt instances and their loaded markets, keyed
by exchange, account digest, base URL and options); the gateway objects built here are
cheap wrappers, fine to build per tick.
"""

from __future__ import annotations

import os
from typing import Any

import redis as redis_lib
from sqlalchemy import Engine

from engine.config import BotConfig
from engine.errors import OperationalError
from engine.exchange.catalog import SIMULATOR
from engine.exchange.ccxt_gateway import CcxtGateway
from engine.exchange.clients import ClientSpec, client_for
from engine.exchange.fills import FillModel
from engine.exchange.gateway import Gateway
from engine.exchange.marketdata import CachedGateway, shared_cache
from engine.exchange.paper import PaperGateway
from engine.exchange.ratelimit import RateLimiter
from engine.logging import register_secrets
from engine.settings import Settings


def data_max_age(interval_s: float) -> float:
    """How old shared tickers and candles a bot accepts: half its interval, within
    [1 s, 10 s]. Bots whose ticks of one slot spread over less than that share one
    request per interval, and no bot decides on data older than 10 s."""
    return min(10.0, max(1.0, interval_s / 2))


def read_credentials(config: BotConfig) -> tuple[str | None, str | None, str | None]:
    """(api key, secret, password) from the environment variables the config names.

    A named variable that is unset → OperationalError naming it (the bot cannot trade).
    The values are registered with the log redactor.
    """
    creds = config.credentials
    if creds is None:
        return None, None, None
    values: list[str | None] = []
    for name in (creds.api_key_env, creds.secret_env, creds.password_env):
        if name is None:
            values.append(None)
            continue
        value = os.environ.get(name)
        if not value:
            raise OperationalError(f"environment variable {name} is not set")
        values.append(value)
    register_secrets(values)
    return values[0], values[1], values[2]


def client_spec(config: BotConfig, settings: Settings, *, private: bool) -> ClientSpec:
    """The ccxt client a bot needs: keys only for private (live) use."""
    key = secret = password = None
    if private:
        key, secret, password = read_credentials(config)
    base_url = config.base_url
    if config.exchange == SIMULATOR:
        base_url = base_url or settings.simulator_url
        if private and key is None:
            key = settings.simulator_api_key
            secret = settings.simulator_api_secret.get_secret_value()
    return ClientSpec(
        exchange_id=config.exchange,
        api_key=key,
        secret=secret,
        password=password,
        base_url=base_url,
        sandbox=config.sandbox,
        options=dict(config.exchange_options),
    )


def gateway_for(
    config: BotConfig, *, redis: redis_lib.Redis | None, db: Engine, settings: Settings
) -> Gateway:
    """The gateway of one bot: paper or live, with shared cache and rate limits.

    Without Redis (`botengine run`, one bot in one process) there is nothing to share:
    reads go straight to the exchange; one bot makes a few requests per interval.
    """
    live = config.mode == "live"
    spec = client_spec(config, settings, private=live)
    cached: Gateway
    if redis is None:
        cached = CcxtGateway(client_for(spec))
    else:
        max_age = data_max_age(config.check_interval)
        cached = _cached_gateway(spec, redis, ticker_max_age_s=max_age, ohlcv_max_age_s=max_age)
    if live:
        return cached
    return PaperGateway(
        config.name,
        cached,
        db,
        balances=config.paper.balances,
        model=FillModel(fee_rate=config.paper.fee_rate, slippage=config.paper.slippage),
    )


_stacks: dict[tuple[object, ...], CachedGateway] = {}


def _cached_gateway(
    spec: ClientSpec, redis: redis_lib.Redis, *, ticker_max_age_s: float, ohlcv_max_age_s: float
) -> CachedGateway:
    """The rate-limited, cached gateway of one client and data freshness, shared by
    every caller that uses both: 10,000 bots on one exchange hold one, not 10,000."""
    key = (spec.cache_key(), id(redis), ticker_max_age_s, ohlcv_max_age_s)
    stack = _stacks.get(key)
    if stack is None or stack.cache.redis is not redis:
        exchange = CcxtGateway(client_for(spec), limiter=RateLimiter(redis, spec.exchange_id))
        stack = _stacks[key] = CachedGateway(
            exchange,
            shared_cache(redis),
            source=f"{spec.exchange_id}:{spec.origin}",
            ticker_max_age_s=ticker_max_age_s,
            ohlcv_max_age_s=ohlcv_max_age_s,
        )
    return stack


os.register_at_fork(after_in_child=_stacks.clear)


def data_gateway(
    exchange_id: str,
    *,
    redis: redis_lib.Redis | None,
    settings: Settings,
    base_url: str | None = None,
    options: dict[str, Any] | None = None,
) -> Gateway:
    """Public market data of one exchange (no account), through the shared cache."""
    if exchange_id == SIMULATOR:
        base_url = base_url or settings.simulator_url
    spec = ClientSpec(exchange_id=exchange_id, base_url=base_url, options=dict(options or {}))
    if redis is None:
        return CcxtGateway(client_for(spec))
    return _cached_gateway(spec, redis, ticker_max_age_s=1.0, ohlcv_max_age_s=10.0)
