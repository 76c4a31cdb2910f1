"""Claims, locks and the schedule mirror in Redis: the tick protocol's shared state.

The database is the authority on every bot; Redis mirrors the hot fields (status,
generation, origin, interval, next slot) so that a tick's guard, claim and successor
compare-and-set cost one round trip each, done atomically in Lua: a tick makes two
(`begin`: guard, claim and bot lock; `complete`: claim done, lock released, successor
compare-and-set, and the successor's message when the broker is this Redis).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import redis

from engine.errors import BrokerUnavailableError

SCHEDULE = "schedule"  # zset: running bot -> due time of its next slot
PARKED = "parked"  # zset: bots whose next slot is too far away for an ETA message
WORKERS = "workers"  # zset: worker process -> when its heartbeat expires
DB_DOWN = "db:down_since"  # when a tick first found the database unreachable
DB_HALT = "db:halt"  # set once that outage outlasted DB_OUTAGE_PAUSE_S: chains end


def bot_key(bot: str) -> str:
    """Hash mirroring a bot's hot fields."""
    return f"bot:{bot}"


def claim_key(bot: str, generation: int, slot: int) -> str:
    """The key whose SET NX claims a slot."""
    return f"claim:{bot}:{generation}:{slot}"


def lock_key(bot: str) -> str:
    """The per-bot mutual exclusion lock."""
    return f"lock:{bot}"


def worker_key(worker_id: str) -> str:
    """Heartbeat of one worker process; a missing key means the process is gone."""
    return f"worker:{worker_id}"


class Verdict(StrEnum):
    """What the guard and claim decided about a tick."""

    RUN = "run"
    DROPPED = "dropped"  # bot not running, or another generation
    STALE = "stale"  # the schedule is past this slot already (a redelivered message)
    DUPLICATE = "duplicate"  # another copy of this slot claimed it first
    MISSING = "missing"  # Redis lost the mirror; the reconciler restores it
    HALTED = "halted"  # the database was gone too long: every chain ends (see note_db_down)


@dataclass(frozen=True, slots=True)
class Mirror:
    """The hot fields of a bot as Redis holds them."""

    status: str
    generation: int
    origin: float
    interval: float
    next_slot: int


@dataclass(frozen=True, slots=True)
class Begin:
    """The answer of `begin`: the verdict, the mirror when known, and for a tick that
    runs the bot lock's token ("" when another slot of the bot still holds the lock)."""

    verdict: Verdict
    mirror: Mirror | None = None
    lock: str = ""


@dataclass(frozen=True, slots=True)
class Next:
    """The successor a finishing tick proposes: its slot, due time and whether it is
    parked (too far away for an ETA message)."""

    slot: int
    due: float
    parked: bool
    # Its broker message, built ahead when the coordinator can push it itself (see
    # engine.outbox): then the CAS winner's successor is sent atomically with the CAS.
    message: Outgoing | None = None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A serialized broker message and the Redis list it goes to."""

    queue: str
    body: str


class Coordinator(Protocol):
    """Shared state the tick needs; Redis in production, memory in `botengine run`."""

    def begin(self, bot: str, generation: int, slot: int, worker: str, lock_ttl: float) -> Begin:
        """Guard and claim `slot`, and take the bot lock, in one step."""
        ...

    def complete(
        self, bot: str, generation: int, slot: int, lock: str, successor: Next | None
    ) -> bool:
        """Mark a claimed slot done, release its lock, and compare-and-set the next slot
        from `slot` to `successor` (None: no successor). True for the CAS winner,
        whose `successor.message`, when given, is sent in the same atomic step."""
        ...

    def lock(
        self, bot: str, ttl: float, wait: float, owner: str = ""
    ) -> AbstractContextManager[bool]:
        """Per-bot mutual exclusion; yields whether the lock was acquired."""
        ...

    def generation(self, bot: str) -> int | None:
        """The current generation of a running bot, None when not running (fencing)."""
        ...

    def check(self) -> None:
        """Raise BrokerUnavailableError unless the shared state can be written now."""
        ...

    def note_db_down(self, now: float, pause_after_s: float) -> bool:
        """Record that a tick found the database unreachable; True for the one call
        that finds the outage older than `pause_after_s` and halts every chain."""
        ...

    def claim(self, bot: str, generation: int, slot: int) -> str | None:
        """The claim value of a slot: `run:<ts>:<worker>`, `done:<ts>`, or None."""
        ...

    def advance(
        self,
        bot: str,
        generation: int,
        expected: int,
        new: int,
        due: float,
        parked: bool,
        *,
        claim: str | None,
    ) -> bool:
        """Compare-and-set the next slot from `expected`, provided the claim on `expected`
        is still `claim` (None: unclaimed); only the winner enqueues the successor."""
        ...

    def publish(self, mirror: Mirror, bot: str, due: float, parked: bool) -> bool:
        """Write a bot's mirror after a lifecycle change, unless a newer one is there."""
        ...


