"""The order manager: every order is written before it is sent, and never sent twice.

`submit` computes a deterministic client order id from (bot, generation, slot, intent
index), inserts the row as `pending_submit` (the id is unique: a second attempt at the
same slot finds the row and never sends again), checks the fence, sends once, and
records what the exchange answered. A lost answer leaves the row `unknown`;
`reconcile` resolves it by looking the client order id up - never by resending.

Positions and PnL derive from `fills` rows only (`position_and_pnl`), so live and paper
trading account the same way. The same code path serves both: the gateway differs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any

import structlog
from sqlalchemy import Engine, Float, String, bindparam, case, func, insert, or_, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from engine import notify, prepared
from engine.domain import MarketRules, OpenOrder, OrderIntent, OrderType, Side, Ticker
from engine.errors import (
    ExchangeBannedError,
    FencedError,
    OperationalError,
    OrderRejectedError,
    TemporaryError,
)
from engine.exchange.catalog import client_id_rules
from engine.exchange.fills import floor_to_step, resolve_amount, round_to_step
from engine.exchange.gateway import Gateway, OrderReport, OrderRequest, OrderStatus
from engine.models import Fill, Order, UtcDateTime, utcnow
from engine.prepared import Prepared

log = structlog.get_logger("engine.orders")

RECONCILE_GRACE_S = 15.0
"""How old a `pending_submit`/`unknown` order must be before "not found" means "never
reached the exchange" (exchanges index new orders with a small delay)."""
BINANCE_ID_CHARS = r"[.A-Z:/a-z0-9_-]"
ID_PREFIX = "be"
"""Marks the engine's orders (botengine) among others on the same account."""
_LIVE = (OrderStatus.PENDING_SUBMIT, OrderStatus.UNKNOWN, OrderStatus.OPEN)
_EPS = 1e-12

# The two reads every tick makes, built once and run on a bare connection: an ORM
# session costs several times the query itself (see benchmarks.tickcost).
_orders = Order.__table__  # type: ignore[attr-defined]
_fills = Fill.__table__  # type: ignore[attr-defined]
_LIVE_ROWS = Prepared(
    sa_select(_orders)
    # OR of fixed parameters, not IN: an IN list is re-rendered on every execution
    # (SQLAlchemy's "expanding" parameters), ~0.1 ms of every tick.
    .where(_orders.c.bot == bindparam("bot"), or_(*(_orders.c.status == s.value for s in _LIVE)))
    .order_by(_orders.c.id)
)
_BY_CID = sa_select(_orders).where(_orders.c.client_order_id == bindparam("cid"))
# The statements of an order's life (submit, report, reconcile): a tenth of the ticks
# at saturation trade, and through Core these cost as much again as the tick's reads.
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


# -- client order ids ---------------------------------------------------------------


def client_order_id(
    bot: str,
    generation: int,
    slot: int,
    index: int,
    max_len: int = 36,
    allowed: str = BINANCE_ID_CHARS,
) -> str:
    """The deterministic client order id of intent `index` of a slot, fitted to the
    exchange: at most `max_len` characters from the regex class `allowed`.

    `be-grid-sol-3-1042-0` when it fits (the `be` prefix tells the engine's orders
    from manual ones on a shared account); otherwise `be-`, a readable prefix of the
    bot name and an 80-bit hash of the full id, so distinct orders never share an id.
    """
    canonical = f"{bot}-{generation}-{slot}-{index}"
    ok = _charset(allowed)
    readable = f"{ID_PREFIX}-{canonical}"
    if len(readable) <= max_len and ok.fullmatch(readable):
        return readable
    sep = "-" if ok.fullmatch("-") else ""
    head = f"{ID_PREFIX}{sep}"
    digest = hashlib.sha256(canonical.encode()).hexdigest()[: max(1, min(20, max_len - 3))]
    room = max_len - len(head) - len(digest) - len(sep)
    name = "".join(ch for ch in bot if ok.fullmatch(ch))[: max(0, room)]
    return (f"{head}{name}{sep}{digest}" if name else f"{head}{digest}")[-max_len:]


@lru_cache(maxsize=16)
def _charset(allowed: str) -> re.Pattern[str]:
    return re.compile(f"{allowed}+")


# -- sizing -------------------------------------------------------------------------


