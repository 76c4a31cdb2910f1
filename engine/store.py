"""The database side of the tick and the trading kernel, as prepared statements: orders
and fills, the tick's guard, config and record. (The paper broker's own account SQL is
in engine/exchange/paper.py: it is the paper exchange's, not the engine's.)

`DbOrderStore` is the order store the live and paper ticks trade with; the backtest
trades with `engine.backtest.memory.MemoryOrderStore`, which keeps the same rows in
memory. Both satisfy `engine.orders.OrderStore`, so the order manager (client ids,
`pending_submit` before sending, fencing, reports, fills) is one piece of code.

The statements are `Prepared` (engine/prepared.py): a tick runs some of them every time,
and through Core's per-execute machinery each cost several times the query itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Engine, Float, String, bindparam, case, func, insert, or_, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError

from engine import prepared
from engine.domain import OpenOrder, Side
from engine.exchange.gateway import OrderReport, OrderStatus
from engine.logging import get_logger
from engine.models import (
    Bot,
    BotStatus,
    Fill,
    Order,
    OrderBase,
    StrategyState,
    Tick,
    TickOutcome,
    UtcDateTime,
    utcnow,
)
from engine.prepared import Prepared

log = get_logger("engine.store")

LIVE = (OrderStatus.PENDING_SUBMIT, OrderStatus.UNKNOWN, OrderStatus.OPEN)
"""Statuses of orders that may still change on the exchange."""
EPS = 1e-12

_orders = Order.__table__  # type: ignore[attr-defined]
_fills = Fill.__table__  # type: ignore[attr-defined]
_LIVE_ROWS = Prepared(
    sa_select(_orders)
    # OR of fixed parameters, not IN: an IN list is re-rendered on every execution
    # (SQLAlchemy's "expanding" parameters), ~0.1 ms of every tick.
    .where(_orders.c.bot == bindparam("bot"), or_(*(_orders.c.status == s.value for s in LIVE)))
    .order_by(_orders.c.id)
)
_BY_CID = Prepared(sa_select(_orders).where(_orders.c.client_order_id == bindparam("cid")))
_NEW_ORDER = (
    "client_order_id", "bot", "generation", "slot", "intent_index", "exchange", "symbol",
    "side", "type", "amount", "price", "stop_price", "reason", "tag", "status", "error",
    "created_at", "updated_at",
)  # fmt: skip
_INSERT_ORDER = Prepared(insert(_orders).returning(_orders.c.id), columns=_NEW_ORDER)
_INSERT_FILL = Prepared(insert(_fills), columns=[c.key for c in _fills.c if c.key != "id"])
_SET_STATUS = Prepared(
    update(_orders)
    .where(_orders.c.id == bindparam("p_id"))
    .values(
        status=bindparam("p_status"),
        error=bindparam("p_error", type_=String),
        updated_at=bindparam("p_at", type_=UtcDateTime()),
    )
)
_BY_ID = Prepared(sa_select(_orders).where(_orders.c.id == bindparam("p_id")))
_REQUEST_CANCEL = Prepared(
    update(_orders)
    .where(_orders.c.id == bindparam("p_id"))
    .values(
        cancel_reason=bindparam("p_reason", type_=String),
        updated_at=bindparam("p_at", type_=UtcDateTime()),
    )
)
_FILLS_OF = Prepared(
    sa_select(_fills)
    .where(_fills.c.bot == bindparam("bot"))
    .order_by(_fills.c.filled_at, _fills.c.id)
)
_APPLY = Prepared(
    update(_orders)
    .where(_orders.c.id == bindparam("p_id"))
    .values(
        status=bindparam("p_status"),
        exchange_order_id=bindparam("p_xid", type_=String),
        filled=bindparam("p_filled"),
        average=bindparam("p_average", type_=Float),
        fee=bindparam("p_fee"),
        fee_currency=bindparam("p_fee_currency", type_=String),
        error=bindparam("p_error", type_=String),
        updated_at=bindparam("p_at", type_=UtcDateTime()),
    )
)
# What fill rows already cover of an order: amount, cost and fees.
_BOOKED = Prepared(
    sa_select(
        func.coalesce(func.sum(_fills.c.amount), 0.0),
        func.coalesce(func.sum(_fills.c.amount * _fills.c.price), 0.0),
        func.coalesce(func.sum(_fills.c.fee), 0.0),
    ).where(_fills.c.order_id == bindparam("order_id"))
)
_POSITION = Prepared(
    sa_select(
        func.coalesce(
            func.sum(
                case((_fills.c.side == Side.BUY.value, _fills.c.amount), else_=-_fills.c.amount)
            ),
            0.0,
        )
    ).where(_fills.c.bot == bindparam("bot"))
)


def book_fill(
    conn: prepared.Session,
    order: Any,
    *,
    amount: float,
    price: float,
    fee: float,
    fee_currency: str | None,
) -> None:
    """Add one fill of `order` (any row of it: its id, bot, symbol and side are read) to
    the fills ledger, in the caller's transaction (the paper broker books its own)."""
    conn.run(
        _INSERT_FILL,
        {
            "order_id": order.id,
            "bot": order.bot,
            "symbol": order.symbol,
            "side": order.side,
            "amount": amount,
            "price": price,
            "fee": fee,
            "fee_currency": fee_currency,
            "filled_at": utcnow(),
        },
    )