# Shared Lua functions, prepended to the scripts that use them.
_TAKE_LOCK = """
local function take_lock(key, token, ttl_ms)
  if redis.call('SET', key, token, 'NX', 'PX', ttl_ms) then return 1 end
  local holder = redis.call('GET', key)
  if not holder then return 0 end
  -- A lock whose worker's heartbeat is gone (SIGKILL) is taken over, not waited out.
  local worker = string.match(holder, '^(.*)|')
  if worker and worker ~= '' and redis.call('EXISTS', 'worker:' .. worker) == 0 then
    redis.call('SET', key, token, 'PX', ttl_ms)
    return 2
  end
  return 0
end
"""

_MOVE_NEXT = """
local function move_next(bot_key, schedule, parked, gen, expected, new, due, park, bot)
  local h = redis.call('HMGET', bot_key, 'status', 'gen', 'next_slot')
  if h[1] ~= 'running' or h[2] ~= gen or h[3] ~= expected then return 0 end
  redis.call('HSET', bot_key, 'next_slot', new)
  redis.call('ZADD', schedule, due, bot)
  if park == '1' then
    redis.call('ZADD', parked, due, bot)
  else
    redis.call('ZREM', parked, bot)
  end
  return 1
end
"""

_BEGIN = (
    _TAKE_LOCK
    + """
if redis.call('EXISTS', KEYS[4]) == 1 then return {'halted'} end
local h = redis.call('HMGET', KEYS[1], 'status', 'gen', 'next_slot', 'origin', 'interval')
if not h[1] then return {'missing'} end
local mirror = {h[1], h[2], h[3], h[4], h[5]}
if h[1] ~= 'running' or h[2] ~= ARGV[1] then return {'dropped', unpack(mirror)} end
if ARGV[2] ~= h[3] then return {'stale', unpack(mirror)} end
if not redis.call('SET', KEYS[2], ARGV[3], 'NX', 'EX', ARGV[4]) then
  return {'duplicate', unpack(mirror)}
end
return {'run', h[1], h[2], h[3], h[4], h[5], take_lock(KEYS[3], ARGV[5], ARGV[6])}
"""
)

_ACQUIRE = _TAKE_LOCK + "return take_lock(KEYS[1], ARGV[1], ARGV[2])"

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_COMPLETE = (
    _MOVE_NEXT
    + """
redis.call('SET', KEYS[2], ARGV[1], 'XX', 'KEEPTTL')
if ARGV[2] ~= '' and redis.call('GET', KEYS[3]) == ARGV[2] then redis.call('DEL', KEYS[3]) end
if ARGV[3] ~= '1' then return 0 end
local won = move_next(KEYS[1], KEYS[4], KEYS[5],
                      ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
-- The winner's successor message, sent in the same atomic step as the CAS.
if won == 1 and ARGV[10] ~= '' then redis.call('LPUSH', KEYS[6], ARGV[10]) end
return won
"""
)

