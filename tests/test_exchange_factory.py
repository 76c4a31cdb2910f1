"""gateway_for: a bot config becomes a paper or live gateway, with keys from a declared
credential set (environment or CREDENTIALS_DIR)."""

from __future__ import annotations

from pathlib import Path
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


def test_an_undeclared_credential_set_names_the_variables(
    sim: Any, redis_client: redis.Redis, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a live bot naming a set whose key variable is not set
    monkeypatch.delenv("BOTENGINE_CRED_F1_MAIN_KEY", raising=False)
    monkeypatch.setenv("BOTENGINE_CRED_F1_MAIN_SECRET", "s3cret-value")
    live = config(mode="live", exchange="binance", credentials="f1-main")
    # When its gateway is built, the error names the missing variable
    with pytest.raises(OperationalError, match="BOTENGINE_CRED_F1_MAIN_KEY"):
        gateway_for(live, redis=redis_client, db=db, settings=Settings())


def _binance_on_the_simulator(sim: Any, **changes: Any) -> BotConfig:
    return config(
        mode="live",
        exchange="binance",
        base_url=sim.url,
        credentials="f1-main",
        exchange_options={
            "timeout": 3000,
            "options": {
                "fetchMarkets": {"types": ["spot"]},
                "fetchMargins": False,
                "fetchCurrencies": False,
            },
        },
        **changes,
    )


def test_credentials_come_from_the_declared_set(
    sim: Any, redis_client: redis.Redis, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given keys declared as set f1-main, and a base_url to the simulator
    monkeypatch.setenv("BOTENGINE_CRED_F1_MAIN_KEY", "simulator-key")
    monkeypatch.setenv("BOTENGINE_CRED_F1_MAIN_SECRET", "simulator-secret")
    # Then the plain binance class reaches the simulator with them
    gw = gateway_for(_binance_on_the_simulator(sim), redis=redis_client, db=db, settings=Settings())
    assert gw.fetch_balances()["USDT"] > 0


def test_credentials_come_from_files_in_the_credentials_dir(
    sim: Any,
    redis_client: redis.Redis,
    db: Engine,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # Given set f1-main declared as Docker-secrets style files (lower case, newline)
    monkeypatch.delenv("BOTENGINE_CRED_F1_MAIN_KEY", raising=False)
    monkeypatch.delenv("BOTENGINE_CRED_F1_MAIN_SECRET", raising=False)
    (tmp_path / "botengine_cred_f1_main_key").write_text("simulator-key\n")
    (tmp_path / "BOTENGINE_CRED_F1_MAIN_SECRET").write_text("simulator-secret\n")
    settings = Settings(credentials_dir=tmp_path)
    # Then the bot trades with them
    gw = gateway_for(_binance_on_the_simulator(sim), redis=redis_client, db=db, settings=settings)
    assert gw.fetch_balances()["USDT"] > 0


def test_a_stored_config_in_the_old_credentials_form_cannot_trade(
    redis_client: redis.Redis, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a config stored before credential sets, naming an engine setting as its key
    monkeypatch.setenv("API_TOKEN", "a-token-that-must-stay-here")
    stored = config(
        mode="live",
        exchange="binance",
        credentials={"api_key_env": "API_TOKEN", "secret_env": "REDIS_URL"},
    )
    # When its gateway is built, it is refused with what to write instead
    with pytest.raises(OperationalError, match="credentials: binance-main"):
        gateway_for(stored, redis=redis_client, db=db, settings=Settings(_env_file=None))


def test_data_max_age_is_a_bounded_fraction_of_the_interval() -> None:
    assert data_max_age(1) == 1.0
    assert data_max_age(6) == 3.0
    assert data_max_age(3600) == 10.0
