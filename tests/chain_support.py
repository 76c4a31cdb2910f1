"""Fixtures and helpers for tests that run bots through real workers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from engine.config import BotConfig, parse_bot_config
from engine.coordination import RedisCoordinator
from engine.db import engine_for
from engine.models import Bot, Order, Tick
from engine.runtime import Runtime, celery_enqueue, claim_ttl, redis_client
from engine.settings import Settings
from engine.supervise import ProcessGroup
from tests.support import python_env

FAST = {
    "RECONCILE_EVERY_S": "1",
    "RECONCILE_GRACE_S": "3",
    "TICK_TIME_LIMIT_S": "20",
    "MAX_CONSECUTIVE_FAILURES": "3",
}


def bot_yaml(
    name: str,
    interval: str = "1s",
    strategy: str = "dca",
    params: str = "quote_amount: 20",
    symbol: str = "BTC/USDT",
    extra: str = "",
) -> str:
    """A paper bot on the simulator, as YAML."""
    return (
        f"name: {name}\nexchange: simulator\nsymbol: {symbol}\ncheck_interval: {interval}\n"
        f"strategy:\n  name: {strategy}\n  params: {{{params}}}\n"
        f"paper:\n  balances: {{USDT: 1000000}}\n{extra}"
    )


def bot_config(name: str, **kwargs: Any) -> BotConfig:
    """A validated paper bot config on the simulator."""
    return parse_bot_config(bot_yaml(name, **kwargs), f"{name}.yaml")


@dataclass
class Engine:
    """The engine under test: processes, a runtime for lifecycle calls, the database."""

    rt: Runtime
    procs: ProcessGroup
    env: dict[str, str]

    def ticks(self, bot: str) -> list[Tick]:
        """Every recorded tick of a bot, by generation and slot."""
        with Session(self.rt.db) as session:
            query = select(Tick).where(Tick.bot == bot).order_by(Tick.generation, Tick.slot)
            return list(session.exec(query))

    def bot(self, name: str) -> Bot:
        """The bot's row."""
        with Session(self.rt.db) as session:
            row = session.get(Bot, name)
            assert row is not None
            return row

    def orders(self, bot: str) -> list[Order]:
        """Every order of a bot."""
        with Session(self.rt.db) as session:
            return list(session.exec(select(Order).where(Order.bot == bot)))

    def started_counts(self, worker_names: list[str]) -> Counter[tuple[str, int, int]]:
        """How often each (bot, generation, slot) logged `tick.started` across workers."""
        counts: Counter[tuple[str, int, int]] = Counter()
        for name in worker_names:
            for rec in self.procs.log_records(name):
                if rec.get("event") == "tick.started":
                    counts[(str(rec["bot"]), int(rec["generation"]), int(rec["slot"]))] += 1
        return counts


@pytest.fixture
def engine(redis_url: str, db_url: str, simulator: Any, tmp_path: Path) -> Iterator[Engine]:
    """Workers and beat are started by the test; everything is stopped afterwards."""
    simulator.reset()
    env = python_env(
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
        CELERY_RESULT_BACKEND=redis_url,
        DATABASE_URL=db_url,
        SIMULATOR_URL=simulator.url,
        **FAST,
    )
    settings = Settings(
        redis_url=redis_url,
        celery_broker_url=redis_url,
        celery_result_backend=redis_url,
        database_url=db_url,
        simulator_url=simulator.url,
        **{k.lower(): v for k, v in FAST.items()},
    )  # type: ignore[arg-type]
    client = redis_client(redis_url)
    rt = Runtime(
        settings=settings,
        redis=client,
        db=engine_for(db_url),
        coordinator=RedisCoordinator(client, claim_ttl(settings)),
        enqueue=celery_enqueue,
    )
    procs = ProcessGroup(env, tmp_path)
    try:
        yield Engine(rt, procs, env)
    finally:
        procs.stop_all()