_ADVANCE = (
    _MOVE_NEXT
    + """
-- Only if the expected slot's claim is still what the caller saw (ARGV[7] '0': none):
-- a tick that claimed it since would otherwise run beside the advanced chain.
local claim = redis.call('GET', KEYS[4])
if ARGV[7] == '0' then
  if claim then return 0 end
elseif claim ~= ARGV[8] then
  return 0
end
return move_next(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
"""
)

_PUBLISH = """
local gen = redis.call('HGET', KEYS[1], 'gen')
if gen and tonumber(gen) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'gen', ARGV[1], 'status', ARGV[2], 'origin', ARGV[3],
           'interval', ARGV[4], 'next_slot', ARGV[5])
if ARGV[2] == 'running' then
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[8])
  if ARGV[7] == '1' then redis.call('ZADD', KEYS[3], ARGV[6], ARGV[8])
  else redis.call('ZREM', KEYS[3], ARGV[8]) end
else
  redis.call('ZREM', KEYS[2], ARGV[8])
  redis.call('ZREM', KEYS[3], ARGV[8])
end
return 1
"""

_NOTE_DB_DOWN = """
local since = redis.call('GET', KEYS[1])
if not since then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
  return 0
end
if tonumber(ARGV[1]) - tonumber(since) > tonumber(ARGV[2]) then
  if redis.call('SET', KEYS[2], since, 'NX') then return 1 end
end
return 0
"""

_UNPARK_DUE = """
local bots = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {#bots}
for _, bot in ipairs(bots) do
  redis.call('ZREM', KEYS[1], bot)
  -- Bot keys are built here rather than passed in KEYS: the set decides which ones.
  local h = redis.call('HMGET', ARGV[3] .. bot, 'status', 'gen', 'next_slot', 'origin', 'interval')
  if h[1] == 'running' then
    for _, v in ipairs({bot, h[2], h[3], h[4], h[5]}) do table.insert(out, v) end
  end
end
return out
"""


_STALE_MIRRORS = """
local out = {}
for i = 2, #ARGV, 2 do
  local gen = redis.call('HGET', ARGV[1] .. ARGV[i], 'gen')
  if not gen or tonumber(gen) < tonumber(ARGV[i + 1]) then table.insert(out, ARGV[i]) end
end
return out
"""


def _mirror(fields: list[bytes | None]) -> Mirror | None:
    if fields[0] is None:
        return None
    status, gen, slot, origin, interval = (f.decode() if f else "0" for f in fields)
    return Mirror(status, int(gen), float(origin), float(interval), int(slot))


