"""Prometheus metrics recorded into Redis by any process and rendered by the API."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import Engine
from sqlmodel import Session, col, func, select

from engine import metrics
from engine.db import engine_for, session_scope
from engine.models import Bot, BotStatus, Order, Tick
from tests.chain_support import Engine as ChainEngine
from tests.chain_support import bot_yaml
from tests.support import wait_for
from tests.test_api import AUTH, DEAD, TOKEN, YAML, Api, _client, make_api

ROOT = Path(__file__).resolve().parent.parent

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(text: str) -> Samples:
    """Every sample of an exposition as {(name, sorted labels): value}."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _render(redis_client: redis.Redis, db: Engine) -> Samples:
    return _samples(metrics.render(redis_client, db, process=False).decode())


def _ticks_total(samples: Samples) -> float:
    return sum(v for (name, _), v in samples.items() if name == "botengine_ticks_total")


def test_ticks_are_counted_and_histograms_are_cumulative(
    redis_client: redis.Redis, redis_url: str, db_url: str
) -> None:
    # Given ticks recorded by two "workers" (two clients on one Redis)
    other = redis.Redis.from_url(redis_url)
    metrics.record_tick(redis_client, "ok", lateness_s=0.004, duration_s=0.2)
    metrics.record_tick(other, "ok", lateness_s=0.03, duration_s=0.2)
    metrics.record_tick(redis_client, "failed", lateness_s=-0.002, duration_s=75.0)
    # When the metrics are rendered
    s = _render(redis_client, engine_for(db_url))
    # Then ticks are counted by outcome across both
    assert s[("botengine_ticks_total", (("outcome", "ok"),))] == 2
    assert s[("botengine_ticks_total", (("outcome", "failed"),))] == 1
    # And the lateness histogram is cumulative; a tick early by 2 ms counts as on time
    late = "botengine_tick_lateness_seconds"
    assert s[(f"{late}_bucket", (("le", "0.01"),))] == 2
    assert s[(f"{late}_bucket", (("le", "0.025"),))] == 2
    assert s[(f"{late}_bucket", (("le", "0.05"),))] == 3
    assert s[(f"{late}_bucket", (("le", "+Inf"),))] == 3
    assert s[(f"{late}_count", ())] == 3
    assert s[(f"{late}_sum", ())] == pytest.approx(0.034)
    # And a duration above the top bucket lands in +Inf only
    dur = "botengine_tick_duration_seconds"
    assert s[(f"{dur}_bucket", (("le", "60"),))] == 2
    assert s[(f"{dur}_bucket", (("le", "+Inf"),))] == 3
    assert s[(f"{dur}_sum", ())] == pytest.approx(75.4)


def test_a_worker_buffers_tick_metrics_and_writes_them_at_most_every_flush(
    redis_client: redis.Redis,
) -> None:
    # Given a buffer flushing every 10 s on a clock the test moves
    now = [0.0]
    buffer = metrics.TickBuffer(redis_client, 10.0, clock=lambda: now[0])
    # When ticks are added within the period
    buffer.add("ok", 0.1, 0.2)
    buffer.add("ok", 0.3, 0.2)
    buffer.add("skipped", 0.0, 0.0)
    # Then nothing is written yet
    assert redis_client.hgetall(metrics.TICKS) == {}
    # When the period is over, the next tick writes all of them at once, summed
    now[0] = 10.0
    buffer.add("failed", 0.02, 1.0)
    assert redis_client.hgetall(metrics.TICKS) == {b"ok": b"2", b"skipped": b"1", b"failed": b"1"}
    lateness = redis_client.hgetall(metrics.LATENESS)
    assert lateness[b"count"] == b"4"
    assert float(lateness[b"sum"]) == pytest.approx(0.42)
    # And an explicit flush (heartbeat, shutdown) writes what is left
    buffer.add("ok", 0.1, 0.2)
    buffer.flush()
    assert redis_client.hget(metrics.TICKS, "ok") == b"3"


def test_reconciler_exchange_and_rate_limit_counters(
    redis_client: redis.Redis, db_url: str
) -> None:
    # Given two reconciler passes, exchange requests and rate-limit waits
    metrics.record_reconcile(
        redis_client, {"restored": 2, "requeued": 0, "advanced": 1, "dispatched": 0}
    )
    metrics.record_reconcile(
        redis_client, {"restored": 1, "requeued": 3, "advanced": 0, "dispatched": 4}
    )
    for outcome in ("ok", "ok", "temporary"):
        metrics.record_exchange_request(redis_client, "binance", outcome)
    metrics.record_rate_limit_wait(redis_client, "binance", 0.25)
    metrics.record_rate_limit_wait(redis_client, "binance", 0.5)
    # When rendered
    s = _render(redis_client, engine_for(db_url))
    # Then each is a counter with its labels
    kinds = {
        k: s[("botengine_reconciler_actions_total", (("kind", k),))]
        for k in metrics.RECONCILE_KINDS
    }
    assert kinds == {
        "restored": 3,
        "fenced": 0,
        "paused": 0,
        "requeued": 3,
        "advanced": 1,
        "dispatched": 4,
    }
    req = "botengine_exchange_requests_total"
    assert s[(req, (("exchange", "binance"), ("outcome", "ok")))] == 2
    assert s[(req, (("exchange", "binance"), ("outcome", "temporary")))] == 1
    assert s[("botengine_rate_limit_waits_total", (("exchange", "binance"),))] == 2
    assert s[("botengine_rate_limit_wait_seconds_total", (("exchange", "binance"),))] == 0.75


