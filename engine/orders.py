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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Protocol

import structlog
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from engine import notify
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
from engine.models import Fill, Order, OrderBase, utcnow
from engine.store import LIVE, DbOrderStore

log = structlog.get_logger("engine.orders")

RECONCILE_GRACE_S = 15.0
"""How old a `pending_submit`/`unknown` order must be before "not found" means "never
reached the exchange" (exchanges index new orders with a small delay)."""
BINANCE_ID_CHARS = r"[.A-Z:/a-z0-9_-]"
ID_PREFIX = "be"
"""Marks the engine's orders (botengine) among others on the same account."""
_EPS = 1e-12


class OrderStore(Protocol):
    """Where orders and their fills are kept: the database (`engine.store.DbOrderStore`)
    live and on paper, memory in a backtest. Rows are `engine.models.OrderBase` objects."""

    def insert(self, values: dict[str, Any]) -> int | None:
        """Write a new order; its id, or None when its client order id exists already."""
        ...

    def by_cid(self, cid: str) -> OrderBase | None:
        """The order with this client order id."""
        ...

    def set_status(self, row: OrderBase, status: OrderStatus, error: str | None) -> OrderBase:
        """Write a new status (and error) to the order and to `row`; returns `row`."""
        ...

    def request_cancel(self, row: OrderBase, reason: str) -> OrderBase:
        """Record that the order is to be cancelled, and why; returns `row`."""
        ...

    def apply(self, row: OrderBase, report: OrderReport) -> str:
        """Book the fills `report` adds, write its status; returns the status before."""
        ...

    def fills_of(self, bot: str) -> Sequence[Fill]:
        """The bot's fills in the order they happened."""
        ...

    def live(self, bot: str) -> list[OrderBase]:
        """The bot's pending, unknown and open orders, oldest first."""
        ...

    def position(self, bot: str) -> float:
        """The bot's base-currency position from its fills."""
        ...

    def views(self, rows: list[OrderBase]) -> tuple[OpenOrder, ...]:
        """Rows of `live` as a strategy sees them (`view` of each). A store may hand out
        the same tuple while nothing changed (strategies may cache work on it)."""
        ...


Stores = OrderStore | Engine
"""An order store, or a database engine standing for its DbOrderStore."""


def as_store(store: Stores) -> OrderStore:
    """`store`, or the database store of an engine."""
    return DbOrderStore(store) if isinstance(store, Engine) else store


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
    store: Stores,
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
    now: datetime | None = None,
) -> OrderBase | None:
    """Write, fence, send once, record. Returns the row if the order was sent (whatever
    the answer), None if nothing was sent (too small, or this id was handled before).

    Raises FencedError (row marked rejected, reason `fenced`, nothing sent),
    OperationalError (credentials: the bot must stop) and ExchangeBannedError (the tick
    must stop sending); every other exchange failure is recorded on the row. `now`
    stamps the row (a backtest's time; the wall clock by default).
    """
    store = as_store(store)
    id_rules = client_id_rules(gateway.exchange_id)
    cid = client_order_id(bot, generation, slot, index, id_rules.max_len, id_rules.allowed)
    now = now or utcnow()
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
        "stop_price": intent.stop_price,
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
    row = OrderBase(**values)
    row.id = store.insert(values)
    if row.id is None:
        log.warning("order.duplicate", client_order_id=cid)
        _resolve_existing(store, gateway, cid)
        return None
    if row.status == OrderStatus.REJECTED.value:
        log.info("order.too_small", client_order_id=cid, error=row.error)
        return None
    try:
        fence()  # right before sending: a stopped bot sends nothing more
    except FencedError:
        store.set_status(row, OrderStatus.REJECTED, "fenced")
        log.info("order.fenced", client_order_id=cid)
        raise
    request = OrderRequest(
        rules.symbol, intent.side, intent.type, row.amount, cid, row.price, intent.stop_price
    )
    try:
        report = gateway.create_order(request)
    except OrderRejectedError as exc:
        log.info("order.rejected", client_order_id=cid, error=str(exc))
        return store.set_status(row, OrderStatus.REJECTED, str(exc))
    except OperationalError as exc:
        store.set_status(row, OrderStatus.REJECTED, str(exc))
        raise
    except TemporaryError as exc:  # timeout, lost answer, 5xx: the order may exist
        log.warning("order.unknown", client_order_id=cid, error=str(exc))
        stored = store.set_status(row, OrderStatus.UNKNOWN, str(exc))
        if isinstance(exc, ExchangeBannedError):
            raise
        return stored
    except BaseException as exc:
        store.set_status(row, OrderStatus.UNKNOWN, f"{type(exc).__name__}: {exc}")
        raise
    log.info(
        "order.sent",
        client_order_id=cid,
        status=report.status.value,
        filled=report.filled,
        side=intent.side.value,
        amount=row.amount,
    )
    return apply_report(store, row, report)


def _resolve_existing(store: OrderStore, gateway: Gateway, cid: str) -> None:
    """A retried slot found its order row: settle it by lookup, never by sending."""
    found = store.by_cid(cid)
    if found is not None and OrderStatus(found.status) in LIVE:
        _reconcile_row(store, gateway, found, None, RECONCILE_GRACE_S)


