"""The HTTP control API, through HTTP: auth, every endpoint's happy and bad-input path,
task states against a real worker, inline mode with the broker down, a real uvicorn."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import states
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlmodel import Session

from engine import runtime as runtime_module
from engine.api import create_app
from engine.api.deps import get_dispatcher, get_rt
from engine.api.dispatch import BrokerProbe, Dispatcher
from engine.celery_app import app as celery_app
from engine.config import parse_bot_config
from engine.coordination import RedisCoordinator
from engine.db import engine_for, session_scope
from engine.embedded import free_port
from engine.errors import BotConfigError, ConfigError
from engine.models import Bot, Fill, Order, PaperBalance, PriceSnapshot, Tick, TickOutcome
from engine.runtime import Runtime, claim_ttl, redis_client
from engine.settings import Settings
from tests.chain_support import Engine, bot_yaml
from tests.support import bin_path, python_env, wait_for

TOKEN = "api-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
YAML = {"Content-Type": "application/yaml", **AUTH}
JSON = {"Content-Type": "application/json", **AUTH}
DEAD = "redis://127.0.0.1:1/0"  # nothing listens on port 1


# -- fixtures ---------------------------------------------------------------------------


@dataclasses.dataclass
class Api:
    """A TestClient on a fresh app wired to a test runtime and dispatcher."""

    client: TestClient
    app: FastAPI
    rt: Runtime
    enqueued: list[tuple[str, int, int, float]]

    def put(self, name: str, text: str, headers: dict[str, str] = YAML) -> httpx.Response:
        response: httpx.Response = self.client.put(
            f"/api/v1/bots/{name}", content=text, headers=headers
        )
        return response

    def post(self, path: str, headers: dict[str, str] = AUTH, **kwargs: Any) -> httpx.Response:
        response: httpx.Response = self.client.post(f"/api/v1{path}", headers=headers, **kwargs)
        return response

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        response: httpx.Response = self.client.get(f"/api/v1{path}", headers=AUTH, **kwargs)
        return response


def _runtime(redis_url: str, db_url: str, token: str | None = TOKEN, **extra: Any) -> Runtime:
    settings = Settings(
        redis_url=redis_url,
        celery_broker_url=redis_url,
        celery_result_backend=redis_url,
        database_url=db_url,
        api_token=SecretStr(token) if token else None,
        tick_time_limit_s=5,
        **extra,
    )
    client = redis_client(redis_url)
    return Runtime(
        settings=settings,
        redis=client,
        db=engine_for(db_url),
        coordinator=RedisCoordinator(client, claim_ttl(settings)),
        enqueue=lambda *a: None,
    )


def _client(rt: Runtime, broker_url: str, **kwargs: Any) -> tuple[TestClient, FastAPI]:
    app = create_app(migrate=False)
    dispatcher = Dispatcher(celery_app, BrokerProbe(broker_url))
    app.dependency_overrides[get_rt] = lambda: rt
    app.dependency_overrides[get_dispatcher] = lambda: dispatcher
    return TestClient(app, raise_server_exceptions=False, **kwargs), app


@contextmanager
def make_api(redis_url: str, db_url: str) -> Iterator[Api]:
    """The API on a real Redis and a migrated database; enqueued ticks are recorded."""
    enqueued: list[tuple[str, int, int, float]] = []
    rt = _runtime(redis_url, db_url)
    rt.enqueue = lambda *a: enqueued.append(a)
    client, app = _client(rt, redis_url)
    with client:
        yield Api(client, app, rt, enqueued)


@pytest.fixture
def api(redis_url: str, db_url: str) -> Iterator[Api]:
    """See make_api."""
    with make_api(redis_url, db_url) as made:
        yield made


def _error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "fields"}
    error: dict[str, Any] = body["error"]
    return error


# -- auth -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}],
    ids=["missing", "wrong", "not-bearer"],
)
def test_every_endpoint_but_healthz_needs_the_token(api: Api, headers: dict[str, str]) -> None:
    # Given a client without the right bearer token
    calls = [
        ("GET", "/api/v1/bots"),
        ("GET", "/api/v1/bots/x"),
        ("PUT", "/api/v1/bots/x"),
        ("POST", "/api/v1/bots/x/start"),
        ("POST", "/api/v1/bots/x/stop"),
        ("POST", "/api/v1/bots/x/pause"),
        ("POST", "/api/v1/bots/x/resume"),
        ("GET", "/api/v1/bots/x/ticks"),
        ("POST", "/api/v1/tasks/ping"),
        ("POST", "/api/v1/tasks/price-check"),
        ("GET", "/api/v1/tasks/abc"),
        ("GET", "/metrics"),
        ("GET", "/api/v1/openapi.json"),
    ]
    for method, path in calls:
        # When it calls any endpoint
        response = api.client.request(method, path, headers=headers)
        # Then it is refused with 401 and the error shape
        assert response.status_code == 401, (method, path)
        assert _error(response)["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    # And /healthz answers without a token
    assert api.client.get("/healthz").status_code in (200, 503)


def test_without_a_token_only_loopback_clients_are_served(redis_url: str, db_url: str) -> None:
    # Given an API with no API_TOKEN configured
    rt = _runtime(redis_url, db_url, token=None)
    remote, _ = _client(rt, redis_url, client=("203.0.113.9", 50000))
    local, _ = _client(rt, redis_url, client=("127.0.0.1", 50000))
    # When a remote and a loopback client call it
    # Then only the loopback one is served
    assert remote.get("/api/v1/bots").status_code == 401
    assert "API_TOKEN" in _error(remote.get("/api/v1/bots"))["message"]
    assert local.get("/api/v1/bots").status_code == 200


def test_serve_refuses_a_public_bind_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given settings without API_TOKEN
    from engine import settings as settings_module
    from engine.api import serve

    monkeypatch.setattr(settings_module, "get_settings", lambda: Settings(api_token=None))
    # When the API is asked to listen on every interface
    # Then it refuses with a message naming API_TOKEN, before binding anything
    with pytest.raises(ConfigError, match="API_TOKEN is not set"):
        serve("0.0.0.0", free_port())


# -- bots -------------------------------------------------------------------------------


def test_put_creates_a_stopped_bot_and_the_list_matches_status_json(api: Api, db_url: str) -> None:
    # Given no bots
    assert api.get("/bots").json() == []
    # When a bot is PUT as YAML and another as JSON
    created = api.put("alpha", bot_yaml("alpha"))
    data = {
        "name": "beta",
        "exchange": "simulator",
        "symbol": "ETH/USDT",
        "check_interval": "5s",
        "strategy": {"name": "dca", "params": {"quote_amount": 10}},
    }
    created_json = api.put("beta", json.dumps(data, indent="\t"), headers=JSON)
    # Then both are created, stopped, at generation 0
    assert created.status_code == 201, created.text
    assert created.json() == {
        "bot": "alpha",
        "change": "created",
        "generation": 0,
        "status": "stopped",
    }
    assert created_json.status_code == 201, created_json.text
    # And the list has exactly the fields (and values) of `botengine status --json`
    listed = api.get("/bots").json()
    assert [b["name"] for b in listed] == ["alpha", "beta"]
    cli = subprocess.run(
        [bin_path("botengine"), "status", "--json"],
        env=python_env(DATABASE_URL=db_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == listed


def test_put_again_is_unchanged_and_a_change_bumps_the_generation(api: Api) -> None:
    # Given a stored bot
    api.put("gamma", bot_yaml("gamma", interval="2s"))
    # When the same config is PUT again, then a changed one
    same = api.put("gamma", bot_yaml("gamma", interval="2s"))
    changed = api.put("gamma", bot_yaml("gamma", interval="3s"))
    # Then the first changes nothing and the second stores the config at generation 1
    assert same.status_code == 200
    assert same.json()["change"] == "unchanged"
    assert changed.json() == {
        "bot": "gamma",
        "change": "updated",
        "generation": 1,
        "status": "stopped",
    }
    detail = api.get("/bots/gamma").json()
    assert detail["interval_s"] == 3.0
    assert detail["config"]["check_interval"] == 3.0
    assert detail["source"] == "api:gamma"


def test_lifecycle_start_stop_pause_resume_through_http(api: Api) -> None:
    # Given a stored bot
    api.put("delta", bot_yaml("delta", interval="2s"))
    # When it is started with its stored config
    started = api.post("/bots/delta/start")
    # Then it runs at generation 1 and slot 0 was enqueued
    assert started.status_code == 200, started.text
    assert started.json() == {
        "bot": "delta",
        "change": "started",
        "generation": 1,
        "status": "running",
        "drained": True,
    }
    assert [(b, g, s) for b, g, s, _ in api.enqueued] == [("delta", 1, 0)]
    # And starting again changes nothing
    assert api.post("/bots/delta/start").json()["change"] == "unchanged"
    # And a config PUT while running reconfigures it live
    live = api.put("delta", bot_yaml("delta", interval="4s"))
    assert live.json()["change"] == "reconfigured"
    assert live.json()["generation"] == 2
    # When it is paused, resumed and stopped
    paused = api.post("/bots/delta/pause").json()
    resumed = api.post("/bots/delta/resume").json()
    stopped = api.post("/bots/delta/stop").json()
    again = api.post("/bots/delta/stop").json()
    # Then each answers with its change and a new generation
    assert (paused["change"], paused["status"], paused["generation"]) == ("paused", "paused", 3)
    assert (resumed["change"], resumed["status"]) == ("resumed", "running")
    assert (stopped["change"], stopped["status"]) == ("stopped", "stopped")
    assert again["change"] == "unchanged"
    assert api.get("/bots/delta").json()["status"] == "stopped"


def test_unknown_bots_are_404_everywhere(api: Api) -> None:
    # Given no bot named ghost
    for response in (
        api.get("/bots/ghost"),
        api.get("/bots/ghost/ticks"),
        api.post("/bots/ghost/start"),
        api.post("/bots/ghost/stop"),
        api.post("/bots/ghost/pause"),
        api.post("/bots/ghost/resume"),
        api.post("/tasks/price-check", json={"bot": "ghost"}),
    ):
        # Then every call about it is a 404 not_found naming it
        assert response.status_code == 404, response.request.url
        error = _error(response)
        assert error["code"] == "not_found"
        assert "ghost" in error["message"]


def test_invalid_configs_get_the_file_validators_messages(api: Api) -> None:
    # Given a config with two mistakes
    text = bot_yaml("eps", interval="0s", symbol="btc-usdt")
    # When it is PUT
    response = api.put("eps", text)
    # Then the answer is a 422 carrying exactly the file validator's problems for `api:eps`
    assert response.status_code == 422
    error = _error(response)
    assert error["code"] == "invalid_config"
    with pytest.raises(BotConfigError) as expected:
        parse_bot_config(text, "api:eps")
    assert error["message"] == str(expected.value)
    assert {f["field"] for f in error["fields"]} == {"check_interval", "symbol"}
    assert all(f["problem"].startswith(f"api:eps:{f['line']}: ") for f in error["fields"])
    # And nothing was stored
    assert api.get("/bots/eps").status_code == 404


def test_dotted_strategy_paths_are_refused_without_importing_them(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an importable module that leaves a mark when imported
    marker = tmp_path / "imported"
    (tmp_path / "api_evil_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # When a config naming it by dotted path is PUT
    text = bot_yaml("zeta", strategy="api_evil_mod:Strategy", params="")
    response = api.put("zeta", text)
    # Then it is a 422 naming strategy.name on its line, and the module never ran
    assert response.status_code == 422
    error = _error(response)
    assert [(f["field"], f["line"]) for f in error["fields"]] == [("strategy.name", 6)]
    assert "only registered strategies" in error["fields"][0]["message"]
    assert not marker.exists()
    assert "api_evil_mod" not in sys.modules
    # And an unknown registered name is refused with the registry's list, not a path hint
    unknown = _error(api.put("zeta", bot_yaml("zeta", strategy="nope", params="")))
    assert [f["field"] for f in unknown["fields"]] == ["strategy.name"]
    assert "dotted path" not in unknown["message"]


@pytest.mark.parametrize(
    ("path_name", "text", "headers", "status", "code", "field"),
    [
        ("eta", bot_yaml("other"), YAML, 422, "invalid_config", "name"),
        ("eta", "name: [unclosed\n", YAML, 422, "invalid_config", "(file)"),
        ("eta", '{"name": "eta",}', JSON, 422, "invalid_config", "(file)"),
        ("eta", "- a list\n", YAML, 422, "invalid_config", "(file)"),
        (
            "eta",
            bot_yaml("eta"),
            {"Content-Type": "text/plain", **AUTH},
            415,
            "unsupported_media_type",
            None,
        ),
        ("Bad_Name", bot_yaml("eta"), YAML, 422, "invalid_request", "name"),
        ("eta", "x: " + "a" * 300_000, YAML, 413, "payload_too_large", None),
    ],
    ids=[
        "name-mismatch",
        "bad-yaml",
        "bad-json",
        "not-a-mapping",
        "content-type",
        "bad-path-name",
        "too-large",
    ],
)
def test_malformed_put_bodies_name_the_problem(
    api: Api,
    path_name: str,
    text: str,
    headers: dict[str, str],
    status: int,
    code: str,
    field: str | None,
) -> None:
    # When a malformed body is PUT
    response = api.put(path_name, text, headers=headers)
    # Then the status and stable code say what is wrong, and fields name where
    assert response.status_code == status, response.text
    error = _error(response)
    assert error["code"] == code
    if field is not None:
        assert field in [f["field"] for f in error["fields"]]


def _seed_activity(rt: Runtime, bot: str) -> None:
    """Two generations of ticks, one fill, one open order, balances and a snapshot."""
    now = datetime.now(UTC)
    with session_scope(rt.db) as session:
        for generation, slots in ((1, 5), (2, 3)):
            for slot in range(slots):
                at = now - timedelta(seconds=100 - 10 * generation - slot)
                session.add(
                    Tick(
                        bot=bot,
                        generation=generation,
                        slot=slot,
                        due_at=at,
                        started_at=at,
                        finished_at=at,
                        lateness_ms=1.5,
                        duration_ms=2.5,
                        outcome=TickOutcome.OK,
                    )
                )
        filled = Order(
            client_order_id="be-x-1-0-0",
            bot=bot,
            generation=1,
            slot=0,
            intent_index=0,
            exchange="simulator",
            symbol="BTC/USDT",
            side="buy",
            type="market",
            amount=0.5,
            status="closed",
            filled=0.5,
        )
        resting = Order(
            client_order_id="be-x-1-1-0",
            bot=bot,
            generation=1,
            slot=1,
            intent_index=0,
            exchange="simulator",
            symbol="BTC/USDT",
            side="sell",
            type="limit",
            amount=0.25,
            price=30_000.0,
            status="open",
        )
        session.add(filled)
        session.add(resting)
        session.flush()
        assert filled.id is not None
        session.add(
            Fill(
                order_id=filled.id,
                bot=bot,
                symbol="BTC/USDT",
                side="buy",
                amount=0.5,
                price=20_000.0,
                fee=10.0,
                fee_currency="USDT",
            )
        )
        session.add(PaperBalance(bot=bot, currency="USDT", free=90.0, used=10.0))
        session.add(PaperBalance(bot=bot, currency="BTC", free=0.25, used=0.25))
        session.add(
            PriceSnapshot(
                exchange="simulator", symbol="BTC/USDT", bid=21_990.0, ask=22_010.0, last=22_000.0
            )
        )
        bot_row = session.get(Bot, bot)
        assert bot_row is not None
        bot_row.generation = 2
        session.add(bot_row)


def test_bot_detail_has_ticks_open_orders_balances_and_pnl(api: Api) -> None:
    # Given a bot with ticks, a fill, a resting order, balances and an hourly price
    api.put("theta", bot_yaml("theta"))
    _seed_activity(api.rt, "theta")
    # When it is inspected
    detail = api.get("/bots/theta").json()
    # Then the answer carries status, the last ticks newest first, orders, balances, PnL
    assert detail["generation"] == 2
    assert [(t["generation"], t["slot"]) for t in detail["last_ticks"]][:4] == [
        (2, 2),
        (2, 1),
        (2, 0),
        (1, 4),
    ]
    assert len(detail["last_ticks"]) == 8
    assert detail["open_orders"] == [
        {
            "client_order_id": "be-x-1-1-0",
            "side": "sell",
            "type": "limit",
            "amount": 0.25,
            "price": 30_000.0,
            "filled": 0.0,
        }
    ]
    assert detail["balances"]["USDT"] == {"free": 90.0, "used": 10.0, "total": 100.0}
    assert detail["balances"]["BTC"]["total"] == 0.5
    pnl = detail["pnl"]
    assert pnl["position"] == 0.5
    assert pnl["mark_price"] == 22_000.0
    assert pnl["mark_source"] == "snapshot"
    assert pnl["unrealized"] == pytest.approx(1_000.0)
    assert pnl["net"] == pytest.approx(990.0)
    assert (detail["exchange"], detail["symbol"], detail["mode"]) == (
        "simulator",
        "BTC/USDT",
        "paper",
    )


def test_ticks_page_backwards_across_generations(api: Api) -> None:
    # Given 5 ticks in generation 1 and 3 in generation 2
    api.put("iota", bot_yaml("iota"))
    _seed_activity(api.rt, "iota")
    # When they are read 3 at a time, following `next`
    seen: list[tuple[int, int]] = []
    params: dict[str, Any] = {"limit": 3}
    pages = 0
    while True:
        page = api.get("/bots/iota/ticks", params=params).json()
        pages += 1
        seen += [(t["generation"], t["slot"]) for t in page["ticks"]]
        if page["next"] is None:
            break
        params = {"limit": 3, **page["next"]}
    # Then every tick comes exactly once, newest first
    assert seen == [(2, 2), (2, 1), (2, 0), (1, 4), (1, 3), (1, 2), (1, 1), (1, 0)]
    assert pages == 3
    # And a slot cursor without a generation pages within the current one
    tail = api.get("/bots/iota/ticks", params={"before_slot": 1}).json()["ticks"]
    assert [(t["generation"], t["slot"]) for t in tail][:2] == [(2, 0), (1, 4)]
    first = tail[0]
    assert set(first) >= {"due_at", "lateness_ms", "duration_ms", "outcome", "orders"}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 5000}, "limit"),
        ({"before_slot": -1}, "before_slot"),
        ({"limit": "many"}, "limit"),
    ],
)
def test_bad_tick_paging_parameters_are_422(api: Api, params: dict[str, Any], field: str) -> None:
    api.put("kappa", bot_yaml("kappa"))
    # When the ticks are asked for with a bad parameter
    response = api.get("/bots/kappa/ticks", params=params)
    # Then the answer is a 422 naming it
    assert response.status_code == 422
    error = _error(response)
    assert error["code"] == "invalid_request"
    assert error["fields"][0]["field"] == field
    assert error["fields"][0]["in"] == "query"


# -- tasks ------------------------------------------------------------------------------


def _queued_message(rt: Runtime) -> dict[str, Any]:
    """The last message the API put on the maintenance queue (kombu's Redis layout)."""
    assert rt.redis is not None
    raw = rt.redis.lindex("maintenance", 0)
    assert raw is not None
    message: dict[str, Any] = json.loads(raw)
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    return {"task": message["headers"]["task"], "args": args, "kwargs": kwargs}


def test_price_check_is_queued_with_the_requested_target(api: Api) -> None:
    api.put("lam", bot_yaml("lam"))
    for body, kwargs in (
        (
            {"symbol": "BTC/USDT", "exchange": "simulator"},
            {"symbol": "BTC/USDT", "exchange": "simulator"},
        ),
        ({"bot": "lam"}, {"bot": "lam"}),
        (None, {}),
    ):
        # When a price check is requested with that body
        response = api.post("/tasks/price-check", json=body)
        # Then it is queued (202) as engine.price_check with exactly those arguments
        assert response.status_code == 202, response.text
        answer = response.json()
        assert answer["mode"] == "queued"
        assert answer["state"] == states.PENDING
        assert _queued_message(api.rt) == {
            "task": "engine.price_check",
            "args": [],
            "kwargs": kwargs,
        }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"symbol": "btc"}, "symbol"),
        ({"bot": "x", "symbol": "BTC/USDT"}, ""),
        ({"colour": "red"}, "colour"),
        ("not json", ""),
    ],
    ids=["bad-symbol", "both-targets", "unknown-key", "not-json"],
)
def test_bad_price_check_bodies_are_422(api: Api, body: Any, field: str) -> None:
    # When a price check is requested with a malformed body
    if isinstance(body, str):
        response = api.post(
            "/tasks/price-check", content=body, headers={"Content-Type": "application/json", **AUTH}
        )
    else:
        response = api.post("/tasks/price-check", json=body)
    # Then it is a 422 naming the field, and nothing was queued
    assert response.status_code == 422, response.text
    error = _error(response)
    assert error["code"] == "invalid_request"
    assert all(f["in"] == "body" for f in error["fields"])
    if field:
        assert any(f["field"].endswith(field) for f in error["fields"])
    assert api.rt.redis is not None
    assert api.rt.redis.llen("maintenance") == 0


