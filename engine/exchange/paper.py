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
order reserves its cost (moved from `free` to `used`) and fills when the market crosses
it, checked on every call of this gateway (so at least once per tick).

Balance updates are conditional SQL updates (`... WHERE free + delta >= 0`), so no
interleaving of ticks, threads or processes can drive a balance negative.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import structlog
from sqlalchemy import CursorResult, Engine, bindparam, case, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from engine.db import session_scope
from engine.domain import Candle, MarketRules, OrderType, Side, Ticker
from engine.errors import OrderRejectedError
from engine.exchange import fills
from engine.exchange.gateway import Gateway, OrderReport, OrderRequest, OrderStatus
from engine.models import Fill, Order, PaperBalance, utcnow

log = structlog.get_logger("engine.exchange.paper")

_balances = PaperBalance.__table__  # type: ignore[attr-defined]
# Every tick reads balances: a prebuilt statement on a bare connection, no ORM session.
_BALANCES = sa_select(_balances.c.currency, _balances.c.free, _balances.c.used).where(
    _balances.c.bot == bindparam("bot")
)

PAPER_PREFIX = "paper-"


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
    ) -> None:
        self.bot = bot
        self.data = data
        self.db = db
        self.exchange_id = data.exchange_id
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
        self._ensure_balances()
        with self.db.connect() as conn:
            rows = conn.execute(_BALANCES, {"bot": self.bot}).all()
        return {currency: (free, used) for currency, free, used in rows}

    def create_order(self, request: OrderRequest) -> OrderReport:
        """Fill a market order now, or rest a limit order; unpayable → OrderRejectedError."""
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
        with session_scope(self.db) as session:
            row = self._row(session, request)
            if row.exchange_order_id is not None:  # accepted before: answer as before
                return _report(row)
            if fill is not None:
                self._settle(session, row, fill, base, quote, reserved=False)
            else:
                self._reserve(session, request, base, quote)
                row.status = OrderStatus.OPEN.value
            row.exchange_order_id = f"{PAPER_PREFIX}{row.id}"
            row.updated_at = utcnow()
            session.add(row)
            session.flush()
            return _report(row)

    def fetch_order(self, symbol: str, client_order_id: str) -> OrderReport | None:
        """The paper order with this client id; None when it was never accepted."""
        self._sweep(symbol)
        with Session(self.db) as session:
            row = self._find(session, client_order_id)
            return None if row is None else _report(row)

    def cancel_order(self, symbol: str, client_order_id: str) -> OrderReport:
        """Cancel a resting paper order, releasing its reservation."""
        self._sweep(symbol)
        base, quote = _currencies(symbol)
        with session_scope(self.db) as session:
            row = self._find(session, client_order_id)
            if row is None:
                raise OrderRejectedError(f"cannot cancel unknown order {client_order_id}")
            if row.status == OrderStatus.OPEN.value:
                self._release(session, row, base, quote)
                row.status = OrderStatus.CANCELED.value
                row.updated_at = utcnow()
                session.add(row)
            return _report(row)

    def fetch_open_orders(self, symbol: str) -> list[OrderReport]:
        """This bot's resting paper orders on `symbol`."""
        self._sweep(symbol)
        with Session(self.db) as session:
            return [_report(row) for row in self._open_rows(session, symbol)]

    # -- internals -------------------------------------------------------------------

    def _sweep(self, symbol: str | None) -> None:
        """Fill every resting limit order the current market crosses."""
        with Session(self.db) as session:
            resting = self._open_rows(session, symbol)
        tickers: dict[str, Ticker] = {}
        for order in resting:
            if order.symbol not in tickers:
                tickers[order.symbol] = self.data.fetch_ticker(order.symbol)
            side, price = Side(order.side), order.price or 0.0
            if not fills.crossed_by_ticker(side, price, tickers[order.symbol]):
                continue
            base, quote = _currencies(order.symbol)
            fill = fills.fill_at(side, order.amount, price, self.model, quote=quote)
            try:
                with session_scope(self.db) as session:
                    row = session.get(Order, order.id)
                    if row is None or row.status != OrderStatus.OPEN.value:
                        continue  # filled or cancelled meanwhile
                    self._settle(session, row, fill, base, quote, reserved=True)
            except OrderRejectedError as exc:
                # Only when the fee rate rose while it rested and free funds cannot cover
                # the difference: it stays open rather than break every call of the bot.
                log.warning(
                    "paper.fill_refused", client_order_id=order.client_order_id, error=str(exc)
                )
                continue
            log.info(
                "paper.limit_filled",
                bot=self.bot,
                client_order_id=order.client_order_id,
                price=price,
            )

    def _open_rows(self, session: Session, symbol: str | None) -> list[Order]:
        query = select(Order).where(
            Order.bot == self.bot,
            Order.status == OrderStatus.OPEN.value,
            col(Order.exchange_order_id).startswith(PAPER_PREFIX),
        )
        if symbol is not None:
            query = query.where(Order.symbol == symbol)
        return list(session.exec(query.order_by(col(Order.id))).all())

    def _find(self, session: Session, client_order_id: str) -> Order | None:
        row = session.exec(
            select(Order).where(Order.client_order_id == client_order_id, Order.bot == self.bot)
        ).first()
        return row if row is not None and row.exchange_order_id is not None else None

    def _row(self, session: Session, request: OrderRequest) -> Order:
        """The order manager's row for `request` (created here for direct use)."""
        row = session.exec(
            select(Order).where(Order.client_order_id == request.client_order_id)
        ).first()
        if row is None:
            row = Order(
                client_order_id=request.client_order_id,
                bot=self.bot,
                generation=0,
                slot=0,
                intent_index=0,
                exchange=self.exchange_id,
                symbol=request.symbol,
                side=request.side.value,
                type=request.type.value,
                amount=request.amount,
                price=request.price,
                status=OrderStatus.PENDING_SUBMIT.value,
            )
            session.add(row)
            session.flush()
        elif row.bot != self.bot:
            raise OrderRejectedError(f"client order id {request.client_order_id} is taken")
        return row

    def _ensure_balances(self) -> None:
        """Create this bot's balance rows from the config on first use (own transaction)."""
        if self._initialised:
            return
        with Session(self.db) as session:
            found = session.exec(select(PaperBalance).where(PaperBalance.bot == self.bot)).first()
        if found is None:
            try:
                with session_scope(self.db) as session:
                    for currency, amount in self.initial_balances.items():
                        session.add(PaperBalance(bot=self.bot, currency=currency, free=amount))
            except IntegrityError:
                pass  # another thread or process initialised them first
        self._initialised = True

    def _move(self, session: Session, currency: str, free: float, used: float = 0.0) -> None:
        """Add `free`/`used` to one balance, refusing (rejecting) any overdraft."""
        exists = session.get(PaperBalance, (self.bot, currency))
        if exists is None:
            session.add(PaperBalance(bot=self.bot, currency=currency))
            session.flush()
        free_col, used_col = col(PaperBalance.free), col(PaperBalance.used)
        result = cast(
            CursorResult[Any],
            session.execute(
                update(PaperBalance)
                .where(
                    col(PaperBalance.bot) == self.bot,
                    col(PaperBalance.currency) == currency,
                    free_col + free >= 0,
                    used_col + used >= -1e-9,
                )
                .values(
                    free=free_col + free,
                    # Floored at 0: float dust of a released reservation must not show as -1e-17.
                    used=case((used_col + used < 0, 0.0), else_=used_col + used),
                )
                .execution_options(synchronize_session=False)
            ),
        )
        if result.rowcount != 1:
            raise OrderRejectedError(f"insufficient {currency} balance for this paper order")

    def _reserve(self, session: Session, request: OrderRequest, base: str, quote: str) -> None:
        assert request.price is not None
        if request.side is Side.BUY:
            cost = -fills.fill_at(
                Side.BUY, request.amount, request.price, self.model, quote=quote
            ).quote_delta
            self._move(session, quote, -cost, cost)
        else:
            self._move(session, base, -request.amount, request.amount)

    def _release(self, session: Session, row: Order, base: str, quote: str) -> None:
        """Give a cancelled order's reservation back (used → free)."""
        currency, amount = self._reservation(row, base, quote)
        amount = min(amount, self._used(session, currency))  # the fee rate may have changed
        self._move(session, currency, amount, -amount)

    def _reservation(self, row: Order, base: str, quote: str) -> tuple[str, float]:
        """What a resting order holds: a buy its cost plus fee, a sell its base amount."""
        if row.side == Side.BUY.value:
            buy = fills.fill_at(Side.BUY, row.amount, row.price or 0.0, self.model, quote=quote)
            return quote, -buy.quote_delta
        return base, row.amount

    def _used(self, session: Session, currency: str) -> float:
        found = session.get(PaperBalance, (self.bot, currency), populate_existing=True)
        return 0.0 if found is None else max(0.0, found.used)

    def _spend_reserved(self, session: Session, currency: str, amount: float) -> None:
        """Pay `amount` from the reservation; a shortfall beyond float dust (the fee rate
        changed while the order rested) comes from `free`."""
        used = self._used(session, currency)
        shortfall = amount - used
        if shortfall <= 1e-9 * max(1.0, amount):
            self._move(session, currency, 0.0, -amount)
        else:
            self._move(session, currency, -shortfall, -used)

    def _settle(
        self,
        session: Session,
        row: Order,
        fill: fills.Fill,
        base: str,
        quote: str,
        *,
        reserved: bool,
    ) -> None:
        """Book a complete fill: balances, the order row and its Fill row.

        A resting order pays from its reservation (`used`), which held exactly this
        fill's cost; an immediate fill pays from `free`. A refused spend raises
        OrderRejectedError and rolls the whole transaction back.
        """
        spend, gain = (quote, base) if fill.side is Side.BUY else (base, quote)
        spent = fill.quote_delta if fill.side is Side.BUY else fill.base_delta
        gained = fill.base_delta if fill.side is Side.BUY else fill.quote_delta
        if reserved:
            self._spend_reserved(session, spend, -spent)
        else:
            self._move(session, spend, spent)
        self._move(session, gain, gained)
        row.status = OrderStatus.CLOSED.value
        row.filled = fill.amount
        row.average = fill.price
        row.fee = fill.fee
        row.fee_currency = fill.fee_currency
        row.updated_at = utcnow()
        session.add(row)
        session.flush()
        assert row.id is not None
        session.add(
            Fill(
                order_id=row.id,
                bot=row.bot,
                symbol=row.symbol,
                side=row.side,
                amount=fill.amount,
                price=fill.price,
                fee=fill.fee,
                fee_currency=fill.fee_currency,
            )
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


def _currencies(symbol: str) -> tuple[str, str]:
    base, _, quote = symbol.partition("/")
    return base, quote


def _report(row: Order) -> OrderReport:
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
