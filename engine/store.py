"""The database side of the trading kernel: orders and fills, as prepared statements.

`DbOrderStore` is the order store the live and paper ticks trade with; the backtest
trades with `engine.backtest.memory.MemoryOrderStore`, which keeps the same rows in
memory. Both satisfy `engine.orders.OrderStore`, so the order manager (client ids,
`pending_submit` before sending, fencing, reports, fills) is one piece of code.

The statements are `Prepared` (engine/prepared.py): a tick runs some of them every time,
and through Core's per-execute machinery each cost several times the query itself.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, Float, String, bindparam, case, func, insert, or_, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError

from engine import prepared
from engine.domain import OpenOrder, Side
from engine.exchange.gateway import OrderReport, OrderStatus
from engine.models import Fill, Order, OrderBase, UtcDateTime, utcnow
from engine.prepared import Prepared

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
    "side", "type", "amount", "price", "reason", "tag", "status", "error", "created_at",
    "updated_at",
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
