"""Scheduled housekeeping: price checks and snapshots, retention, Redis clean-up.

Each function takes the runtime and returns a small JSON-able report, so the Celery
tasks stay thin and tests can call them directly.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

from sqlalchemy import delete
from sqlmodel import Session, col, select

from engine import orders
from engine.config import BotConfig
from engine.coordination import PARKED, SCHEDULE
from engine.db import session_scope
from engine.embedded import reachable
from engine.errors import BotEngineError
from engine.exchange.factory import data_gateway
from engine.logging import get_logger
from engine.models import Bot, BotStatus, PriceSnapshot, Tick, utcnow
from engine.runtime import Runtime

log = get_logger("engine.maintenance")


def tracked_symbols(rt: Runtime) -> list[tuple[BotConfig, str]]:
    """One running bot's config per distinct (exchange, base URL, symbol) traded now."""
    with Session(rt.db) as session:
        bots = list(session.exec(select(Bot).where(Bot.status == BotStatus.RUNNING.value)))
    seen: dict[tuple[str, str | None, str], BotConfig] = {}
    for bot in bots:
        config = BotConfig.model_validate(bot.config)
        seen.setdefault((config.exchange, config.base_url, config.symbol), config)
    return [(config, config.symbol) for config in seen.values()]


def price_check(
    rt: Runtime, symbol: str | None = None, exchange: str | None = None, bot: str | None = None
) -> list[dict[str, Any]]:
    """Current prices: of one symbol, of one bot's symbol, or of every tracked symbol."""
    targets: list[tuple[BotConfig | None, str, str]] = []
    if bot is not None:
        with Session(rt.db) as session:
            row = session.get(Bot, bot)
        if row is None:
            raise LookupError(f"no bot named {bot!r}")
        bot_config = BotConfig.model_validate(row.config)
        targets.append((bot_config, bot_config.exchange, bot_config.symbol))
    elif symbol is not None:
        targets.append((None, exchange or "simulator", symbol))
    else:
        targets = [(c, c.exchange, s) for c, s in tracked_symbols(rt)]
    # Run inline by the API because Redis is down, the check goes straight to the
    # exchange: the shared cache and rate limits live in Redis.
    redis = rt.redis if rt.redis is not None and reachable(rt.settings.redis_url) else None
    prices = []
    for config, exchange_id, sym in targets:
        gateway = data_gateway(
            exchange_id,
            redis=redis,
            settings=rt.settings,
            base_url=config.base_url if config else None,
            options=config.exchange_options if config else None,
        )
        ticker = gateway.fetch_ticker(sym)
        prices.append(
            {
                "exchange": exchange_id,
                "symbol": sym,
                "bid": ticker.bid,
                "ask": ticker.ask,
                "last": ticker.last,
                "ts": ticker.ts,
            }
        )
    return prices


def reconcile_orders(rt: Runtime) -> dict[str, int]:
    """Settle every bot's open and unknown orders against its exchange (at worker start).

    A bot whose tick holds its lock right now is skipped: that tick reconciles first.
    """
    report = {"bots": 0, "changed": 0, "skipped": 0, "failed": 0}
    for name in orders.bots_with_live_orders(rt.db):
        with rt.coordinator.lock(name, ttl=rt.settings.tick_time_limit_s, wait=0) as mine:
            if not mine:
                report["skipped"] += 1
                continue
            with Session(rt.db) as session:
                row = session.get(Bot, name)
            if row is None:
                continue
            try:
                gateway = rt.gateway(BotConfig.model_validate(row.config))
                report["changed"] += orders.reconcile(
                    rt.db, name, gateway, grace_s=rt.settings.reconcile_grace_s
                )
                report["bots"] += 1
            except BotEngineError as exc:
                report["failed"] += 1
                log.warning("maintenance.reconcile_orders_failed", bot=name, error=str(exc))
    log.info("maintenance.reconcile_orders", **report)
    return report


def price_snapshot(rt: Runtime) -> int:
    """Store the price of every tracked symbol (hourly); returns rows written."""
    prices = price_check(rt)
    with session_scope(rt.db) as session:
        for p in prices:
            session.add(
                PriceSnapshot(
                    exchange=p["exchange"],
                    symbol=p["symbol"],
                    bid=p["bid"],
                    ask=p["ask"],
                    last=p["last"],
                )
            )
    log.info("maintenance.price_snapshot", rows=len(prices))
    return len(prices)


def cleanup(rt: Runtime) -> dict[str, int]:
    """Delete ticks and price snapshots older than the retention period (daily)."""
    cutoff = utcnow() - timedelta(days=rt.settings.retention_days)
    with session_scope(rt.db) as session:
        ticks = session.execute(delete(Tick).where(col(Tick.finished_at) < cutoff))
        snaps = session.execute(delete(PriceSnapshot).where(col(PriceSnapshot.taken_at) < cutoff))
    report = {"ticks": int(ticks.rowcount), "snapshots": int(snaps.rowcount)}  # type: ignore[attr-defined]
    log.info("maintenance.cleanup", **report)
    return report


def cache_cleanup(rt: Runtime) -> dict[str, int]:
    """Drop Redis state nothing will read again (every 6 hours).

    Mirrors and schedule entries of bots that are not running, and any engine key left
    without an expiry (claims, locks and market data always get one; a key without one
    is debris from an interrupted write).
    """
    client = rt.redis
    assert client is not None
    with Session(rt.db) as session:
        running = {
            b.name for b in session.exec(select(Bot).where(Bot.status == BotStatus.RUNNING.value))
        }
    mirrors = 0
    for key in client.scan_iter(match="bot:*", count=1000):
        name = key.decode().removeprefix("bot:")
        if name not in running and client.hget(key, "status") != b"running":
            mirrors += client.delete(key)
    entries = 0
    for zset in (SCHEDULE, PARKED):
        for member in cast(list[bytes], client.zrange(zset, 0, -1)):
            if member.decode() not in running:
                entries += client.zrem(zset, member)
    debris = 0
    for pattern in ("claim:*", "lock:*", "md:*", "requeued:*"):
        for key in client.scan_iter(match=pattern, count=1000):
            if client.ttl(key) == -1:
                debris += client.delete(key)
    report = {"mirrors": mirrors, "schedule_entries": entries, "keys_without_ttl": debris}
    log.info("maintenance.cache_cleanup", **report)
    return report
