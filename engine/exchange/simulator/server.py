"""The aiohttp application: Binance spot REST routes, admin routes and the fault middleware.

Handlers stay cheap because the server sustains benchmark load: public market data is
a pure function of (path, query, second) and is cached per second as encoded bytes;
signed requests cost one HMAC, one query parse and a few dict lookups. Nothing is
logged per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from . import errors
from .admin import AdminRoutes
from .auth import verify
from .core import Simulator
from .errors import ApiError
from .faults import FaultRule
from .market import Market
from .orders import Account
from .responses import Handler, dumps, error_response, json_response

_ENDPOINT_KEY = web.RequestKey("sim_endpoint", str)
_LOOPBACK = ("127.0.0.1", "::1", "localhost")
ADMIN_TOKEN_HEADER = "X-Sim-Admin-Token"  # noqa: S105 - a header name, not a secret
_OPEN_ADMIN = frozenset({"/_sim/health"})  # liveness only: no orders, keys or controls
_MAX_CACHED = 4096


def _int_param(query: Any, name: str, default: int | None = None) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise errors.bad_param(name) from None


class SimulatorApp:
    """Route handlers bound to one :class:`Simulator`."""

    def __init__(self, sim: Simulator, *, public: bool = False) -> None:
        self.sim = sim
        self.public = public
        self._cache: dict[tuple[str, str], bytes] = {}
        self._cache_s = -1
        self._sweeper: asyncio.Task[None] | None = None

    # -- application -----------------------------------------------------------------

    def build(self) -> web.Application:
        """The aiohttp application with every route and the middleware."""
        app = web.Application(middlewares=[self.middleware])
        get, post, delete = "GET", "POST", "DELETE"
        routes: list[tuple[str, str, Handler]] = [
            (get, "/api/v3/ping", self.ping),
            (get, "/api/v3/time", self.time),
            (get, "/api/v3/exchangeInfo", self.exchange_info),
            (get, "/api/v3/ticker/24hr", self.ticker_24hr),
            (get, "/api/v3/ticker/bookTicker", self.book_ticker),
            (get, "/api/v3/ticker/price", self.price_ticker),
            (get, "/api/v3/depth", self.depth),
            (get, "/api/v3/klines", self.klines),
            (get, "/api/v3/uiKlines", self.klines),
            (get, "/api/v3/account", self.account),
            (post, "/api/v3/order", self.new_order),
            (get, "/api/v3/order", self.get_order),
            (delete, "/api/v3/order", self.cancel_order),
            (get, "/api/v3/openOrders", self.open_orders),
            (delete, "/api/v3/openOrders", self.cancel_open_orders),
            (get, "/api/v3/allOrders", self.all_orders),
            (get, "/api/v3/myTrades", self.my_trades),
        ]
        for method, path, handler in routes + AdminRoutes(self.sim).routes():
            app.router.add_route(method, path, handler)
        app.on_startup.append(self._start_sweeper)
        app.on_cleanup.append(self._stop_sweeper)
        return app

    async def _start_sweeper(self, app: web.Application) -> None:
        if self.sim.config.sweep_interval_s > 0:
            self._sweeper = asyncio.create_task(self._sweep_forever())

    async def _stop_sweeper(self, app: web.Application) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def _sweep_forever(self) -> None:
        # fills resting orders even when nobody asks, so fills carry timely timestamps
        while True:
            await asyncio.sleep(self.sim.config.sweep_interval_s)
            with self.sim.lock:
                self.sim.exchange.sweep_all(self.sim.now_ms())

    # -- middleware: counters, faults, errors ----------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count the request, apply faults, turn :class:`ApiError` into Binance JSON."""
        path = request.path
        if path.startswith("/_sim/"):
            refused = self._admin_refusal(request)
            if refused is not None:
                return json_response({"error": refused}, 403)
            try:
                return await handler(request)
            except ValueError as exc:
                return json_response({"error": str(exc)}, 400)
        sim = self.sim
        method = request.method
        route = request.match_info.route.resource
        endpoint = f"{method} {path}" if route is not None else "unmatched"
        # POST parameters are in the body: _signed() attributes those to a symbol
        symbol = request.query.get("symbol") if method != "POST" else None
        with sim.lock:
            sim.stats.arrived(endpoint)
            if symbol:
                sim.stats.symbol(endpoint, symbol)
            delay_s, fault = sim.faults.decide(method, path)
            if fault is not None:
                sim.stats.faults[fault.kind] += 1
        request[_ENDPOINT_KEY] = endpoint
        status = 0
        try:
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            if fault is None:
                response = await self._call(request, handler)
            else:
                response = await self._apply_fault(fault, request, handler)
            status = response.status
            return response
        finally:
            with sim.lock:
                sim.stats.finished(status)

    def _admin_refusal(self, request: web.Request) -> str | None:
        """Why an admin request is refused, or None.

        A token, when configured, is required from every address: behind a reverse
        proxy or a port forward the peer address says nothing about the client. Without
        one, a simulator listening beyond loopback serves no admin endpoint at all.
        """
        if request.path in _OPEN_ADMIN:
            return None
        token = self.sim.config.admin_token
        if token is not None:
            given = request.headers.get(ADMIN_TOKEN_HEADER, "")
            if hmac.compare_digest(given.encode(), token.encode()):
                return None
            return f"admin endpoints need the {ADMIN_TOKEN_HEADER} header"
        if self.public:
            return "admin endpoints are off: listening beyond loopback without an admin token"
        if self.sim.config.admin_loopback_only and request.remote not in _LOOPBACK:
            return "admin endpoints are loopback-only"
        return None

    async def _call(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc)

    async def _apply_fault(
        self, fault: FaultRule, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        kind = fault.kind
        if kind == "http_5xx":
            # plain text like a load balancer's error page: ccxt maps the status itself
            return web.Response(status=fault.status, text="Service Unavailable")
        if kind == "http_429":
            return error_response(
                ApiError(
                    429,
                    -1003,
                    "Too many requests; current limit of IP(127.0.0.1) is 6000 requests per "
                    "minute. Please use the websocket for live updates to avoid polling the API.",
                ),
                {"Retry-After": str(fault.retry_after_s)},
            )
        if kind == "http_418":
            with self.sim.lock:
                retry_after = self.sim.faults.ban_remaining_s() or fault.retry_after_s
            banned_until = self.sim.now_ms() + retry_after * 1000
            return error_response(
                ApiError(
                    418,
                    -1003,
                    f"Way too many requests; IP(127.0.0.1) banned until {banned_until}. "
                    "Please use the websocket for live updates to avoid bans.",
                ),
                {"Retry-After": str(retry_after)},
            )
        if kind == "timeout":
            # never executed: the client gives up first; 504 only if it is still there
            await asyncio.sleep(fault.hold_s)
            return web.Response(status=504, text="Gateway Timeout")
        # response_lost: the request IS executed, only the answer goes missing
        response = await self._call(request, handler)
        if fault.mode == "delay":
            await asyncio.sleep(fault.hold_s)
            return response
        transport = request.transport
        if transport is not None:
            transport.abort()
        raise asyncio.CancelledError  # aiohttp drops a cancelled handler without logging

    # -- helpers ---------------------------------------------------------------------

    def _market(self, symbol: str | None) -> Market:
        return self.sim.exchange.market(symbol)

    def _cached(self, request: web.Request, build: Callable[[int], Any]) -> web.Response:
        """Serve public market data from the per-second cache, building it on a miss."""
        now_s = self.sim.now_ms() // 1000
        if now_s != self._cache_s:
            self._cache.clear()
            self._cache_s = now_s
        key = (request.path, request.query_string)
        body = self._cache.get(key)
        if body is None:
            with self.sim.lock:
                body = dumps(build(now_s))
            if len(self._cache) < _MAX_CACHED:
                self._cache[key] = body
        return web.Response(body=body, content_type="application/json")

    def _symbols(self, request: web.Request) -> list[Market] | Market:
        """``symbol=X`` -> one market; ``symbols=["X","Y"]`` or nothing -> a list."""
        symbol = request.query.get("symbol")
        if symbol:
            return self._market(symbol)
        raw = request.query.get("symbols")
        if raw:
            try:
                names = json.loads(raw)
            except ValueError:
                raise errors.bad_param("symbols") from None
            if not isinstance(names, list):
                raise errors.bad_param("symbols")
            return [self._market(str(n)) for n in names]
        return list(self.sim.markets.values())

    async def _signed(self, request: web.Request) -> tuple[Account, dict[str, str]]:
        """Authenticate a signed request; return its account and parameters."""
        key = request.headers.get("X-MBX-APIKEY", "")
        secret = self.sim.secrets.get(key)
        if secret is None:
            raise errors.invalid_api_key()
        body = await request.text() if request.body_exists else ""
        params = verify(
            secret, request.rel_url.raw_query_string, body, self.sim.config.check_timestamps
        )
        symbol = params.get("symbol")
        if symbol and request.method == "POST":
            with self.sim.lock:
                self.sim.stats.symbol(request[_ENDPOINT_KEY], symbol)
        return self.sim.exchange.accounts[key], params

    # -- public endpoints ------------------------------------------------------------

    async def ping(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/v3/ping``."""
        return json_response({})

    async def time(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/v3/time``: the market clock."""
        return json_response({"serverTime": self.sim.now_ms()})

    async def exchange_info(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/v3/exchangeInfo``, optionally filtered by ``symbol``/``symbols``."""
        selected = self._symbols(request)
        markets = selected if isinstance(selected, list) else [selected]
        return json_response(
            {
                "timezone": "UTC",
                "serverTime": self.sim.now_ms(),
                "rateLimits": [
                    {
                        "rateLimitType": "REQUEST_WEIGHT",
                        "interval": "MINUTE",
                        "intervalNum": 1,
                        "limit": 6000,
                    },
                    {
                        "rateLimitType": "ORDERS",
                        "interval": "SECOND",
                        "intervalNum": 10,
                        "limit": 100,
                    },
                    {
                        "rateLimitType": "RAW_REQUESTS",
                        "interval": "MINUTE",
                        "intervalNum": 5,
                        "limit": 61000,
                    },
                ],
                "exchangeFilters": [],
                "symbols": [m.exchange_info() for m in markets],
            }
        )

    async def ticker_24hr(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/v3/ticker/24hr``."""
        selected = self._symbols(request)
        if isinstance(selected, list):
            return self._cached(request, lambda s: [m.ticker_24hr(s) for m in selected])
        return self._cached(request, selected.ticker_24hr)

    async def book_ticker(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/v3/ticker/bookTicker``."""
        selected = self._symbols(request)
        if isinstance(selected, list):
            return self._cached(request, lambda s: [m.book_ticker(s) for m in selected])
        return self._cached(request, selected.book_ticker)

    async def price_ticker(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/v3/ticker/price``."""
        selected = self._symbols(request)
        if isinstance(selected, list):
            return self._cached(request, lambda s: [m.price_ticker(s) for m in selected])
        return self._cached(request, selected.price_ticker)

    async def depth(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/v3/depth`` with ``limit`` 1..5000 (default 100)."""
        market = self._market(request.query.get("symbol"))
        limit = _int_param(request.query, "limit", 100)
        assert limit is not None
        if not 1 <= limit <= 5000:
            raise errors.bad_param("limit")
        return self._cached(request, lambda s: market.depth(s, limit))

    async def klines(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/v3/klines`` with ``interval``, ``startTime``, ``endTime``, ``limit``."""
        query = request.query
        market = self._market(query.get("symbol"))
        interval = query.get("interval")
        if not interval:
            raise errors.missing_param("interval")
        limit = _int_param(query, "limit", 500)
        assert limit is not None
        if not 1 <= limit <= 1000:
            raise errors.bad_param("limit")
        start = _int_param(query, "startTime")
        end = _int_param(query, "endTime")
        return self._cached(request, lambda s: market.klines(interval, start, end, limit, s))

    # -- signed endpoints ------------------------------------------------------------

    async def account(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/v3/account``."""
        account, params = await self._signed(request)
        omit_zero = params.get("omitZeroBalances", "false").lower() == "true"
        with self.sim.lock:
            now = self.sim.now_ms()
            self.sim.exchange.account_info(account, now)
            data = account.account_json(now, omit_zero, self.sim.exchange.fee_rate)
        return json_response(data)

    async def new_order(self, request: web.Request) -> web.StreamResponse:
        """``POST /api/v3/order``."""
        account, params = await self._signed(request)
        with self.sim.lock:
            order = self.sim.exchange.place(account, params, self.sim.now_ms())
            data = order.new_json(params.get("newOrderRespType") or "FULL")
        return json_response(data)

    async def get_order(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/v3/order`` by ``orderId`` or ``origClientOrderId``."""
        account, params = await self._signed(request)
        with self.sim.lock:
            data = self.sim.exchange.get(account, params, self.sim.now_ms()).query_json()
        return json_response(data)

    async def cancel_order(self, request: web.Request) -> web.StreamResponse:
        """``DELETE /api/v3/order``."""
        account, params = await self._signed(request)
        with self.sim.lock:
            data = self.sim.exchange.cancel(account, params, self.sim.now_ms())
        return json_response(data)

    async def open_orders(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/v3/openOrders`` (``symbol`` optional)."""
        account, params = await self._signed(request)
        with self.sim.lock:
            found = self.sim.exchange.open_orders(account, params.get("symbol"), self.sim.now_ms())
            data = [o.query_json() for o in found]
        return json_response(data)

    async def cancel_open_orders(self, request: web.Request) -> web.StreamResponse:
        """``DELETE /api/v3/openOrders``: cancel every open order of one symbol."""
        account, params = await self._signed(request)
        with self.sim.lock:
            now = self.sim.now_ms()
            symbol = self.sim.exchange.market(params.get("symbol")).symbol
            found = self.sim.exchange.open_orders(account, symbol, now)
            if not found:
                raise errors.unknown_order()
            data = [
                self.sim.exchange.cancel(
                    account, {"symbol": symbol, "orderId": str(o.order_id)}, now
                )
                for o in found
            ]
        return json_response(data)

    async def all_orders(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/v3/allOrders`` with ``orderId``, ``startTime``, ``endTime``, ``limit``."""
        account, params = await self._signed(request)
        with self.sim.lock:
            now = self.sim.now_ms()
            market = self.sim.exchange.market(params.get("symbol"))
            self.sim.exchange.sweep(account, market, now // 1000, now)
            from_id = _int_param(params, "orderId")
            start = _int_param(params, "startTime")
            end = _int_param(params, "endTime")
            limit = min(_int_param(params, "limit", 500) or 500, 1000)
            found = [
                o
                for o in account.by_client_id.values()
                if o.symbol == market.symbol
                and (from_id is None or o.order_id >= from_id)
                and (start is None or o.time_ms >= start)
                and (end is None or o.time_ms <= end)
            ]
            found.sort(key=lambda o: o.order_id)
            found = found[:limit] if from_id is not None or start is not None else found[-limit:]
            data = [o.query_json() for o in found]
        return json_response(data)

    async def my_trades(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/v3/myTrades``."""
        account, params = await self._signed(request)
        with self.sim.lock:
            trades = self.sim.exchange.my_trades(account, params, self.sim.now_ms())
            data = [t.my_trade_json() for t in trades]
        return json_response(data)


def create_app(sim: Simulator, *, public: bool = False) -> web.Application:
    """The aiohttp application serving ``sim``; ``public`` when it listens beyond loopback
    (admin endpoints then need ``SimulatorConfig.admin_token``)."""
    return SimulatorApp(sim, public=public).build()
