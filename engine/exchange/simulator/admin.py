"""Admin routes under ``/_sim/``: the order log, counters, faults, clock and reset.

They are for tests, benchmarks and chaos runs on the same host: the middleware refuses
them from non-loopback addresses, and requires ``SimulatorConfig.admin_token`` (when
set, or when the simulator listens beyond loopback). The order log names accounts by a
digest of their API key, never by the key itself.
"""

from __future__ import annotations

import hashlib

from aiohttp import web

from .core import Simulator
from .responses import Handler, json_response


def account_label(api_key: str) -> str:
    """How the admin endpoints name an account: a digest of its key, not the key."""
    return "acct-" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


class AdminRoutes:
    """Handlers of the ``/_sim/`` endpoints for one simulator."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def routes(self) -> list[tuple[str, str, Handler]]:
        """(method, path, handler) of every admin endpoint."""
        return [
            ("GET", "/_sim/health", self.health),
            ("GET", "/_sim/orders", self.orders),
            ("GET", "/_sim/trades", self.trades),
            ("GET", "/_sim/balances", self.balances),
            ("GET", "/_sim/stats", self.stats),
            ("GET", "/_sim/faults", self.get_faults),
            ("POST", "/_sim/faults", self.set_faults),
            ("DELETE", "/_sim/faults", self.clear_faults),
            ("POST", "/_sim/reset", self.reset),
            ("GET", "/_sim/clock", self.get_clock),
            ("POST", "/_sim/clock", self.set_clock),
        ]

    async def health(self, request: web.Request) -> web.StreamResponse:
        """``GET /_sim/health``."""
        return json_response(
            {"ok": True, "now_ms": self.sim.now_ms(), "symbols": list(self.sim.markets)}
        )

    async def orders(self, request: web.Request) -> web.StreamResponse:
        """``GET /_sim/orders?symbol=&clientOrderId=&status=&account=``: the order log;
        ``account`` is an account label (see :func:`account_label`)."""
        query = request.query
        orders = self.sim.orders(query.get("symbol"), query.get("clientOrderId"))
        for order in orders:
            order["account"] = account_label(order["account"])
        status, account = query.get("status"), query.get("account")
        orders = [
            o
            for o in orders
            if (status is None or o["status"] == status)
            and (account is None or o["account"] == account)
        ]
        return json_response({"count": len(orders), "orders": orders})

    async def trades(self, request: web.Request) -> web.StreamResponse:
        """``GET /_sim/trades?symbol=``: every fill, oldest first."""
        symbol = request.query.get("symbol")
        with self.sim.lock:
            trades = [
                t.my_trade_json()
                for t in self.sim.exchange.trades
                if symbol is None or t.symbol == symbol
            ]
        return json_response({"count": len(trades), "trades": trades})

    async def balances(self, request: web.Request) -> web.StreamResponse:
        """``GET /_sim/balances?account=KEY``."""
        account = request.query.get("account")
        if account is not None and account not in self.sim.secrets:
            return json_response({"error": "unknown account"}, 404)
        return json_response(self.sim.balances(account))

    async def stats(self, request: web.Request) -> web.StreamResponse:
        """``GET /_sim/stats``: request counters and order totals."""
        return json_response(self.sim.stats_snapshot())

    async def get_faults(self, request: web.Request) -> web.StreamResponse:
        """``GET /_sim/faults``: current rules with their fired counts."""
        with self.sim.lock:
            return json_response(self.sim.faults.snapshot())

    async def set_faults(self, request: web.Request) -> web.StreamResponse:
        """``POST /_sim/faults``: see :meth:`FaultInjector.configure` for the JSON."""
        spec = await request.json()
        if not isinstance(spec, dict):
            raise ValueError("expected a JSON object")
        return json_response(self.sim.set_faults(spec))

    async def clear_faults(self, request: web.Request) -> web.StreamResponse:
        """``DELETE /_sim/faults``."""
        self.sim.clear_faults()
        with self.sim.lock:
            return json_response(self.sim.faults.snapshot())

    async def reset(self, request: web.Request) -> web.StreamResponse:
        """``POST /_sim/reset`` with optional ``{"stats": b, "faults": b, "clock": b}``."""
        spec = await request.json() if request.body_exists else {}
        if not isinstance(spec, dict):
            raise ValueError("expected a JSON object")
        self.sim.reset(
            stats=bool(spec.get("stats", True)),
            faults=bool(spec.get("faults", True)),
            clock=bool(spec.get("clock", False)),
        )
        return json_response({"ok": True})

    async def get_clock(self, request: web.Request) -> web.StreamResponse:
        """``GET /_sim/clock``."""
        return json_response({"now_ms": self.sim.now_ms(), "offset_ms": self.sim.clock.offset_ms})

    async def set_clock(self, request: web.Request) -> web.StreamResponse:
        """``POST /_sim/clock`` with ``{"advance_s": x}`` or ``{"offset_ms": n}``."""
        spec = await request.json()
        if not isinstance(spec, dict):
            raise ValueError("expected a JSON object")
        with self.sim.lock:
            if "offset_ms" in spec:
                self.sim.clock.offset_ms = int(spec["offset_ms"])
            if "advance_s" in spec:
                self.sim.clock.offset_ms += int(float(spec["advance_s"]) * 1000)
        return await self.get_clock(request)
