"""`CcxtGateway`: the Gateway protocol over a real (sync) ccxt client, for any exchange id.

Every request first reserves a slot in the shared Redis rate limit, then runs under the
client's lock (see `clients`). Reads and cancels are retried (`retry.ReadRetry`);
`create_order` never is: a lost answer raises `OrderUnknownError`, resolved later by
looking the client order id up.

Orders are addressed by client order id everywhere. `fetch_order` and `cancel_order`
pass it as a ccxt params key (`catalog.client_id_rules(...).param`: Binance's native
`origClientOrderId`, ccxt's unified `clientOrderId` elsewhere) with `id=None`; for an
exchange without `fetchOrder`, the open and closed orders are searched instead.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any, TypeVar

import ccxt
import structlog
from ccxt.base.decimal_to_precision import DECIMAL_PLACES, TICK_SIZE

from engine import admission, metrics
from engine.domain import Candle, MarketRules, OrderType, Side, Ticker
from engine.errors import (
    ExchangeBannedError,
    OperationalError,
    OrderRejectedError,
    RateLimitedError,
    TemporaryError,
)
from engine.exchange.catalog import client_id_rules
from engine.exchange.clients import Client
from engine.exchange.errors import DEFAULT_BAN_S
from engine.exchange.gateway import OrderReport, OrderRequest, OrderStatus
from engine.exchange.ratelimit import Bucket, RateLimiter
from engine.exchange.retry import ReadRetry, current_deadline

T = TypeVar("T")
log = structlog.get_logger("engine.exchange.ccxt")

MARKETS_REFRESH_S = 3600.0
"""Markets (precision, minimums, listings) are reloaded at most this often per process."""
ORDER_RATE_WAIT_S = 5.0
"""Longest rate-limit wait before an order is given up (when no time budget is set)."""

_STATUS = {
    "open": OrderStatus.OPEN,
    "closed": OrderStatus.CLOSED,
    "canceled": OrderStatus.CANCELED,
    "cancelled": OrderStatus.CANCELED,
    "expired": OrderStatus.EXPIRED,
    "rejected": OrderStatus.REJECTED,
}


class CcxtGateway:
    """Market data, balances and orders of one account on one ccxt exchange."""

    def __init__(
        self,
        client: Client,
        *,
        limiter: RateLimiter | None = None,
        retry: ReadRetry | None = None,
        markets_refresh_s: float = MARKETS_REFRESH_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.exchange_id = client.spec.exchange_id
        self.stop_orders = bool(client.exchange.has.get("createStopLossOrder"))
        self.limiter = limiter
        self.retry = retry or ReadRetry()
        self.markets_refresh_s = markets_refresh_s
        self.sleep = sleep
        # ccxt's rateLimit is the documented spacing (ms) of one client's requests; shared
        # here by everyone on the same IP (origin) and, for private calls, account.
        rate = 1000.0 / max(float(client.exchange.rateLimit or 1), 1e-3)
        burst = max(1, int(rate))
        origin = hashlib.sha256(client.spec.origin.encode()).hexdigest()[:12]
        ip = Bucket(f"{self.exchange_id}:ip:{origin}", rate, burst)
        account = Bucket(f"{self.exchange_id}:acct:{client.spec.account_digest}", rate, burst)
        self._public = (ip,)
        self._private = (ip, account)

    # -- plumbing ------------------------------------------------------------------

    def _request(
        self, fn: Callable[[Any], T], *, private: bool = False, creating: bool = False
    ) -> T:
        # The wait is on the exchange, not on this process: other ticks compute meanwhile.
        with admission.waiting():
            return self._send(fn, private=private, creating=creating)

    def _read(self, fn: Callable[[Any], T], *, private: bool = False) -> T:
        with admission.waiting():  # the retry pauses too
            return self.retry.call(lambda: self._send(fn, private=private))

    def _send(self, fn: Callable[[Any], T], *, private: bool, creating: bool = False) -> T:
        buckets = self._private if private else self._public
        if self.limiter is not None:
            deadline = current_deadline()
            budget = ORDER_RATE_WAIT_S if deadline is None else deadline - time.monotonic()
            wait = self.limiter.reserve(buckets, max_wait_s=max(0.0, budget))
            if wait > 0:
                metrics.record_rate_limit_wait(self.limiter.redis, self.exchange_id, wait)
                self.sleep(wait)  # outside the client lock
        outcome = "ok"
        try:
            return self.client.call(fn, creating=creating)
        except ExchangeBannedError as exc:
            outcome = "banned"
            if self.limiter is not None:
                self.limiter.ban(exc.retry_after or DEFAULT_BAN_S)
            raise
        except RateLimitedError as exc:
            outcome = "rate_limited"
            if self.limiter is not None:
                self.limiter.cool_down(buckets, exc.retry_after)
            raise
        except TemporaryError:
            outcome = "temporary"
            raise
        except OrderRejectedError:
            outcome = "rejected"
            raise
        except OperationalError:
            outcome = "operational"
            raise
        finally:
            if self.limiter is not None:
                metrics.record_exchange_request(self.limiter.redis, self.exchange_id, outcome)

    def _load_markets(self) -> None:
        client = self.client
        if not self._markets_stale():
            return
        # One load per client, however many threads ask. The turn is given up before the
        # lock and taken back after it: a tick waiting for its turn must hold no lock
        # another tick (holding a turn) may be waiting for.
        with admission.waiting(), client.markets_lock:
            if not self._markets_stale():
                return
            try:
                self._read(lambda ex: ex.load_markets(reload=True))
            except TemporaryError:
                if client.markets_loaded_at is None:
                    raise
                # Old markets still describe the exchange well; try again in a minute.
                log.warning("exchange.markets_refresh_failed", exchange=self.exchange_id)
                client.markets_loaded_at = time.monotonic() - self.markets_refresh_s + 60
                return
            client.markets_loaded_at = time.monotonic()

    def _markets_stale(self) -> bool:
        loaded = self.client.markets_loaded_at
        return loaded is None or time.monotonic() - loaded > self.markets_refresh_s

    # -- Gateway -------------------------------------------------------------------

    def market_rules(self, symbol: str) -> MarketRules:
        """Precision and minimums of `symbol` (markets are loaded once per process)."""
        self._load_markets()
        # Not under the client lock, which every HTTP request holds for its round trip:
        # a tick would wait for another thread's request (a refresh of market data, say)
        # to read a dict. `load_markets` replaces `markets` whole, so a read sees the old
        # markets or the new ones.
        market = (self.client.exchange.markets or {}).get(symbol)
        if market is None:
            raise OperationalError(f"{self.exchange_id} does not list {symbol}")
        mode = self.client.exchange.precisionMode
        precision, limits = market.get("precision") or {}, market.get("limits") or {}
        return MarketRules(
            symbol=symbol,
            base=market["base"],
            quote=market["quote"],
            amount_step=_step(precision.get("amount"), mode),
            price_step=_step(precision.get("price"), mode),
            min_amount=float((limits.get("amount") or {}).get("min") or 0.0),
            min_notional=float((limits.get("cost") or {}).get("min") or 0.0),
        )

    def fetch_ticker(self, symbol: str) -> Ticker:
        """Best bid/ask and last price."""
        self._load_markets()
        raw = self._read(lambda ex: ex.fetch_ticker(symbol))
        last = raw.get("last") or raw.get("close")
        bid, ask = raw.get("bid") or last, raw.get("ask") or last
        if bid is None or ask is None:
            raise TemporaryError(f"{self.exchange_id} sent a ticker without prices for {symbol}")
        ts = raw.get("timestamp") or int(time.time() * 1000)
        return Ticker(symbol, float(bid), float(ask), float(last or (bid + ask) / 2), int(ts))

    def fetch_ohlcv(self, symbol: str, timeframe: str, limit: int) -> list[Candle]:
        """The `limit` most recent candles, oldest first."""
        self._load_markets()
        rows = self._read(lambda ex: ex.fetch_ohlcv(symbol, timeframe, limit=limit))
        candles = [Candle(int(r[0]), *(float(v or 0.0) for v in r[1:6])) for r in rows]
        return sorted(candles, key=lambda c: c.ts)[-limit:]

    def fetch_balances(self) -> dict[str, float]:
        """Free balance per currency."""
        self._load_markets()
        raw = self._read(lambda ex: ex.fetch_balance(), private=True)
        return {k: float(v) for k, v in (raw.get("free") or {}).items() if v is not None}

    def create_order(self, request: OrderRequest) -> OrderReport:
        """Send one order, never retried: a lost answer raises OrderUnknownError."""
        self._load_markets()
        price = request.price if request.type is OrderType.LIMIT else None
        params: dict[str, Any] = {"clientOrderId": request.client_order_id}
        if request.stop_price is not None:
            params["stopLossPrice"] = request.stop_price  # ccxt's unified stop-loss trigger
        raw = self._request(
            lambda ex: ex.create_order(
                request.symbol,
                request.type.value,
                request.side.value,
                request.amount,
                price,
                params,
            ),
            private=True,
            creating=True,
        )
        return _report(raw, request.client_order_id, request)

    def fetch_order(self, symbol: str, client_order_id: str) -> OrderReport | None:
        """Look an order up by client order id; None when the exchange never saw it."""
        self._load_markets()
        if not self.client.exchange.has.get("fetchOrder"):
            return self._search(symbol, client_order_id)
        param = client_id_rules(self.exchange_id).param

        def fetch(ex: Any) -> Any:
            try:
                return ex.fetch_order(None, symbol, {param: client_order_id})
            except ccxt.OrderNotFound:
                return None

        raw = self._read(fetch, private=True)
        return None if raw is None else _report(raw, client_order_id)

    def cancel_order(self, symbol: str, client_order_id: str) -> OrderReport:
        """Cancel a resting order; an order that is no longer open reports its final state.

        Retrying a cancel is safe: a second cancel of a cancelled order finds nothing to
        cancel and the order is then looked up. Unknown order → OrderRejectedError.
        """
        self._load_markets()
        param = client_id_rules(self.exchange_id).param

        def cancel(ex: Any) -> Any:
            try:
                return ex.cancel_order(None, symbol, {param: client_order_id})
            except ccxt.OrderNotFound:
                return None

        raw = self._read(cancel, private=True)
        if raw is not None:
            return _report(raw, client_order_id)
        found = self.fetch_order(symbol, client_order_id)
        if found is None:
            raise OrderRejectedError(f"cannot cancel unknown order {client_order_id}")
        return found

    def fetch_open_orders(self, symbol: str) -> list[OrderReport]:
        """Every resting order of this account on `symbol`."""
        self._load_markets()
        raw = self._read(lambda ex: ex.fetch_open_orders(symbol), private=True)
        return [_report(o, o.get("clientOrderId") or "") for o in raw]

    def _search(self, symbol: str, client_order_id: str) -> OrderReport | None:
        """Find an order by client id where the exchange cannot fetch one order."""
        methods = ["fetch_open_orders"]
        if self.client.exchange.has.get("fetchClosedOrders"):
            methods.append("fetch_closed_orders")
        for method in methods:

            def listing(ex: Any, name: str = method) -> list[dict[str, Any]]:
                return list(getattr(ex, name)(symbol))

            for order in self._read(listing, private=True):
                if order.get("clientOrderId") == client_order_id:
                    return _report(order, client_order_id)
        return None


def _step(value: Any, mode: int) -> float:
    """A precision value as a step size (0 when the exchange counts significant digits)."""
    if value is None:
        return 0.0
    if mode == TICK_SIZE:
        return float(value)
    if mode == DECIMAL_PLACES:
        return float(10.0 ** -int(value))
    return 0.0


def _report(
    raw: dict[str, Any], client_order_id: str, request: OrderRequest | None = None
) -> OrderReport:
    """A ccxt unified order as an OrderReport (the id we asked with wins: a Binance cancel
    answer carries the cancel's own clientOrderId)."""
    fee, fee_currency = _fee(raw)
    amount = raw.get("amount")
    price = raw.get("price")
    return OrderReport(
        client_order_id=client_order_id or raw.get("clientOrderId") or "",
        exchange_order_id=None if raw.get("id") is None else str(raw["id"]),
        symbol=raw.get("symbol") or (request.symbol if request else ""),
        side=Side(raw.get("side") or (request.side if request else Side.BUY)),
        type=_order_type(raw.get("type"), request),
        status=_STATUS.get(str(raw.get("status")), OrderStatus.OPEN),
        amount=float(amount if amount is not None else (request.amount if request else 0.0)),
        filled=float(raw.get("filled") or 0.0),
        price=None if not price else float(price),
        average=None if not raw.get("average") else float(raw["average"]),
        fee=fee,
        fee_currency=fee_currency,
        timestamp=raw.get("timestamp"),
    )


def _order_type(value: Any, request: OrderRequest | None) -> OrderType:
    if value in ("market", "limit"):
        return OrderType(value)
    return request.type if request else OrderType.LIMIT


def _fee(raw: dict[str, Any]) -> tuple[float, str | None]:
    """Total fee in the first fee currency seen (ccxt reports `fee` or a `fees` list)."""
    fees = [f for f in (raw.get("fees") or []) if f and f.get("cost") is not None]
    if not fees and raw.get("fee") and raw["fee"].get("cost") is not None:
        fees = [raw["fee"]]
    if not fees:
        return 0.0, None
    currency = fees[0].get("currency")
    return sum(float(f["cost"]) for f in fees if f.get("currency") == currency), currency