def apply_report(store: Stores, row: OrderBase, report: OrderReport) -> OrderBase:
    """Record what the exchange says about an order: status, fills and fees.

    Fills are booked for the part of `report.filled` not yet covered by fills, so
    applying the same report twice changes nothing (and the paper broker, which books
    its own fills, is not counted twice). Returns `row`, brought up to date.
    """
    before = as_store(store).apply(row, report)
    if report.status is OrderStatus.CLOSED and before != OrderStatus.CLOSED.value:
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


def reconcile(
    store: Stores, bot: str, gateway: Gateway, *, grace_s: float = RECONCILE_GRACE_S
) -> int:
    """Settle the bot's pending, unknown and open orders; returns how many changed status."""
    return settle(store, bot, gateway, grace_s=grace_s)[0]


def settle(
    store: Stores, bot: str, gateway: Gateway, *, grace_s: float = RECONCILE_GRACE_S
) -> tuple[int, tuple[OpenOrder, ...]]:
    """Settle the bot's pending, unknown and open orders against the exchange.

    One `fetch_open_orders` per symbol covers every still-resting order; the rest are
    looked up one by one by client order id. Not found and older than `grace_s` →
    `rejected` ("never reached the exchange"). Nothing is ever resent. Returns how many
    rows changed status, and the orders still live afterwards (the tick hands these to
    the strategy, so it costs one query when nothing changed). A bot with no such
    orders costs no request.
    """
    store = as_store(store)
    rows = store.live(bot)
    changed = 0
    for symbol in sorted({r.symbol for r in rows}):
        mine = [r for r in rows if r.symbol == symbol]
        resting: dict[str, OrderReport] | None = None
        if len(mine) > 1:
            resting = {o.client_order_id: o for o in gateway.fetch_open_orders(symbol)}
        for row in mine:
            report = None if resting is None else resting.get(row.client_order_id)
            changed += _reconcile_row(store, gateway, row, report, grace_s)
    if changed:
        rows = store.live(bot)
    return changed, store.views(rows)


def bots_with_live_orders(db: Engine) -> list[str]:
    """Bots that have orders pending, unknown or open (to settle at worker start)."""
    with Session(db) as session:
        query = select(Order.bot).where(col(Order.status).in_([s.value for s in LIVE]))
        return sorted(set(session.exec(query.distinct())))


def _reconcile_row(
    store: OrderStore, gateway: Gateway, row: OrderBase, report: OrderReport | None, grace_s: float
) -> int:
    before = row.status
    if report is None:
        report = gateway.fetch_order(row.symbol, row.client_order_id)
    if row.cancel_reason is not None and report is not None and report.status is OrderStatus.OPEN:
        # A cancel was recorded and the order still rests: its answer was lost (or it
        # never arrived). Ask again: a cancel is safe to repeat.
        apply_report(store, row, report)
        return int(cancel(store, gateway, row, row.cancel_reason).status != before)
    if report is not None and _unchanged(row, report):
        return 0  # still resting as it was: nothing to write (a grid's levels, every tick)
    if report is not None:
        after = apply_report(store, row, report).status
    elif utcnow() - row.created_at < timedelta(seconds=grace_s):
        return 0  # may still be on its way, or not yet indexed by the exchange
    elif before == OrderStatus.OPEN.value:
        gone = "no longer known to the exchange"
        after = store.set_status(row, OrderStatus.EXPIRED, gone).status
    else:
        never = "never reached the exchange"
        after = store.set_status(row, OrderStatus.REJECTED, never).status
    if after != before:
        log.info(
            "order.reconciled", client_order_id=row.client_order_id, before=before, after=after
        )
    return int(after != before)


def _unchanged(row: OrderBase, report: OrderReport) -> bool:
    """Whether `report` tells nothing the row does not hold already."""
    return (
        report.status == row.status  # a StrEnum: compares as its value, without the lookup
        and abs(report.filled - row.filled) <= _EPS * max(1.0, report.filled)
        and (report.exchange_order_id is None or report.exchange_order_id == row.exchange_order_id)
    )


def cancel(store: Stores, gateway: Gateway, row: OrderBase, reason: str) -> OrderBase:
    """Cancel one order the way orders are sent: the request is recorded first
    (`cancel_reason`), then sent; what the exchange answers is applied (a partial fill
    included). An unanswered cancel stays recorded: settling looks the order up and asks
    again while it still rests - it never guesses the outcome. Returns `row`, as now
    known. Raises ExchangeBannedError (the tick must stop sending)."""
    store = as_store(store)
    if row.cancel_reason is None:
        store.request_cancel(row, reason)
    try:
        report = gateway.cancel_order(row.symbol, row.client_order_id)
    except OrderRejectedError as exc:  # not known to the exchange: settling decides
        log.warning("order.cancel_failed", client_order_id=row.client_order_id, error=str(exc))
        return row
    except TemporaryError as exc:
        log.warning("order.cancel_unknown", client_order_id=row.client_order_id, error=str(exc))
        if isinstance(exc, ExchangeBannedError):
            raise
        return row
    apply_report(store, row, report)
    log.info(
        "order.canceled" if row.status == OrderStatus.CANCELED.value else "order.cancel_answered",
        client_order_id=row.client_order_id,
        status=row.status,
        reason=reason,
    )
    return row


