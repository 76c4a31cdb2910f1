"""Exchange bans and long intervals through real workers."""

from __future__ import annotations

import time
from typing import Any

import pytest

from engine import lifecycle
from engine.coordination import PARKED
from tests.chain_support import Engine, bot_config
from tests.support import wait_for

pytestmark = pytest.mark.slow


@pytest.mark.sqlite_only
def test_418_pauses_every_bot_on_the_exchange_with_one_log_line_then_resumes(
    engine: Engine, simulator: Any
) -> None:
    # Given three bots on the simulator, ticking
    engine.procs.worker("w1")
    names = ["ban-a", "ban-b", "ban-c"]
    for name in names:
        lifecycle.start(engine.rt, bot_config(name, interval="1s"))
    assert wait_for(lambda: all(engine.bot(n).ticks_ok >= 1 for n in names), 20)
    # When the exchange bans this IP (HTTP 418, Retry-After 4 s)
    simulator.set_faults(
        {"rules": [{"kind": "http_418", "retry_after_s": 4, "sticky": True, "count": 1}]}
    )
    redis = engine.rt.redis
    assert redis is not None
    assert wait_for(lambda: redis.exists("ban:simulator") == 1, 20)
    banned_at = time.time()
    # Then during the ban every bot's ticks are skipped, not failed, and no bot errors
    time.sleep(2.5)
    during = [
        t
        for n in names
        for t in engine.ticks(n)
        if banned_at + 0.2 < t.started_at.timestamp() < banned_at + 2.5
    ]
    assert during, "ticks kept running (skipped) during the ban"
    assert {t.outcome for t in during} == {"skipped"}
    # And after the ban every bot trades again
    assert wait_for(lambda: redis.exists("ban:simulator") == 0, 15)
    simulator.set_faults({"clear": True})
    resumed_at = time.time()
    assert wait_for(
        lambda: all(
            any(
                t.outcome == "ok" and t.started_at.timestamp() > resumed_at for t in engine.ticks(n)
            )
            for n in names
        ),
        20,
    )
    for name in names:
        lifecycle.stop(engine.rt, name)
    # And the ban was logged once, not once per bot
    bans = [r for r in engine.procs.log_records("w1") if r["event"] == "exchange.banned"]
    assert len(bans) == 1


@pytest.mark.sqlite_only
def test_long_interval_slots_are_parked_and_dispatched_when_due(
    engine: Engine,
) -> None:
    # Given an ETA horizon of 3 s and a bot ticking every 6 s
    engine.procs.env["ETA_HORIZON_S"] = "3"
    engine.rt.settings = engine.rt.settings.model_copy(update={"eta_horizon_s": 3})
    engine.procs.worker("w1")
    engine.procs.beat()
    lifecycle.start(engine.rt, bot_config("slow", interval="6s"))
    redis = engine.rt.redis
    assert redis is not None
    # When slot 0 has run
    assert wait_for(lambda: engine.bot("slow").ticks_ok == 1, 15)
    # Then slot 1 (due in 6 s) is parked: no ETA message waits for it
    assert wait_for(lambda: redis.zscore(PARKED, "slow") is not None, 5)
    # And it is dispatched when it comes due, so it runs on time
    assert wait_for(lambda: engine.bot("slow").ticks_ok == 2, 25)
    assert redis.zscore(PARKED, "slow") is not None  # slot 2 parked again
    lifecycle.stop(engine.rt, "slow")
    second = engine.ticks("slow")[1]
    assert second.slot == 1
    assert second.lateness_ms < 2000


@pytest.mark.sqlite_only
def test_parked_bots_keep_ticking_while_beat_is_down(engine: Engine) -> None:
    # Given a bot whose every next slot is parked (2 s horizon, 4 s interval)
    engine.procs.env["ETA_HORIZON_S"] = "2"
    engine.rt.settings = engine.rt.settings.model_copy(update={"eta_horizon_s": 2})
    engine.procs.worker("w1")
    engine.procs.beat()
    lifecycle.start(engine.rt, bot_config("slow", interval="4s"))
    assert wait_for(lambda: engine.bot("slow").ticks_ok >= 2, 20)
    # When beat dies (no dispatch task, no reconciler pass)
    engine.procs.kill("beat")
    ticked = engine.bot("slow").ticks_ok
    # Then the worker's own dispatcher still sends each parked slot when it comes due:
    # every slot runs, once, on time
    assert wait_for(lambda: engine.bot("slow").ticks_ok >= ticked + 3, 20)
    lifecycle.stop(engine.rt, "slow")
    ticks = engine.ticks("slow")
    assert [t.slot for t in ticks] == list(range(len(ticks)))
    assert max(t.lateness_ms for t in ticks[ticked:]) < 2000


def test_worker_start_settles_orders_a_crash_left_unknown(engine: Engine, simulator: Any) -> None:
    from engine.db import session_scope
    from engine.exchange.simulator import make_ccxt_client
    from engine.models import Order

    # Given a live bot (stopped) whose last order reached the exchange, but whose worker
    # died before recording the answer: the row says `unknown`
    config = bot_config("crashed", extra="mode: live\n")
    lifecycle.start(engine.rt, config)
    lifecycle.stop(engine.rt, "crashed")
    cid = "be-crashed-9-9-0"
    make_ccxt_client(simulator.url).create_order(
        "BTC/USDT", "market", "buy", 0.001, params={"newClientOrderId": cid}
    )
    with session_scope(engine.rt.db) as session:
        session.add(
            Order(
                client_order_id=cid,
                bot="crashed",
                generation=9,
                slot=9,
                intent_index=0,
                exchange="simulator",
                symbol="BTC/USDT",
                side="buy",
                type="market",
                amount=0.001,
                status="unknown",
            )
        )
    # When a worker starts
    engine.procs.worker("w1")
    # Then the order is looked up by its client id and recorded as filled, never resent
    assert wait_for(lambda: engine.orders("crashed")[0].status == "closed", 20)
    assert engine.orders("crashed")[0].filled == 0.001
    assert len(simulator.orders(client_order_id=cid)) == 1
