"""`/api/v1/bots`: list, inspect, create or update, start/stop/pause/resume, tick history.

Endpoints are plain `def`: FastAPI runs them in its thread pool, so database and Redis
calls (and a stop that drains a running tick) never block the event loop.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from sqlalchemy import or_
from sqlmodel import Session, col, select

from engine import bulk, lifecycle
from engine.api.configs import ConfigBody, apply_config, config_body, parse_api_config
from engine.api.deps import RtDep
from engine.api.fleet import snapshot_price
from engine.config import BOT_NAME
from engine.errors import BotNotFoundError
from engine.lifecycle import Result
from engine.models import Bot, Fill, PaperBalance, Tick
from engine.orders import open_orders, pnl_history, position_and_pnl
from engine.secretkeys import redact
from engine.views import balances_view, bot_summary, iso, open_order_row, pnl_view, tick_row

router = APIRouter(prefix="/bots", tags=["bots"])

BotName = Annotated[str, Path(pattern=BOT_NAME, description="The bot's name")]
MAX_CURSOR = 2**31 - 1  # slots and generations are INTEGER columns: beyond is a 422, not a 500
LAST_TICKS = 10
_CONFIG_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A bot config, as in bots/*.yaml (YAML or JSON)",
        "content": {
            "application/yaml": {"schema": {"type": "string"}},
            "application/json": {"schema": {"$ref": "#/components/schemas/BotConfig"}},
        },
    }
}


def _bot(session: Session, name: str) -> Bot:
    bot = session.get(Bot, name)
    if bot is None:
        raise BotNotFoundError(f"no bot named {name!r}")
    return bot


@router.get("", summary="Every bot (the fields of `botengine status --json`)")
def list_bots(rt: RtDep) -> list[dict[str, Any]]:
    """Status, generation, schedule and counters of every bot, by name."""
    with Session(rt.db) as session:
        return [bot_summary(b) for b in session.exec(select(Bot).order_by(col(Bot.name)))]


@router.get("/{name}", summary="One bot: status, ticks, open orders, balances, PnL")
def get_bot(name: BotName, rt: RtDep) -> dict[str, Any]:
    """The bot's status, stored config, last ticks, open orders, paper balances and PnL."""
    with Session(rt.db) as session:
        bot = _bot(session, name)
        last = session.exec(
            select(Tick)
            .where(Tick.bot == name)
            .order_by(col(Tick.generation).desc(), col(Tick.slot).desc())
            .limit(LAST_TICKS)
        ).all()
        balances = list(session.exec(select(PaperBalance).where(PaperBalance.bot == name)))
        mark, mark_source = _mark_price(session, bot)
    pnl = position_and_pnl(rt.db, name, mark)
    config = bot.config
    return {
        **bot_summary(bot),
        "mode": config.get("mode", "paper"),
        "source": bot.source,
        # Configs stored before inline secrets were refused may still hold some.
        "config": redact(config),
        "last_ticks": [tick_row(t) for t in last],
        "open_orders": [open_order_row(o) for o in open_orders(rt.db, name)],
        "balances": balances_view(balances),
        "pnl": pnl_view(pnl, mark, mark_source),
    }


def _mark_price(session: Session, bot: Bot) -> tuple[float | None, str | None]:
    """The price unrealized PnL is marked at: the newest hourly snapshot of the bot's
    symbol, else its own last fill (no exchange request from the API)."""
    if (price := snapshot_price(session, bot.exchange, bot.symbol)) is not None:
        return price, "snapshot"
    fill = session.exec(
        select(Fill)
        .where(Fill.bot == bot.name)
        .order_by(col(Fill.filled_at).desc(), col(Fill.id).desc())
        .limit(1)
    ).first()
    if fill is not None:
        return fill.price, "last_fill"
    return None, None


@router.put(
    "/{name}",
    summary="Create or update a bot from a YAML or JSON config",
    openapi_extra=_CONFIG_BODY,
    responses={201: {"description": "Created (stopped; start it with POST .../start)"}},
)
def put_bot(
    name: BotName,
    rt: RtDep,
    body: Annotated[ConfigBody, Depends(config_body)],
    response: Response,
) -> dict[str, Any]:
    """Validate like `botengine validate` (errors name `api:{name}:line: field`); a
    running bot takes the new config from its next slot, others just store it."""
    config = parse_api_config(name, body)
    applied = apply_config(rt, config, source=f"api:{name}")
    if applied.change == "created":
        response.status_code = 201
    return {
        "bot": applied.bot,
        "change": applied.change,
        "generation": applied.generation,
        "status": applied.status,
    }


