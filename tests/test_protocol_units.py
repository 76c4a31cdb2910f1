"""The tick protocol's building blocks: slot arithmetic (pure) and the Lua-backed
coordinator against a real Redis."""

from __future__ import annotations

import threading

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from engine.coordination import PARKED, SCHEDULE, Mirror, Next, RedisCoordinator, Verdict
from engine.inprocess import MemoryCoordinator
from engine.schedule import due_at, first_slot_after, next_runnable, successor


@given(st.floats(0, 1e9), st.floats(0.5, 86400), st.floats(0, 1e6))
def test_first_slot_after_is_the_first_strictly_later_slot(
    origin: float, interval: float, offset: float
) -> None:
    now = origin + offset
    slot = first_slot_after(origin, interval, now)
    assert due_at(origin, interval, slot) > now - 1e-6
    assert slot == 0 or due_at(origin, interval, slot - 1) <= now + 1e-6


def test_successor_counts_missed_slots_and_allows_slight_lateness() -> None:
    # A tick finishing before its successor is due: the next slot, nothing missed
    assert successor(100.0, 10.0, 3, now=135.0) == (4, 0)
    # Finishing a little after the successor's due time: still run it, late
    assert successor(100.0, 10.0, 3, now=142.0) == (4, 0)
    # Finishing long after: skip to the first slot worth running, count the rest
    assert successor(100.0, 10.0, 3, now=171.0) == (7, 3)
    assert next_runnable(100.0, 10.0, now=50.0) == 0


@pytest.fixture
def coordinator(redis_client: redis.Redis) -> RedisCoordinator:
    return RedisCoordinator(redis_client, claim_ttl_s=60)


def _publish(c: RedisCoordinator | MemoryCoordinator, gen: int = 1, slot: int = 0) -> None:
    c.publish(Mirror("running", gen, 1000.0, 5.0, slot), "b", due_at(1000.0, 5.0, slot), False)


@pytest.mark.parametrize("kind", ["redis", "memory"])
def test_begin_guards_and_claims(kind: str, coordinator: RedisCoordinator) -> None:
    c = coordinator if kind == "redis" else MemoryCoordinator()
    assert c.begin("b", 1, 0, "w", 60).verdict is Verdict.MISSING
    _publish(c)
    assert c.begin("b", 2, 0, "w", 60).verdict is Verdict.DROPPED  # another generation
    assert c.begin("b", 1, 1, "w", 60).verdict is Verdict.STALE  # not the expected slot
    first = c.begin("b", 1, 0, "w", 60)
    assert first.verdict is Verdict.RUN
    assert first.mirror == Mirror("running", 1, 1000.0, 5.0, 0)
    assert first.lock  # and the bot lock with it
    assert c.begin("b", 1, 0, "w", 60).verdict is Verdict.DUPLICATE
    # Only one of two racing successors wins the compare-and-set
    claimed = c.claim("b", 1, 0)
    assert c.advance("b", 1, 0, 1, 1005.0, False, claim=claimed)
    assert not c.advance("b", 1, 0, 2, 1010.0, False, claim=claimed)
    assert c.begin("b", 1, 0, "w", 60).verdict is Verdict.STALE  # a redelivered old slot
    assert c.generation("b") == 1


