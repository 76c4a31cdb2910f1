"""The reconciler's advance of a stalled chain, against a real Redis and database, on a
clock the test moves: which slots it counts as missed and when it must leave a chain be,
and when a parked slot is dispatched.

The chain tests cover the reconciler end to end with workers; here the crash windows
between a tick's steps are staged one at a time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from engine import dispatcher, lifecycle
from engine.coordination import RedisCoordinator, Verdict
from engine.models import Bot, TickOutcome
from engine.reconciler import reconcile
from engine.runtime import Runtime
from engine.schedule import due_at
from engine.settings import Settings
from engine.store import TickRecord, record_tick
from tests.chain_support import bot_config

INTERVAL = 10.0


@dataclass
class Chain:
    """A started bot "b" at 10 s on a runtime whose clock the test moves."""

    rt: Runtime
    coordinator: RedisCoordinator
    sent: list[tuple[Any, ...]]  # the tick messages enqueued, as (bot, gen, slot, due)
    origin: float
    offset: float = 0.0

    def clock(self) -> float:
        return time.time() + self.offset

    def at(self, seconds: float) -> None:
        """Move the clock to `seconds` past the bot's origin."""
        self.offset = self.origin + seconds - time.time()

    def bot(self) -> Any:
        with self.rt.db.connect() as conn:
            row = conn.execute(_bots.select().where(_bots.c.name == "b")).first()
        assert row is not None
        return row

    def record(self, slot: int, next_slot: int) -> None:
        """Step 5 of slot `slot`, as a tick proposing `next_slot` writes it."""
        due = due_at(self.origin, INTERVAL, slot)
        done = TickRecord("b", 1, slot, due, due, due + 0.1, TickOutcome.OK, None, 0, next_slot, 0)
        settings = self.rt.settings
        record_tick(
            self.rt.db,
            done,
            self.rt.worker_id,
            fatal=False,
            max_failures=settings.max_consecutive_failures,
        )


_bots = Bot.__table__  # type: ignore[attr-defined]


@pytest.fixture
def chain(redis_url: str, db: Any) -> Chain:
    settings = Settings(
        redis_url=redis_url,
        celery_broker_url=redis_url,
        celery_result_backend=redis_url,
        tick_time_limit_s=20,
        reconcile_grace_s=3,
    )
    client = redis.Redis.from_url(redis_url)
    coordinator = RedisCoordinator(client, 120)
    sent: list[tuple[Any, ...]] = []
    rt = Runtime(settings, client, db, coordinator, lambda *a: sent.append(a))
    chain = Chain(rt, coordinator, sent, origin=0.0)
    rt.clock = chain.clock
    lifecycle.start(rt, bot_config("b", interval="10s"))
    chain.origin = chain.bot().origin
    return chain


def test_a_tick_that_recorded_itself_before_its_worker_died_is_not_counted_missed(
    chain: Chain,
) -> None:
    # Given slot 0 run by a worker that recorded it, then died before moving the chain on
    assert chain.coordinator.begin("b", 1, 0, "gone:1", 30).verdict is Verdict.RUN
    chain.record(0, next_slot=1)
    # When the reconciler finds the chain stalled 45 s later (slot 4 due 5 s ago)
    chain.at(45.0)
    report = reconcile(chain.rt)
    # Then it moves the chain on to slot 5 and counts slots 1 to 4 as missed, not slot 0
    assert report.advanced == 1
    bot = chain.bot()
    assert (bot.next_slot, bot.ticks_missed, bot.ticks_ok) == (5, 4, 1)
    assert chain.sent[-1][:3] == ("b", 1, 5)


def test_a_tick_the_reconciler_gave_up_on_moves_neither_the_schedule_nor_the_count(
    chain: Chain,
) -> None:
    # Given slot 0 claimed by a worker whose heartbeat is gone, and the reconciler's
    # advance past it to slot 5
    assert chain.coordinator.begin("b", 1, 0, "stalled:1", 30).verdict is Verdict.RUN
    chain.at(45.0)
    assert reconcile(chain.rt).advanced == 1
    # When that tick comes back after all and records itself, proposing slot 1
    chain.record(0, next_slot=1)
    # Then the schedule stays on slot 5 and no gap is counted twice
    bot = chain.bot()
    assert (bot.next_slot, bot.ticks_missed, bot.ticks_ok) == (5, 5, 1)


def test_the_reconciler_leaves_a_slot_a_tick_claimed_while_it_looked(chain: Chain) -> None:
    coordinator = chain.coordinator
    # Given slot 0's message still queued 45 s after its due time (a busy worker), and a
    # tick that claims it between the reconciler's look at the claim and its advance
    chain.at(45.0)
    looked = coordinator.claim

    def look_then_lose_the_race(bot: str, generation: int, slot: int) -> str | None:
        seen = looked(bot, generation, slot)
        assert coordinator.begin(bot, generation, slot, "live:1", 30).verdict is Verdict.RUN
        return seen

    coordinator.claim = look_then_lose_the_race  # type: ignore[method-assign]
    coordinator.heartbeat("live:1", 60)
    # When the reconciler passes
    report = reconcile(chain.rt)
    # Then the chain stays with the tick that runs slot 0: nothing advanced or counted
    assert report.advanced == 0
    assert len(chain.sent) == 1  # slot 0's own message, sent by start
    bot = chain.bot()
    assert (bot.next_slot, bot.ticks_missed) == (0, 0)


def test_a_parked_slot_is_sent_when_it_comes_due_and_only_once(chain: Chain) -> None:
    # Given slot 1 parked (slot 0's tick moved the chain on without an ETA message)
    due = due_at(chain.origin, INTERVAL, 1)
    assert chain.coordinator.advance("b", 1, 0, 1, due, parked=True, claim=None)
    chain.sent.clear()
    # When the dispatcher looks a second before its due time, it leaves it parked: an
    # ETA message sent early would be held by whichever worker read it first
    chain.at(INTERVAL - 1.0)
    assert dispatcher.dispatch(chain.rt) == 0
    # Then within one poll of its due time it is sent, once
    chain.at(INTERVAL - dispatcher.LEAD_S / 2)
    assert dispatcher.dispatch(chain.rt) == 1
    assert chain.sent == [("b", 1, 1, due)]
    assert dispatcher.dispatch(chain.rt) == 0


def test_an_idle_dispatcher_sleeps_until_the_earliest_parked_slot(chain: Chain) -> None:
    horizon = chain.rt.settings.eta_horizon_s
    # Given nothing parked: it sleeps for the horizon, since anything parked from now on
    # is due further away than that
    chain.at(1.0)
    assert dispatcher.idle_wait(chain.rt) == pytest.approx(horizon - dispatcher.LEAD_S)
    # Given slot 1 parked, due at 10 s: it wakes one lead before its due time
    due = due_at(chain.origin, INTERVAL, 1)
    assert chain.coordinator.advance("b", 1, 0, 1, due, parked=True, claim=None)
    chain.at(INTERVAL - 2.0)
    assert dispatcher.idle_wait(chain.rt) == pytest.approx(2.0 - dispatcher.LEAD_S, abs=0.01)
    # And never sleeps less than one poll
    chain.at(INTERVAL)
    assert dispatcher.idle_wait(chain.rt) == dispatcher.POLL_S
