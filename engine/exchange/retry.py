"""The retry policy for exchange READS (never for order creation).

Bounded attempts, exponential backoff with full jitter, and a deadline: a retry is
only attempted when its wait still ends before the deadline, so a tick never overruns
its time budget. Only `TemporaryError` is retried; a 429 waits at least its
Retry-After; an IP ban (`ExchangeBannedError`) propagates at once, because every bot on
the exchange must pause, not hammer it.

The tick may narrow the deadline for everything it calls with `time_budget()`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception
from tenacity.wait import wait_random_exponential

from engine.errors import ExchangeBannedError, RateLimitedError, TemporaryError

T = TypeVar("T")

_deadline: ContextVar[float | None] = ContextVar("exchange_deadline", default=None)


@contextmanager
def time_budget(seconds: float, clock: Callable[[], float] = time.monotonic) -> Iterator[None]:
    """Within this block, exchange reads and rate-limit waits end within `seconds`."""
    current = _deadline.get()
    deadline = clock() + seconds
    token = _deadline.set(deadline if current is None else min(current, deadline))
    try:
        yield
    finally:
        _deadline.reset(token)


def current_deadline() -> float | None:
    """The monotonic deadline set by the innermost `time_budget`, if any."""
    return _deadline.get()


def is_retryable(exc: BaseException) -> bool:
    """True for transient errors worth another attempt (never a ban)."""
    return isinstance(exc, TemporaryError) and not isinstance(exc, ExchangeBannedError)


@dataclass(frozen=True)
class ReadRetry:
    """How exchange reads are retried; `sleep` and `clock` are injectable for tests."""

    attempts: int = 4
    initial_s: float = 0.2
    max_wait_s: float = 5.0
    budget_s: float = 15.0
    """Default time budget of one read, when no `time_budget()` is active."""
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn`, retrying transient failures within attempts and the deadline."""
        deadline = self.clock() + self.budget_s
        outer = _deadline.get()
        if outer is not None:
            deadline = min(deadline, outer)
        backoff = wait_random_exponential(multiplier=self.initial_s, max=self.max_wait_s)

        def wait(state: RetryCallState) -> float:
            delay = backoff(state)
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, RateLimitedError) and exc.retry_after:
                delay = max(delay, exc.retry_after)
            return delay

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= self.attempts:
                return True
            # Give up now rather than sleep past the deadline (tenacity computes the
            # upcoming sleep before asking whether to stop).
            return self.clock() + state.upcoming_sleep > deadline

        retrying = Retrying(
            retry=retry_if_exception(is_retryable),
            wait=wait,
            stop=stop,
            sleep=self.sleep,
            reraise=True,
        )
        # Rate-limit waits and single-flight waits inside `fn` honour the same deadline.
        token = _deadline.set(deadline)
        try:
            return retrying(fn)
        finally:
            _deadline.reset(token)
