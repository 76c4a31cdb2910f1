"""The simulated matching engine: order validation, balances, fills and queries.

All methods are synchronous and take ``now_ms`` from the caller, so the server owns
the clock and tests can call them directly. Fills are all-or-nothing at one price:
market and marketable limit orders take the best ask (buy) or bid (sell) of the
current second; resting limit orders fill at their own price once the price path
has crossed them since they were last checked (lazily, on any request touching that
account and symbol, and by the server's periodic sweep).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any

from . import errors
from .errors import ApiError
from .market import Market
from .orders import ZERO, Account, Order, Trade

_EIGHT = Decimal("0.00000001")
_SIDES = ("BUY", "SELL")
_STOPS = ("STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT")
_TYPES = ("LIMIT", "MARKET", "LIMIT_MAKER", *_STOPS)
_TIME_IN_FORCE = ("GTC", "IOC", "FOK")
_RESP_TYPES = ("ACK", "RESULT", "FULL")
_CLIENT_ID = re.compile(r"[.A-Z:/a-z0-9_-]{1,36}")  # Binance's rule, length limit included


def _decimal(params: Mapping[str, str], name: str, required: bool = True) -> Decimal | None:
    raw = params.get(name)
    if raw is None or raw == "":
        if required:
            raise errors.missing_param(name)
        return None
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise errors.bad_param(name) from None
    if not value.is_finite() or value <= 0:
        raise errors.bad_param(name)
    return value


def _int(params: Mapping[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise errors.bad_param(name) from None


@dataclass(frozen=True, slots=True)
class _OrderRequest:
    """A new-order request that passed validation."""

    side: str
    kind: str
    time_in_force: str
    price: Decimal
    """Limit price; zero for market orders."""
    qty: Decimal
    quote_qty: Decimal
    """``quoteOrderQty`` of a market order given in quote currency, else zero."""
    notional_price: Decimal
    """Price the filters and the balance check use: the limit, or the touch for market."""
    marketable: bool
    stop_price: Decimal = ZERO
    """Stop orders: the price that triggers them; zero otherwise."""


def _parse_request(
    market: Market, params: Mapping[str, str], bid: Decimal, ask: Decimal
) -> _OrderRequest:
    """Validate a new order against Binance's rules and the symbol's filters."""
    side = params.get("side", "")
    if side not in _SIDES:
        raise ApiError(400, -1117, "Invalid side.") if side else errors.missing_param("side")
    kind = params.get("type", "")
    if kind not in _TYPES:
        raise ApiError(400, -1116, "Invalid orderType.") if kind else errors.missing_param("type")
    if params.get("newOrderRespType", "FULL") not in _RESP_TYPES:
        raise errors.bad_param("newOrderRespType")
    spec = market.spec
    touch = ask if side == "BUY" else bid
    quote_qty = ZERO
    if kind == "MARKET":
        tif, price, notional_price = "GTC", ZERO, touch
        qty = _decimal(params, "quantity", required=False)
        if qty is None:
            quote_amount = _decimal(params, "quoteOrderQty", required=False)
            if quote_amount is None:
                raise ApiError(400, -1102, "Param 'quantity' or 'quoteOrderQty' must be sent.")
            quote_qty = quote_amount
            qty = (quote_amount / touch / spec.step).to_integral_value(ROUND_DOWN) * spec.step
    else:
        tif = "GTC" if kind == "LIMIT_MAKER" else params.get("timeInForce", "")
        if tif not in _TIME_IN_FORCE:
            raise errors.missing_param("timeInForce")
        limit = _decimal(params, "price")
        qty = _decimal(params, "quantity")
        assert limit is not None  # required=True raised otherwise
        assert qty is not None
        if limit % spec.tick != 0:
            raise errors.filter_failure("PRICE_FILTER")
        price = notional_price = limit
    if qty % spec.step != 0 or qty < Decimal(spec.min_qty) or qty > Decimal(spec.max_qty):
        raise errors.filter_failure("LOT_SIZE")
    if qty * notional_price < Decimal(spec.min_notional):
        raise errors.filter_failure("NOTIONAL")
    stop = ZERO
    if kind in _STOPS:
        stop = _decimal(params, "stopPrice") or ZERO
        if stop % spec.tick != 0:
            raise errors.filter_failure("PRICE_FILTER")
        if _stop_reached(kind, side, stop, bid, ask):
            raise ApiError(400, -2010, "Order would trigger immediately.")
        return _OrderRequest(side, kind, tif, price, qty, quote_qty, notional_price, False, stop)
    marketable = kind == "MARKET" or (price >= ask if side == "BUY" else price <= bid)
    return _OrderRequest(side, kind, tif, price, qty, quote_qty, notional_price, marketable)


def _stop_reached(kind: str, side: str, stop: Decimal, low_bid: Decimal, high_ask: Decimal) -> bool:
    """Whether the market reached a stop order's stop price, as Binance triggers them: a
    sell stop-loss when the price falls to it, a sell take-profit when it rises to it
    (and the other way round for buys). `low_bid`/`high_ask`: the bid and ask reached
    (the current ones, or the extremes since the order was last checked)."""
    falling = (kind == "STOP_LOSS_LIMIT") == (side == "SELL")
    return low_bid <= stop if falling else high_ask >= stop


class Exchange:
    """Accounts, orders and trades of one simulator; not thread-safe on its own."""

    def __init__(
        self,
        markets: Mapping[str, Market],
        api_keys: Iterable[str],
        balances: Mapping[str, str | float],
        fee_rate: Decimal,
    ) -> None:
        self.markets = markets
        self.fee_rate = fee_rate
        self.accounts: dict[str, Account] = {}
        for key in api_keys:
            account = self.accounts[key] = Account(key)
            for asset, amount in balances.items():
                # via str: Decimal(0.1) would carry the float's binary expansion
                account.balance(asset).free = Decimal(str(amount))
        self.orders: dict[int, Order] = {}
        """Every order ever accepted, by id, in creation order (the order log)."""
        self.trades: list[Trade] = []
        self._next_order_id = 1
        self._next_trade_id = 1

    def market(self, symbol: str | None) -> Market:
        """The market for an exchange symbol id, or the Binance ``-1121`` error."""
        if not symbol:
            raise errors.missing_param("symbol")
        market = self.markets.get(symbol)
        if market is None:
            raise errors.invalid_symbol()
        return market

    # -- placing ---------------------------------------------------------------------

    def place(self, account: Account, params: Mapping[str, str], now_ms: int) -> Order:
        """Validate, reserve funds, create and match a new order (``POST /api/v3/order``)."""
        market = self.market(params.get("symbol"))
        client_id = params.get("newClientOrderId") or f"sim-{self._next_order_id}"
        if not _CLIENT_ID.fullmatch(client_id):
            raise ApiError(
                400,
                -1100,
                "Illegal characters found in parameter 'newClientOrderId'; "
                "legal range is '^[\\.A-Z\\:/a-z0-9_-]{1,36}$'.",
            )
        if client_id in account.by_client_id:
            raise errors.duplicate_order()
        now_s = now_ms // 1000
        # settle older resting orders first, so the balance check sees current funds
        self.sweep(account, market, now_s, now_ms)
        bid, ask = market.quote(now_s)
        req = _parse_request(market, params, bid, ask)
        if req.kind == "LIMIT_MAKER" and req.marketable:
            raise errors.would_match()
        # Binance locks price * qty for a limit buy and the base quantity for a sell
        spec = market.spec
        buy = req.side == "BUY"
        hold = req.qty * req.notional_price if buy else req.qty
        balance = account.balance(spec.quote if buy else spec.base)
        if balance.free < hold:
            raise errors.insufficient_balance()
        balance.free -= hold
        balance.locked += hold
        order = Order(
            order_id=self._next_order_id,
            client_order_id=client_id,
            account=account.api_key,
            symbol=market.symbol,
            side=req.side,
            type=req.kind,
            time_in_force=req.time_in_force,
            price=req.price,
            orig_qty=req.qty,
            orig_quote_qty=req.quote_qty,
            time_ms=now_ms,
            update_ms=now_ms,
            checked_s=now_s,
            reserved=hold,
            stop_price=req.stop_price,
        )
        self._next_order_id += 1
        self.orders[order.order_id] = order
        account.by_client_id[client_id] = order
        if req.marketable:
            self._fill(account, market, order, ask if buy else bid, False, now_ms)
        elif req.time_in_force != "GTC" and not order.waiting:
            self._close(account, order, "EXPIRED", now_ms)
        else:
            account.open_by_symbol.setdefault(market.symbol, {})[order.order_id] = order
        return order

    def _fill(
        self,
        account: Account,
        market: Market,
        order: Order,
        price: Decimal,
        is_maker: bool,
        now_ms: int,
    ) -> None:
        spec = market.spec
        qty = order.orig_qty - order.executed_qty
        quote = price * qty
        base_balance, quote_balance = account.balance(spec.base), account.balance(spec.quote)
        # the fee is taken from what the account receives, as Binance does without BNB
        if order.side == "BUY":
            commission = (qty * self.fee_rate).quantize(_EIGHT)
            commission_asset = spec.base
            quote_balance.locked -= quote
            order.reserved -= quote
            base_balance.free += qty - commission
        else:
            commission = (quote * self.fee_rate).quantize(_EIGHT)
            commission_asset = spec.quote
            base_balance.locked -= qty
            order.reserved -= qty
            quote_balance.free += quote - commission
        trade = Trade(
            trade_id=self._next_trade_id,
            order_id=order.order_id,
            symbol=order.symbol,
            price=price,
            qty=qty,
            quote_qty=quote,
            commission=commission,
            commission_asset=commission_asset,
            time_ms=now_ms,
            is_buyer=order.side == "BUY",
            is_maker=is_maker,
        )
        self._next_trade_id += 1
        self.trades.append(trade)
        account.trades_by_symbol.setdefault(order.symbol, []).append(trade)
        order.trades.append(trade)
        order.executed_qty += qty
        order.cum_quote += quote
        self._close(account, order, "FILLED", now_ms)

    def _close(self, account: Account, order: Order, status: str, now_ms: int) -> None:
        """Finish an order: release what it still holds and drop it from the open set."""
        if order.reserved:
            spec = self.markets[order.symbol].spec
            balance = account.balance(spec.quote if order.side == "BUY" else spec.base)
            balance.locked -= order.reserved
            balance.free += order.reserved
            order.reserved = ZERO
        order.status = status
        order.update_ms = now_ms
        open_orders = account.open_by_symbol.get(order.symbol)
        if open_orders is not None:
            open_orders.pop(order.order_id, None)

    # -- resting orders --------------------------------------------------------------

    def sweep(self, account: Account, market: Market, now_s: int, now_ms: int) -> int:
        """Fill this account's resting orders on ``market`` that the path has crossed.

        Runs at most once per second per account and symbol; returns the fill count.
        """
        open_orders = account.open_by_symbol.get(market.symbol)
        if not open_orders or account.swept_s.get(market.symbol, -1) >= now_s:
            return 0
        account.swept_s[market.symbol] = now_s
        seen: dict[int, tuple[Decimal, Decimal]] = {}
        filled = 0
        for order in list(open_orders.values()):
            if order.checked_s >= now_s:
                continue
            extremes = seen.get(order.checked_s)
            if extremes is None:
                extremes = seen[order.checked_s] = market.extremes(order.checked_s + 1, now_s + 1)
            low_ask, high_bid = extremes
            since = order.checked_s
            order.checked_s = now_s
            if order.waiting:
                filled += self._trigger(account, market, order, since, now_s, now_ms)
                continue
            crossed = low_ask <= order.price if order.side == "BUY" else high_bid >= order.price
            if crossed:
                self._fill(account, market, order, order.price, True, now_ms)
                filled += 1
        return filled

    def _trigger(
        self, account: Account, market: Market, order: Order, since: int, now_s: int, now_ms: int
    ) -> int:
        """Trigger a stop order the path reached since `since`: it becomes a limit order
        at its price, filled now (at the touch) if that is marketable, else resting.
        A price that gapped past the limit leaves it resting unfilled, as on Binance."""
        low_bid, high_ask = market.reach(since + 1, now_s + 1)
        if not _stop_reached(order.type, order.side, order.stop_price, low_bid, high_ask):
            return 0
        order.triggered = True
        order.update_ms = now_ms
        bid, ask = market.quote(now_s)
        buy = order.side == "BUY"
        if (order.price >= ask) if buy else (order.price <= bid):
            self._fill(account, market, order, ask if buy else bid, False, now_ms)
            return 1
        return 0

    def sweep_all(self, now_ms: int) -> int:
        """Sweep every account and symbol (the server's periodic task)."""
        filled = 0
        for account in self.accounts.values():
            for symbol, open_orders in account.open_by_symbol.items():
                if open_orders:
                    filled += self.sweep(account, self.markets[symbol], now_ms // 1000, now_ms)
        return filled

    # -- queries and cancels ---------------------------------------------------------

    def _find(self, account: Account, params: Mapping[str, str]) -> Order | None:
        order_id = _int(params, "orderId")
        if order_id is not None:
            order = self.orders.get(order_id)
            return order if order is not None and order.account == account.api_key else None
        client_id = params.get("origClientOrderId")
        if not client_id:
            raise ApiError(
                400,
                -1102,
                "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!",
            )
        return account.by_client_id.get(client_id)

    def get(self, account: Account, params: Mapping[str, str], now_ms: int) -> Order:
        """``GET /api/v3/order`` by ``orderId`` or ``origClientOrderId``."""
        market = self.market(params.get("symbol"))
        self.sweep(account, market, now_ms // 1000, now_ms)
        order = self._find(account, params)
        if order is None or order.symbol != market.symbol:
            raise errors.order_not_found()
        return order

    def cancel(self, account: Account, params: Mapping[str, str], now_ms: int) -> dict[str, Any]:
        """``DELETE /api/v3/order``: cancel an open order, or ``-2011`` as Binance does."""
        market = self.market(params.get("symbol"))
        self.sweep(account, market, now_ms // 1000, now_ms)
        order = self._find(account, params)
        if order is None or order.symbol != market.symbol or not order.is_open:
            raise errors.unknown_order()
        self._close(account, order, "CANCELED", now_ms)
        cancel_id = params.get("newClientOrderId") or f"sim-cancel-{order.order_id}"
        return order.cancel_json(cancel_id, now_ms)

    def open_orders(self, account: Account, symbol: str | None, now_ms: int) -> list[Order]:
        """``GET /api/v3/openOrders`` for one symbol or all."""
        symbols = [self.market(symbol).symbol] if symbol else list(account.open_by_symbol)
        result: list[Order] = []
        for name in symbols:
            self.sweep(account, self.markets[name], now_ms // 1000, now_ms)
            result.extend(account.open_by_symbol.get(name, {}).values())
        return result

    def my_trades(self, account: Account, params: Mapping[str, str], now_ms: int) -> list[Trade]:
        """``GET /api/v3/myTrades`` with orderId, fromId, startTime, endTime, limit."""
        market = self.market(params.get("symbol"))
        self.sweep(account, market, now_ms // 1000, now_ms)
        trades: Iterable[Trade] = account.trades_by_symbol.get(market.symbol, [])
        order_id = _int(params, "orderId")
        from_id = _int(params, "fromId")
        start = _int(params, "startTime")
        end = _int(params, "endTime")
        limit = min(_int(params, "limit") or 500, 1000)
        selected = [
            t
            for t in trades
            if (order_id is None or t.order_id == order_id)
            and (from_id is None or t.trade_id >= from_id)
            and (start is None or t.time_ms >= start)
            and (end is None or t.time_ms <= end)
        ]
        return selected[:limit] if from_id is not None or start is not None else selected[-limit:]

    def account_info(self, account: Account, now_ms: int) -> Account:
        """``GET /api/v3/account``, after settling every resting order of the account."""
        for symbol, open_orders in account.open_by_symbol.items():
            if open_orders:
                self.sweep(account, self.markets[symbol], now_ms // 1000, now_ms)
        return account
