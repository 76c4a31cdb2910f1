"""The read retry policy: bounded, jittered, deadline-capped, never for bans."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from engine.errors import (
    ExchangeBannedError,
    OrderRejectedError,
    RateLimitedError,
    TemporaryError,
)
from engine.exchange.retry import ReadRetry, current_deadline, time_budget


class FakeTime:
    """A clock that only moves when the policy sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def failing(errors: list[Exception], result: str = "ok") -> tuple[list[int], Callable[[], str]]:
    calls = [0]

    def fn() -> str:
        calls[0] += 1
        if errors:
            raise errors.pop(0)
        return result

    return calls, fn


def test_temporary_errors_are_retried_then_succeed() -> None:
    # Given a read failing twice transiently
    t = FakeTime()
    calls, fn = failing([TemporaryError("a"), TemporaryError("b")])
    policy = ReadRetry(attempts=4, sleep=t.sleep, clock=t.clock)
    # When called through the policy
    assert policy.call(fn) == "ok"
    # Then it took three attempts and two bounded, jittered sleeps
    assert calls[0] == 3
    assert len(t.sleeps) == 2
    assert all(0 <= s <= policy.max_wait_s for s in t.sleeps)


def test_attempts_are_bounded() -> None:
    # Given a read that always fails transiently
    t = FakeTime()
    calls, fn = failing([TemporaryError(str(i)) for i in range(10)])
    # When retried with 3 attempts
    with pytest.raises(TemporaryError):
        ReadRetry(attempts=3, sleep=t.sleep, clock=t.clock).call(fn)
    # Then exactly 3 calls were made
    assert calls[0] == 3


def test_deadline_caps_retries() -> None:
    # Given a 1 s budget and a 429 asking for 5 s
    t = FakeTime()
    calls, fn = failing([RateLimitedError("429", retry_after=5.0)])
    policy = ReadRetry(attempts=5, budget_s=1.0, sleep=t.sleep, clock=t.clock)
    # When called
    with pytest.raises(RateLimitedError):
        policy.call(fn)
    # Then it gave up at once instead of sleeping past the deadline
    assert calls[0] == 1
    assert t.sleeps == []


def test_rate_limited_waits_at_least_retry_after() -> None:
    # Given a 429 with Retry-After 2 s inside a generous budget
    t = FakeTime()
    _calls, fn = failing([RateLimitedError("429", retry_after=2.0)])
    # When called
    assert ReadRetry(budget_s=10, sleep=t.sleep, clock=t.clock).call(fn) == "ok"
    # Then the one sleep honoured Retry-After
    assert t.sleeps
    assert t.sleeps[0] >= 2.0


@pytest.mark.parametrize("exc", [ExchangeBannedError("418", 60), OrderRejectedError("no")])
def test_bans_and_non_temporary_errors_propagate_at_once(exc: Exception) -> None:
    # Given a ban or a non-temporary error
    t = FakeTime()
    calls, fn = failing([exc])
    # Then it is raised after a single attempt, no sleeping
    with pytest.raises(type(exc)):
        ReadRetry(sleep=t.sleep, clock=t.clock).call(fn)
    assert calls[0] == 1
    assert t.sleeps == []


def test_time_budget_narrows_the_deadline() -> None:
    # Given an outer 0.5 s budget
    t = FakeTime()
    _calls, fn = failing([TemporaryError("x")] * 5)
    with time_budget(0.5, clock=t.clock):
        assert current_deadline() == 0.5
        # When a read with a longer own budget keeps failing
        with pytest.raises(TemporaryError):
            ReadRetry(initial_s=0.4, budget_s=30, sleep=t.sleep, clock=t.clock).call(fn)
    # Then the sleeps stayed inside the outer budget
    assert sum(t.sleeps) <= 0.5
    assert current_deadline() is None
