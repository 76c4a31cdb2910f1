"""The tick: one slot of one bot, from guard to successor, readable top to bottom.

See DESIGN.md "The tick protocol". `run_tick` is the whole protocol; the helpers below
it are the steps it names. The Celery task in `engine.tasks` only calls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from pydantic import ValidationError

from engine import admission, kernel, metrics, notify, routing, store
from engine import logging as elog
from engine.config import BotConfig
from engine.coordination import Mirror, Next, Verdict
from engine.db import is_unavailable
from engine.errors import ExchangeBannedError, FencedError, OperationalError, SupersededError
from engine.exchange.gateway import Gateway
from engine.exchange.retry import time_budget
from engine.exits import ExitRules
from engine.models import BotStatus, TickOutcome
from engine.protections import Protections
from engine.risk import RiskLimits
from engine.runtime import Runtime
from engine.schedule import due_at, parks, successor
from engine.store import TickRecord
from strategies.base import Strategy
from strategies.registry import StrategyLookupError, build

log = elog.get_logger("engine.tick")


def run_tick(rt: Runtime, bot: str, generation: int, slot: int) -> TickOutcome | None:
    """Run slot `slot` of `bot` at `generation` exactly once; None when it did not run."""
    elog.bind(bot=bot, generation=generation, slot=slot)
    try:
        with admission.turn():
            return _run_tick(rt, bot, generation, slot)
    finally:
        elog.unbind("bot", "generation", "slot", "lateness_ms", "exchange", "symbol")


def _run_tick(rt: Runtime, bot: str, generation: int, slot: int) -> TickOutcome | None:
    ttl = rt.settings.tick_time_limit_s + 10
    # 1. guard + 2. claim + 3. the bot lock, in one round trip.
    begin = rt.coordinator.begin(bot, generation, slot, rt.worker_id, ttl)
    if begin.verdict is not Verdict.RUN or begin.mirror is None:
        event = (
            "tick.duplicate"
            if begin.verdict in (Verdict.DUPLICATE, Verdict.STALE)
            else "tick.dropped"
        )
        log.info(event, reason=begin.verdict.value)
        return None
    mirror = begin.mirror
    due = due_at(mirror.origin, mirror.interval, slot)
    started = rt.clock()
    elog.bind(lateness_ms=round((started - due) * 1000, 1))
    log.info("tick.started")
    outcome, error, sent, fatal = TickOutcome.OK, None, 0, False
    state: dict[str, Any] | None = None
    pause: str | None = None
    superseded: SupersededError | None = None
    try:
        # 1 again, against the authority: the database must still run this generation.
        held = guard(rt, bot, generation)
        if not begin.lock:  # 3. another slot of this bot is still inside its run
            outcome, error = TickOutcome.SKIPPED, "previous tick still running"
        else:
            # Reads and rate-limit waits end well before the hard time limit.
            with time_budget(rt.settings.tick_time_limit_s * 0.8):
                sent, state, pause = trade(rt, bot, generation, slot, due, held)  # 4. run
    except SupersededError as exc:
        superseded = exc
    except (FencedError, ExchangeBannedError) as exc:
        outcome, error = TickOutcome.SKIPPED, str(exc)
    except OperationalError as exc:
        outcome, error, fatal = TickOutcome.FAILED, str(exc), True
    except Exception as exc:  # noqa: BLE001 - a strategy or exchange failure never breaks the chain
        if is_unavailable(exc):  # not the bot's failure: it counts towards no error budget
            outcome, error = TickOutcome.SKIPPED, f"database unavailable: {type(exc).__name__}"
            database_down(rt)
        else:
            outcome, error = TickOutcome.FAILED, f"{type(exc).__name__}: {exc}"
    finally:
        if superseded is not None:
            drop_superseded(rt, bot, generation, slot, begin.lock, mirror, superseded)
        else:
            finished = rt.clock()
            next_slot, missed = successor(mirror.origin, mirror.interval, slot, finished)
            nxt = plan_next(rt, bot, mirror, next_slot)
            done = TickRecord(
                bot=bot,
                generation=generation,
                slot=slot,
                due=due,
                started=started,
                finished=finished,
                outcome=outcome,
                error=error,
                orders=sent,
                next_slot=nxt.slot,
                missed=missed,
                state=state,
                pause=pause,
            )
            status = record_or_go_on(rt, done, fatal, begin.lock)  # 5. record
            # 6. successor: claim done, lock released and next_slot compare-and-set at once.
            plan = nxt if status == BotStatus.RUNNING else None
            if rt.coordinator.complete(bot, generation, slot, begin.lock, plan):
                send_successor(rt, bot, generation, nxt)
            rt.tick_metrics.add(outcome.value, started - due, finished - started)
            if status in (BotStatus.ERROR, BotStatus.PAUSED):
                retired = Mirror(status.value, generation, mirror.origin, mirror.interval, nxt.slot)
                rt.coordinator.publish(retired, bot, 0.0, parked=False)
            if status == BotStatus.ERROR:
                log.error("bot.error", reason=error)
                notify.notify(
                    notify.BOT_ERROR, bot=bot, generation=generation, slot=slot, error=error
                )
            elif status == BotStatus.PAUSED and pause is not None:
                metrics.record_protection(rt.redis, pause.split(":", 1)[0])
                log.warning("bot.paused", reason=pause)
                notify.notify(notify.BOT_PAUSED, bot=bot, generation=generation, reason=pause)
            log.info(
                "tick.finished",
                outcome=outcome.value,
                error=error,
                orders=sent,
                duration_ms=round((finished - started) * 1000, 1),
                missed=missed,
            )
    return None if superseded is not None else outcome


def guard(rt: Runtime, bot: str, generation: int) -> dict[str, Any]:
    """Step 1 against the database: it must still run `generation` of `bot`, here.

    Redis decides in one round trip, but it only mirrors the database: a mirror written
    back from an old state, or a chain that another runner (`botengine run`, the fleet)
    left behind, would otherwise tick beside the real one. Raises SupersededError then.
    Returns the strategy's persisted state, read by the same statement, so this check
    costs the tick no extra statement.
    """
    row = store.guard_row(rt.db, bot)
    if (
        row is None
        or row.status != BotStatus.RUNNING.value
        or row.generation != generation
        or row.runner != rt.runner
    ):
        where = "nowhere" if row is None else f"{row.status} at generation {row.generation}"
        owner = "" if row is None or row.runner is None else f" by {row.runner}"
        raise SupersededError(
            f"the database holds bot {bot} as {where}{owner}, not running generation "
            f"{generation} here",
            None if row is None else row.status,
            None if row is None else row.generation,
            None if row is None else row.runner,
        )
    return dict(row.state) if row.state is not None else {}


def drop_superseded(
    rt: Runtime,
    bot: str,
    generation: int,
    slot: int,
    lock: str,
    mirror: Mirror,
    exc: SupersededError,
) -> None:
    """End a chain the database no longer runs: no record, no successor, and Redis told
    what the database holds, so the chain's other messages drop at the first guard and
    the reconciler leaves it alone."""
    rt.coordinator.complete(bot, generation, slot, lock, None)
    if exc.generation is not None and exc.status is not None:
        elsewhere = exc.status == BotStatus.RUNNING.value and exc.runner != rt.runner
        if exc.status != BotStatus.RUNNING.value or elsewhere:
            status = BotStatus.STOPPED.value if elsewhere else exc.status
            truth = Mirror(status, exc.generation, mirror.origin, mirror.interval, 0)
            rt.coordinator.publish(truth, bot, 0.0, parked=False)
    log.warning("tick.dropped", reason="superseded", error=str(exc))


def database_down(rt: Runtime) -> None:
    """Count this tick towards the database outage; the tick that finds it older than
    DB_OUTAGE_PAUSE_S halts every chain (the reconciler pauses the bots once the
    database is back) and reports it."""
    pause_after = rt.settings.db_outage_pause_s
    try:
        halted = rt.coordinator.note_db_down(rt.clock(), pause_after)
    except redis.RedisError:
        return  # Redis is down too: the chain cannot go on anyway
    if halted:
        log.error("fleet.db_outage", pause_after_s=pause_after)
        notify.notify(notify.DB_OUTAGE, pause_after_s=pause_after)


def record_or_go_on(rt: Runtime, rec: TickRecord, fatal: bool, lock: str) -> BotStatus:
    """Step 5, and what a failed record means for the chain.

    With the database unreachable the chain goes on in Redis, unrecorded (the next
    recorded tick counts the gap as missed), rather than stopping every bot until the
    reconciler can revive it. Any other failure frees the slot and the bot without a
    successor (the reconciler moves on) and propagates.
    """
    try:
        return store.record_tick(
            rt.db,
            rec,
            rt.worker_id,
            fatal=fatal,
            max_failures=rt.settings.max_consecutive_failures,
        )
    except Exception as exc:
        if not is_unavailable(exc):
            rt.coordinator.complete(rec.bot, rec.generation, rec.slot, lock, None)
            raise
        log.warning("tick.unrecorded", error=f"database unavailable: {type(exc).__name__}")
        database_down(rt)
        return BotStatus.RUNNING
    except BaseException:
        rt.coordinator.complete(rec.bot, rec.generation, rec.slot, lock, None)
        raise


def trade(
    rt: Runtime, bot: str, generation: int, slot: int, due: float, state: dict[str, Any]
) -> tuple[int, dict[str, Any] | None, str | None]:
    """Step 4: the trading kernel's step on this bot's live or paper ports.

    `state` is the bot's persisted state (read by the guard). Returns the number of
    orders sent, the new state (None: unchanged) and why a protection pauses the bot
    (None: it runs on), which step 5 stores in the same transaction as the tick.
    """
    setup = bot_setup(rt, bot, generation)
    elog.bind(exchange=setup.exchange, symbol=setup.symbol)
    if rt.redis is not None and (until := rt.bans.until(rt.redis, setup.exchange)) is not None:
        raise ExchangeBannedError(f"{setup.exchange} banned this IP until {until:.0f}")

    def fence() -> None:
        if rt.coordinator.generation(bot) != generation:
            raise FencedError(f"bot {bot} left generation {generation}; no further orders")

    turn = kernel.Turn(
        bot=bot,
        generation=generation,
        slot=slot,
        now_ms=round(due * 1000),  # due = origin + k * interval: a float to round, not cut
        symbol=setup.symbol,
        timeframe=setup.timeframe,
        strategy=setup.strategy,
        risk=setup.risk,
        gateway=setup.gateway,
        store=rt.order_store,
        fence=fence,
        grace_s=rt.settings.reconcile_grace_s,
        exits=setup.exits,
        protections=setup.protections,
        order_timeout_s=setup.order_timeout_s,
    )
    result = kernel.step(turn, state)
    for kind in result.exits:
        metrics.record_exit(rt.redis, kind)
        notify.notify(notify.EXIT, bot=bot, kind=kind, symbol=setup.symbol, slot=slot)
    return result.sent, result.state, result.pause


def plan_next(rt: Runtime, bot: str, mirror: Mirror, slot: int) -> Next:
    """The successor slot with its due time, parked when beyond the ETA horizon (the
    workers' dispatcher sends it when due, so no ETA message waits longer than the
    horizon or the visibility timeout). With an outbox its message is built here, for `complete`
    to send atomically with the compare-and-set."""
    due = due_at(mirror.origin, mirror.interval, slot)
    now = rt.clock()
    if parks(due, now, rt.settings.eta_horizon_s):
        return Next(slot, due, parked=True)
    message = None
    if rt.outbox is not None:
        message = rt.outbox.message(bot, mirror.generation, slot, due, now)
    return Next(slot, due, parked=False, message=message)


def send_successor(rt: Runtime, bot: str, generation: int, nxt: Next) -> None:
    """Step 6, for the compare-and-set winner: send the successor's message.

    A parked slot gets no message: the workers' dispatcher sends it when it comes due.
    A prebuilt one was sent by `complete` already.
    """
    if not nxt.parked and nxt.message is None:
        rt.enqueue(bot, generation, nxt.slot, nxt.due)


@dataclass(frozen=True, slots=True)
class Setup:
    """What a tick needs of one bot generation, kept by each worker process for every
    bot it runs: the few config fields the tick reads rather than the whole config
    (~3 KB of pydantic objects per bot per process), with its strategy and gateway."""

    exchange: str
    symbol: str
    timeframe: str
    risk: RiskLimits
    strategy: Strategy[Any]
    gateway: Gateway
    exits: ExitRules | None = None
    protections: Protections | None = None
    order_timeout_s: float | None = None


_risk_limits: dict[RiskLimits, RiskLimits] = {}
"""Equal risk limits share one (frozen) object: most bots use the defaults."""


def bot_setup(rt: Runtime, bot: str, generation: int) -> Setup:
    """The bot's setup for a generation, built once per process.

    A generation's config never changes (a new config is a new generation), so this is
    safe to keep until the bot moves on; older generations of the bot are dropped.
    """
    cached = rt.setups.get(bot)
    if cached is not None and cached[0] == generation:
        return cached[1]  # type: ignore[no-any-return]
    row = store.config_row(rt.db, bot)
    if row is None or row.generation != generation:
        raise FencedError(f"bot {bot} is no longer at generation {generation}")
    # A config that came over the HTTP API may only name registered strategies, here
    # too: one stored before that rule was enforced must not import what it names.
    custom = not (row.source or "").startswith("api:")
    try:
        config = BotConfig.model_validate(row.config)
        strategy = build(config.strategy.name, config.strategy.params, allow_custom=custom)
    except (ValidationError, StrategyLookupError) as exc:
        # No later tick can do better: error the bot now, not after N failures.
        raise OperationalError(f"the stored config is not valid any more: {exc}") from None
    setup = Setup(
        exchange=config.exchange,
        symbol=config.symbol,
        timeframe=config.timeframe,
        risk=_risk_limits.setdefault(config.risk, config.risk),
        strategy=strategy,
        gateway=rt.gateway(config),
        exits=config.exits,
        protections=config.protections,
        order_timeout_s=config.order_timeout,
    )
    # One entry per bot, replaced whole: worker threads read this dict concurrently.
    rt.setups[bot] = (generation, setup)
    # So this bot's notifications follow its `notify:` routing at no cost per tick.
    routing.remember(bot, config.notify)
    return setup
