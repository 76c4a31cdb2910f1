"""The database goes away: PostgreSQL (a private server of the test's own) is stopped
mid-run and started again, with real workers, beat and the simulator.

A short outage is ridden out: ticks are skipped (no bot moves to `error`), no order goes
out without its `pending_submit` row, every bot ticks again soon after the database is
back, and database and exchange agree on every order. An outage longer than
DB_OUTAGE_PAUSE_S ends every chain, and once the database is back the bots are paused
with the reason, for an operator to resume.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from benchmarks.pgserver import PrivatePostgres, binaries
from engine import lifecycle, orders
from engine.coordination import RedisCoordinator
from engine.db import engine_for, migrate
from engine.models import Bot, Tick
from engine.runtime import Runtime, celery_enqueue, claim_ttl, redis_client
from engine.settings import Settings
from engine.supervise import ProcessGroup
from tests.chain_support import FAST, Engine, bot_config
from tests.support import python_env, wait_for

pytestmark = [
    pytest.mark.sqlite_only,  # it brings its own PostgreSQL: run once
    pytest.mark.skipif(binaries() is None, reason="PostgreSQL server binaries not installed"),
]
RECOVERY_BOUND_S = 30.0


@pytest.fixture
def pg() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL server, so that stopping it disturbs nobody else."""
    server = PrivatePostgres().init()
    try:
        yield server
    finally:
        engine_for.cache_clear()
        server.destroy()


def _engine(
    redis_url: str, pg: PrivatePostgres, simulator: Any, tmp_path: Path, **env: str
) -> Engine:
    migrate(pg.url)
    settings_env = {**FAST, **env}
    procs_env = python_env(
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
        CELERY_RESULT_BACKEND=redis_url,
        DATABASE_URL=pg.url,
        SIMULATOR_URL=simulator.url,
        **settings_env,
    )
    settings = Settings(
        redis_url=redis_url,
        celery_broker_url=redis_url,
        celery_result_backend=redis_url,
        database_url=pg.url,
        simulator_url=simulator.url,
        **{k.lower(): v for k, v in settings_env.items()},
    )  # type: ignore[arg-type]
    client = redis_client(redis_url)
    rt = Runtime(
        settings=settings,
        redis=client,
        db=engine_for(pg.url),
        coordinator=RedisCoordinator(client, claim_ttl(settings)),
        enqueue=celery_enqueue,
    )
    return Engine(rt, ProcessGroup(procs_env, tmp_path), procs_env)


def _bots(engine: Engine) -> dict[str, Bot]:
    with Session(engine.rt.db) as session:
        return {b.name: b for b in session.exec(select(Bot))}


def _ticked_after(engine: Engine, names: list[str], after: float) -> bool:
    with Session(engine.rt.db) as session:
        ticks = list(session.exec(select(Tick).where(Tick.outcome == "ok")))
    return {t.bot for t in ticks if t.started_at.timestamp() > after} >= set(names)


def test_a_short_database_outage_is_ridden_out(
    redis_url: str, pg: PrivatePostgres, simulator: Any, tmp_path: Path
) -> None:
    simulator.reset()
    engine = _engine(redis_url, pg, simulator, tmp_path)
    try:
        # Given live and paper bots ticking every second on a worker with beat
        engine.procs.worker("w1")
        engine.procs.beat()
        live = [f"live{i}" for i in range(3)]
        paper = [f"paper{i}" for i in range(3)]
        for name in live:
            extra = "mode: live\n"
            lifecycle.start(engine.rt, bot_config(name, interval="1s", extra=extra))
        for name in paper:
            lifecycle.start(engine.rt, bot_config(name, interval="1s"))
        names = live + paper
        assert wait_for(lambda: all(b.ticks_ok >= 2 for b in _bots(engine).values()), 30)
        # When PostgreSQL is stopped for 8 s, then started again
        pg.stop()
        time.sleep(8)
        pg.start()
        back = time.time()
        # Then every bot ticks again, and trades, within the bound
        assert wait_for(lambda: _ticked_after(engine, names, back), RECOVERY_BOUND_S)
        recovered_s = time.time() - back
        # And no bot was moved to error (nor paused: the outage was short)
        assert {b.status for b in _bots(engine).values()} == {"running"}
        # And the ticks meanwhile were skipped or unrecorded, not failures of the bots
        events = [r.get("event") for r in engine.procs.log_records("w1")]
        assert "bot.error" not in events
        assert "tick.unrecorded" in events or "tick.finished" in events
        # And, stopped and settled, database and exchange agree on every order
        for name in names:
            lifecycle.stop(engine.rt, name)
        for name in live:
            config = bot_config(name, interval="1s", extra="mode: live\n")
            orders.reconcile(engine.rt.db, name, engine.rt.gateway(config), grace_s=0)
        exchange = {o["clientOrderId"] for o in simulator.orders()}
        stored = {
            o.client_order_id for n in live for o in engine.orders(n) if o.status != "rejected"
        }
        assert exchange == stored
        assert exchange, "the live bots traded"
        print(f"every bot ticked again {recovered_s:.1f} s after PostgreSQL was back")
    finally:
        engine.procs.stop_all()


def test_a_long_database_outage_pauses_the_bots_with_the_reason(
    redis_url: str, pg: PrivatePostgres, simulator: Any, tmp_path: Path
) -> None:
    simulator.reset()
    engine = _engine(redis_url, pg, simulator, tmp_path, DB_OUTAGE_PAUSE_S="3")
    try:
        engine.procs.worker("w1")
        engine.procs.beat()
        names = [f"p{i}" for i in range(4)]
        for name in names:
            lifecycle.start(engine.rt, bot_config(name, interval="1s"))
        assert wait_for(lambda: all(b.ticks_ok >= 2 for b in _bots(engine).values()), 30)
        # When PostgreSQL is gone for longer than DB_OUTAGE_PAUSE_S
        pg.stop()
        time.sleep(8)
        pg.start()
        # Then, once it is back, every bot is paused, saying why, and none errored
        assert wait_for(
            lambda: {b.status for b in _bots(engine).values()} == {"paused"}, RECOVERY_BOUND_S
        )
        for bot in _bots(engine).values():
            assert bot.last_error is not None
            assert "database was unreachable" in bot.last_error
        events = [r.get("event") for r in engine.procs.log_records("w1")]
        assert events.count("fleet.db_outage") == 1
        assert events.count("fleet.paused") == 1
        # And nothing ticks while they are paused
        count = sum(b.ticks_ok for b in _bots(engine).values())
        time.sleep(4)
        assert sum(b.ticks_ok for b in _bots(engine).values()) == count
        # And resume brings them back
        resumed = time.time()
        for name in names:
            lifecycle.resume(engine.rt, name)
        assert wait_for(lambda: _ticked_after(engine, names, resumed), RECOVERY_BOUND_S)
        for name in names:
            lifecycle.stop(engine.rt, name)
    finally:
        engine.procs.stop_all()
