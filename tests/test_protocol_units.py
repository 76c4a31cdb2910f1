"""The tick protocol's building blocks: slot arithmetic (pure) and the Lua-backed
coordinator against a real Redis."""

from __future__ import annotations

import threading

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from engine.coordination import PARKED, SCHEDULE, Mirror, RedisCoordinator, Verdict
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
    assert c.begin("b", 1, 0, "w").verdict is Verdict.MISSING
    _publish(c)
    assert c.begin("b", 2, 0, "w").verdict is Verdict.DROPPED  # another generation
    assert c.begin("b", 1, 1, "w").verdict is Verdict.STALE  # not the expected slot
    first = c.begin("b", 1, 0, "w")
    assert first.verdict is Verdict.RUN
    assert first.mirror == Mirror("running", 1, 1000.0, 5.0, 0)
    assert c.begin("b", 1, 0, "w").verdict is Verdict.DUPLICATE
    # Only one of two racing successors wins the compare-and-set
    assert c.advance("b", 1, 0, 1, 1005.0, False)
    assert not c.advance("b", 1, 0, 2, 1010.0, False)
    assert c.begin("b", 1, 0, "w").verdict is Verdict.STALE  # a redelivered old slot
    assert c.generation("b") == 1


def test_concurrent_claims_have_one_winner(coordinator: RedisCoordinator) -> None:
    _publish(coordinator)
    verdicts: list[Verdict] = []
    threads = [
        threading.Thread(target=lambda: verdicts.append(coordinator.begin("b", 1, 0, "w").verdict))
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
    assert coordinator.advance("b", 1, 0, 1, 3600.0, parked=True)
    assert coordinator.redis.zscore(PARKED, "b") == 3600.0
    assert coordinator.due(PARKED, 4000.0) == ["b"]
    assert coordinator.unpark("b", 1, 1)
    assert not coordinator.unpark("b", 1, 1)


def test_lock_excludes_and_expires(coordinator: RedisCoordinator) -> None:
    with coordinator.lock("b", ttl=5, wait=0) as first:
        assert first
        with coordinator.lock("b", ttl=5, wait=0) as second:
            assert not second
    with coordinator.lock("b", ttl=5, wait=0) as again:
        assert again


def test_claim_finish_and_heartbeat(coordinator: RedisCoordinator) -> None:
    _publish(coordinator)
    coordinator.begin("b", 1, 0, "host:1")
    assert (coordinator.claim("b", 1, 0) or "").startswith("run:")
    coordinator.finish("b", 1, 0)
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
