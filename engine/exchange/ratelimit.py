"""Rate-limit budgets shared by every bot, thread and worker through Redis.

ccxt's own limiter counts per client instance, i.e. per process; an exchange counts per
account and per IP. So every request first reserves a slot in Redis buckets (GCRA, one
atomic Lua script, Redis' clock): one bucket per egress IP (exchange + origin) and, for
private calls, one per account. The script answers how long to sleep; the caller sleeps
outside any lock, or gives up when that wait would overrun its time budget.

An HTTP 429 records a shared cool-down (`cd:<bucket>`, honouring Retry-After) that the
script adds to every later wait. An HTTP 418 records `ban:<exchange>` with `SET NX PX`:
only the process that set it logs `exchange.banned`; the tick checks for a ban before
running (`BanWatch`), and when the key expires everything resumes by itself.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis as redis_lib
import structlog

from engine import notify
from engine.errors import ExchangeBannedError, RateLimitedError

log = structlog.get_logger("engine.exchange.ratelimit")

DEFAULT_COOLDOWN_S = 1.0
"""Cool-down after a 429 that carries no Retry-After."""

# KEYS: ban key, then (tat key, cool-down key) per bucket.
# ARGV: max wait (ms), then (emission interval us, burst, cost) per bucket.
# Returns {status, wait_ms}: 0 = reserved (sleep wait_ms, then call), 1 = over budget
# (nothing reserved), 2 = banned (wait_ms = ban left).
_ACQUIRE = """
local ban = redis.call('PTTL', KEYS[1])
if ban > 0 then return {2, ban} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local max_wait = tonumber(ARGV[1]) * 1000
local n = (#KEYS - 1) / 2
local wait = 0
local tats = {}
for i = 0, n - 1 do
  local cd = redis.call('PTTL', KEYS[3 + 2 * i])
  if cd > 0 and cd * 1000 > wait then wait = cd * 1000 end
  local interval = tonumber(ARGV[2 + 3 * i])
  local burst = tonumber(ARGV[3 + 3 * i])
  local cost = tonumber(ARGV[4 + 3 * i])
  local tat = tonumber(redis.call('GET', KEYS[2 + 2 * i]) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval * cost
  local allow_at = new_tat - interval * burst
  if allow_at - now > wait then wait = allow_at - now end
  tats[i + 1] = new_tat
end
if wait > max_wait then return {1, math.ceil(wait / 1000)} end
for i = 0, n - 1 do
  local ttl = math.ceil((tats[i + 1] - now) / 1000) + 1000
  redis.call('SET', KEYS[2 + 2 * i], string.format('%.0f', tats[i + 1]), 'PX', ttl)
end
return {0, math.ceil(wait / 1000)}
"""

# Extend a cool-down, never shorten it. KEYS: cool-down keys. ARGV: milliseconds.
_COOL_DOWN = """
local extended = 0
for _, key in ipairs(KEYS) do
  if redis.call('PTTL', key) < tonumber(ARGV[1]) then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[1])
    extended = 1
  end
end
return extended
"""


@dataclass(frozen=True, slots=True)
class Bucket:
    """One shared budget: `rate` requests per second with bursts of `burst`."""

    key: str
    rate: float
    burst: int = 1


def ban_key(exchange_id: str) -> str:
    """Redis key holding the IP ban of `exchange_id` (present only while banned)."""
    return f"ban:{exchange_id}"


def ban_until(redis: redis_lib.Redis, exchange_id: str) -> float | None:
    """Epoch seconds when the ban on `exchange_id` ends, or None when not banned.

    The tick calls this before running: a banned exchange pauses every bot on it.
    """
    left_ms: int | None = redis.pttl(ban_key(exchange_id))
    if left_ms is None or left_ms <= 0:
        return None
    return time.time() + left_ms / 1000


class BanWatch:
    """`ban_until` for the tick, asking Redis at most once per `recheck_s` per exchange
    while that exchange is not banned.

    A tick asks before every run; at hundreds of ticks per second on one exchange that
    was a Redis round trip per tick (4 % of a saturated worker's time) for a key that is
    almost never there. The check only skips a tick early: every request to the exchange
    still passes `RateLimiter.reserve`, which refuses atomically while a ban is on, so a
    ban seen up to `recheck_s` late sends nothing. Thread-safe (one dict, whole values).
    """

    def __init__(self, recheck_s: float = 0.2) -> None:
        self.recheck_s = recheck_s
        self._clear_until: dict[str, float] = {}

    def until(self, redis: redis_lib.Redis, exchange_id: str) -> float | None:
        """Like `ban_until`, from the last answer while it is recent and said "no ban"."""
        now = time.monotonic()
        if self._clear_until.get(exchange_id, 0.0) > now:
            return None
        until = ban_until(redis, exchange_id)
        if until is None:
            self._clear_until[exchange_id] = now + self.recheck_s
        return until


def account_tag(api_key: str | None) -> str:
    """A short stable digest naming an account in Redis keys without leaking its key."""
    if not api_key:
        return "public"
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


class RateLimiter:
    """Reserves request slots in shared Redis buckets and records 429s and 418s."""

    def __init__(self, redis: redis_lib.Redis, exchange_id: str) -> None:
        self.redis = redis
        self.exchange_id = exchange_id
        self._acquire = redis.register_script(_ACQUIRE)
        self._cool_down = redis.register_script(_COOL_DOWN)

    def reserve(self, buckets: Sequence[Bucket], max_wait_s: float) -> float:
        """Reserve one request in every bucket; return the seconds to sleep before it.

        Raises `ExchangeBannedError` while the exchange is banned, and
        `RateLimitedError` (nothing reserved) when the wait would exceed `max_wait_s`.
        """
        keys: list[str] = [ban_key(self.exchange_id)]
        args: list[Any] = [max(0, int(max_wait_s * 1000))]
        for bucket in buckets:
            keys += [f"rl:{bucket.key}", f"cd:{bucket.key}"]
            args += [int(1_000_000 / bucket.rate), bucket.burst, 1]
        status, wait_ms = cast(list[int], self._acquire(keys=keys, args=args))
        wait_s = wait_ms / 1000
        if status == 2:
            raise ExchangeBannedError(f"{self.exchange_id} is banned", wait_s)
        if status == 1:
            raise RateLimitedError(f"{self.exchange_id} rate budget exhausted", wait_s)
        return wait_s

    def cool_down(self, buckets: Sequence[Bucket], retry_after: float | None) -> None:
        """Record a 429: every process waits out Retry-After on these buckets."""
        seconds = DEFAULT_COOLDOWN_S if retry_after is None else retry_after
        ms = max(1, math.ceil(seconds * 1000))
        keys = [f"cd:{bucket.key}" for bucket in buckets]
        if self._cool_down(keys=keys, args=[ms]):
            log.warning("exchange.rate_limited", exchange=self.exchange_id, retry_after=seconds)

    def ban(self, retry_after: float) -> bool:
        """Record a 418 once for all processes; True (and one log line) for the setter."""
        until = time.time() + retry_after
        ms = max(1, math.ceil(retry_after * 1000))
        created = bool(self.redis.set(ban_key(self.exchange_id), f"{until:.3f}", nx=True, px=ms))
        if created:
            # A fresh logger proxy, so structlog's configuration at this moment applies.
            structlog.get_logger("engine.exchange.ratelimit").error(
                "exchange.banned", exchange=self.exchange_id, retry_after=retry_after, until=until
            )
            notify.notify(
                notify.EXCHANGE_BANNED,
                exchange=self.exchange_id,
                retry_after=retry_after,
                until=until,
            )
        return created