def test_task_states_from_the_backend_and_bad_task_ids(api: Api) -> None:
    # Given results stored by workers in every state but PENDING
    backend = celery_app.backend
    backend.mark_as_started("t-started", pid=1, hostname="w")
    backend.mark_as_retry("t-retry", ValueError("flaky"))
    backend.mark_as_failure("t-failed", ValueError("boom"), traceback="secret trace")
    backend.mark_as_done("t-done", {"answer": 42})
    # When they are read through the API
    got = {
        tid: api.get(f"/tasks/{tid}").json()
        for tid in ("t-unknown", "t-started", "t-retry", "t-failed", "t-done")
    }
    # Then each has the stable shape with its Celery state, result or error
    assert got["t-unknown"] == {
        "task_id": "t-unknown",
        "state": "PENDING",
        "result": None,
        "error": None,
        "retries": 0,
    }
    assert got["t-started"]["state"] == "STARTED"
    assert (got["t-retry"]["state"], got["t-retry"]["error"]) == ("RETRY", "ValueError: flaky")
    assert (got["t-failed"]["state"], got["t-failed"]["error"]) == ("FAILURE", "ValueError: boom")
    assert "secret trace" not in json.dumps(got["t-failed"])
    assert got["t-done"] == {
        "task_id": "t-done",
        "state": "SUCCESS",
        "result": {"answer": 42},
        "error": None,
        "retries": 0,
    }
    # And a malformed task id is a 422 naming it
    bad = api.get("/tasks/" + "x" * 300)
    assert bad.status_code == 422
    assert _error(bad)["fields"][0]["field"] == "task_id"


