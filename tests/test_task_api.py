"""The original task API (`POST /api/v1/tasks/price-check`, `GET /api/v1/tasks/{id}/status`):
queued through a real worker with Celery's retries visible, and inline with Redis gone."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest
from celery import Celery
from fastapi.testclient import TestClient
from pydantic import SecretStr

from engine import runtime as runtime_module
from engine.api import create_app
from engine.api.deps import get_dispatcher, get_rt
from engine.api.dispatch import BrokerProbe, Dispatcher
from engine.db import engine_for, session_scope
from engine.models import Bot, BotStatus
from tests.chain_support import Engine, bot_config
from tests.support import wait_for
from tests.test_api import AUTH, DEAD, TOKEN, _client, _runtime

# More answers than one read's own retries (engine.exchange.retry.ReadRetry: 4 attempts),
# so the first run of the task fails and Celery's retry runs it again.
TICKER_503 = {"rules": [{"kind": "http_5xx", "count": 5, "path": "/api/v3/ticker*"}]}
STATUS_KEYS = {"task_id", "status", "result", "error", "retries"}

pytestmark = pytest.mark.sqlite_only  # the task API keeps no state of its own in the database


def test_price_check_retries_through_celery_and_reports_each_state(
    engine: Engine, simulator: Any
) -> None:
    # Given the API and a worker on the engine's Redis, and a ticker that fails for a while
    rt = dataclasses.replace(
        engine.rt, settings=engine.rt.settings.model_copy(update={"api_token": SecretStr(TOKEN)})
    )
    client, _ = _client(rt, rt.settings.celery_broker_url)
    engine.procs.worker("w1", concurrency=2)
    simulator.set_faults(TICKER_503)
    # When one symbol's price check is requested
    sent = client.post(
        "/api/v1/tasks/price-check",
        headers=AUTH,
        json={"symbol": "BTC/USDT", "exchange": "simulator"},
    )
    # Then it is accepted with a task id
    assert sent.status_code == 202, sent.text
    assert sent.json()["success"] is True
    task_id = sent.json()["task_id"]
    # And its status goes through RETRY to SUCCESS, counting the retry
    seen: list[str] = []

    def finished() -> bool:
        status = client.get(f"/api/v1/tasks/{task_id}/status", headers=AUTH).json()
        assert set(status) == STATUS_KEYS, status
        if not seen or seen[-1] != status["status"]:
            seen.append(status["status"])
        return status["status"] in ("SUCCESS", "FAILURE")

    assert wait_for(finished, 60, every=0.05), seen
    final = client.get(f"/api/v1/tasks/{task_id}/status", headers=AUTH).json()
    assert final["status"] == "SUCCESS", final
    assert "RETRY" in seen, seen
    assert final["retries"] >= 1
    assert final["error"] is None
    assert final["result"][0]["symbol"] == "BTC/USDT"
    assert final["result"][0]["bid"] > 0


@pytest.mark.parametrize("body", [{}, {"bot": "seed"}], ids=["all", "one-bot"])
def test_price_check_runs_inline_with_redis_fully_down(
    db_url: str, simulator: Any, monkeypatch: pytest.MonkeyPatch, body: dict[str, Any]
) -> None:
    # Given a running bot in the database, and Redis (broker, backend, cache) unreachable
    simulator.reset()
    config = bot_config("seed")
    with session_scope(engine_for(db_url)) as session:
        session.add(
            Bot(
                name="seed",
                config=config.model_dump(mode="json"),
                config_hash="x",
                status=BotStatus.RUNNING,
            )
        )
    rt = _runtime(DEAD, db_url, simulator_url=simulator.url)
    client, _ = _client(rt, DEAD)
    monkeypatch.setattr(runtime_module, "_runtime", rt)
    monkeypatch.setattr(runtime_module, "_pid", os.getpid())
    # And an exchange that fails the first reads
    simulator.set_faults(TICKER_503)
    # When a price check is requested
    sent = client.post("/api/v1/tasks/price-check", headers=AUTH, json=body)
    # Then it ran inline, straight to the exchange, through Celery's retry, and succeeded
    assert sent.status_code == 200, sent.text
    answer = sent.json()
    assert (answer["success"], answer["mode"], answer["state"]) == (True, "inline", "SUCCESS")
    assert answer["retries"] == 1
    assert [p["symbol"] for p in answer["result"]] == ["BTC/USDT"]
    # And its status reads back by id, without Redis
    status = client.get(f"/api/v1/tasks/{answer['task_id']}/status", headers=AUTH)
    assert status.status_code == 200
    assert status.json() == {
        "task_id": answer["task_id"],
        "status": "SUCCESS",
        "result": answer["result"],
        "error": None,
        "retries": 1,
    }


def test_an_inline_failure_is_not_a_success(
    db_url: str, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given Redis down and a bot name nobody has
    rt = _runtime(DEAD, db_url, simulator_url=simulator.url)
    client, _ = _client(rt, DEAD)
    monkeypatch.setattr(runtime_module, "_runtime", rt)
    monkeypatch.setattr(runtime_module, "_pid", os.getpid())
    simulator.reset()
    simulator.set_faults({"rules": [{"kind": "http_5xx", "path": "/api/v3/ticker*"}]})
    # When a price check cannot succeed (the exchange keeps failing)
    sent = client.post(
        "/api/v1/tasks/price-check", headers=AUTH, json={"symbol": "BTC/USDT"}
    ).json()
    simulator.reset()
    # Then it says so: no success, FAILURE with the error, after Celery's three retries
    assert (sent["success"], sent["state"], sent["retries"]) == (False, "FAILURE", 3), sent
    assert "TemporaryError" in sent["error"]


def test_a_task_cannot_be_looked_up_in_a_dead_result_backend(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an API whose result backend is unreachable
    rt = _runtime(DEAD, db_url)
    app = create_app(migrate=False)
    # (Celery reads CELERY_RESULT_BACKEND from the environment before its arguments)
    monkeypatch.setenv("CELERY_RESULT_BACKEND", DEAD)
    dispatcher = Dispatcher(Celery("dead", backend=DEAD, broker=DEAD), BrokerProbe(DEAD))
    app.dependency_overrides[get_rt] = lambda: rt
    app.dependency_overrides[get_dispatcher] = lambda: dispatcher
    client = TestClient(app, raise_server_exceptions=False)
    # When a task it did not run inline is looked up
    unknown = client.get("/api/v1/tasks/never-seen/status", headers=AUTH)
    # Then it says the backend is unreachable (503), not PENDING and not a 500
    assert unknown.status_code == 503, unknown.text
    assert unknown.json()["error"]["code"] == "backend_unavailable"