@pytest.mark.parametrize("kind", ["redis", "memory"])
def test_begin_takes_the_bot_lock_and_complete_releases_it_and_moves_on(
    kind: str, coordinator: RedisCoordinator
) -> None:
    c = coordinator if kind == "redis" else MemoryCoordinator()
    _publish(c)
    coordinator.heartbeat("w", 60)  # a live worker: its lock is never taken over
    # Given slot 0 running and holding the bot lock
    first = c.begin("b", 1, 0, "w", 60)
    assert first.verdict is Verdict.RUN
    assert first.lock
    # When slot 1 of the same bot starts before slot 0 completes (a reconciler re-send)
    assert c.advance("b", 1, 0, 1, 1005.0, False, claim=c.claim("b", 1, 0))
    second = c.begin("b", 1, 1, "w", 60)
    # Then it may run (claimed) but not trade: the lock is slot 0's
    assert second.verdict is Verdict.RUN
    assert not second.lock
    # When slot 0 completes, proposing slot 1 which someone already moved to
    assert not c.complete("b", 1, 0, first.lock, Next(1, 1005.0, False))  # CAS lost
    assert c.complete("b", 1, 1, second.lock, Next(2, 1010.0, False))  # CAS won
    # Then the lock is free again for the next slot, and the schedule says slot 2
    third = c.begin("b", 1, 2, "w", 60)
    assert third.verdict is Verdict.RUN
    assert third.lock
    # And a completion without a successor (stopped, error) moves nothing
    assert not c.complete("b", 1, 2, third.lock, None)
    assert c.begin("b", 1, 2, "w", 60).verdict is Verdict.DUPLICATE


@pytest.mark.parametrize("kind", ["redis", "memory"])
def test_advance_refuses_once_the_claim_changed_since_the_caller_looked(
    kind: str, coordinator: RedisCoordinator
) -> None:
    c = coordinator if kind == "redis" else MemoryCoordinator()
    _publish(c)
    # Given a reconciler that saw slot 0 unclaimed
    unclaimed = c.claim("b", 1, 0)
    assert unclaimed is None
    # When a tick claims slot 0 before the reconciler's advance
    begin = c.begin("b", 1, 0, "w", 60)
    assert begin.verdict is Verdict.RUN
    # Then the advance refuses: the chain stays with the tick that runs the slot
    assert not c.advance("b", 1, 0, 4, 1020.0, False, claim=unclaimed)
    # And so does one that saw the tick running, once it has finished
    running = c.claim("b", 1, 0)
    assert not c.complete("b", 1, 0, begin.lock, None)
    assert not c.advance("b", 1, 0, 4, 1020.0, False, claim=running)
    # While the claim as it now stands lets the advance through
    assert c.advance("b", 1, 0, 4, 1020.0, False, claim=c.claim("b", 1, 0))
    assert c.begin("b", 1, 4, "w", 60).verdict is Verdict.RUN


def test_begin_takes_over_a_dead_workers_lock(coordinator: RedisCoordinator) -> None:
    _publish(coordinator)
    # Given a lock left by a worker whose heartbeat is gone
    coordinator.redis.set("lock:b", "dead:1|token", px=60_000)
    # When a tick of another worker begins
    begin = coordinator.begin("b", 1, 0, "live:2", 60)
    # Then it holds the lock and trades
    assert begin.lock.startswith("live:2|")
    assert coordinator.redis.get("lock:b") == begin.lock.encode()