def test_bot_and_order_gauges_come_from_the_database(
    redis_client: redis.Redis, db_url: str
) -> None:
    # Given bots in several states and orders in several statuses
    db = engine_for(db_url)
    with session_scope(db) as session:
        for name, status in (("a", "running"), ("b", "running"), ("c", "paused")):
            session.add(Bot(name=name, config={}, config_hash="x", status=BotStatus(status)))
        for i, status in enumerate(("open", "open", "closed")):
            session.add(
                Order(
                    client_order_id=f"c{i}",
                    bot="a",
                    generation=1,
                    slot=i,
                    intent_index=0,
                    exchange="simulator",
                    symbol="BTC/USDT",
                    side="buy",
                    type="limit",
                    amount=1.0,
                    status=status,
                )
            )
    # When rendered
    s = _render(redis_client, db)
    # Then the gauges count them, every bot status present (zeros included)
    assert s[("botengine_running_bots", ())] == 2
    assert s[("botengine_bots", (("status", "paused"),))] == 1
    assert s[("botengine_bots", (("status", "error"),))] == 0
    assert s[("botengine_orders", (("status", "open"),))] == 2
    assert s[("botengine_orders", (("status", "closed"),))] == 1
    assert s[("botengine_metrics_db_up", ())] == 1


def test_a_dead_redis_neither_breaks_recording_nor_the_scrape(db_url: str) -> None:
    # Given a Redis that is down
    dead = redis.Redis.from_url(DEAD, socket_connect_timeout=0.2, socket_timeout=0.2)
    # When a tick records its metrics
    metrics.record_tick(dead, "ok", 0.1, 0.1)  # Then it does not raise
    metrics.record_tick(None, "ok", 0.1, 0.1)  # (in-process mode has no Redis at all)
    # And a scrape still answers: Redis reported down, database gauges present
    s = _render(dead, engine_for(db_url))
    assert s[("botengine_metrics_redis_up", ())] == 0
    assert s[("botengine_running_bots", ())] == 0
    assert _ticks_total(s) == 0


@pytest.fixture
def api(redis_url: str, db_url: str) -> Iterator[Api]:
    """The API wired to the test Redis and database (see tests.test_api)."""
    with make_api(redis_url, db_url) as made:
        yield made


def test_metrics_endpoint_needs_the_token_and_serves_prometheus_text(api: Api) -> None:
    # Given a recorded tick
    assert api.rt.redis is not None
    metrics.record_tick(api.rt.redis, "ok", 0.5, 0.1)
    # When /metrics is scraped without and with the token
    anonymous = api.client.get("/metrics")
    scraped = api.client.get("/metrics", headers=AUTH)
    # Then only the authorised scrape succeeds, in the Prometheus text format
    assert anonymous.status_code == 401
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    s = _samples(scraped.text)
    assert s[("botengine_ticks_total", (("outcome", "ok"),))] == 1
    assert ("process_cpu_seconds_total", ()) in s  # the API process's own metrics too


@pytest.mark.sqlite_only
def test_scraped_tick_counts_equal_the_ticks_in_the_database(engine: ChainEngine) -> None:
    # Given the API on the engine, a worker, and two bots started through it
    rt = dataclasses.replace(
        engine.rt, settings=engine.rt.settings.model_copy(update={"api_token": SecretStr(TOKEN)})
    )
    client, _ = _client(rt, rt.settings.celery_broker_url)
    engine.procs.worker("w1", concurrency=4)
    for name in ("m1", "m2"):
        assert client.put(f"/api/v1/bots/{name}", content=bot_yaml(name), headers=YAML).is_success
        assert client.post(f"/api/v1/bots/{name}/start", headers=AUTH).is_success

    def db_ticks() -> int:
        with Session(rt.db) as session:
            return int(session.exec(select(func.count()).select_from(Tick)).one())

    def scraped() -> Samples:
        response = client.get("/metrics", headers=AUTH)
        assert response.status_code == 200
        return _samples(response.text)

    # When they run for a few ticks, and /metrics is scraped during the run
    assert wait_for(lambda: db_ticks() >= 6, 30)
    during = scraped()
    assert during[("botengine_running_bots", ())] == 2
    # (workers write their summed tick metrics every METRICS_FLUSH_S, 1 s by default)
    assert wait_for(lambda: _ticks_total(scraped()) > 0, 10)
    # Then after they stop, the scraped tick count equals the ticks recorded in the DB
    for name in ("m1", "m2"):
        assert client.post(f"/api/v1/bots/{name}/stop", headers=AUTH).is_success
    time.sleep(0.5)
    assert wait_for(lambda: _ticks_total(scraped()) == db_ticks(), 10), (
        _ticks_total(scraped()),
        db_ticks(),
    )
    by_outcome = {
        dict(k[1])["outcome"]: v for k, v in scraped().items() if k[0] == "botengine_ticks_total"
    }
    with Session(rt.db) as session:
        rows = session.exec(select(Tick.outcome, func.count()).group_by(col(Tick.outcome)))
        assert by_outcome == {str(o): float(n) for o, n in rows}
    lateness = scraped()[("botengine_tick_lateness_seconds_count", ())]
    assert lateness == db_ticks()