def fill_delta(
    report: OrderReport, booked: tuple[float, float, float], fallback_price: float | None
) -> tuple[float, float, float] | None:
    """The (amount, price, fee) of the part of `report.filled` that fills booked so far
    (`booked`: amount, cost, fees) do not cover; None when they cover it all. Applying a
    report twice books nothing the second time."""
    amount, cost, fees = booked
    delta = report.filled - amount
    if delta <= EPS * max(1.0, report.filled):
        return None
    average = report.average or report.price or fallback_price or 0.0
    price = (average * report.filled - cost) / delta
    return delta, price if price > 0 else average, max(0.0, report.fee - fees)


class DbOrderStore:
    """Orders and fills in the database (SQLite or PostgreSQL)."""

    def __init__(self, db: Engine) -> None:
        self.db = db

    def insert(self, values: dict[str, Any]) -> int | None:
        """Write a new order row; its id, or None if its client order id exists already."""
        try:
            with prepared.transaction(self.db) as conn:
                key = conn.scalar(_INSERT_ORDER, values)
        except IntegrityError:
            return None
        return int(key)

    def by_cid(self, cid: str) -> OrderBase | None:
        """The order with this client order id."""
        with prepared.reading(self.db) as conn:
            found = conn.mappings(_BY_CID, {"cid": cid})
        return OrderBase.model_construct(**found[0]) if found else None

    def set_status(self, row: OrderBase, status: OrderStatus, error: str | None) -> OrderBase:
        """Write a new status and error to the row (and to `row`, which is returned)."""
        row.status, row.error, row.updated_at = status.value, error, utcnow()
        with prepared.transaction(self.db) as conn:
            conn.run(
                _SET_STATUS,
                {"p_id": row.id, "p_status": row.status, "p_error": error, "p_at": row.updated_at},
            )
        return row

    def request_cancel(self, row: OrderBase, reason: str) -> OrderBase:
        """Record that the order is to be cancelled, and why (before the cancel is sent)."""
        row.cancel_reason, row.updated_at = reason, utcnow()
        with prepared.transaction(self.db) as conn:
            conn.run(_REQUEST_CANCEL, {"p_id": row.id, "p_reason": reason, "p_at": row.updated_at})
        return row

    def fills_of(self, bot: str) -> list[Fill]:
        """The bot's fills, oldest first (read only for bots with exits or protections)."""
        with prepared.reading(self.db) as conn:
            return [Fill(**r) for r in conn.mappings(_FILLS_OF, {"bot": bot})]

    def apply(self, row: OrderBase, report: OrderReport) -> str:
        """Book the fills `report` adds and write its status to the row (and `row`), in
        one transaction; returns the status the row had before."""
        with prepared.transaction(self.db) as conn:
            found = conn.first(_BY_ID, {"p_id": row.id})
            booked = tuple(conn.first(_BOOKED, {"order_id": row.id}))
            delta = fill_delta(report, booked, found.price)
            if delta is not None:
                amount, price, fee = delta
                book_fill(
                    conn,
                    found,
                    amount=amount,
                    price=price,
                    fee=fee,
                    fee_currency=report.fee_currency,
                )
            update_from_report(row, report, found.error, found.exchange_order_id)
            conn.run(
                _APPLY,
                {
                    "p_id": row.id,
                    "p_status": row.status,
                    "p_xid": row.exchange_order_id,
                    "p_filled": row.filled,
                    "p_average": row.average,
                    "p_fee": row.fee,
                    "p_fee_currency": row.fee_currency,
                    "p_error": row.error,
                    "p_at": row.updated_at,
                },
            )
        return str(found.status)

    def live(self, bot: str) -> list[OrderBase]:
        """The bot's pending, unknown and open orders, oldest first."""
        with prepared.reading(self.db) as conn:
            rows = conn.mappings(_LIVE_ROWS, {"bot": bot})
        return [OrderBase.model_construct(**row) for row in rows]

    def views(self, rows: list[OrderBase]) -> tuple[OpenOrder, ...]:
        """The rows as a strategy sees them."""
        from engine.orders import view  # the order manager imports this module

        return tuple(view(r) for r in rows)

    def position(self, bot: str) -> float:
        """The bot's base-currency position: bought minus sold fill amounts (one SQL
        aggregate per tick, rather than loading every fill the bot ever had)."""
        with prepared.reading(self.db) as conn:
            return float(conn.scalar(_POSITION, {"bot": bot}))