def size_order(
    intent: OrderIntent, rules: MarketRules, ticker: Ticker
) -> tuple[float, float | None]:
    """(amount, price) of `intent` rounded to the market's steps; below the exchange's
    minimums → OrderRejectedError (the exchange would refuse it anyway)."""
    if intent.type is OrderType.LIMIT:
        assert intent.price is not None
        price: float | None = round_to_step(intent.price, rules.price_step)
        reference = price or intent.price
    else:
        price = None
        reference = ticker.ask if intent.side is Side.BUY else ticker.bid
    amount = floor_to_step(resolve_amount(intent, reference), rules.amount_step)
    if amount <= 0 or amount < rules.min_amount:
        raise OrderRejectedError(f"amount {amount} below the minimum {rules.min_amount}")
    if amount * reference < rules.min_notional:
        raise OrderRejectedError(
            f"notional {amount * reference:.8g} below the minimum {rules.min_notional}"
        )
    return amount, price


# -- submit ---------------------------------------------------------------------------


def submit(
    db: Engine,
    gateway: Gateway,
    *,
    bot: str,
    generation: int,
    slot: int,
    index: int,
    intent: OrderIntent,
    ticker: Ticker,
    rules: MarketRules,
    fence: Callable[[], None],
) -> Order | None:
    """Write, fence, send once, record. Returns the row if the order was sent (whatever
    the answer), None if nothing was sent (too small, or this id was handled before).

    Raises FencedError (row marked rejected, reason `fenced`, nothing sent),
    OperationalError (credentials: the bot must stop) and ExchangeBannedError (the tick
    must stop sending); every other exchange failure is recorded on the row.
    """
    id_rules = client_id_rules(gateway.exchange_id)
    cid = client_order_id(bot, generation, slot, index, id_rules.max_len, id_rules.allowed)
    now = utcnow()
    values: dict[str, Any] = {
        "client_order_id": cid,
        "bot": bot,
        "generation": generation,
        "slot": slot,
        "intent_index": index,
        "exchange": gateway.exchange_id,
        "symbol": rules.symbol,
        "side": intent.side.value,
        "type": intent.type.value,
        "amount": 0.0,
        "price": intent.price,
        "reason": intent.reason,
        "tag": intent.tag,
        "status": OrderStatus.PENDING_SUBMIT.value,
        "error": None,
        "created_at": now,
        "updated_at": now,
    }
    try:
        values["amount"], values["price"] = size_order(intent, rules, ticker)
    except OrderRejectedError as exc:
        values["status"], values["error"] = OrderStatus.REJECTED.value, str(exc)
    row = Order(**values)
    row.id = _insert(db, values)
    if row.id is None:
        log.warning("order.duplicate", client_order_id=cid)
        _resolve_existing(db, gateway, cid)
        return None
    if row.status == OrderStatus.REJECTED.value:
        log.info("order.too_small", client_order_id=cid, error=row.error)
        return None
    try:
        fence()  # right before sending: a stopped bot sends nothing more
    except FencedError:
        _set_status(db, row, OrderStatus.REJECTED, "fenced")
        log.info("order.fenced", client_order_id=cid)
        raise
    request = OrderRequest(rules.symbol, intent.side, intent.type, row.amount, cid, row.price)
    try:
        report = gateway.create_order(request)
    except OrderRejectedError as exc:
        log.info("order.rejected", client_order_id=cid, error=str(exc))
        return _set_status(db, row, OrderStatus.REJECTED, str(exc))
    except OperationalError as exc:
        _set_status(db, row, OrderStatus.REJECTED, str(exc))
        raise
    except TemporaryError as exc:  # timeout, lost answer, 5xx: the order may exist
        log.warning("order.unknown", client_order_id=cid, error=str(exc))
        stored = _set_status(db, row, OrderStatus.UNKNOWN, str(exc))
        if isinstance(exc, ExchangeBannedError):
            raise
        return stored
    except BaseException as exc:
        _set_status(db, row, OrderStatus.UNKNOWN, f"{type(exc).__name__}: {exc}")
        raise
    log.info(
        "order.sent",
        client_order_id=cid,
        status=report.status.value,
        filled=report.filled,
        side=intent.side.value,
        amount=row.amount,
    )
    return apply_report(db, row, report)


def _insert(db: Engine, values: dict[str, Any]) -> int | None:
    """Write a new order row; its id, or None if its client order id exists already."""
    try:
        with prepared.transaction(db) as conn:
            key = conn.scalar(_INSERT_ORDER, values)
    except IntegrityError:
        return None
    return int(key)


def _resolve_existing(db: Engine, gateway: Gateway, cid: str) -> None:
    """A retried slot found its order row: settle it by lookup, never by sending."""
    with db.connect() as conn:
        found = conn.execute(_BY_CID, {"cid": cid}).first()
    if found is not None and OrderStatus(found.status) in _LIVE:
        _reconcile_row(db, gateway, Order(**found._mapping), None, RECONCILE_GRACE_S)