def cancel_open(store: Stores, bot: str, gateway: Gateway) -> int:
    """Cancel every open order of the bot (`on_stop: cancel`); returns how many were
    cancelled. Orders the exchange no longer knows are settled by `reconcile`."""
    store = as_store(store)
    reconcile(store, bot, gateway)
    cancelled = 0
    for row in store.live(bot):
        if row.status == OrderStatus.OPEN.value:
            cancelled += cancel(store, gateway, row, "on_stop").status == "canceled"
    return cancelled


def open_orders(store: Stores, bot: str) -> tuple[OpenOrder, ...]:
    """The bot's orders that may rest on the book: open, and also pending or unknown
    ones (so a strategy does not place a level twice while one is being resolved)."""
    store = as_store(store)
    return store.views(store.live(bot))


_SIDES = {s.value: s for s in Side}
_TYPES = {t.value: t for t in OrderType}


def view(row: OrderBase) -> OpenOrder:
    """An order as a strategy sees it."""
    return OpenOrder(
        client_order_id=row.client_order_id,
        side=_SIDES[row.side],
        type=_TYPES[row.type],
        amount=row.amount,
        price=row.price,
        filled=row.filled,
        tag=row.tag,
        placed_at=int(row.created_at.timestamp() * 1000),
        canceling=row.cancel_reason is not None,
        stop_price=row.stop_price,
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


def position(store: Stores, bot: str) -> float:
    """The bot's base-currency position: its bought minus its sold fill amounts."""
    return as_store(store).position(bot)


def position_and_pnl(db: Engine, bot: str, price: float | None = None) -> PnL:
    """Position, average cost, realized and unrealized PnL, and fees from the bot's fills
    (average-cost method; unrealized at `price`, 0 without one)."""
    with Session(db) as session:
        rows = session.exec(
            select(Fill).where(Fill.bot == bot).order_by(col(Fill.filled_at), col(Fill.id))
        ).all()
    return pnl_from_fills(rows, price)


def pnl_from_fills(rows: Sequence[Fill], price: float | None = None) -> PnL:
    """The accounting behind `position_and_pnl`, for any sequence of fills."""
    realized = fees = pos = avg = 0.0
    for _, gained, fee, after, average in ledger(rows):
        realized += gained
        fees += fee
        pos, avg = after, average
    unrealized = pos * (price - avg) if price is not None and pos else 0.0
    return PnL(position=pos, average_cost=avg, realized=realized, unrealized=unrealized, fees=fees)


def pnl_history(rows: Sequence[Fill]) -> list[tuple[Fill, PnL]]:
    """The PnL after each fill, marked at that fill's price: the bot's curve over time."""
    realized = fees = 0.0
    curve = []
    for fill, gained, fee, pos, avg in ledger(rows):
        realized += gained
        fees += fee
        curve.append((fill, PnL(pos, avg, realized, pos * (fill.price - avg), fees)))
    return curve


def ledger(rows: Sequence[Fill]) -> Iterator[tuple[Fill, float, float, float, float]]:
    """Each fill with what it realized (average cost, before fees), its fee in quote
    currency, and the position and average cost after it: the one accounting of
    live, paper and backtest (the backtest's trade list reads it too).

    A fee charged in base currency (Binance buys) is treated as base sold at the fill
    price and paid out, so `PnL`'s invariant holds whatever the fee currency; a fee in
    a third currency (e.g. BNB) has no price here and is not counted.
    """
    pos = avg = 0.0
    for fill in rows:
        base, _, quote = fill.symbol.partition("/")
        signed = fill.amount if fill.side == Side.BUY.value else -fill.amount
        pos, avg, gained = _trade(pos, avg, signed, fill.price)
        fee = 0.0
        if fill.fee_currency == base:
            pos, avg, paid = _trade(pos, avg, -fill.fee, fill.price)
            gained += paid
            fee = fill.fee * fill.price
        elif fill.fee_currency == quote or fill.fee_currency is None:
            fee = fill.fee
        yield fill, gained, fee, pos, avg


def results(rows: Sequence[Fill]) -> Iterator[tuple[Fill, float, float | None]]:
    """Each fill with its fee in quote currency and, for a sell, its result: what it
    realized at average cost less its own fee and its share of the fees paid buying
    what it sold (a round trip's result after every fee). Buys have no result (None).
    The backtest's trade list and the protections read the same figures."""
    buy_fees = held = 0.0
    for fill, gained, fee, position, _ in ledger(rows):
        result: float | None = None
        if fill.side == Side.BUY.value:
            buy_fees += fee
        else:
            share = buy_fees * min(1.0, fill.amount / held) if held > 0 else 0.0
            buy_fees -= share
            result = gained - fee - share
        held = position
        yield fill, fee, result


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
