"""`PaperGateway`: the paper broker (the default mode) behind the same Gateway protocol.

Market data is real: it comes from an inner data gateway (ccxt on the simulator or any
exchange, through the shared market-data cache). Fills are simulated by the pure model
in `engine.exchange.fills`, shared with the backtester. Balances live in the
`paper_balances` table per bot, initialised from the bot's `paper.balances` on first
use.

The `orders` table is the paper exchange's order book: the order manager writes a row
as `pending_submit` before sending; accepting it, the paper broker stamps the row with
a `paper-<id>` exchange id, its status and fills, and moves the balances, all in one
transaction. A row without an exchange id was never seen by the "exchange", so
`fetch_order` answers None for it exactly as a real exchange would. A resting limit
order reserves its cost (moved from `free` to `used`) and fills at its price when a
closed candle of the bot's timeframe crosses it, walked in the order of
`engine.exchange.fills` (the backtest's model), checked on every call of this gateway
(so at least once per tick).

Balance updates are conditional SQL updates (`... WHERE free + delta >= 0`), so no
interleaving of ticks, threads or processes can drive a balance negative.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Engine, Float, String, bindparam, case, func, insert, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError

from engine import prepared
from engine.domain import Candle, MarketRules, OrderType, Side, Ticker
from engine.errors import OrderRejectedError
from engine.exchange import fills
from engine.exchange.gateway import Gateway, OrderReport, OrderRequest, OrderStatus
from engine.models import Order, PaperBalance, UtcDateTime, utcnow
from engine.prepared import Prepared
from engine.schedule import timeframe_ms
from engine.store import book_fill

PAPER_PREFIX = "paper-"

log = structlog.get_logger("engine.exchange.paper")

_balances = PaperBalance.__table__  # type: ignore[attr-defined]
_orders = Order.__table__  # type: ignore[attr-defined]
# Prepared statements: every tick reads balances, and an order costs a dozen statements;
# through Core each costs several times the query itself (see engine/prepared.py).
_BALANCES = Prepared(
    sa_select(_balances.c.currency, _balances.c.free, _balances.c.used).where(
        _balances.c.bot == bindparam("bot")
    )
)
_HAS_BALANCES = Prepared(
    sa_select(_balances.c.currency).where(_balances.c.bot == bindparam("bot")).limit(1)
)
_USED = Prepared(
    sa_select(_balances.c.used).where(
        _balances.c.bot == bindparam("bot"), _balances.c.currency == bindparam("currency")
    )
)
_INSERT_BALANCE = Prepared(insert(_balances), columns=("bot", "currency", "free", "used"))
# Conditional: a move that would overdraw `free` (or `used`) matches no row.
_MOVE = Prepared(
    update(_balances)
    .where(
        _balances.c.bot == bindparam("p_bot"),
        _balances.c.currency == bindparam("p_currency"),
        _balances.c.free + bindparam("p_free") >= 0,
        _balances.c.used + bindparam("p_used") >= -1e-9,
    )
    .values(
        free=_balances.c.free + bindparam("p_free"),
        # Floored at 0: float dust of a released reservation must not show as -1e-17.
        used=case(
            (_balances.c.used + bindparam("p_used") < 0, 0.0),
            else_=_balances.c.used + bindparam("p_used"),
        ),
    )
)
_BY_ID = Prepared(sa_select(_orders).where(_orders.c.id == bindparam("id")))
_BY_CID = Prepared(sa_select(_orders).where(_orders.c.client_order_id == bindparam("cid")))
_OPEN = (
    sa_select(_orders)
    .where(
        _orders.c.bot == bindparam("bot"),
        _orders.c.status == OrderStatus.OPEN.value,
        _orders.c.exchange_order_id.startswith(PAPER_PREFIX),
    )
    .order_by(_orders.c.id)
)
_OPEN_ROWS = Prepared(_OPEN)
_OPEN_ROWS_OF = Prepared(_OPEN.where(_orders.c.symbol == bindparam("symbol")))
_INSERT_ORDER = Prepared(
    insert(_orders).returning(*_orders.c),
    columns=(
        "client_order_id", "bot", "generation", "slot", "intent_index", "exchange", "symbol",
        "side", "type", "amount", "price", "status", "created_at", "updated_at",
    ),
)  # fmt: skip
# A status change; the other columns change only where a value is given (not NULL).
_UPDATE_ORDER = Prepared(
    update(_orders)
    .where(_orders.c.id == bindparam("p_id"))
    .values(
        status=bindparam("p_status"),
        exchange_order_id=func.coalesce(
            bindparam("p_xid", type_=String), _orders.c.exchange_order_id
        ),
        filled=func.coalesce(bindparam("p_filled", type_=Float), _orders.c.filled),
        average=func.coalesce(bindparam("p_average", type_=Float), _orders.c.average),
        fee=func.coalesce(bindparam("p_fee", type_=Float), _orders.c.fee),
        fee_currency=func.coalesce(
            bindparam("p_fee_currency", type_=String), _orders.c.fee_currency
        ),
        updated_at=bindparam("p_at", type_=UtcDateTime()),
    )
    .returning(*_orders.c)
)


class PaperGateway:
    """A simulated account of one bot, over real market data."""

    def __init__(
        self,
        bot: str,
        data: Gateway,
        db: Engine,
        *,
        balances: Mapping[str, float],
        model: fills.FillModel | None = None,
        timeframe: str = "1m",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bot = bot
        self.timeframe = timeframe
        self.width_ms = timeframe_ms(timeframe)
        self.clock = clock
        self.data = data
        self.db = db
        self.exchange_id = data.exchange_id
        self.stop_orders = False  # exits of paper bots are emulated by the engine
        self.initial_balances = dict(balances)
        self.model = model or fills.FillModel()
        self._initialised = False

    # -- market data: straight from the (cached) data gateway --------------------------

    def market_rules(self, symbol: str) -> MarketRules:
        """Precision and minimums of `symbol`, as the real exchange lists them."""
        return self.data.market_rules(symbol)

    def fetch_ticker(self, symbol: str) -> Ticker:
        """Best bid/ask and last price from the real market."""
        return self.data.fetch_ticker(symbol)

    def fetch_ohlcv(self, symbol: str, timeframe: str, limit: int) -> list[Candle]:
        """The `limit` most recent real candles, oldest first."""
        return self.data.fetch_ohlcv(symbol, timeframe, limit)

    # -- the simulated account -------------------------------------------------------

    def fetch_balances(self) -> dict[str, float]:
        """Free paper balance per currency (after filling crossed limit orders)."""
        return {currency: free for currency, (free, _) in self.balances_detail().items()}

    def balances_detail(self) -> dict[str, tuple[float, float]]:
        """(free, used) per currency: `used` is reserved by resting limit orders.

        Resting orders are not swept here: the tick settles them (fetch_order /
        fetch_open_orders sweep) right before it reads balances, and a sweep costs a
        query on every tick of every bot.
        """
        with prepared.reading(self.db) as conn:
            rows = conn.rows(_BALANCES, {"bot": self.bot})
        if not rows and not self._initialised:
            self._ensure_balances()
            with prepared.reading(self.db) as conn:
                rows = conn.rows(_BALANCES, {"bot": self.bot})
        self._initialised = self._initialised or bool(rows)
        return {currency: (free, used) for currency, free, used in rows}

    def create_order(self, request: OrderRequest) -> OrderReport:
        """Fill a market order now, or rest a limit order; unpayable → OrderRejectedError."""
        if request.stop_price is not None:
            raise OrderRejectedError("the paper broker takes no stop orders")
        self._ensure_balances()
        self._sweep(request.symbol)
        ticker = self.data.fetch_ticker(request.symbol)
        base, quote = _currencies(request.symbol)
        if request.type is OrderType.MARKET:
            price = fills.market_price(request.side, ticker, self.model)
            fill: fills.Fill | None = fills.fill_at(
                request.side, request.amount, price, self.model, quote=quote
            )
        else:
            if request.price is None:
                raise OrderRejectedError("a limit order needs a price")
            fill = None
            if fills.crossed_by_ticker(request.side, request.price, ticker):
                fill = fills.fill_at(
                    request.side, request.amount, request.price, self.model, quote=quote
                )
        # Balances, the order row and its fill in one transaction: all or nothing.
        with prepared.transaction(self.db) as conn:
            row = self._row(conn, request)
            if row.exchange_order_id is not None:  # accepted before: answer as before
                return _report(row)
            if fill is not None:
                values = self._settle(conn, row, fill, base, quote, reserved=False)
            else:
                self._reserve(conn, request, base, quote)
                values = {"status": OrderStatus.OPEN.value}
            values["exchange_order_id"] = f"{PAPER_PREFIX}{row.id}"
            return _report(_update_order(conn, row.id, values))

    def fetch_order(self, symbol: str, client_order_id: str) -> OrderReport | None:
        """The paper order with this client id; None when it was never accepted."""
        self._sweep(symbol)
        with prepared.reading(self.db) as conn:
            row = self._find(conn, client_order_id)
        return None if row is None else _report(row)

    def cancel_order(self, symbol: str, client_order_id: str) -> OrderReport:
        """Cancel a resting paper order, releasing its reservation."""
        self._sweep(symbol)
        base, quote = _currencies(symbol)
        with prepared.transaction(self.db) as conn:
            row = self._find(conn, client_order_id)
            if row is None:
                raise OrderRejectedError(f"cannot cancel unknown order {client_order_id}")
            if row.status == OrderStatus.OPEN.value:
                self._release(conn, row, base, quote)
                row = _update_order(conn, row.id, {"status": OrderStatus.CANCELED.value})
            return _report(row)

    def fetch_open_orders(self, symbol: str) -> list[OrderReport]:
        """This bot's resting paper orders on `symbol`."""
        self._sweep(symbol)
        with prepared.reading(self.db) as conn:
            return [_report(row) for row in self._open_rows(conn, symbol)]

    # -- internals -------------------------------------------------------------------

    def _sweep(self, symbol: str | None) -> None:
        """Fill every resting limit order a closed candle since it was placed crossed,
        in the order each candle's path reaches them (engine.exchange.fills)."""
        with prepared.reading(self.db) as conn:
            resting = self._open_rows(conn, symbol)
        now_ms = int(self.clock() * 1000)
        for sym in sorted({order.symbol for order in resting}):
            mine = [o for o in resting if o.symbol == sym]
            placed = min(_ms(o.created_at) for o in mine)
            # The candles that closed since the oldest order was placed (and one more).
            needed = min(1000, (now_ms - placed) // self.width_ms + 2)
            candles = self.data.fetch_ohlcv(sym, self.timeframe, needed)
            for candle in candles:
                end = candle.ts + self.width_ms
                if end > now_ms:
                    break  # still forming: its range is not known yet
                eligible = [o for o in mine if _ms(o.created_at) < end]
                for _, order in fills.crossings(eligible, candle, _side_price):
                    if self._fill_resting(order):
                        mine.remove(order)

    def _fill_resting(self, order: Any) -> bool:
        """Fill one resting order at its price; False when it could not be (or was not
        open any more)."""
        side, price = Side(order.side), order.price or 0.0
        base, quote = _currencies(order.symbol)
        fill = fills.fill_at(side, order.amount, price, self.model, quote=quote)
        try:
            with prepared.transaction(self.db) as conn:
                row = conn.first(_BY_ID, {"id": order.id})
                if row is None or row.status != OrderStatus.OPEN.value:
                    return False  # filled or cancelled meanwhile
                values = self._settle(conn, row, fill, base, quote, reserved=True)
                _update_order(conn, row.id, values)
        except OrderRejectedError as exc:
            # Only when the fee rate rose while it rested and free funds cannot cover
            # the difference: it stays open rather than break every call of the bot.
            log.warning("paper.fill_refused", client_order_id=order.client_order_id, error=str(exc))
            return False
        log.info(
            "paper.limit_filled", bot=self.bot, client_order_id=order.client_order_id, price=price
        )
        return True

    def _open_rows(self, conn: prepared.Session, symbol: str | None) -> list[Any]:
        if symbol is None:
            return conn.rows(_OPEN_ROWS, {"bot": self.bot})
        return conn.rows(_OPEN_ROWS_OF, {"bot": self.bot, "symbol": symbol})

    def _find(self, conn: prepared.Session, client_order_id: str) -> Any:
        row = conn.first(_BY_CID, {"cid": client_order_id})
        if row is None or row.bot != self.bot or row.exchange_order_id is None:
            return None
        return row

    def _row(self, conn: prepared.Session, request: OrderRequest) -> Any:
        """The order manager's row for `request` (created here for direct use)."""
        row = conn.first(_BY_CID, {"cid": request.client_order_id})
        if row is None:
            now = utcnow()
            row = conn.first(
                _INSERT_ORDER,
                {
                    "client_order_id": request.client_order_id,
                    "bot": self.bot,
                    "generation": 0,
                    "slot": 0,
                    "intent_index": 0,
                    "exchange": self.exchange_id,
                    "symbol": request.symbol,
                    "side": request.side.value,
                    "type": request.type.value,
                    "amount": request.amount,
                    "price": request.price,
                    "status": OrderStatus.PENDING_SUBMIT.value,
                    "created_at": now,
                    "updated_at": now,
                },
            )
        elif row.bot != self.bot:
            raise OrderRejectedError(f"client order id {request.client_order_id} is taken")
        return row

    def _ensure_balances(self) -> None:
        """Create this bot's balance rows from the config on first use (own transaction)."""
        if self._initialised:
            return
        with prepared.reading(self.db) as conn:
            found = conn.first(_HAS_BALANCES, {"bot": self.bot})
        if found is None:
            try:
                with prepared.transaction(self.db) as conn:
                    for currency, amount in self.initial_balances.items():
                        row = {"bot": self.bot, "currency": currency, "free": amount, "used": 0.0}
                        conn.run(_INSERT_BALANCE, row)
            except IntegrityError:
                pass  # another thread or process initialised them first
        self._initialised = True

    def _move(self, conn: prepared.Session, currency: str, free: float, used: float = 0.0) -> None:
        """Add `free`/`used` to one balance, refusing (rejecting) any overdraft."""
        move = {"p_bot": self.bot, "p_currency": currency, "p_free": free, "p_used": used}
        if conn.run(_MOVE, move) == 1:
            return
        key = {"bot": self.bot, "currency": currency}
        if conn.first(_USED, key) is None:
            # A currency the bot never held (a new base): it starts from zero.
            conn.run(_INSERT_BALANCE, {**key, "free": 0.0, "used": 0.0})
            if conn.run(_MOVE, move) == 1:
                return
        raise OrderRejectedError(f"insufficient {currency} balance for this paper order")

    def _reserve(
        self, conn: prepared.Session, request: OrderRequest, base: str, quote: str
    ) -> None:
        assert request.price is not None
        side, amount, price = request.side, request.amount, request.price
        currency, held = fills.reservation(side, amount, price, self.model, base=base, quote=quote)
        self._move(conn, currency, -held, held)

    def _release(self, conn: prepared.Session, row: Any, base: str, quote: str) -> None:
        """Give a cancelled order's reservation back (used → free)."""
        currency, amount = self._reservation(row, base, quote)
        amount = min(amount, self._used(conn, currency))  # the fee rate may have changed
        self._move(conn, currency, amount, -amount)

    def _reservation(self, row: Any, base: str, quote: str) -> tuple[str, float]:
        """What a resting order holds (engine.exchange.fills.reservation)."""
        side, amount, price = Side(row.side), float(row.amount), row.price or 0.0
        return fills.reservation(side, amount, price, self.model, base=base, quote=quote)

    def _used(self, conn: prepared.Session, currency: str) -> float:
        used = conn.scalar(_USED, {"bot": self.bot, "currency": currency})
        return 0.0 if used is None else max(0.0, float(used))

    def _spend_reserved(self, conn: prepared.Session, currency: str, amount: float) -> None:
        """Pay `amount` from the reservation; a shortfall beyond float dust (the fee rate
        changed while the order rested) comes from `free`."""
        used = self._used(conn, currency)
        shortfall = amount - used
        if shortfall <= 1e-9 * max(1.0, amount):
            self._move(conn, currency, 0.0, -amount)
        else:
            self._move(conn, currency, -shortfall, -used)

    def _settle(
        self,
        conn: prepared.Session,
        row: Any,
        fill: fills.Fill,
        base: str,
        quote: str,
        *,
        reserved: bool,
    ) -> dict[str, Any]:
        """Book a complete fill: balances and its Fill row; returns the order row's new
        values, for the caller to write in the same transaction.

        A resting order pays from its reservation (`used`), which held exactly this
        fill's cost; an immediate fill pays from `free`. A refused spend raises
        OrderRejectedError and rolls the whole transaction back.
        """
        spend, gain = (quote, base) if fill.side is Side.BUY else (base, quote)
        spent = fill.quote_delta if fill.side is Side.BUY else fill.base_delta
        gained = fill.base_delta if fill.side is Side.BUY else fill.quote_delta
        if reserved:
            self._spend_reserved(conn, spend, -spent)
        else:
            self._move(conn, spend, spent)
        self._move(conn, gain, gained)
        book_fill(
            conn,
            row,
            amount=fill.amount,
            price=fill.price,
            fee=fill.fee,
            fee_currency=fill.fee_currency,
        )
        log.info(
            "paper.filled",
            bot=self.bot,
            client_order_id=row.client_order_id,
            side=row.side,
            amount=fill.amount,
            price=fill.price,
            resting=reserved,
        )
        return {
            "status": OrderStatus.CLOSED.value,
            "filled": fill.amount,
            "average": fill.price,
            "fee": fill.fee,
            "fee_currency": fill.fee_currency,
        }


def _update_order(conn: prepared.Session, order_id: int, values: dict[str, Any]) -> Any:
    """Write a new status (and, when given, exchange id and fill) to an order row,
    stamping `updated_at`; returns the row after."""
    return conn.first(
        _UPDATE_ORDER,
        {
            "p_id": order_id,
            "p_status": values["status"],
            "p_xid": values.get("exchange_order_id"),
            "p_filled": values.get("filled"),
            "p_average": values.get("average"),
            "p_fee": values.get("fee"),
            "p_fee_currency": values.get("fee_currency"),
            "p_at": utcnow(),
        },
    )


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _side_price(order: Any) -> tuple[Side, float]:
    return Side(order.side), order.price or 0.0


def _currencies(symbol: str) -> tuple[str, str]:
    base, _, quote = symbol.partition("/")
    return base, quote


def _report(row: Any) -> OrderReport:
    return OrderReport(
        client_order_id=row.client_order_id,
        exchange_order_id=row.exchange_order_id,
        symbol=row.symbol,
        side=Side(row.side),
        type=OrderType(row.type),
        status=OrderStatus(row.status),
        amount=row.amount,
        filled=row.filled,
        price=row.price,
        average=row.average,
        fee=row.fee,
        fee_currency=row.fee_currency,
        timestamp=int(row.updated_at.timestamp() * 1000),
    )
