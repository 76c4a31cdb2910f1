"""The simulator's state and its in-process API, independent of HTTP.

:class:`Simulator` owns the markets, the matching engine, the fault rules and the
request counters. The HTTP server (running in its own thread in tests) and the test
thread both reach it, so every entry point takes ``lock``; the handlers hold it only
for the few microseconds of bookkeeping, never across an ``await``.
"""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any

from .config import OffsetClock, SimulatorConfig
from .faults import FaultInjector, FaultRule
from .market import Market
from .matching import Exchange
from .replay import ReplayPath
from .stats import RequestStats


class Simulator:
    """One simulated exchange: prices, accounts, order log, faults and counters."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.lock = threading.RLock()
        self.clock = OffsetClock(self.config.clock)
        self.secrets = self.config.accounts()
        replays = self.config.replay
        unknown = set(replays) - {spec.symbol for spec in self.config.symbols}
        if unknown:
            raise ValueError(f"replay of unlisted symbols: {', '.join(sorted(unknown))}")
        self.markets = {
            spec.symbol: Market(
                spec,
                self.config.seed,
                self.config.spread_bps,
                ReplayPath(replays[spec.symbol]) if spec.symbol in replays else None,
            )
            for spec in self.config.symbols
        }
        self.faults = FaultInjector(self.config.seed, self.config.latency_ms, self.config.jitter_ms)
        self.stats = RequestStats()
        self.exchange = self._new_exchange()

    def _new_exchange(self) -> Exchange:
        return Exchange(
            self.markets, self.secrets, self.config.balances, Decimal(self.config.fee_rate)
        )

    def now_ms(self) -> int:
        """The market clock (injected clock plus any ``/_sim/clock`` offset)."""
        return self.clock()

    # -- in-process API for tests and tools ------------------------------------------

    def orders(
        self, symbol: str | None = None, client_order_id: str | None = None
    ) -> list[dict[str, Any]]:
        """The order log (oldest first) in the ``GET /_sim/orders`` JSON shape."""
        with self.lock:
            self.exchange.sweep_all(self.now_ms())
            return [
                o.log_json()
                for o in self.exchange.orders.values()
                if (symbol is None or o.symbol == symbol)
                and (client_order_id is None or o.client_order_id == client_order_id)
            ]

    def order(self, client_order_id: str, api_key: str | None = None) -> dict[str, Any] | None:
        """One order by client id (default account), or None."""
        with self.lock:
            account = self.exchange.accounts[api_key or self.config.api_key]
            found = account.by_client_id.get(client_order_id)
            if found is None:
                return None
            self.exchange.sweep(
                account, self.markets[found.symbol], self.now_ms() // 1000, self.now_ms()
            )
            return found.log_json()

    def balances(self, api_key: str | None = None) -> dict[str, dict[str, str]]:
        """Free and locked balance per asset of one account (default: the main key)."""
        with self.lock:
            account = self.exchange.accounts[api_key or self.config.api_key]
            self.exchange.account_info(account, self.now_ms())
            return {
                asset: {"free": f"{b.free:.8f}", "locked": f"{b.locked:.8f}"}
                for asset, b in sorted(account.balances.items())
            }

    def mid_price(self, symbol: str, at_ms: int | None = None) -> float:
        """The path's mid price of an exchange symbol (``BTCUSDT``) at a time (default now)."""
        with self.lock:
            return self.markets[symbol].path.mid(
                (self.now_ms() if at_ms is None else at_ms) // 1000
            )

    def quote(self, symbol: str, at_ms: int | None = None) -> tuple[Decimal, Decimal]:
        """(bid, ask) of an exchange symbol at a time (default now)."""
        with self.lock:
            return self.markets[symbol].quote((self.now_ms() if at_ms is None else at_ms) // 1000)

    def request_count(
        self, path: str | None = None, method: str | None = None, symbol: str | None = None
    ) -> int:
        """Requests received so far matching every given filter."""
        with self.lock:
            return self.stats.count(path, method, symbol)

    def stats_snapshot(self) -> dict[str, Any]:
        """The JSON of ``GET /_sim/stats``."""
        with self.lock:
            snap = self.stats.snapshot()
            snap["orders"] = len(self.exchange.orders)
            snap["trades"] = len(self.exchange.trades)
            snap["open_orders"] = sum(
                len(o) for a in self.exchange.accounts.values() for o in a.open_by_symbol.values()
            )
            return snap

    def add_fault(self, kind: str, **options: Any) -> FaultRule:
        """Add one fault rule, e.g. ``add_fault("http_429", count=1, retry_after_s=3)``."""
        with self.lock:
            return self.faults.add(FaultRule(kind, **options))

    def set_faults(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Apply ``POST /_sim/faults`` JSON in-process; returns the new fault state."""
        with self.lock:
            self.faults.configure(spec)
            return self.faults.snapshot()

    def clear_faults(self) -> None:
        """Remove all fault rules and latency."""
        with self.lock:
            self.faults.clear()

    def advance_clock(self, seconds: float) -> int:
        """Shift the market clock forward (works with any injected clock); returns now."""
        with self.lock:
            self.clock.offset_ms += int(seconds * 1000)
            return self.now_ms()

    def reset(self, *, stats: bool = True, faults: bool = True, clock: bool = False) -> None:
        """Forget all orders and trades and restore starting balances (and, by default,
        zero the counters and clear faults)."""
        with self.lock:
            self.exchange = self._new_exchange()
            if stats:
                self.stats = RequestStats()
            if faults:
                self.faults = FaultInjector(
                    self.config.seed, self.config.latency_ms, self.config.jitter_ms
                )
            if clock:
                self.clock.offset_ms = 0