class RedisCoordinator:
    """The production coordinator; every method is one round trip (but `lock`'s wait)."""

    def __init__(self, client: redis.Redis, claim_ttl_s: int) -> None:
        self.redis = client
        self.claim_ttl_s = claim_ttl_s
        self._begin = client.register_script(_BEGIN)
        self._advance = client.register_script(_ADVANCE)
        self._unpark_due = client.register_script(_UNPARK_DUE)
        self._publish = client.register_script(_PUBLISH)
        self._stale_mirrors = client.register_script(_STALE_MIRRORS)
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._complete = client.register_script(_COMPLETE)
        self._note_db_down = client.register_script(_NOTE_DB_DOWN)

    def begin(self, bot: str, generation: int, slot: int, worker: str, lock_ttl: float) -> Begin:
        """Guard (running, same generation, the expected slot), claim, and take the bot
        lock, atomically. The lock records `worker`, so a later tick can take it over
        once that worker's heartbeat is gone (see `lock`)."""
        token = f"{worker}|{uuid.uuid4().hex}"
        raw = self._begin(
            keys=[bot_key(bot), claim_key(bot, generation, slot), lock_key(bot), DB_HALT],
            args=[
                generation,
                slot,
                f"run:{time.time():.3f}:{worker}",
                self.claim_ttl_s,
                token,
                int(lock_ttl * 1000),
            ],
        )
        verdict = Verdict(raw[0].decode())
        locked = verdict is Verdict.RUN and bool(raw[6])
        return Begin(verdict, _mirror(raw[1:6]) if len(raw) > 1 else None, token if locked else "")

    def complete(
        self, bot: str, generation: int, slot: int, lock: str, successor: Next | None
    ) -> bool:
        """Mark the claim done (the reconciler then knows the slot is not in flight),
        release the bot lock, and move next_slot to `successor` if nobody else did; the
        winner also pushes `successor.message` (when built) onto its queue."""
        nxt = successor or Next(slot, 0.0, False)
        message = nxt.message or Outgoing(SCHEDULE, "")  # unused key: no message
        won = self._complete(
            keys=[
                bot_key(bot),
                claim_key(bot, generation, slot),
                lock_key(bot),
                SCHEDULE,
                PARKED,
                message.queue,
            ],
            args=[
                f"done:{time.time():.3f}",
                lock,
                int(successor is not None),
                generation,
                slot,
                nxt.slot,
                f"{nxt.due:.3f}",
                int(nxt.parked),
                bot,
                message.body,
            ],
        )
        return bool(won)

    @contextmanager
    def lock(self, bot: str, ttl: float, wait: float, owner: str = "") -> Iterator[bool]:
        """A token lock that expires after `ttl` seconds, released by Lua.

        A tick passes its worker id as `owner`: a later tick may then take the lock over
        as soon as that worker's heartbeat is gone, instead of skipping every slot until
        the TTL (the time limit) runs out after a SIGKILL.
        """
        token = f"{owner}|{uuid.uuid4().hex}"
        deadline = time.monotonic() + wait
        acquired = False
        while True:
            acquired = bool(self._acquire(keys=[lock_key(bot)], args=[token, int(ttl * 1000)]))
            if acquired or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        try:
            yield acquired
        finally:
            if acquired:
                self._release(keys=[lock_key(bot)], args=[token])

    def check(self) -> None:
        """Raise BrokerUnavailableError unless Redis answers: a lifecycle command checks
        first, so that one refused for a dead Redis has changed nothing."""
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            raise BrokerUnavailableError(
                f"Redis cannot be reached ({type(exc).__name__}); nothing was changed"
            ) from None

    def note_db_down(self, now: float, pause_after_s: float) -> bool:
        """Record the outage's start (kept a while past `pause_after_s`, in case no one
        sees the database back); True for the one caller that halts every chain."""
        expiry = int(pause_after_s * 2 + 60)
        halted = self._note_db_down(
            keys=[DB_DOWN, DB_HALT], args=[f"{now:.3f}", pause_after_s, expiry]
        )
        return bool(halted)

    def db_back(self) -> None:
        """The database answered: an outage in progress (if any) is over."""
        self.redis.delete(DB_DOWN)

    def db_halted_since(self) -> float | None:
        """When the outage that halted every chain began, or None when none did."""
        value: bytes | None = self.redis.get(DB_HALT)  # type: ignore[assignment]
        return float(value) if value is not None else None

    def lift_halt(self) -> None:
        """Let chains run again (once the halted bots were paused in the database)."""
        self.redis.delete(DB_HALT, DB_DOWN)

    def generation(self, bot: str) -> int | None:
        """The running generation, for fencing right before an order is sent."""
        status, gen = self.redis.hmget(bot_key(bot), ["status", "gen"])
        if status != b"running" or gen is None:
            return None
        return int(gen)

    def advance(
        self,
        bot: str,
        generation: int,
        expected: int,
        new: int,
        due: float,
        parked: bool,
        *,
        claim: str | None,
    ) -> bool:
        """Move next_slot from `expected` to `new` if nobody else did and the claim on
        `expected` is still `claim`; True for the winner."""
        won = self._advance(
            keys=[bot_key(bot), SCHEDULE, PARKED, claim_key(bot, generation, expected)],
            args=[
                generation,
                expected,
                new,
                f"{due:.3f}",
                int(parked),
                bot,
                int(claim is not None),
                claim or "",
            ],
        )
        return bool(won)

    def unpark_due(self, until: float, limit: int) -> tuple[int, list[tuple[str, Mirror]]]:
        """Take up to `limit` parked slots due by `until` out of the parked set, in one
        atomic step, so that each goes to one caller only. Returns how many left the set
        and, of those, the bots still running with their mirrors."""
        popped, *raw = self._unpark_due(keys=[PARKED], args=[f"{until:.3f}", limit, bot_key("")])
        fields = [f.decode() for f in raw]
        taken = []
        for i in range(0, len(fields), 5):
            bot, gen, slot, origin, interval = fields[i : i + 5]
            mirror = Mirror("running", int(gen), float(origin), float(interval), int(slot))
            taken.append((bot, mirror))
        return int(popped), taken

    def earliest_parked(self) -> float | None:
        """The due time of the earliest parked slot, or None when none is parked."""
        first = self.redis.zrange(PARKED, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def publish(self, mirror: Mirror, bot: str, due: float, parked: bool) -> bool:
        """Write a bot's mirror unless Redis already holds a newer generation.

        Two lifecycle commands racing on one bot each write their generation; the
        database decided which is newest, and this keeps Redis from going back.
        """
        written = self._publish(
            keys=[bot_key(bot), SCHEDULE, PARKED],
            args=[
                mirror.generation,
                mirror.status,
                repr(mirror.origin),
                repr(mirror.interval),
                mirror.next_slot,
                f"{due:.3f}",
                int(parked),
                bot,
            ],
        )
        return bool(written)

    def stale_mirrors(self, bots: list[tuple[str, int]]) -> list[str]:
        """Of these (bot, generation) pairs from the database, the bots whose mirror is
        missing or at an older generation, in one round trip."""
        args: list[str | int] = [bot_key("")]
        for bot, generation in bots:
            args += (bot, generation)
        stale: list[bytes] = self._stale_mirrors(args=args)
        return [bot.decode() for bot in stale]

    def mirror(self, bot: str) -> Mirror | None:
        """The bot's mirror as Redis holds it (None when missing)."""
        fields: list[bytes | None] = self.redis.hmget(  # type: ignore[assignment]
            bot_key(bot), ["status", "gen", "next_slot", "origin", "interval"]
        )
        return _mirror(fields)

    def due(self, schedule: str, until: float) -> list[str]:
        """Bots in a schedule zset (SCHEDULE or PARKED) due at or before `until`."""
        members: list[bytes] = self.redis.zrangebyscore(schedule, "-inf", until)  # type: ignore[assignment]
        return [m.decode() for m in members]

    def claim(self, bot: str, generation: int, slot: int) -> str | None:
        """The claim value of a slot: `run:<ts>:<worker>`, `done:<ts>`, or None."""
        value: bytes | None = self.redis.get(claim_key(bot, generation, slot))  # type: ignore[assignment]
        return value.decode() if value is not None else None

    def heartbeat(self, worker: str, ttl_s: int, queues: tuple[str, ...] = ()) -> None:
        """Announce that a worker process is alive for the next `ttl_s` seconds, and which
        queues it consumes (the fleet's health asks whether anyone reads the ticks)."""
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(worker_key(worker), ",".join(queues) or "-", ex=ttl_s)
        pipe.zadd(WORKERS, {worker: now + ttl_s})
        pipe.zremrangebyscore(WORKERS, "-inf", now - 3600)
        pipe.execute()

    def workers(self) -> dict[str, tuple[str, ...]]:
        """Every worker process whose heartbeat is alive, with the queues it consumes."""
        members: list[bytes] = self.redis.zrangebyscore(WORKERS, time.time(), "+inf")  # type: ignore[assignment]
        ids = [m.decode() for m in members]
        if not ids:
            return {}
        values: list[bytes | None] = self.redis.mget([worker_key(w) for w in ids])  # type: ignore[assignment]
        return {
            w: tuple(q for q in v.decode().split(",") if q and q != "-")
            for w, v in zip(ids, values, strict=True)
            if v is not None
        }

    def alive(self, worker: str) -> bool:
        """True while the worker's heartbeat has not expired."""
        return bool(self.redis.exists(worker_key(worker)))
