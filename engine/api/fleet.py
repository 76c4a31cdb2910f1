"""`/api/v1/fleet`: the whole fleet at a glance, and its bots one page at a time.

Made for the dashboard at 10,000 bots: a page is one indexed query on `bots` (the
listing columns, never the JSON config) plus a few per-page queries for the page's own
bots; the fleet's rates come from the workers' metric counters in Redis, compared with
the previous call's, so no request scans the ticks table.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from redis.exceptions import RedisError
from sqlalchemy import func, or_
from sqlmodel import Session, col, select

from engine.api.deps import RtDep
from engine.celery_app import TICK_QUEUE
from engine.config import LABEL
from engine.coordination import PARKED
from engine.health import fleet_health
from engine.metrics import BUCKETS, LATENESS, TICKS
from engine.models import Bot, BotStatus, Fill, PriceSnapshot, Tick
from engine.orders import pnl_from_fills
from engine.runtime import Runtime
from engine.views import bot_summary, iso

router = APIRouter(prefix="/fleet", tags=["fleet"])

SORTS = {
    "name": col(Bot.name),
    "status": col(Bot.status),
    "strategy": col(Bot.strategy),
    "exchange": col(Bot.exchange),
    "symbol": col(Bot.symbol),
    "last_tick_at": col(Bot.last_tick_at),
    "orders": col(Bot.orders_sent),
    "ticks_failed": col(Bot.ticks_failed),
}
RATE_WINDOW_S = 60.0


@dataclass(frozen=True)
class _Sample:
    at: float
    ticks: float
    lateness: dict[str, float]


class Rates:
    """Ticks per second and lateness p99 over the last minute, from the difference of
    the workers' counters between this call and the oldest sample of the window."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: deque[_Sample] = deque()
        self._lock = threading.Lock()

    def observe(self, now: float, ticks: float, lateness: dict[str, float]) -> dict[str, Any]:
        """Add a sample; the rates since the oldest one kept (None on the first call)."""
        with self._lock:
            while self._samples and now - self._samples[0].at > self.window_s:
                self._samples.popleft()
            first = self._samples[0] if self._samples else None
            if not self._samples or now - self._samples[-1].at >= 1.0:
                self._samples.append(_Sample(now, ticks, lateness))
        if first is None or now - first.at < 1.0 or ticks < first.ticks:
            return {"ticks_per_s": None, "lateness_p99_ms": None, "window_s": 0.0}
        counts = {k: lateness.get(k, 0.0) - first.lateness.get(k, 0.0) for k in lateness}
        return {
            "ticks_per_s": round((ticks - first.ticks) / (now - first.at), 2),
            "lateness_p99_ms": _p99_ms(counts),
            "window_s": round(now - first.at, 1),
        }


def _p99_ms(buckets: dict[str, float]) -> float | None:
    """The upper bound (ms) of the bucket holding the 99th percentile (the last bound
    when beyond it); None when nothing ticked."""
    total = sum(buckets.values())
    if total <= 0:
        return None
    seen = 0.0
    for bound in BUCKETS:
        seen += buckets.get(f"le:{bound:g}", 0.0)
        if seen >= 0.99 * total:
            return bound * 1000
    return BUCKETS[-1] * 1000


_rates = Rates()


def snapshot_price(session: Session, exchange: str, symbol: str) -> float | None:
    """The newest hourly snapshot's last price of a symbol (no exchange request)."""
    price: float | None = session.exec(
        select(PriceSnapshot.last)
        .where(PriceSnapshot.exchange == exchange, PriceSnapshot.symbol == symbol)
        .order_by(col(PriceSnapshot.taken_at).desc())
        .limit(1)
    ).first()
    return price


@router.get("", summary="Fleet health: bots by status, ticks/s, lateness, queue, workers")
def fleet(rt: RtDep) -> dict[str, Any]:
    """Counts by status, the last minute's ticks/s and lateness p99 (bucket bound), the
    tick queue's depth, live worker processes and why the fleet is not ticking, if so."""
    with Session(rt.db) as session:
        by_status = dict(
            session.exec(select(Bot.status, func.count()).group_by(col(Bot.status))).all()
        )
    out: dict[str, Any] = {
        "bots": {s.value: int(by_status.get(s.value, 0)) for s in BotStatus},
        "ticks_per_s": None,
        "lateness_p99_ms": None,
        "window_s": 0.0,
        "queue": None,
        "workers": None,
        "ok": None,
        "reasons": {},
        "redis": True,
    }
    try:
        out.update(_from_redis(rt))
        health = fleet_health(rt)
    except RedisError as exc:
        out["redis"] = False
        out["reasons"] = {"redis": f"Redis cannot be read: {exc}"}
        return out
    out.update(workers=health.workers, ok=not health.reasons, reasons=health.reasons)
    return out