def update_from_report(
    row: OrderBase, report: OrderReport, error: str | None, exchange_order_id: str | None
) -> None:
    """Bring `row` up to date with what the exchange reported (both stores)."""
    row.status = report.status.value
    row.exchange_order_id = report.exchange_order_id or exchange_order_id
    row.filled, row.average = report.filled, report.average
    row.fee, row.fee_currency = report.fee, report.fee_currency
    row.error = error if report.status is OrderStatus.REJECTED else None
    row.updated_at = utcnow()


# -- the tick's statements (engine.tick): guard, config, record ------------------------

_bots = Bot.__table__  # type: ignore[attr-defined]
_states = StrategyState.__table__  # type: ignore[attr-defined]
_GUARD = Prepared(
    sa_select(_bots.c.status, _bots.c.generation, _bots.c.runner, _states.c.state)
    .select_from(_bots.outerjoin(_states, _states.c.bot == _bots.c.name))
    .where(_bots.c.name == bindparam("p_bot"))
)
_LOAD_CONFIG = sa_select(_bots.c.generation, _bots.c.config, _bots.c.source).where(
    _bots.c.name == bindparam("p_name")
)


def guard_row(db: Engine, bot: str) -> Any:
    """(status, generation, runner, state) of a bot in one statement, or None: what the
    tick's database guard checks, with the strategy state it needs anyway."""
    with prepared.reading(db) as conn:
        return conn.first(_GUARD, {"p_bot": bot})


def config_row(db: Engine, bot: str) -> Any:
    """(generation, config, source) of a bot, or None (once per generation and process)."""
    with db.connect() as conn:
        return conn.execute(_LOAD_CONFIG, {"p_name": bot}).first()


@dataclass(frozen=True, slots=True)
class TickRecord:
    """What step 5 writes: one row in `ticks` and the bot's counters."""

    bot: str
    generation: int
    slot: int
    due: float
    started: float
    finished: float
    outcome: TickOutcome
    error: str | None
    orders: int
    next_slot: int
    missed: int  # slots skipped between this one and next_slot
    state: dict[str, Any] | None = None
    pause: str | None = None  # a protection tripped: the bot is paused, with this reason


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


