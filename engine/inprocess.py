"""`botengine run FILE`: one bot in the foreground, no broker, no Redis.

The same `run_tick` runs each slot; claims, the bot lock and the schedule mirror live
in memory (`MemoryCoordinator`) and the schedule is a sleep until the next due time.
For developing a strategy against live or simulated data without any services.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlmodel import Session

from engine import lifecycle
from engine.config import BotConfig
from engine.coordination import Begin, Mirror, Next, Verdict
from engine.db import engine_for, migrate
from engine.errors import BotBusyError
from engine.logging import get_logger
from engine.models import Bot, BotStatus
from engine.runtime import Runtime
from engine.schedule import due_at
from engine.settings import Settings
from engine.tick import run_tick

log = get_logger("engine.inprocess")


@dataclass
class MemoryCoordinator:
    """The coordinator protocol in one process's memory (thread-safe)."""

    mirrors: dict[str, Mirror] = field(default_factory=dict)
    claims: dict[tuple[str, int, int], str] = field(default_factory=dict)
    locks: dict[str, threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def begin(self, bot: str, generation: int, slot: int, worker: str, lock_ttl: float) -> Begin:
        """Guard and claim a slot and take the bot's mutex, atomically (the ttl is moot:
        a dead process takes its memory along)."""
        with self._guard:
            mirror = self.mirrors.get(bot)
            if mirror is None:
                return Begin(Verdict.MISSING)
            if mirror.status != "running" or mirror.generation != generation:
                return Begin(Verdict.DROPPED, mirror)
            if slot != mirror.next_slot:
                return Begin(Verdict.STALE, mirror)
            if (bot, generation, slot) in self.claims:
                return Begin(Verdict.DUPLICATE, mirror)
            self.claims[(bot, generation, slot)] = f"run:{time.time():.3f}:{worker}"
            mutex = self.locks.setdefault(bot, threading.Lock())
            locked = mutex.acquire(blocking=False)
            return Begin(Verdict.RUN, mirror, f"{worker}|{slot}" if locked else "")

    def complete(
        self, bot: str, generation: int, slot: int, lock: str, successor: Next | None
    ) -> bool:
        """Mark a claim done, release the bot's mutex and compare-and-set the next slot."""
        with self._guard:
            done = self.claims[(bot, generation, slot)] = f"done:{time.time():.3f}"
            if lock:
                self.locks[bot].release()
        if successor is None:
            return False
        return self.advance(
            bot, generation, slot, successor.slot, successor.due, successor.parked, claim=done
        )

    @contextmanager
    def lock(self, bot: str, ttl: float, wait: float, owner: str = "") -> Iterator[bool]:
        """A per-bot mutex (ttl and owner are moot: a dead process takes its memory along)."""
        with self._guard:
            mutex = self.locks.setdefault(bot, threading.Lock())
        acquired = mutex.acquire(timeout=wait) if wait > 0 else mutex.acquire(blocking=False)
        try:
            yield acquired
        finally:
            if acquired:
                mutex.release()

    def generation(self, bot: str) -> int | None:
        """The running generation, for fencing."""
        with self._guard:
            mirror = self.mirrors.get(bot)
        return mirror.generation if mirror and mirror.status == "running" else None

    def check(self) -> None:
        """Memory is always there."""

    def note_db_down(self, now: float, pause_after_s: float) -> bool:
        """One process: its ticks simply skip until the database is back."""
        return False

    def claim(self, bot: str, generation: int, slot: int) -> str | None:
        """The claim value of a slot, as the Redis coordinator's."""
        with self._guard:
            return self.claims.get((bot, generation, slot))

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
        """Compare-and-set the next slot, provided the claim on `expected` is `claim`."""
        with self._guard:
            mirror = self.mirrors.get(bot)
            if (
                mirror is None
                or mirror.status != "running"
                or mirror.generation != generation
                or mirror.next_slot != expected
                or self.claims.get((bot, generation, expected)) != claim
            ):
                return False
            self.mirrors[bot] = Mirror(
                mirror.status, generation, mirror.origin, mirror.interval, new
            )
            return True

    def publish(self, mirror: Mirror, bot: str, due: float, parked: bool) -> bool:
        """Write a mirror unless a newer generation is there."""
        with self._guard:
            current = self.mirrors.get(bot)
            if current is not None and current.generation > mirror.generation:
                return False
            self.mirrors[bot] = mirror
            return True


def _current_slot(
    coordinator: MemoryCoordinator, bot: str, last: tuple[int, int] | None
) -> tuple[int, int, float] | None:
    """The (generation, slot, due) the bot's chain is at, read from its mirror whether the
    last tick sent its successor or parked it (no dispatcher runs here). None when the
    chain ended: stopped, in error, or the last tick (`last`) recorded no successor."""
    mirror = coordinator.mirrors.get(bot)
    if mirror is None or mirror.status != "running":
        return None
    if (mirror.generation, mirror.next_slot) == last:
        return None
    return (
        mirror.generation,
        mirror.next_slot,
        due_at(mirror.origin, mirror.interval, mirror.next_slot),
    )


def _no_message(bot: str, generation: int, slot: int, due: float) -> None:
    """The runtime's enqueue: the loop reads the next slot from the mirror instead."""


@dataclass
class ForegroundCoordinator(MemoryCoordinator):
    """The memory coordinator, fencing orders against the database: a `stop-bot` (or a
    takeover) from another process ends this run's trading at once, not at its next tick."""

    db: Engine | None = None

    def generation(self, bot: str) -> int | None:
        """The generation the database runs here, if the memory mirror agrees."""
        mine = super().generation(bot)
        if mine is None or self.db is None:
            return mine
        with Session(self.db) as session:
            row = session.get(Bot, bot)
        if row is None or row.status != BotStatus.RUNNING or row.generation != mine:
            return None
        return mine


def foreground_id() -> str:
    """How `bots.runner` names this process."""
    return f"foreground:{socket.gethostname()}:{os.getpid()}"


def claim_for_foreground(rt: Runtime, config: BotConfig, *, takeover: bool) -> None:
    """Make sure no other chain of the bot runs, before this process starts its own.

    A bot the fleet runs (or holds paused) is refused unless `takeover` is set; then the
    fleet's chain is stopped through Redis first, exactly as `stop-bot` does (its queued
    ticks drop, a tick inside its run is waited for). A bot another live foreground
    process runs is always refused; one whose process is gone is taken over.
    """
    with Session(rt.db) as session:
        bot = session.get(Bot, config.name)
    if bot is None or bot.status in (BotStatus.STOPPED, BotStatus.ERROR):
        return
    if bot.runner is None:
        if not takeover:
            raise BotBusyError(
                f"bot {config.name} is {bot.status} on the fleet's workers (generation "
                f"{bot.generation}); stop it first with `botengine stop-bot {config.name}`, "
                "or pass --takeover to stop the fleet's chain and run it here"
            )
        from engine.runtime import get_runtime  # lazy: only a takeover needs Redis

        fleet = get_runtime()
        result = lifecycle.stop(fleet, config.name)
        log.warning("run.took_over", bot=config.name, fleet_generation=result.generation)
        return
    if bot.status == BotStatus.RUNNING and _alive(bot.runner):
        raise BotBusyError(
            f"bot {config.name} already runs in the foreground ({bot.runner}); stop that first"
        )
    lifecycle.stop(rt, config.name)  # a foreground run that died: nothing else ticks it


def _alive(runner: str) -> bool:
    """Whether a foreground runner id names a live process (unknowable for other hosts:
    assumed alive)."""
    _, host, pid = runner.split(":", 2)
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def run_foreground(
    config: BotConfig,
    settings: Settings,
    stop: threading.Event,
    source: str | None = None,
    *,
    takeover: bool = False,
) -> int:
    """Run one bot until `stop` is set (Ctrl-C); returns the number of ticks run.

    Raises BotBusyError when the bot runs elsewhere (see `claim_for_foreground`).
    """
    migrate(settings.database_url)
    db = engine_for(settings.database_url)
    coordinator = ForegroundCoordinator(db=db)
    rt = Runtime(
        settings=settings,
        redis=None,
        db=db,
        coordinator=coordinator,
        enqueue=_no_message,
        runner=foreground_id(),
    )
    claim_for_foreground(rt, config, takeover=takeover)
    result = lifecycle.start(rt, config, source=source)
    ticks = 0
    last: tuple[int, int] | None = None
    try:
        while not stop.is_set():
            current = _current_slot(coordinator, config.name, last)
            if current is None:
                break
            generation, slot, due = current
            if stop.wait(max(0.0, due - time.time())):
                break
            if run_tick(rt, config.name, generation, slot) is None:
                break  # dropped: stopped or taken over from another process
            ticks += 1
            last = (generation, slot)
    finally:
        if coordinator.generation(config.name) == result.generation:
            lifecycle.stop(rt, config.name)
        else:
            log.warning("run.ended_elsewhere", bot=config.name, generation=result.generation)
        log.info("run.stopped", bot=config.name, ticks=ticks)
    return ticks