def _set_status(db: Engine, row: Order, status: OrderStatus, error: str | None) -> Order:
    """Write a new status and error to the row (and to `row`, which is returned)."""
    row.status, row.error, row.updated_at = status.value, error, utcnow()
    with prepared.transaction(db) as conn:
        conn.run(
            _SET_STATUS,
            {"p_id": row.id, "p_status": row.status, "p_error": error, "p_at": row.updated_at},
        )
    return row


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
    the fills ledger, in the caller's transaction."""
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


def apply_report(db: Engine, row: Order, report: OrderReport) -> Order:
    """Record what the exchange says about an order: status, fills and fees.

    Fill rows are added for the part of `report.filled` not yet covered by fill rows,
    so applying the same report twice changes nothing (and the paper broker, which
    books its own fill rows, is not counted twice). Returns `row`, brought up to date.
    """
    with prepared.transaction(db) as conn:
        found = conn.first(_BY_ID, {"p_id": row.id})
        amount, cost, fees = conn.first(_BOOKED, {"order_id": row.id})
        delta = report.filled - amount
        if delta > _EPS * max(1.0, report.filled):
            average = report.average or report.price or found.price or 0.0
            price = (average * report.filled - cost) / delta
            book_fill(
                conn,
                found,
                amount=delta,
                price=price if price > 0 else average,
                fee=max(0.0, report.fee - fees),
                fee_currency=report.fee_currency,
            )
        row.status = report.status.value
        row.exchange_order_id = report.exchange_order_id or found.exchange_order_id
        row.filled, row.average = report.filled, report.average
        row.fee, row.fee_currency = report.fee, report.fee_currency
        row.error = found.error if report.status is OrderStatus.REJECTED else None
        row.updated_at = utcnow()
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
    if report.status is OrderStatus.CLOSED and found.status != OrderStatus.CLOSED.value:
        notify.notify(
            notify.ORDER_FILLED,
            bot=row.bot,
            client_order_id=row.client_order_id,
            symbol=row.symbol,
            side=row.side,
            amount=row.filled,
            average=row.average,
        )
    return row


# -- reconcile and cancel -------------------------------------------------------------


def reconcile(db: Engine, bot: str, gateway: Gateway, *, grace_s: float = RECONCILE_GRACE_S) -> int:
    """Settle the bot's pending, unknown and open orders; returns how many changed status."""
    return settle(db, bot, gateway, grace_s=grace_s)[0]


def settle(
    db: Engine, bot: str, gateway: Gateway, *, grace_s: float = RECONCILE_GRACE_S
) -> tuple[int, list[OpenOrder]]:
    """Settle the bot's pending, unknown and open orders against the exchange.

    One `fetch_open_orders` per symbol covers every still-resting order; the rest are
    looked up one by one by client order id. Not found and older than `grace_s` →
    `rejected` ("never reached the exchange"). Nothing is ever resent. Returns how many
    rows changed status, and the orders still live afterwards (the tick hands these to
    the strategy, so it costs one query when nothing changed). A bot with no such
    orders costs no request.
    """
    rows = _live_rows(db, bot)
    changed = 0
    for symbol in sorted({r.symbol for r in rows}):
        mine = [r for r in rows if r.symbol == symbol]
        resting: dict[str, OrderReport] | None = None
        if len(mine) > 1:
            resting = {o.client_order_id: o for o in gateway.fetch_open_orders(symbol)}
        for row in mine:
            report = None if resting is None else resting.get(row.client_order_id)
            changed += _reconcile_row(db, gateway, row, report, grace_s)
    if changed:
        rows = _live_rows(db, bot)
    return changed, [_open_order(r) for r in rows]


def bots_with_live_orders(db: Engine) -> list[str]:
    """Bots that have orders pending, unknown or open (to settle at worker start)."""
    with Session(db) as session:
        query = select(Order.bot).where(col(Order.status).in_([s.value for s in _LIVE]))
        return sorted(set(session.exec(query.distinct())))


def _reconcile_row(
    db: Engine, gateway: Gateway, row: Order, report: OrderReport | None, grace_s: float
) -> int:
    before = row.status
    if report is None:
        report = gateway.fetch_order(row.symbol, row.client_order_id)
    if report is not None:
        after = apply_report(db, row, report).status
    elif utcnow() - row.created_at < timedelta(seconds=grace_s):
        return 0  # may still be on its way, or not yet indexed by the exchange
    elif before == OrderStatus.OPEN.value:
        after = _set_status(db, row, OrderStatus.EXPIRED, "no longer known to the exchange").status
    else:
        after = _set_status(db, row, OrderStatus.REJECTED, "never reached the exchange").status
    if after != before:
        log.info(
            "order.reconciled", client_order_id=row.client_order_id, before=before, after=after
        )
    return int(after != before)