# Step 5's statements, prepared once: Core's per-execute machinery costs more CPU than
# SQLite running them (see engine.prepared).
_TICK_COLUMNS = (
    "bot",
    "generation",
    "slot",
    "due_at",
    "started_at",
    "finished_at",
    "lateness_ms",
    "duration_ms",
    "outcome",
    "error",
    "orders",
    "worker",
)
# The bot's schedule points at this tick's slot, or behind it: at slots whose ticks ran
# while the database was unreachable, unrecorded (they count as missed).
_OWNS_POINTER = _bots.c.next_slot <= bindparam("p_slot")
_INSERT_TICK = Prepared(insert(Tick.__table__), columns=_TICK_COLUMNS)  # type: ignore[attr-defined]
_UPDATE_BOT = Prepared(
    update(_bots)
    .where(_bots.c.name == bindparam("p_name"), _bots.c.generation == bindparam("p_gen"))
    .values(
        ticks_ok=_bots.c.ticks_ok + bindparam("p_ok"),
        ticks_failed=_bots.c.ticks_failed + bindparam("p_failed"),
        # The gap up to the successor, unless the chain was moved past this slot while it
        # ran (a reconciler that took this tick for dead counts its own gap): the SET
        # expressions all read the row as it was before this update.
        ticks_missed=_bots.c.ticks_missed
        + case(
            (_OWNS_POINTER, bindparam("p_missed") + bindparam("p_slot") - _bots.c.next_slot),
            else_=0,
        ),
        orders_sent=_bots.c.orders_sent + bindparam("p_orders"),
        consecutive_failures=case(
            (bindparam("p_failed") == 1, _bots.c.consecutive_failures + 1), else_=0
        ),
        last_error=func.coalesce(bindparam("p_error", type_=String), _bots.c.last_error),
        last_tick_at=bindparam("p_at", type_=UtcDateTime()),
        updated_at=bindparam("p_at", type_=UtcDateTime()),
        # Nor does it move a pointer a reconciler moved on.
        next_slot=case((_OWNS_POINTER, bindparam("p_next")), else_=_bots.c.next_slot),
    )
    .returning(_bots.c.status, _bots.c.generation, _bots.c.consecutive_failures)
)
_SET_HALTED = Prepared(
    update(_bots)
    .where(_bots.c.name == bindparam("p_name"), _bots.c.generation == bindparam("p_gen"))
    .values(status=bindparam("p_status"), last_error=bindparam("p_error", type_=String))
)
_UPDATE_STATE = Prepared(
    update(_states)
    .where(_states.c.bot == bindparam("p_bot"))
    .values(
        state=bindparam("p_state", type_=JSON), updated_at=bindparam("p_at", type_=UtcDateTime())
    )
)
_INSERT_STATE = Prepared(insert(_states), columns=("bot", "state", "updated_at"))


def record_tick(
    db: Engine, rec: TickRecord, worker: str, *, fatal: bool, max_failures: int
) -> BotStatus:
    """Step 5: write the tick, the strategy state and the counters in one transaction.

    Returns the bot's status afterwards. The failure policy lives here: a fatal error or
    too many failures in a row move the bot to `error`, in the same transaction as the
    tick that decided it.
    """
    failed = rec.outcome is TickOutcome.FAILED
    at = _ts(rec.finished)
    try:
        with prepared.transaction(db) as conn:
            conn.run(
                _INSERT_TICK,
                {
                    "bot": rec.bot,
                    "generation": rec.generation,
                    "slot": rec.slot,
                    "due_at": _ts(rec.due),
                    "started_at": _ts(rec.started),
                    "finished_at": at,
                    "lateness_ms": (rec.started - rec.due) * 1000,
                    "duration_ms": (rec.finished - rec.started) * 1000,
                    "outcome": rec.outcome.value,
                    "error": rec.error,
                    "orders": rec.orders,
                    "worker": worker,
                },
            )
            row = conn.first(
                _UPDATE_BOT,
                {
                    "p_name": rec.bot,
                    "p_ok": int(rec.outcome is TickOutcome.OK),
                    "p_failed": int(failed),
                    "p_orders": rec.orders,
                    "p_error": rec.error,
                    "p_at": at,
                    "p_gen": rec.generation,
                    "p_slot": rec.slot,
                    "p_next": rec.next_slot,
                    "p_missed": rec.missed,
                },
            )
            if row is None or row[1] != rec.generation:
                return BotStatus.STOPPED
            status, failures = BotStatus(row[0]), int(row[2])
            if rec.state is not None:
                params = {"p_bot": rec.bot, "p_state": rec.state, "p_at": at}
                if not conn.run(_UPDATE_STATE, params):
                    conn.run(_INSERT_STATE, {"bot": rec.bot, "state": rec.state, "updated_at": at})
            if status == BotStatus.RUNNING and rec.pause is not None and not failed:
                status = BotStatus.PAUSED
                conn.run(
                    _SET_HALTED,
                    {
                        "p_name": rec.bot,
                        "p_gen": rec.generation,
                        "p_status": status.value,
                        "p_error": rec.pause,
                    },
                )
            if status == BotStatus.RUNNING and (fatal or failures >= max_failures):
                status = BotStatus.ERROR
                conn.run(
                    _SET_HALTED,
                    {
                        "p_name": rec.bot,
                        "p_gen": rec.generation,
                        "p_status": status.value,
                        "p_error": f"{failures} failure(s) in a row; last: {rec.error}",
                    },
                )
            return status
    except IntegrityError:
        # The slot was recorded already: a second run after Redis lost its claims.
        log.warning("tick.duplicate_record")
        return BotStatus.RUNNING
