"""The backtest's exchange: one bot's account over historical candles, behind the same
`Gateway` protocol as ccxt and the paper broker.

At step i (candle i has just closed) the market is what a live tick after that close
would see: the closed candles up to i, and a ticker at the next price, candle i+1's
open (bid = ask = last; the fill model's slippage stands in for the spread). Fills
follow `engine.exchange.fills`: market orders at that price plus slippage; a limit
order marketable when placed at once at its price; a resting one when a later closed
candle's path crosses it, in path order. Funds are checked and reserved as the paper
broker does, so an order the balance cannot pay is rejected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from engine.domain import Candle, MarketRules, OrderType, Side, Ticker
from engine.errors import OrderRejectedError
from engine.exchange import fills
from engine.exchange.gateway import OrderReport, OrderRequest, OrderStatus

EXCHANGE_ID = "backtest"


@dataclass(slots=True)
class _Order:
    request: OrderRequest
    report: OrderReport
    reserved: tuple[str, float] | None = None  # (currency, amount) a resting order holds


class CandleExchange:
    """A simulated account of one bot over `candles` (oldest first), stepped by `at`."""

    exchange_id = EXCHANGE_ID
    stop_orders = False  # exits are emulated in a backtest, as on paper

    def __init__(
        self,
        rules: MarketRules,
        model: fills.FillModel,
        balances: dict[str, float],
        candles: Sequence[Candle],
        width_ms: int,
        offset_ms: int = 0,
    ) -> None:
        self.rules = rules
        self.model = model
        self.candles = candles
        self.width_ms = width_ms
        self.offset_ms = offset_ms
        self.base, self.quote = rules.base, rules.quote
        self.free = {self.base: 0.0, self.quote: 0.0, **balances}
        self.used = {self.base: 0.0, self.quote: 0.0}
        self.orders: dict[str, _Order] = {}
        self.resting: list[_Order] = []
        self.rejected = 0
        self.i = -1
        self._best_bid, self._best_ask = -math.inf, math.inf  # of the resting orders

    # -- the clock --------------------------------------------------------------------

    def at(self, i: int) -> None:
        """Move to step i: candle i has closed; resting orders its path crosses fill."""
        self.i = i
        candle = self.candles[i]
        if not self.resting or (candle.low > self._best_bid and candle.high < self._best_ask):
            return  # most candles cross nothing
        crossed = fills.crossings(
            self.resting, candle, lambda o: (o.request.side, o.request.price or 0.0)
        )
        for at, order in crossed:
            # Stamped where along the candle its price was reached, so fills keep the
            # path's order whatever order the order manager then reads them in.
            ts = candle.ts + int(at / 3 * (self.width_ms - 1))
            self._settle(order, order.request.price or 0.0, ts)
        if crossed:
            self.resting = [o for o in self.resting if o.report.status is OrderStatus.OPEN]
            self._bests()

    @property
    def now_ms(self) -> int:
        """The step's time: the close of candle i, plus the bot's offset."""
        return self.candles[self.i].ts + self.width_ms + self.offset_ms

    def stamp(self) -> datetime:
        """The step's time as the order store stamps rows with it."""
        return datetime.fromtimestamp(self.now_ms / 1000, UTC)

    def price(self) -> float:
        """The next price after the step: candle i+1's open (the last candle's close)."""
        if self.i + 1 < len(self.candles):
            return self.candles[self.i + 1].open
        return self.candles[self.i].close

    def fill_ts(self) -> int:
        """When an order placed now fills at once: the candle that opens at the step."""
        if self.i + 1 < len(self.candles):
            return self.candles[self.i + 1].ts
        return self.candles[self.i].ts

    # -- market data ------------------------------------------------------------------

    def market_rules(self, symbol: str) -> MarketRules:
        """The market's precision and minimums (given, or none)."""
        return self.rules

    def fetch_ticker(self, symbol: str) -> Ticker:
        """bid = ask = last = the next price."""
        p = self.price()
        return Ticker(symbol, p, p, p, self.now_ms)

    def fetch_ohlcv(self, symbol: str, timeframe: str, limit: int) -> list[Candle]:
        """The `limit` candles up to and including candle i."""
        return list(self.candles[max(0, self.i + 1 - limit) : self.i + 1])

    # -- the account ------------------------------------------------------------------

    def fetch_balances(self) -> dict[str, float]:
        """Free balance per currency."""
        return dict(self.free)

    def totals(self) -> dict[str, float]:
        """Free plus reserved, per currency."""
        return {c: self.free.get(c, 0.0) + self.used.get(c, 0.0) for c in self.free}

    def equity(self, price: float) -> float:
        """Quote plus base valued at `price`, reserved funds included."""
        totals = self.totals()
        return totals[self.quote] + totals[self.base] * price

    def create_order(self, request: OrderRequest) -> OrderReport:
        """Fill a market order now, fill a marketable limit now, or rest a limit order."""
        known = self.orders.get(request.client_order_id)
        if known is not None:  # the same client id again: answer as before
            return known.report
        ticker = self.fetch_ticker(request.symbol)
        order = _Order(request, _report(request, OrderStatus.OPEN))
        if request.type is OrderType.MARKET:
            price = fills.market_price(request.side, ticker, self.model)
        elif request.price is None:
            raise OrderRejectedError("a limit order needs a price")
        elif fills.crossed_by_ticker(request.side, request.price, ticker):
            price = request.price
        else:
            self._rest(order)
            return order.report
        fill = fills.fill_at(request.side, request.amount, price, self.model, quote=self.quote)
        if not fills.can_afford(fill, self.free, base=self.base, quote=self.quote):
            self._refuse()
        self.orders[request.client_order_id] = order
        self._book(order, fill, self.fill_ts())
        return order.report

    def fetch_order(self, symbol: str, client_order_id: str) -> OrderReport | None:
        """The order with this client id; None when it was never accepted."""
        order = self.orders.get(client_order_id)
        return None if order is None else order.report

    def cancel_order(self, symbol: str, client_order_id: str) -> OrderReport:
        """Cancel a resting order, giving its reservation back."""
        order = self.orders.get(client_order_id)
        if order is None:
            raise OrderRejectedError(f"cannot cancel unknown order {client_order_id}")
        if order.report.status is OrderStatus.OPEN:
            self._release(order)
            order.report = replace(order.report, status=OrderStatus.CANCELED)
            self.resting = [o for o in self.resting if o is not order]
            self._bests()
        return order.report

    def fetch_open_orders(self, symbol: str) -> list[OrderReport]:
        """The resting orders."""
        return [o.report for o in self.resting]

    # -- internals --------------------------------------------------------------------

    def _refuse(self) -> None:
        self.rejected += 1
        raise OrderRejectedError("insufficient balance for this backtest order")

    def _rest(self, order: _Order) -> None:
        request = order.request
        assert request.price is not None
        currency, amount = fills.reservation(
            request.side,
            request.amount,
            request.price,
            self.model,
            base=self.base,
            quote=self.quote,
        )
        if self.free.get(currency, 0.0) < amount:
            self._refuse()
        self.free[currency] -= amount
        self.used[currency] = self.used.get(currency, 0.0) + amount
        order.reserved = (currency, amount)
        self.orders[request.client_order_id] = order
        self.resting.append(order)
        self._bests()

    def _release(self, order: _Order) -> None:
        if order.reserved is not None:
            currency, amount = order.reserved
            self.used[currency] -= amount
            self.free[currency] += amount
            order.reserved = None

    def _settle(self, order: _Order, price: float, ts: int) -> None:
        request = order.request
        fill = fills.fill_at(request.side, request.amount, price, self.model, quote=self.quote)
        self._release(order)  # the reservation held exactly this fill's cost
        self._book(order, fill, ts)

    def _book(self, order: _Order, fill: fills.Fill, ts: int) -> None:
        self.free = fills.apply_fill(self.free, fill, base=self.base, quote=self.quote)
        order.report = replace(
            order.report,
            status=OrderStatus.CLOSED,
            filled=fill.amount,
            average=fill.price,
            fee=fill.fee,
            fee_currency=fill.fee_currency,
            timestamp=ts,
        )

    def _bests(self) -> None:
        buys = [o.request.price or 0.0 for o in self.resting if o.request.side is Side.BUY]
        sells = [o.request.price or 0.0 for o in self.resting if o.request.side is Side.SELL]
        self._best_bid = max(buys, default=-math.inf)
        self._best_ask = min(sells, default=math.inf)


def _report(request: OrderRequest, status: OrderStatus) -> OrderReport:
    return OrderReport(
        client_order_id=request.client_order_id,
        exchange_order_id=f"bt-{request.client_order_id}",
        symbol=request.symbol,
        side=request.side,
        type=request.type,
        status=status,
        amount=request.amount,
        price=request.price,
    )
