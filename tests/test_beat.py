"""A real beat process fires the reconciler and the maintenance tasks on a short schedule."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from sqlmodel import Session, select

from engine import lifecycle
from engine.db import session_scope
from engine.models import PriceSnapshot, Tick, TickOutcome, utcnow
from tests.chain_support import Engine, bot_config
from tests.support import wait_for

pytestmark = pytest.mark.slow


def test_beat_runs_reconciler_snapshot_cleanup_and_cache_cleanup(
    engine: Engine,
) -> None:
    # Given a running bot, an old tick past retention, and Redis debris without expiry
    engine.procs.env.update(
        SNAPSHOT_EVERY_S="2", CLEANUP_EVERY_S="2", CACHE_CLEANUP_EVERY_S="2", RETENTION_DAYS="1"
    )
    lifecycle.start(engine.rt, bot_config("beaten", interval="1s"))
    old = utcnow() - timedelta(days=3)
    with session_scope(engine.rt.db) as session:
        session.add(
            Tick(
                bot="ghost",
                generation=1,
                slot=0,
                due_at=old,
                started_at=old,
                finished_at=old,
                lateness_ms=0,
                duration_ms=1,
                outcome=TickOutcome.OK,
            )
        )
    redis = engine.rt.redis
    assert redis is not None
    redis.set("claim:ghost:1:0", "run:0:nobody")  # no TTL: debris
    redis.delete("bot:beaten")  # the mirror is lost: the reconciler must restore it
    # When a worker and beat run
    engine.procs.worker("w1")
    engine.procs.beat()
    # Then the reconciler restored the bot, and it ticks
    assert wait_for(lambda: redis.exists("bot:beaten") == 1, 20)
    assert wait_for(lambda: engine.bot("beaten").ticks_ok >= 2, 20)
    # And beat's loop keeps its liveness file fresh (compose's healthcheck reads its age)
    alive = engine.procs.logdir / "beat-schedule.alive"
    assert wait_for(lambda: alive.exists() and time.time() - alive.stat().st_mtime < 3, 10)

    # And price snapshots of the tracked symbol were stored
    def snapshots() -> list[Any]:
        with Session(engine.rt.db) as session:
            return list(session.exec(select(PriceSnapshot)))

    assert wait_for(lambda: len(snapshots()) >= 1, 20)
    assert snapshots()[0].symbol == "BTC/USDT"
    assert snapshots()[0].bid > 0
    # And the old tick was deleted, the recent ones kept
    assert wait_for(lambda: not engine.ticks("ghost"), 20)
    assert engine.ticks("beaten")
    # And the debris key was removed
    assert wait_for(lambda: redis.exists("claim:ghost:1:0") == 0, 20)
    lifecycle.stop(engine.rt, "beaten")
    records = engine.procs.log_records("w1")
    events = {r["event"] for r in records}
    assert {
        "maintenance.price_snapshot",
        "maintenance.cleanup",
        "maintenance.cache_cleanup",
    } <= events
