"""Turns: how many ticks of a process compute at once, and giving a turn up to wait."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from engine import admission
from engine.exchange.ccxt_gateway import CcxtGateway
from engine.exchange.clients import ClientSpec, client_for
from engine.exchange.ratelimit import RateLimiter
from engine.exchange.retry import ReadRetry


@pytest.fixture(autouse=True)
def _no_limit_after() -> Iterator[None]:
    yield
    admission.configure(0)


def _run(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
        assert not t.is_alive()


def _most_at_once(threads: int) -> int:
    """How many of `threads` ticks, each holding a turn for a while, ran at once."""
    inside, most, lock = 0, 0, threading.Lock()

    def tick() -> None:
        nonlocal inside, most
        with admission.turn():
            with lock:
                inside += 1
                most = max(most, inside)
            time.sleep(0.05)
            with lock:
                inside -= 1

    _run([threading.Thread(target=tick) for _ in range(threads)])
    return most


def test_at_most_limit_ticks_hold_a_turn_at_once() -> None:
    # Given 2 turns, when 6 ticks start together, then two run at once, never more
    admission.configure(2)
    assert _most_at_once(6) == 2


def test_waiting_gives_the_turn_to_another_tick_and_takes_one_back() -> None:
    # Given one turn, held by a tick that then waits on something outside the process
    admission.configure(1)
    events: list[str] = []
    in_wait, other_done = threading.Event(), threading.Event()

    def slow() -> None:
        with admission.turn():
            with admission.waiting():
                in_wait.set()
                assert other_done.wait(5)  # the other tick ran meanwhile
                events.append("slow waited")
            events.append("slow computes again")

    def other() -> None:
        assert in_wait.wait(5)
        with admission.turn():
            events.append("other ran")
            time.sleep(0.05)  # still holding the one turn
        other_done.set()

    # When both run
    _run([threading.Thread(target=slow), threading.Thread(target=other)])
    # Then the other tick took the turn during the wait, and the first got it back after
    assert events == ["other ran", "slow waited", "slow computes again"]


def test_nested_turns_and_waiting_outside_a_tick_do_nothing() -> None:
    # Given one turn
    admission.configure(1)
    # When code outside any tick waits, and a tick nests turns and waits
    with admission.waiting():
        pass
    with admission.turn(), admission.turn(), admission.waiting(), admission.waiting():
        pass
    # Then nothing blocked, and the one turn was given back exactly once
    assert _most_at_once(3) == 1


def test_no_limit_lets_every_thread_in() -> None:
    admission.configure(0)
    barrier = threading.Barrier(4, timeout=5)

    def tick() -> None:
        with admission.turn():
            barrier.wait()  # all four inside at once, or this times out

    _run([threading.Thread(target=tick) for _ in range(4)])


def test_an_exchange_request_gives_the_turn_up(sim: Any, redis_client: redis.Redis) -> None:
    # Given one turn and an exchange that answers after 300 ms
    admission.configure(1)
    sim.set_faults({"latency_ms": 300})
    spec = ClientSpec("simulator", base_url=sim.url, options={"timeout": 5000})
    gateway = CcxtGateway(
        client_for(spec), limiter=RateLimiter(redis_client, "simulator"), retry=ReadRetry()
    )
    finished: dict[str, float] = {}
    requesting = threading.Event()

    def reader() -> None:
        with admission.turn():
            requesting.set()
            gateway.fetch_ticker("BTC/USDT")
            finished["reader"] = time.monotonic()

    def computer() -> None:
        assert requesting.wait(5)
        time.sleep(0.05)  # the reader is inside its request by now
        with admission.turn():
            finished["computer"] = time.monotonic()

    # When one tick reads the ticker while another wants to compute
    _run([threading.Thread(target=reader), threading.Thread(target=computer)])
    # Then the second ran during the request instead of after it
    assert finished["computer"] < finished["reader"]


def test_ticks_that_all_need_the_markets_loaded_do_not_deadlock(
    sim: Any, redis_client: redis.Redis
) -> None:
    # Given one turn, a client whose markets are not loaded yet and a slow exchange
    admission.configure(1)
    sim.set_faults({"latency_ms": 200})
    spec = ClientSpec("simulator", base_url=sim.url, options={"timeout": 5000})
    gateway = CcxtGateway(
        client_for(spec), limiter=RateLimiter(redis_client, "simulator"), retry=ReadRetry()
    )
    steps: list[float] = []

    def tick() -> None:
        with admission.turn():
            steps.append(gateway.market_rules("BTC/USDT").price_step)

    # When three ticks ask for market rules at once (one loads, two wait on its lock)
    _run([threading.Thread(target=tick) for _ in range(3)])
    # Then all three got them: a tick waiting for the lock gave its turn up first
    assert steps == [0.01] * 3
