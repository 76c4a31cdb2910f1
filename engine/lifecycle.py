"""Start, stop, pause, resume and reconfigure bots.

Every command bumps the bot's generation with a compare-and-set in the database (the
authority), then mirrors it to Redis. A queued tick of an older generation is dropped
by its guard, which is how chains stop: `revoke()` is not reliable for that.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from engine import notify
from engine.config import BotConfig
from engine.coordination import Mirror
from engine.db import session_scope
from engine.errors import BotBusyError, BotEngineError, BotNotFoundError
from engine.logging import get_logger
from engine.models import Bot, BotStatus, listing, utcnow
from engine.runtime import Runtime
from engine.schedule import aligned_origin, due_at, parks, timeframe_ms

log = get_logger("engine.lifecycle")
_CAS_ATTEMPTS = 20


class Change(StrEnum):
    """What a lifecycle command did."""

    STARTED = "started"
    RECONFIGURED = "reconfigured"
    UNCHANGED = "unchanged"
    STOPPED = "stopped"
    PAUSED = "paused"
    RESUMED = "resumed"


@dataclass(frozen=True)
class Result:
    """The outcome of a lifecycle command."""

    bot: str
    change: Change
    generation: int
    status: BotStatus
    drained: bool = True


def start(rt: Runtime, config: BotConfig, source: str | None = None) -> Result:
    """Start a bot, or apply a changed config to a running one; idempotent.

    Starting a running bot with the same config changes nothing; two concurrent starts
    yield one chain because only one wins the generation compare-and-set.
    """
    rt.coordinator.check()
    digest = config.config_hash()
    for _ in range(_CAS_ATTEMPTS):
        bot = _get_or_create(rt, config, source)
        if bot.status == BotStatus.RUNNING and bot.runner != rt.runner:
            raise BotBusyError(_busy_message(bot))
        if bot.status == BotStatus.RUNNING and bot.config_hash == digest:
            return Result(bot.name, Change.UNCHANGED, bot.generation, bot.status)
        now = rt.clock()
        change = Change.STARTED
        origin = now
        if bot.status == BotStatus.RUNNING:
            change = Change.RECONFIGURED
            # Keep the running rhythm: the new config takes effect from the next slot.
            old_next = due_at(bot.origin, bot.interval_s, bot.next_slot)
            origin = old_next if old_next > now else now
        origin = first_origin(config, origin)
        values: dict[str, Any] = {
            **stored_config(config, source),
            "consecutive_failures": 0,
            "last_error": None,
            "runner": rt.runner,
        }
        if (gen := _bump(rt, bot, BotStatus.RUNNING, origin=origin, **values)) is not None:
            _launch(rt, config.name, gen, origin, config.check_interval)
            log.info(f"bot.{change.value}", bot=config.name, generation=gen)
            return Result(config.name, change, gen, BotStatus.RUNNING)
    raise BotEngineError(f"bot {config.name}: too many concurrent lifecycle changes")


def stop(rt: Runtime, name: str) -> Result:
    """Stop a bot. When this returns, no tick of the bot sends another order."""
    return _halt(rt, name, BotStatus.STOPPED, Change.STOPPED)


def pause(rt: Runtime, name: str) -> Result:
    """Pause a bot: like stop, but `resume` restarts it with the same config."""
    return _halt(rt, name, BotStatus.PAUSED, Change.PAUSED)


def resume(rt: Runtime, name: str) -> Result:
    """Resume a paused (or errored) bot with its stored config, on the fleet's workers
    (or in the foreground process that calls it)."""
    rt.coordinator.check()
    for _ in range(_CAS_ATTEMPTS):
        bot = load(rt, name)
        if bot.status == BotStatus.RUNNING:
            if bot.runner != rt.runner:
                raise BotBusyError(_busy_message(bot))
            return Result(name, Change.UNCHANGED, bot.generation, bot.status)
        origin = first_origin(BotConfig.model_validate(bot.config), rt.clock())
        gen = _bump(
            rt,
            bot,
            BotStatus.RUNNING,
            origin=origin,
            consecutive_failures=0,
            last_error=None,
            runner=rt.runner,
        )
        if gen is not None:
            _launch(rt, name, gen, origin, bot.interval_s)
            log.info("bot.resumed", bot=name, generation=gen)
            return Result(name, Change.RESUMED, gen, BotStatus.RUNNING)
    raise BotEngineError(f"bot {name}: too many concurrent lifecycle changes")


def first_origin(config: BotConfig, earliest: float) -> float:
    """When slot 0 of a new generation is due: at `earliest`, or for `align: candle` the
    first candle close (plus the offset) from then on."""
    if config.align != "candle":
        return earliest
    return aligned_origin(earliest, timeframe_ms(config.timeframe) / 1000, config.offset)


def _halt(rt: Runtime, name: str, status: BotStatus, change: Change) -> Result:
    """Stop or pause whatever chain the bot has, wherever it runs: the fleet's, or a
    foreground `botengine run` (its next tick finds the new generation and ends)."""
    rt.coordinator.check()
    for _ in range(_CAS_ATTEMPTS):
        bot = load(rt, name)
        # A chain Redis still runs although the database says halted is stopped too.
        if bot.status == status and rt.coordinator.generation(name) is None:
            return Result(name, Change.UNCHANGED, bot.generation, bot.status)
        gen = _bump(rt, bot, status)
        if gen is None:
            continue
        rt.coordinator.publish(
            Mirror(status.value, gen, bot.origin, bot.interval_s, 0), name, 0.0, parked=False
        )
        drained = _drain(rt, name)
        log.info(f"bot.{change.value}", bot=name, generation=gen, drained=drained)
        if status == BotStatus.STOPPED:
            _on_stop(rt, bot)
            notify.notify(notify.BOT_STOPPED, bot=name, generation=gen, drained=drained)
        return Result(name, change, gen, status, drained)
    raise BotEngineError(f"bot {name}: too many concurrent lifecycle changes")


def _busy_message(bot: Bot) -> str:
    if bot.runner is None:
        where = "on the fleet's workers"
        fix = f"stop it first (`botengine stop-bot {bot.name}`)"
    else:
        where = f"in the foreground ({bot.runner}, `botengine run`)"
        fix = f"stop that process (Ctrl-C), or `botengine stop-bot {bot.name}` if it is gone"
    return f"bot {bot.name} is running {where} at generation {bot.generation}; {fix}"


def _drain(rt: Runtime, name: str) -> bool:
    """Wait until no tick of the bot is inside its run (it holds the bot lock).

    The guard already drops queued ticks; this closes the window where a tick checked
    its fence just before the stop and is about to send an order.
    """
    wait = rt.settings.tick_time_limit_s + 5.0
    with rt.coordinator.lock(name, ttl=5.0, wait=wait) as acquired:
        return acquired


def _on_stop(rt: Runtime, bot: Bot) -> None:
    config = BotConfig.model_validate(bot.config)
    if config.on_stop != "cancel":
        return
    from engine import orders  # lazy: the exchange layer is only needed for cancels

    cancelled = orders.cancel_open(rt.db, bot.name, rt.gateway(config))
    log.info("bot.orders_cancelled", bot=bot.name, count=cancelled)


def _launch(rt: Runtime, name: str, gen: int, origin: float, interval: float) -> None:
    """Mirror a freshly (re)started generation to Redis and enqueue its slot 0."""
    now = rt.clock()
    parked = parks(origin, now, rt.settings.eta_horizon_s)
    published = rt.coordinator.publish(
        Mirror("running", gen, origin, interval, 0), name, origin, parked
    )
    if published and not parked:
        rt.enqueue(name, gen, 0, origin)


def _bump(rt: Runtime, bot: Bot, status: BotStatus, **values: Any) -> int | None:
    """Compare-and-set the generation; the new generation, or None if someone else won."""
    gen = bot.generation + 1
    with session_scope(rt.db) as session:
        result = session.execute(
            update(Bot)
            .where(col(Bot.name) == bot.name, col(Bot.generation) == bot.generation)
            .values(generation=gen, status=status.value, next_slot=0, updated_at=utcnow(), **values)
        )
        return gen if result.rowcount == 1 else None  # type: ignore[attr-defined]


def load(rt: Runtime, name: str) -> Bot:
    """The bot's row; `BotNotFoundError` when there is none."""
    with Session(rt.db, expire_on_commit=False) as session:
        bot = session.get(Bot, name)
    if bot is None:
        raise BotNotFoundError(f"no bot named {name!r}; start it with `botengine start-bot FILE`")
    return bot


def _get_or_create(rt: Runtime, config: BotConfig, source: str | None) -> Bot:
    try:
        return load(rt, config.name)
    except BotNotFoundError:
        pass
    try:
        with session_scope(rt.db) as session:
            session.add(Bot(name=config.name, **stored_config(config, source)))
    except IntegrityError:
        pass  # a concurrent start created it first; fine, read theirs
    return load(rt, config.name)


def stored_config(config: BotConfig, source: str | None) -> dict[str, Any]:
    """The `bots` values a config sets: the config, its hash, and its listing columns."""
    dumped = config.model_dump(mode="json")
    return {
        "config": dumped,
        "config_hash": config.config_hash(),
        "source": source,
        "interval_s": config.check_interval,
        **listing(dumped),
    }


def list_bots(rt: Runtime) -> list[Bot]:
    """Every bot, by name."""
    with Session(rt.db, expire_on_commit=False) as session:
        return list(session.exec(select(Bot).order_by(Bot.name)))
