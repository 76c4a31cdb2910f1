"""JSON-able views of database rows, shared by the CLI (`--json`) and the HTTP API.

One function per shape, so `botengine status --json` and `GET /api/v1/bots` can never
drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from engine.models import Bot, PaperBalance, Tick
from engine.schedule import due_at

if TYPE_CHECKING:  # the CLI imports this module; keep its start-up light
    from engine.domain import OpenOrder
    from engine.orders import PnL


def iso(value: datetime | None) -> str | None:
    """A timestamp as UTC ISO 8601, or None."""
    return value.astimezone(UTC).isoformat() if value else None


def bot_summary(bot: Bot) -> dict[str, Any]:
    """One bot's status as a JSON-able dict (CLI `status --json` and the API)."""
    running = bot.status == "running"
    next_due = due_at(bot.origin, bot.interval_s, bot.next_slot) if running else None
    return {
        "name": bot.name,
        "status": bot.status,
        "strategy": bot.strategy,
        "exchange": bot.exchange,
        "symbol": bot.symbol,
        "labels": [label for label in bot.labels.split(",") if label],
        "generation": bot.generation,
        "interval_s": bot.interval_s,
        "last_tick_at": iso(bot.last_tick_at),
        "next_due_at": datetime.fromtimestamp(next_due, UTC).isoformat() if next_due else None,
        "ticks_ok": bot.ticks_ok,
        "ticks_failed": bot.ticks_failed,
        "ticks_missed": bot.ticks_missed,
        "orders": bot.orders_sent,
        "last_error": bot.last_error,
    }


def tick_row(tick: Tick) -> dict[str, Any]:
    """One tick record as a JSON-able dict."""
    return {
        "generation": tick.generation,
        "slot": tick.slot,
        "due_at": iso(tick.due_at),
        "started_at": iso(tick.started_at),
        "finished_at": iso(tick.finished_at),
        "lateness_ms": round(tick.lateness_ms, 3),
        "duration_ms": round(tick.duration_ms, 3),
        "outcome": tick.outcome,
        "error": tick.error,
        "orders": tick.orders,
    }


def open_order_row(order: OpenOrder) -> dict[str, Any]:
    """One open (or pending, or unknown) order as a JSON-able dict."""
    return {
        "client_order_id": order.client_order_id,
        "side": order.side.value,
        "type": order.type.value,
        "amount": order.amount,
        "price": order.price,
        "filled": order.filled,
    }


def balances_view(rows: list[PaperBalance]) -> dict[str, dict[str, float]]:
    """Paper balances by currency: free, used (held by open orders) and total."""
    return {
        r.currency: {"free": r.free, "used": r.used, "total": r.free + r.used}
        for r in sorted(rows, key=lambda r: r.currency)
    }


def pnl_view(pnl: PnL, mark_price: float | None, mark_source: str | None) -> dict[str, Any]:
    """Position and profit, with the price the unrealized part was marked at."""
    return {
        "position": pnl.position,
        "average_cost": pnl.average_cost,
        "realized": pnl.realized,
        "unrealized": pnl.unrealized,
        "fees": pnl.fees,
        "net": pnl.net,
        "mark_price": mark_price,
        "mark_source": mark_source,
    }
