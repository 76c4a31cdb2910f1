"""The reconciler (a beat task every ~10 s): brings every running bot's chain back.

Chains break when a worker dies mid-tick, when Redis loses its data (and with it the
queued messages and claims), or when a process crashes between recording a tick and
enqueuing its successor. The database still says the bot is running; this pass makes
Redis and the queue agree with it again, within seconds rather than the broker's
visibility timeout.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, case, update
from sqlalchemy import select as sa_select
from sqlmodel import col

from engine import health, notify
from engine.coordination import SCHEDULE, Mirror, RedisCoordinator
from engine.db import session_scope
from engine.dispatcher import dispatch
from engine.logging import get_logger
from engine.models import Bot, BotStatus, utcnow
from engine.runtime import Runtime
from engine.schedule import due_at, first_slot_after, next_runnable, parks

log = get_logger("engine.reconciler")


@dataclass
class Report:
    """What one pass did (also returned by the task, for tests and metrics)."""

    restored: int = 0  # mirror missing or behind the database: rebuilt and re-enqueued
    fenced: int = 0  # a chain Redis runs but the database does not: stopped in Redis
    paused: int = 0  # running bots paused after a database outage halted every chain
    requeued: int = 0  # overdue and unclaimed: the same slot enqueued again
    advanced: int = 0  # claimed by a dead or finished tick that never moved on
    dispatched: int = 0  # parked long-interval slots that came due


def reconcile(rt: Runtime) -> Report:
    """One pass: restore lost mirrors, revive overdue chains, dispatch parked slots."""
    coordinator = rt.coordinator
    assert isinstance(coordinator, RedisCoordinator)
    report = Report()
    now = rt.clock()
    halted = coordinator.db_halted_since()
    if halted is not None:
        # Chains ended on a long database outage; now that it is back (this pass reads
        # it), the bots are paused for an operator, before anything could revive them.
        report.paused = pause_after_outage(rt, coordinator, halted, now)
        return report
    _restore_mirrors(rt, coordinator, now, report)
    coordinator.db_back()  # the database answered: an outage a tick noted is over
    grace = rt.settings.reconcile_grace_s
    # A long tick queue means overdue slots are waiting, not lost: re-sending them would
    # only lengthen the queue (a saturated system must not feed itself duplicates).
    backlog = rt.backlog() if rt.backlog is not None else 0
    saturated = backlog > rt.settings.reconcile_backlog_limit
    if saturated:
        log.warning("reconcile.saturated", backlog=backlog)
    overdue = coordinator.due(SCHEDULE, now - grace)
    for bot in _fence_unowned(rt, coordinator, overdue, report):
        _revive(rt, coordinator, bot, now, report, saturated)
    report.dispatched = dispatch(rt)
    if report.restored or report.fenced or report.requeued or report.advanced:
        log.info("reconcile.done", **report.__dict__)
    # The pass runs every few seconds on a worker: the natural place to notice that the
    # fleet stopped ticking (healthz notices too, for when no worker runs this).
    health.watch(rt.redis, health.fleet_health(rt, now))
    return report


def _restore_mirrors(
    rt: Runtime, coordinator: RedisCoordinator, now: float, report: Report
) -> None:
    """Rebuild the mirror of every running bot Redis forgot (flush, restart, crash)."""
    # This runs every pass over every running bot, in a worker that is also ticking: two
    # columns, and Redis compares generations in batches, so the pass holds the GIL for
    # a few ms (10k rows as a redis-py pipeline took ~0.4 s, stalling that worker's ticks).
    with rt.db.connect() as conn:
        running = [(name, gen) for name, gen in conn.execute(_RUNNING)]
    rows: list[Any] = []
    for start in range(0, len(running), _COMPARE_BATCH):
        stale = coordinator.stale_mirrors(running[start : start + _COMPARE_BATCH])
        if stale:  # rare (Redis lost data): the rest of their rows, a batch at a time
            with rt.db.connect() as conn:
                rows += conn.execute(_SCHEDULES, {"p_names": stale}).all()
    for bot in rows:
        if bot.status != BotStatus.RUNNING.value or bot.runner is not None:
            continue  # stopped since the first read, or run by `botengine run`
        # Skip past any slot that may be in flight right now (due at or before now): its
        # claim may be lost with Redis, and running it twice is worse than missing it.
        slot = max(bot.next_slot, first_slot_after(bot.origin, bot.interval_s, now))
        if _move(
            rt,
            coordinator,
            bot.name,
            bot.generation,
            bot.origin,
            bot.interval_s,
            slot,
            expected=None,
            now=now,
        ):
            report.restored += 1
            log.warning("reconcile.restored", bot=bot.name, generation=bot.generation, slot=slot)


_bots = Bot.__table__  # type: ignore[attr-defined]
# The fleet's running bots: a generation `botengine run` runs in its own process has no
# chain in Redis, and must never be given one.
_RUNNING = sa_select(_bots.c.name, _bots.c.generation).where(
    _bots.c.status == BotStatus.RUNNING.value, _bots.c.runner.is_(None)
)
_SCHEDULES = sa_select(
    _bots.c.name,
    _bots.c.status,
    _bots.c.generation,
    _bots.c.runner,
    _bots.c.next_slot,
    _bots.c.origin,
    _bots.c.interval_s,
).where(_bots.c.name.in_(bindparam("p_names", expanding=True)))
# Bots whose mirrors Redis compares in one script call (one call blocks Redis for its run).
_COMPARE_BATCH = 1000


def pause_after_outage(rt: Runtime, coordinator: RedisCoordinator, since: float, now: float) -> int:
    """Pause every running fleet bot, saying why, and let chains run again.

    The outage outlasted DB_OUTAGE_PAUSE_S, so every chain ended at its guard; what the
    market did meanwhile is unknown to the strategies. Resuming is the operator's call
    (`botengine resume-bot`), and each bot's row says what happened.
    """
    lasted = now - since
    reason = (
        f"paused: the database was unreachable for {lasted:.0f} s (from "
        f"{datetime.fromtimestamp(since, UTC):%Y-%m-%d %H:%M:%S} UTC), longer than "
        f"DB_OUTAGE_PAUSE_S={rt.settings.db_outage_pause_s:g}; check the bot's orders, "
        "then `botengine resume-bot`"
    )
    with session_scope(rt.db) as session:
        rows = session.execute(
            update(Bot)
            .where(col(Bot.status) == BotStatus.RUNNING.value, col(Bot.runner).is_(None))
            .values(
                status=BotStatus.PAUSED.value,
                generation=col(Bot.generation) + 1,
                last_error=reason,
                next_slot=0,
                updated_at=utcnow(),
            )
            .returning(col(Bot.name), col(Bot.generation), col(Bot.origin), col(Bot.interval_s))
        ).all()
    for name, generation, origin, interval in rows:
        paused = Mirror(BotStatus.PAUSED.value, generation, origin, interval, 0)
        coordinator.publish(paused, name, 0.0, parked=False)
    coordinator.lift_halt()
    log.error("fleet.paused", bots=len(rows), reason=reason)
    notify.notify(notify.FLEET_PAUSED, bots=len(rows), reason=reason)
    return len(rows)


def _fence_unowned(
    rt: Runtime, coordinator: RedisCoordinator, bots: list[str], report: Report
) -> list[str]:
    """Of the overdue bots in Redis's schedule, those the database runs on the fleet at
    the mirrored generation; every other chain is stopped in Redis instead of revived.

    Redis only mirrors the database. A chain it still runs after the database moved on
    (a stop written while Redis was unreachable, a mirror restored from an old snapshot,
    a bot `botengine run` took over) would otherwise be revived by this very pass, every
    pass, and trade beside the real one.
    """
    if not bots:
        return []
    rows = {}
    for start in range(0, len(bots), _COMPARE_BATCH):
        with rt.db.connect() as conn:
            names = bots[start : start + _COMPARE_BATCH]
            rows.update({row.name: row for row in conn.execute(_SCHEDULES, {"p_names": names})})
    owned = []
    for bot in bots:
        mirror = coordinator.mirror(bot)
        if mirror is None or mirror.status != BotStatus.RUNNING.value:
            owned.append(bot)  # _revive drops it from the schedule
            continue
        row = rows.get(bot)
        if row is not None and row.status == BotStatus.RUNNING.value and row.runner is None:
            if row.generation >= mirror.generation:
                owned.append(bot)  # a newer generation is restored by _restore_mirrors
            continue
        status = BotStatus.STOPPED.value
        if row is not None and row.status != BotStatus.RUNNING.value:
            status = row.status
        generation = max(mirror.generation, row.generation if row is not None else 0)
        halted = Mirror(status, generation, mirror.origin, mirror.interval, 0)
        if coordinator.publish(halted, bot, 0.0, parked=False):
            report.fenced += 1
            log.warning(
                "reconcile.fenced",
                bot=bot,
                generation=mirror.generation,
                database=None if row is None else f"{row.status}@{row.generation}",
                runner=None if row is None else row.runner,
            )
    return owned


def _revive(
    rt: Runtime,
    coordinator: RedisCoordinator,
    bot: str,
    now: float,
    report: Report,
    saturated: bool,
) -> None:
    mirror = coordinator.mirror(bot)
    if mirror is None or mirror.status != BotStatus.RUNNING.value:
        coordinator.redis.zrem(SCHEDULE, bot)
        return
    due = due_at(mirror.origin, mirror.interval, mirror.next_slot)
    claim = coordinator.claim(bot, mirror.generation, mirror.next_slot)
    if claim is None:
        if saturated:
            return
        if now - due <= mirror.interval:
            # Unclaimed and only a little late: the message was lost; send it again,
            # once (a copy lost again is caught by the advance below an interval later).
            if coordinator.redis.set(
                f"requeued:{bot}:{mirror.generation}:{mirror.next_slot}",
                "1",
                nx=True,
                ex=int(max(rt.settings.reconcile_grace_s, mirror.interval)) * 4,
            ):
                rt.enqueue(bot, mirror.generation, mirror.next_slot, due)
                report.requeued += 1
            return
    elif not _abandoned(rt, coordinator, claim, now):
        return  # a live tick is still working on it
    slot = next_runnable(mirror.origin, mirror.interval, now)
    slot = max(slot, mirror.next_slot + 1)
    if _move(
        rt,
        coordinator,
        bot,
        mirror.generation,
        mirror.origin,
        mirror.interval,
        slot,
        expected=mirror.next_slot,
        claim=claim,
        now=now,
    ):
        report.advanced += 1
        log.warning(
            "reconcile.advanced",
            bot=bot,
            generation=mirror.generation,
            from_slot=mirror.next_slot,
            to_slot=slot,
            claim=claim,
        )


def _abandoned(rt: Runtime, coordinator: RedisCoordinator, claim: str, now: float) -> bool:
    """A claim whose tick finished without moving on, or whose worker is gone."""
    kind, _, rest = claim.partition(":")
    if kind == "done":
        # The tick marks its claim done just before its own successor CAS: give it the
        # grace period to get there, or both would move the chain (and count its gap).
        return now - float(rest) > rt.settings.reconcile_grace_s
    started, _, worker = rest.partition(":")
    if now - float(started) > rt.settings.tick_time_limit_s:
        return True
    return bool(worker) and not coordinator.alive(worker)


def _move(
    rt: Runtime,
    coordinator: RedisCoordinator,
    bot: str,
    generation: int,
    origin: float,
    interval: float,
    slot: int,
    *,
    expected: int | None,
    claim: str | None = None,
    now: float,
) -> bool:
    """Put the chain on `slot` (CAS from `expected` while its claim is still `claim`, or
    a full restore) and enqueue it."""
    due = due_at(origin, interval, slot)
    parked = parks(due, now, rt.settings.eta_horizon_s)
    if expected is None:
        moved = coordinator.publish(
            Mirror("running", generation, origin, interval, slot), bot, due, parked
        )
        # Slots skipped after Redis lost its claims may have run: none is counted.
        missed: Any = 0
    else:
        moved = coordinator.advance(bot, generation, expected, slot, due, parked, claim=claim)
        # The slots from the database's next slot on never ran: a tick that recorded
        # itself before dying moved that pointer past its own slot, and counted its gap.
        pointer = col(Bot.next_slot)
        missed = case((pointer < slot, slot - pointer), else_=0)
    if not moved:
        return False
    with session_scope(rt.db) as session:
        session.execute(
            update(Bot)
            .where(col(Bot.name) == bot, col(Bot.generation) == generation)
            .values(
                # Never backwards: a tick of the new slot may have recorded itself already.
                next_slot=case((col(Bot.next_slot) < slot, slot), else_=col(Bot.next_slot)),
                ticks_missed=Bot.ticks_missed + missed,
            )
        )
    if not parked:
        rt.enqueue(bot, generation, slot, due)
    return True
