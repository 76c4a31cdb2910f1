"""Shared rate limits, 429 cool-downs and 418 bans across processes (real Redis)."""

from __future__ import annotations

import threading
import time

import pytest
import redis
from structlog.testing import capture_logs

from engine.errors import ExchangeBannedError, RateLimitedError
from engine.exchange.ratelimit import BanWatch, Bucket, RateLimiter, ban_key, ban_until


def two_processes(redis_url: str, exchange: str = "binance") -> tuple[RateLimiter, RateLimiter]:
    """Two limiters on separate connections, as two workers would have."""
    return (
        RateLimiter(redis.Redis.from_url(redis_url), exchange),
        RateLimiter(redis.Redis.from_url(redis_url), exchange),
    )


def test_one_budget_is_shared_by_all_processes(redis_url: str) -> None:
    # Given two workers sharing a 10 req/s budget with bursts of 2
    a, b = two_processes(redis_url)
    bucket = [Bucket("binance:ip:x", rate=10, burst=2)]
    # When they reserve alternately
    waits = [(a if i % 2 else b).reserve(bucket, max_wait_s=5) for i in range(6)]
    # Then the burst passes and the rest is spaced 0.1 s apart, across both workers
    assert waits[:2] == [0.0, 0.0]
    assert waits[2:] == pytest.approx([0.1, 0.2, 0.3, 0.4], abs=0.02)


def test_a_wait_beyond_the_budget_reserves_nothing(redis_url: str) -> None:
    # Given an exhausted bucket
    a, b = two_processes(redis_url)
    bucket = [Bucket("k", rate=10, burst=1)]
    a.reserve(bucket, 5)
    # When a caller cannot wait that long
    with pytest.raises(RateLimitedError) as caught:
        b.reserve(bucket, max_wait_s=0.01)
    # Then it learns the wait, and its refusal took no slot from others
    assert caught.value.retry_after == pytest.approx(0.1, abs=0.02)
    assert b.reserve(bucket, 5) == pytest.approx(0.1, abs=0.02)


def test_private_calls_count_against_ip_and_account(redis_url: str) -> None:
    # Given an IP bucket and two accounts behind it
    a, _ = two_processes(redis_url)
    ip = Bucket("ip", rate=10, burst=1)
    acct1, acct2 = Bucket("acct1", rate=10, burst=1), Bucket("acct2", rate=10, burst=1)
    # When account 1 uses the IP, account 2 still waits for the IP slot
    assert a.reserve([ip, acct1], 5) == 0.0
    assert a.reserve([ip, acct2], 5) == pytest.approx(0.1, abs=0.02)


def test_429_cool_down_is_shared_and_never_shortened(redis_url: str) -> None:
    # Given worker A got a 429 with Retry-After 0.5 s
    a, b = two_processes(redis_url)
    bucket = [Bucket("ip", rate=1000, burst=100)]
    with capture_logs() as logs:
        a.cool_down(bucket, 0.5)
        a.cool_down(bucket, 0.1)  # a shorter one arriving later
    # Then worker B waits out the longer cool-down before its next request
    assert b.reserve(bucket, 5) == pytest.approx(0.5, abs=0.05)
    assert [e["event"] for e in logs] == ["exchange.rate_limited"]


def test_418_ban_is_recorded_and_logged_once_then_expires(redis_url: str) -> None:
    # Given 20 threads in two workers all receiving a 418 with Retry-After 1 s
    a, b = two_processes(redis_url, "simulator")
    results: list[bool] = []
    start = threading.Barrier(20)

    def hit(limiter: RateLimiter) -> None:
        start.wait()
        results.append(limiter.ban(1.0))

    with capture_logs() as logs:
        threads = [threading.Thread(target=hit, args=(a if i % 2 else b,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    # Then exactly one recorded the ban and logged it
    assert results.count(True) == 1
    assert [e["event"] for e in logs if e["event"] == "exchange.banned"] == ["exchange.banned"]
    client = redis.Redis.from_url(redis_url)
    until = ban_until(client, "simulator")
    assert until is not None
    assert 0 < until - time.time() <= 1.0
    # And every request on that exchange is refused without being sent
    with pytest.raises(ExchangeBannedError):
        a.reserve([Bucket("ip", 1000, 10)], 5)
    assert ban_until(client, "binance") is None  # other exchanges trade on
    # When the ban runs out, everything resumes by itself
    time.sleep(1.05)
    assert ban_until(client, "simulator") is None
    assert a.reserve([Bucket("ip", 1000, 10)], 5) == 0.0


def test_the_ticks_ban_check_asks_redis_once_per_recheck_period_while_clear(
    redis_url: str,
) -> None:
    client = redis.Redis.from_url(redis_url)
    watch = BanWatch(recheck_s=0.3)
    # Given no ban: the first answer is Redis', the next ones are remembered
    assert watch.until(client, "simulator") is None
    client.set(ban_key("simulator"), "1", px=5000)
    assert watch.until(client, "simulator") is None  # within the recheck period
    assert watch.until(client, "binance") is None  # each exchange is asked for itself
    # Then a ban is seen once the period is over, and is not remembered
    time.sleep(0.35)
    until = watch.until(client, "simulator")
    assert until is not None
    assert 4 < until - time.time() <= 5
    client.delete(ban_key("simulator"))
    assert watch.until(client, "simulator") is None
