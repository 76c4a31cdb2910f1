"""`gateway_for`: the one place a bot config becomes a Gateway.

paper (the default) → `PaperGateway` over the exchange's real market data;
live → `CcxtGateway` on the bot's account. Either way ticker and candle reads go
through the shared Redis cache (one request per interval for all bots on a symbol) and
every request through the shared Redis rate limit.

Every client built from a config is checked here against the operator's outbound
policy (`base_url` and `exchange_options` allow-lists, engine/outbound.py) and gets its
keys from a declared credential set (engine/credentials.py) - again, although files and
the API check the same rules, because a config stored before those rules existed must
not bypass them. A refused config raises OperationalError: the bot stops in `error`.

Process-wide state lives in `clients` (ccxt instances and their loaded markets, keyed
by exchange, account digest, base URL and options); the gateway objects built here are
cheap wrappers, fine to build per tick.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import redis as redis_lib
from sqlalchemy import Engine

from engine.config import BotConfig, LegacyCredentials
from engine.credentials import LEGACY_MESSAGE
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

CANDLE_MIN_AGE_S = 0.05
"""The freshest shared market data a candle-aligned bot asks for (offset 0)."""


def data_max_age(interval_s: float) -> float:
    """How old shared tickers and candles a bot accepts: half its interval, within
    [1 s, 10 s]. Bots whose ticks of one slot spread over less than that share one
    request per interval, and no bot decides on data older than 10 s."""
    return min(10.0, max(1.0, interval_s / 2))


def read_credentials(
    config: BotConfig, settings: Settings
) -> tuple[str | None, str | None, str | None]:
    """(api key, secret, password) of the credential set the config names.

    An undeclared set → OperationalError naming the variables to define (the bot cannot
    trade). The values are registered with the log redactor.
    """
    creds = config.credentials
    if creds is None:
        return None, None, None
    if isinstance(creds, LegacyCredentials):
        raise OperationalError(f"credentials: {LEGACY_MESSAGE}")
    found = settings.credential_store().lookup(creds)
    register_secrets([found.api_key, found.secret, found.password])
    return found.api_key, found.secret, found.password


def check_outbound(
    settings: Settings, base_url: str | None, options: Mapping[str, Any] | None
) -> None:
    """OperationalError unless the config's base URL and exchange options are allowed."""
    policy = settings.outbound_policy()
    problems = []
    if base_url is not None and (problem := policy.base_url_problem(base_url)):
        problems.append(f"base_url: {problem}")
    problems += [
        f"exchange_options.{'.'.join(path)}: {message}"
        for path, message in policy.option_problems(options or {})
    ]
    if problems:
        raise OperationalError("config refused by the outbound policy: " + "; ".join(problems))


def client_spec(config: BotConfig, settings: Settings, *, private: bool) -> ClientSpec:
    """The ccxt client a bot needs: keys only for private (live) use."""
    check_outbound(settings, config.base_url, config.exchange_options)
    key = secret = password = None
    if private:
        key, secret, password = read_credentials(config, settings)
    base_url = config.base_url
    if config.exchange == SIMULATOR:
        base_url = base_url or settings.simulator_url  # the operator's own setting
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
        if config.align == "candle":
            # A tick `offset` after a candle closed must not decide on data from before
            # that close: no older than the offset (all bots of that close share a fetch).
            max_age = min(max_age, max(CANDLE_MIN_AGE_S, config.offset))
        cached = _cached_gateway(spec, redis, ticker_max_age_s=max_age, ohlcv_max_age_s=max_age)
    if live:
        return cached
    return PaperGateway(
        config.name,
        cached,
        db,
        balances=config.paper.balances,
        model=FillModel(fee_rate=config.paper.fee_rate, slippage=config.paper.slippage),
        timeframe=config.timeframe,
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
    """Public market data of one exchange (no account), through the shared cache.

    `base_url` and `options` come from a bot config: they are checked like the bot's."""
    check_outbound(settings, base_url, options)
    if exchange_id == SIMULATOR:
        base_url = base_url or settings.simulator_url
    spec = ClientSpec(exchange_id=exchange_id, base_url=base_url, options=dict(options or {}))
    if redis is None:
        return CcxtGateway(client_for(spec))
    return _cached_gateway(spec, redis, ticker_max_age_s=1.0, ohlcv_max_age_s=10.0)