def _from_redis(rt: Runtime) -> dict[str, Any]:
    redis = rt.redis
    if redis is None:
        return {}
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(TICKS)
    pipe.hgetall(LATENESS)
    pipe.llen(TICK_QUEUE)
    pipe.zcard(PARKED)
    ticks, lateness, queued, parked = pipe.execute()
    total = sum(float(v) for v in ticks.values())
    buckets = {k.decode(): float(v) for k, v in lateness.items() if k.startswith(b"le:")}
    rates = _rates.observe(time.monotonic(), total, buckets)
    return {**rates, "queue": {"queued": int(queued), "parked": int(parked)}}


@router.get("/bots", summary="One page of the fleet's bots: filtered, sorted, searched")
def fleet_bots(
    rt: RtDep,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    sort: Annotated[Literal[tuple(SORTS)], Query()] = "name",  # type: ignore[valid-type]
    order: Annotated[Literal["asc", "desc"], Query()] = "asc",
    status: Annotated[BotStatus | None, Query()] = None,
    exchange: Annotated[str | None, Query(max_length=64)] = None,
    symbol: Annotated[str | None, Query(max_length=40)] = None,
    label: Annotated[str | None, Query(pattern=LABEL)] = None,
    q: Annotated[str | None, Query(max_length=64, description="Name contains")] = None,
) -> dict[str, Any]:
    """`{"total", "offset", "limit", "items": [bot summary + strategy, symbol, labels,
    lateness_ms of the last tick, pnl {net, realized, unrealized, position}]}`."""
    query = select(Bot)
    if status is not None:
        query = query.where(Bot.status == status.value)
    if exchange:
        query = query.where(Bot.exchange == exchange)
    if symbol:
        query = query.where(Bot.symbol == symbol)
    if label:
        query = query.where(col(Bot.labels).contains(f",{label},"))
    if q:
        query = query.where(or_(col(Bot.name).contains(q), col(Bot.strategy).contains(q)))
    key = SORTS[sort]
    ordered = query.order_by(key.desc() if order == "desc" else key.asc(), col(Bot.name))
    with Session(rt.db) as session:
        total = session.exec(select(func.count()).select_from(query.subquery())).one()
        bots = list(session.exec(ordered.offset(offset).limit(limit)))
        lateness = _last_lateness(session, bots)
        pnl = _pnl(session, bots)
    return {
        "total": int(total),
        "offset": offset,
        "limit": limit,
        "items": [
            {**bot_summary(b), "lateness_ms": lateness.get(b.name), "pnl": pnl.get(b.name)}
            for b in bots
        ],
    }


def _last_lateness(session: Session, bots: list[Bot]) -> dict[str, float]:
    """Each bot's last tick's lateness: one indexed lookup per bot of the page."""
    out = {}
    for bot in bots:
        if bot.last_tick_at is None:
            continue
        last = session.exec(
            select(Tick.lateness_ms)
            .where(Tick.bot == bot.name)
            .order_by(col(Tick.started_at).desc())
            .limit(1)
        ).first()
        if last is not None:
            out[bot.name] = round(last, 1)
    return out


def _pnl(session: Session, bots: list[Bot]) -> dict[str, dict[str, Any]]:
    """The page's bots' PnL from their fills (one query), marked at the newest snapshot
    of each symbol, else the bot's last fill."""
    names = [b.name for b in bots]
    fills: dict[str, list[Fill]] = defaultdict(list)
    query = select(Fill).where(col(Fill.bot).in_(names)).order_by(col(Fill.filled_at), col(Fill.id))
    for fill in session.exec(query):
        fills[fill.bot].append(fill)
    marks: dict[tuple[str, str], float] = {}
    for venue in {(b.exchange, b.symbol) for b in bots if fills.get(b.name)}:
        if (price := snapshot_price(session, *venue)) is not None:
            marks[venue] = price
    out = {}
    for bot in bots:
        rows = fills.get(bot.name)
        if not rows:
            continue
        pnl = pnl_from_fills(rows, marks.get((bot.exchange, bot.symbol), rows[-1].price))
        out[bot.name] = {
            "net": round(pnl.net, 2),
            "realized": round(pnl.realized, 2),
            "unrealized": round(pnl.unrealized, 2),
            "position": pnl.position,
            "last_fill_at": iso(rows[-1].filled_at),
        }
    return out