@pytest.mark.parametrize("action", ["start", "stop", "pause", "resume"])
def test_a_lifecycle_call_refused_for_a_dead_redis_changed_nothing(
    redis_url: str, db_url: str, action: str
) -> None:
    # Given a bot in the database (running, or paused for resume), and Redis gone
    with make_api(redis_url, db_url) as api:
        api.put("still", bot_yaml("still"))
        if action != "start":
            api.post("/bots/still/start")
        if action == "resume":
            api.post("/bots/still/pause")
        before = api.get("/bots/still").json()
    rt = _runtime(DEAD, db_url)
    client, _ = _client(rt, DEAD)
    # When the lifecycle call is made
    response = client.post(f"/api/v1/bots/still/{action}", headers=AUTH)
    # Then it is 503, saying nothing changed, and nothing did
    assert response.status_code == 503, response.text
    assert "nothing was changed" in _error(response)["message"]
    with Session(engine_for(db_url)) as session:
        row = session.get(Bot, "still")
    assert row is not None
    assert (row.status, row.generation) == (before["status"], before["generation"])


def test_tasks_run_inline_when_the_broker_is_down(
    redis_url: str, db_url: str, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an API whose broker check points at a dead port
    rt = _runtime(redis_url, db_url, simulator_url=simulator.url)
    client, _ = _client(rt, DEAD)
    # (inline tasks use the process runtime; make it the test's)
    monkeypatch.setattr(runtime_module, "_runtime", rt)
    monkeypatch.setattr(runtime_module, "_pid", os.getpid())
    # When a ping and a price check are requested
    started = time.monotonic()
    ping = client.post("/api/v1/tasks/ping", headers=AUTH)
    check = client.post(
        "/api/v1/tasks/price-check",
        headers=AUTH,
        json={"symbol": "BTC/USDT", "exchange": "simulator"},
    )
    # Then both ran inline, promptly, and say so with their results
    assert time.monotonic() - started < 10
    assert ping.status_code == 200, ping.text
    assert ping.json()["mode"] == "inline"
    assert ping.json()["state"] == "SUCCESS"
    assert set(ping.json()["result"]) == {"hostname", "time"}
    assert check.status_code == 200, check.text
    prices = check.json()
    assert (prices["mode"], prices["state"]) == ("inline", "SUCCESS"), prices
    assert prices["result"][0]["symbol"] == "BTC/USDT"
    assert prices["result"][0]["bid"] > 0
    # And their state can be read back by id
    later = client.get(f"/api/v1/tasks/{ping.json()['task_id']}", headers=AUTH).json()
    assert later["state"] == "SUCCESS"
    assert later["result"] == ping.json()["result"]


def test_broker_probe_is_cached_between_checks() -> None:
    # Given a probe on a dead broker with a controllable clock
    now = [0.0]
    probe = BrokerProbe(DEAD, ttl_s=1.5, timeout_s=0.1, clock=lambda: now[0])
    calls: list[float] = []
    real = probe._probe

    def counting() -> bool:
        calls.append(now[0])
        return real()

    probe._probe = counting  # type: ignore[method-assign]
    # When it is asked three times within its TTL, then once after
    answers = [probe.up(), probe.up(), probe.up()]
    now[0] = 2.0
    answers.append(probe.up())
    # Then it probed twice and said "down" each time
    assert answers == [False] * 4
    assert len(calls) == 2


def test_task_states_and_health_against_a_real_worker(engine: Engine) -> None:
    # Given the API on the engine's Redis and database, and no worker yet
    rt = dataclasses.replace(
        engine.rt, settings=engine.rt.settings.model_copy(update={"api_token": SecretStr(TOKEN)})
    )
    client, _ = _client(rt, rt.settings.celery_broker_url)
    # When a ping is sent
    sent = client.post("/api/v1/tasks/ping", headers=AUTH)
    # Then it is queued and waits, PENDING; health is 503 for lack of a worker
    assert sent.status_code == 202
    task_id = sent.json()["task_id"]
    assert sent.json() == {
        "success": True,
        "task_id": task_id,
        "state": "PENDING",
        "result": None,
        "error": None,
        "retries": 0,
        "mode": "queued",
    }
    assert client.get(f"/api/v1/tasks/{task_id}", headers=AUTH).json()["state"] == "PENDING"
    health = client.get("/healthz", headers=AUTH)
    assert health.status_code == 503
    checks = health.json()["checks"]
    assert (checks["redis"]["ok"], checks["database"]["ok"], checks["worker"]["ok"]) == (
        True,
        True,
        False,
    )
    assert "no worker process" in checks["worker"]["error"]
    # When a worker starts
    engine.procs.worker("w1", concurrency=2)
    observed: list[str] = []

    def done() -> bool:
        state = client.get(f"/api/v1/tasks/{task_id}", headers=AUTH).json()
        if not observed or observed[-1] != state["state"]:
            observed.append(state["state"])
        return bool(state["state"] == "SUCCESS")

    # Then the ping goes PENDING → (STARTED →) SUCCESS with the worker's answer
    assert wait_for(done, 30, every=0.05), observed
    assert observed in (
        ["PENDING", "SUCCESS"],
        ["PENDING", "STARTED", "SUCCESS"],
        ["SUCCESS"],
        ["STARTED", "SUCCESS"],
    )
    result = client.get(f"/api/v1/tasks/{task_id}", headers=AUTH).json()["result"]
    assert result["hostname"].startswith("w1@")
    # And health turns 200 with every check ok (reports are cached for a moment)
    assert wait_for(lambda: client.get("/healthz").status_code == 200, 10)
    health = client.get("/healthz", headers=AUTH).json()
    assert health["status"] == "ok"
    assert health["checks"]["worker"]["consumers"] == {"ticks": 1, "maintenance": 1}
    # And without the token it says only that, no names, counts or errors
    assert client.get("/healthz").json() == {
        "status": "ok",
        "checks": {name: {"ok": True} for name in ("redis", "database", "worker", "fleet")},
        "reasons": [],
    }


def test_healthz_reports_a_dead_redis(db_url: str) -> None:
    # Given an API whose Redis and broker are unreachable
    rt = _runtime(DEAD, db_url)
    client, _ = _client(rt, DEAD)
    # When health is checked
    response = client.get("/healthz", headers=AUTH)
    # Then it is 503 naming the failing checks, and the database is still ok
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail"
    assert body["checks"]["redis"]["ok"] is False
    assert body["checks"]["redis"]["error"]
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["worker"]["ok"] is False


# -- errors, OpenAPI, a real server -------------------------------------------------------


def test_errors_have_one_shape_and_leak_no_stack_trace(api: Api) -> None:
    # Given a route that fails unexpectedly
    @api.app.get("/api/v1/boom")
    def boom() -> None:
        raise ZeroDivisionError("secret internals")

    # When it, an unknown route and a wrong method are called
    failed = api.get("/boom")
    missing = api.get("/nothing-here")
    wrong = api.client.delete("/api/v1/bots", headers=AUTH)
    # Then each is JSON with a stable code, and the 500 says nothing about internals
    assert (failed.status_code, _error(failed)["code"]) == (500, "internal_error")
    assert "secret" not in failed.text
    assert "Traceback" not in failed.text
    assert (missing.status_code, _error(missing)["code"]) == (404, "not_found")
    assert (wrong.status_code, _error(wrong)["code"]) == (405, "method_not_allowed")


def test_openapi_document_lists_the_versioned_endpoints(api: Api) -> None:
    # When the OpenAPI document is fetched with the token
    doc = api.get("/openapi.json").json()
    # Then it describes every endpoint, the bearer scheme and both config body types
    paths = set(doc["paths"])
    assert {
        "/api/v1/bots",
        "/api/v1/bots/{name}",
        "/api/v1/bots/{name}/start",
        "/api/v1/bots/{name}/stop",
        "/api/v1/bots/{name}/pause",
        "/api/v1/bots/{name}/resume",
        "/api/v1/bots/{name}/ticks",
        "/api/v1/tasks/ping",
        "/api/v1/tasks/price-check",
        "/api/v1/tasks/{task_id}",
        "/api/v1/tasks/{task_id}/status",
        "/healthz",
        "/metrics",
    } <= paths
    put = doc["paths"]["/api/v1/bots/{name}"]["put"]
    assert set(put["requestBody"]["content"]) == {"application/yaml", "application/json"}
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
    # And every reference in it resolves (the config body's schema included)
    text = json.dumps(doc)
    refs = {part.split('"', 1)[0] for part in text.split('"$ref": "')[1:]}
    assert "#/components/schemas/BotConfig" in refs
    for ref in refs:
        assert ref.removeprefix("#/components/schemas/") in doc["components"]["schemas"], ref


def test_real_uvicorn_serves_the_api_with_json_logs(redis_url: str, tmp_path: Path) -> None:
    # Given `serve` running in its own process on a loopback port, with a token
    port = free_port()
    db = f"sqlite:///{tmp_path / 'api.db'}"
    env = python_env(
        API_TOKEN=TOKEN,
        DATABASE_URL=db,
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
        CELERY_RESULT_BACKEND=redis_url,
    )
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from engine.api import serve; serve('127.0.0.1', {port})"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: _answers(f"{base}/healthz"), 30), (tmp_path / "api.log").read_text()
        # When it is called with and without the token
        with httpx.Client(base_url=base, timeout=10) as http:
            anonymous = http.get("/api/v1/bots")
            created = http.put("/api/v1/bots/real", content=bot_yaml("real"), headers=YAML)
            listed = http.get("/api/v1/bots", headers=AUTH)
            health = http.get("/healthz")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    # Then auth holds, the schema was migrated at start-up, and the bot is listed
    assert anonymous.status_code == 401
    assert created.status_code == 201, created.text
    assert [b["name"] for b in listed.json()] == ["real"]
    assert health.status_code == 503  # no worker in this test
    # And every line it logged, uvicorn's access log included, is JSON
    lines = [ln for ln in (tmp_path / "api.log").read_text().splitlines() if ln.strip()]
    records = [json.loads(ln) for ln in lines]
    assert any(r.get("logger") == "uvicorn.access" for r in records)
    assert TOKEN not in "\n".join(lines)


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return False
    return True
