"""Loopback exchange simulator speaking Binance spot REST, for tests, demo and benchmarks.

The real ccxt ``binance`` class runs against it unmodified (see :func:`make_ccxt_client`
for the options it needs). It checks signatures, runs a deterministic seeded price
path per symbol, matches orders against it, keeps balances and an order log, and
injects faults on demand (latency, 5xx, 429, 418, timeouts, lost order responses).

Typical test use::

    with SimulatorServer(clock=ManualClock()) as server:
        exchange = make_ccxt_client(server.url)
        exchange.create_order("BTC/USDT", "market", "buy", 0.01)
        assert server.request_count("/api/v3/order", "POST") == 1
"""

from .client import make_ccxt_client
from .config import (
    DEFAULT_API_KEY,
    DEFAULT_API_SECRET,
    DEFAULT_BALANCES,
    DEFAULT_SYMBOLS,
    Clock,
    ManualClock,
    SimulatorConfig,
    SymbolSpec,
    wall_clock,
)
from .core import Simulator
from .errors import ApiError
from .faults import KINDS as FAULT_KINDS
from .faults import FaultInjector, FaultRule
from .runner import DEFAULT_HOST, DEFAULT_PORT, SimulatorServer, run_simulator
from .server import create_app

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_API_SECRET",
    "DEFAULT_BALANCES",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_SYMBOLS",
    "FAULT_KINDS",
    "ApiError",
    "Clock",
    "FaultInjector",
    "FaultRule",
    "ManualClock",
    "Simulator",
    "SimulatorConfig",
    "SimulatorServer",
    "SymbolSpec",
    "create_app",
    "make_ccxt_client",
    "run_simulator",
    "wall_clock",
]
