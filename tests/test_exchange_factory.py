"""gateway_for: a bot config becomes a paper or live gateway, with credentials from env."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from sqlalchemy import Engine

from engine.config import BotConfig
from engine.domain import OrderType, Side
from engine.errors import OperationalError
from engine.exchange.factory import data_max_age, gateway_for
from engine.exchange.gateway import Gateway, OrderRequest, OrderStatus
from engine.exchange.marketdata import CachedGateway
from engine.exchange.paper import PaperGateway
from engine.settings import Settings


def config(**changes: Any) -> BotConfig:
    data: dict[str, Any] = {
        "name": "f1",
        "exchange": "simulator",
        "symbol": "BTC/USDT",
        "strategy": {"name": "sma_cross", "params": {"fast": 2, "slow": 3, "quote_amount": 100}},
    }
    return BotConfig.model_validate({**data, **changes})


def test_paper_is_the_default(sim: Any, redis_client: redis.Redis, db: Engine) -> None:
    # Given a bot config without a mode
    gw = gateway_for(config(), redis=redis_client, db=db, settings=Settings(simulator_url=sim.url))
    # Then it trades on paper over the simulator's real prices
    assert isinstance(gw, PaperGateway)
    assert isinstance(gw, Gateway)
    assert gw.fetch_ticker("BTC/USDT").bid > 0
    report = gw.create_order(OrderRequest("BTC/USDT", Side.BUY, OrderType.MARKET, 0.01, "f1-paper"))
    assert report.status is OrderStatus.CLOSED
    assert sim.request_count("/api/v3/order", "POST") == 0


def test_live_on_the_simulator_uses_its_keys(
    sim: Any, redis_client: redis.Redis, db: Engine
) -> None:
    # Given a live bot on the simulator (keys from SIMULATOR_API_KEY/SECRET settings)
    gw = gateway_for(
        config(mode="live"), redis=redis_client, db=db, settings=Settings(simulator_url=sim.url)
    )
    # Then orders reach the simulator, through the shared data cache for reads
    assert isinstance(gw, CachedGateway)
    assert gw.fetch_balances()["USDT"] > 0
    gw.create_order(OrderRequest("BTC/USDT", Side.BUY, OrderType.MARKET, 0.01, "f1-live"))
    assert sim.request_count("/api/v3/order", "POST") == 1


def test_missing_credentials_name_the_variable(
    sim: Any, redis_client: redis.Redis, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a live bot whose key variables are not set
    monkeypatch.delenv("F1_KEY", raising=False)
    monkeypatch.setenv("F1_SECRET", "s3cret-value")
    live = config(
        mode="live",
        exchange="binance",
        credentials={"api_key_env": "F1_KEY", "secret_env": "F1_SECRET"},
    )
    # When its gateway is built, the error names the missing variable
    with pytest.raises(OperationalError, match="F1_KEY"):
        gateway_for(live, redis=redis_client, db=db, settings=Settings())


def test_credentials_come_from_the_environment(
    sim: Any, redis_client: redis.Redis, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given keys in the variables the config names, and a base_url to the simulator
    monkeypatch.setenv("F1_KEY", "simulator-key")
    monkeypatch.setenv("F1_SECRET", "simulator-secret")
    live = config(
        mode="live",
        exchange="binance",
        base_url=sim.url,
        credentials={"api_key_env": "F1_KEY", "secret_env": "F1_SECRET"},
        exchange_options={
            "timeout": 3000,
            "options": {
                "fetchMarkets": {"types": ["spot"]},
                "fetchMargins": False,
                "fetchCurrencies": False,
            },
        },
    )
    # Then the plain binance class reaches the simulator with them
    gw = gateway_for(live, redis=redis_client, db=db, settings=Settings())
    assert gw.fetch_balances()["USDT"] > 0


def test_data_max_age_is_a_bounded_fraction_of_the_interval() -> None:
    assert data_max_age(1) == 1.0
    assert data_max_age(6) == 3.0
    assert data_max_age(3600) == 10.0