def test_concurrent_claims_have_one_winner(coordinator: RedisCoordinator) -> None:
    _publish(coordinator)
    verdicts: list[Verdict] = []
    threads = [
        threading.Thread(
            target=lambda: verdicts.append(coordinator.begin("b", 1, 0, "w", 60).verdict)
        )
        for _ in range(20)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert verdicts.count(Verdict.RUN) == 1
    assert verdicts.count(Verdict.DUPLICATE) == 19


def test_publish_never_goes_back_a_generation(coordinator: RedisCoordinator) -> None:
    _publish(coordinator, gen=3)
    assert not coordinator.publish(Mirror("running", 2, 0.0, 1.0, 0), "b", 0.0, False)
    assert coordinator.generation("b") == 3
    assert coordinator.publish(Mirror("stopped", 4, 0.0, 1.0, 0), "b", 0.0, False)
    assert coordinator.generation("b") is None
    assert coordinator.redis.zscore(SCHEDULE, "b") is None


def test_parked_slots_are_dispatched_once(coordinator: RedisCoordinator) -> None:
    coordinator.publish(Mirror("running", 1, 0.0, 3600.0, 0), "b", 0.0, False)
    assert coordinator.advance("b", 1, 0, 1, 3600.0, parked=True, claim=None)
    assert coordinator.redis.zscore(PARKED, "b") == 3600.0
    assert coordinator.unpark_due(3000.0, 10) == (0, [])  # not inside the horizon yet
    assert coordinator.unpark_due(4000.0, 10) == (1, [("b", Mirror("running", 1, 0.0, 3600.0, 1))])
    assert coordinator.unpark_due(4000.0, 10) == (0, [])


def test_unpark_drops_bots_no_longer_running_and_takes_batches(
    coordinator: RedisCoordinator,
) -> None:
    for name in ("a", "b", "c"):
        coordinator.publish(Mirror("running", 1, 0.0, 3600.0, 0), name, 0.0, False)
        assert coordinator.advance(name, 1, 0, 1, 3600.0, parked=True, claim=None)
    coordinator.publish(Mirror("stopped", 2, 0.0, 3600.0, 0), "b", 0.0, False)
    coordinator.redis.zadd(PARKED, {"b": 3600.0})  # a stale entry left by a race
    popped, first = coordinator.unpark_due(4000.0, 2)
    rest_popped, rest = coordinator.unpark_due(4000.0, 2)
    assert (popped, rest_popped) == (2, 1)
    assert sorted(bot for bot, _ in first + rest) == ["a", "c"]
    assert coordinator.redis.zcard(PARKED) == 0


def test_stale_mirrors_are_the_missing_and_older_ones(coordinator: RedisCoordinator) -> None:
    coordinator.publish(Mirror("running", 2, 0.0, 60.0, 0), "same", 0.0, False)
    coordinator.publish(Mirror("running", 1, 0.0, 60.0, 0), "older", 0.0, False)
    coordinator.publish(Mirror("running", 3, 0.0, 60.0, 0), "newer", 0.0, False)
    database = [("same", 2), ("older", 2), ("newer", 2), ("missing", 1)]
    assert coordinator.stale_mirrors(database) == ["older", "missing"]
    assert coordinator.stale_mirrors([]) == []


def test_lock_excludes_and_expires(coordinator: RedisCoordinator) -> None:
    with coordinator.lock("b", ttl=5, wait=0) as first:
        assert first
        with coordinator.lock("b", ttl=5, wait=0) as second:
            assert not second
    with coordinator.lock("b", ttl=5, wait=0) as again:
        assert again


def test_claim_finish_and_heartbeat(coordinator: RedisCoordinator) -> None:
    _publish(coordinator)
    begin = coordinator.begin("b", 1, 0, "host:1", 60)
    assert (coordinator.claim("b", 1, 0) or "").startswith("run:")
    coordinator.complete("b", 1, 0, begin.lock, None)
    assert (coordinator.claim("b", 1, 0) or "").startswith("done:")
    assert not coordinator.alive("host:1")
    coordinator.heartbeat("host:1", 10)
    assert coordinator.alive("host:1")


def test_a_dead_workers_lock_is_taken_over(coordinator: RedisCoordinator) -> None:
    # Given a tick of worker "dead:1" holding the bot lock, and that worker's heartbeat gone
    with coordinator.lock("b", ttl=60, wait=0, owner="dead:1") as held:
        assert held
        # When another worker's tick tries the lock, it takes it over
        with coordinator.lock("b", ttl=60, wait=0, owner="live:2") as taken:
            assert taken
    # But a live worker's lock, or an owner-less one (a stop draining), is never taken
    coordinator.heartbeat("live:3", 10)
    with coordinator.lock("b", ttl=60, wait=0, owner="live:3") as held:
        assert held
        with coordinator.lock("b", ttl=60, wait=0, owner="other:4") as taken:
            assert not taken
    with coordinator.lock("b", ttl=60, wait=0) as held:
        assert held
        with coordinator.lock("b", ttl=60, wait=0, owner="other:4") as taken:
            assert not taken