def cancel_open(db: Engine, bot: str, gateway: Gateway) -> int:
    """Cancel every open order of the bot (`on_stop: cancel`); returns how many were
    cancelled. Orders the exchange no longer knows are settled by `reconcile`."""
    reconcile(db, bot, gateway)
    cancelled = 0
    for row in _live_rows(db, bot):
        if row.status != OrderStatus.OPEN.value:
            continue
        try:
            report = gateway.cancel_order(row.symbol, row.client_order_id)
        except OrderRejectedError as exc:
            log.warning("order.cancel_failed", client_order_id=row.client_order_id, error=str(exc))
            continue
        cancelled += apply_report(db, row, report).status == "canceled"
    return cancelled


def _live_rows(db: Engine, bot: str) -> list[Order]:
    with prepared.reading(db) as conn:
        rows = conn.mappings(_LIVE_ROWS, {"bot": bot})
    return [Order(**row) for row in rows]


def open_orders(db: Engine, bot: str) -> list[OpenOrder]:
    """The bot's orders that may rest on the book: open, and also pending or unknown
    ones (so a strategy does not place a level twice while one is being resolved)."""
    return [_open_order(r) for r in _live_rows(db, bot)]


def _open_order(row: Order) -> OpenOrder:
    return OpenOrder(
        client_order_id=row.client_order_id,
        side=Side(row.side),
        type=OrderType(row.type),
        amount=row.amount,
        price=row.price,
        filled=row.filled,
        tag=row.tag,
    )


# -- positions and PnL ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PnL:
    """A bot's position and profit from its fills, in quote currency.

    Invariant: change of (quote + base valued at `price`) = realized + unrealized - fees.
    """

    position: float
    average_cost: float
    realized: float
    unrealized: float
    fees: float

    @property
    def net(self) -> float:
        """Realized plus unrealized profit, after fees."""
        return self.realized + self.unrealized - self.fees


def position(db: Engine, bot: str) -> float:
    """The bot's base-currency position: its bought minus its sold fill amounts.

    One SQL aggregate per tick, rather than loading every fill the bot ever had.
    """
    with prepared.reading(db) as conn:
        return float(conn.scalar(_POSITION, {"bot": bot}))


def position_and_pnl(db: Engine, bot: str, price: float | None = None) -> PnL:
    """Position, average cost, realized and unrealized PnL, and fees from the bot's fills
    (average-cost method; unrealized at `price`, 0 without one)."""
    with Session(db) as session:
        rows = session.exec(
            select(Fill).where(Fill.bot == bot).order_by(col(Fill.filled_at), col(Fill.id))
        ).all()
    return pnl_from_fills(rows, price)


def pnl_from_fills(rows: Sequence[Fill], price: float | None = None) -> PnL:
    """The accounting behind `position_and_pnl`, for any sequence of fills.

    A fee charged in base currency (Binance buys) is treated as base sold at the fill
    price and paid out, so the invariant on `PnL` holds whatever the fee currency.
    """
    pos = avg = realized = fees = 0.0
    for fill in rows:
        base, _, quote = fill.symbol.partition("/")
        signed = fill.amount if fill.side == Side.BUY.value else -fill.amount
        pos, avg, gained = _trade(pos, avg, signed, fill.price)
        realized += gained
        if fill.fee_currency == base:
            pos, avg, gained = _trade(pos, avg, -fill.fee, fill.price)
            realized += gained
            fees += fill.fee * fill.price
        elif fill.fee_currency == quote or fill.fee_currency is None:
            fees += fill.fee
        # A fee in a third currency (e.g. BNB) has no price here and is not counted.
    unrealized = pos * (price - avg) if price is not None and pos else 0.0
    return PnL(position=pos, average_cost=avg, realized=realized, unrealized=unrealized, fees=fees)


def _trade(pos: float, avg: float, qty: float, price: float) -> tuple[float, float, float]:
    """Apply a signed trade to (position, average cost); returns the realized part."""
    if pos == 0 or (pos > 0) == (qty > 0):  # opening or adding
        new = pos + qty
        return new, (avg * pos + price * qty) / new if new else 0.0, 0.0
    closed = min(abs(qty), abs(pos)) * (1 if pos > 0 else -1)
    realized = closed * (price - avg)
    new = pos + qty
    if abs(new) < _EPS:
        return 0.0, 0.0, realized
    if (new > 0) != (pos > 0):  # flipped: the remainder opens at this price
        return new, price, realized
    return new, avg, realized