def _result(result: Result) -> dict[str, Any]:
    return {
        "bot": result.bot,
        "change": result.change.value,
        "generation": result.generation,
        "status": str(result.status),
        "drained": result.drained,
    }


@router.post("/{name}/start", summary="Start a bot with its stored config")
def start_bot(name: BotName, rt: RtDep) -> dict[str, Any]:
    """Idempotent: starting a running bot changes nothing."""
    return _result(bulk.start_stored(rt, name))


@router.post("/{name}/stop", summary="Stop a bot; no order is sent after this returns")
def stop_bot(name: BotName, rt: RtDep) -> dict[str, Any]:
    """Waits for a tick inside its run to finish (`drained` says whether it did)."""
    return _result(lifecycle.stop(rt, name))


@router.post("/{name}/pause", summary="Pause a bot")
def pause_bot(name: BotName, rt: RtDep) -> dict[str, Any]:
    """Like stop; `resume` restarts it with the same config."""
    return _result(lifecycle.pause(rt, name))


@router.post("/{name}/resume", summary="Resume a paused or errored bot")
def resume_bot(name: BotName, rt: RtDep) -> dict[str, Any]:
    """Restarts the chain from now with the stored config."""
    return _result(lifecycle.resume(rt, name))


@router.get("/{name}/pnl", summary="A bot's PnL and equity after each fill, oldest first")
def bot_pnl(
    name: BotName, rt: RtDep, limit: Annotated[int, Query(ge=2, le=5000)] = 1000
) -> dict[str, Any]:
    """`{"start_equity", "points": [{"at", "net", "realized", "unrealized", "fees",
    "position", "price", "equity"}]}`: net PnL marked at each fill's price, and paper
    equity (the configured quote balance plus net PnL). Long histories are thinned to
    `limit` points, the last one always kept."""
    with Session(rt.db) as session:
        bot = _bot(session, name)
        rows = session.exec(
            select(Fill).where(Fill.bot == name).order_by(col(Fill.filled_at), col(Fill.id))
        ).all()
    quote = bot.symbol.split("/")[-1]
    start = float(bot.config.get("paper", {}).get("balances", {}).get(quote, 0.0))
    curve = pnl_history(rows)
    step = max(1, math.ceil(len(curve) / limit))
    kept = curve[::step] + ([curve[-1]] if curve and (len(curve) - 1) % step else [])
    return {
        "start_equity": start,
        "quote": quote,
        "points": [
            {
                "at": iso(fill.filled_at),
                "side": fill.side,
                "amount": fill.amount,
                "net": round(p.net, 6),
                "realized": round(p.realized, 6),
                "unrealized": round(p.unrealized, 6),
                "fees": round(p.fees, 6),
                "position": p.position,
                "price": fill.price,
                "equity": round(start + p.net, 6),
            }
            for fill, p in kept
        ],
    }


@router.get("/{name}/ticks", summary="A bot's ticks, newest first, paged")
def bot_ticks(
    name: BotName,
    rt: RtDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    before_slot: Annotated[
        int | None, Query(ge=0, le=MAX_CURSOR, description="Page cursor (a slot)")
    ] = None,
    generation: Annotated[
        int | None,
        Query(ge=0, le=MAX_CURSOR, description="Generation of `before_slot` (default: current)"),
    ] = None,
) -> dict[str, Any]:
    """Ticks ordered by (generation, slot), newest first.

    Slots count from 0 in every generation, so a cursor is a (generation, slot) pair:
    the page holds ticks strictly before it. `next` is the cursor of the following
    page (None on the last one); pass its fields back as query parameters. A
    `generation` alone starts the listing at the end of that generation.
    """
    with Session(rt.db) as session:
        bot = _bot(session, name)
        query = select(Tick).where(Tick.bot == name)
        gen = bot.generation if generation is None else generation
        if before_slot is not None:
            query = query.where(
                or_(
                    col(Tick.generation) < gen,
                    (col(Tick.generation) == gen) & (col(Tick.slot) < before_slot),
                )
            )
        elif generation is not None:
            query = query.where(col(Tick.generation) <= gen)
        rows = session.exec(
            query.order_by(col(Tick.generation).desc(), col(Tick.slot).desc()).limit(limit)
        ).all()
    last = rows[-1] if len(rows) == limit else None
    return {
        "bot": name,
        "ticks": [tick_row(t) for t in rows],
        "next": {"generation": last.generation, "before_slot": last.slot} if last else None,
    }
