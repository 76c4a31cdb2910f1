"""Simulator settings: listed symbols, starting balances, keys, fees and the clock.

Everything that makes two simulator runs differ lives here, so a run is reproduced by
reusing its :class:`SimulatorConfig` (same seed + same clock -> same prices and fills).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

Clock = Callable[[], int]
"""A callable returning the current time in epoch milliseconds."""

DEFAULT_API_KEY = "simulator-key"
DEFAULT_API_SECRET = "simulator-secret"  # noqa: S105 - a documented loopback-only default


def wall_clock() -> int:
    """The host's real time in epoch milliseconds (the default clock)."""
    return time.time_ns() // 1_000_000


class ManualClock:
    """A clock tests move by hand; prices and fills follow it, nothing else does.

    Thread-safe enough for tests: reads and writes of one int attribute are atomic.
    """

    def __init__(self, start_ms: int | None = None) -> None:
        self.now_ms = wall_clock() if start_ms is None else start_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, seconds: float) -> int:
        """Move time forward by ``seconds`` and return the new epoch ms."""
        self.now_ms += int(seconds * 1000)
        return self.now_ms

    def set(self, now_ms: int) -> None:
        """Jump to an absolute epoch ms."""
        self.now_ms = now_ms


class OffsetClock:
    """Wraps a clock with an adjustable offset, so ``POST /_sim/clock`` can shift time
    for other processes (chaos runs, benchmarks) without them injecting a clock."""

    def __init__(self, inner: Clock) -> None:
        self.inner = inner
        self.offset_ms = 0

    def __call__(self) -> int:
        return self.inner() + self.offset_ms


@dataclass(frozen=True)
class SymbolSpec:
    """One listed spot market with its exchangeInfo filters and price-path parameters."""

    base: str
    quote: str
    price: float
    """Long-run price level the seeded path wanders around."""
    tick_size: str = "0.01"
    step_size: str = "0.00001"
    min_qty: str = "0.00001"
    max_qty: str = "9000"
    min_notional: str = "5"
    daily_volatility: float = 0.03
    """Standard deviation of the daily log return."""
    base_volume: float = 10.0
    """Mean traded base volume per minute (synthetic, for klines and tickers)."""

    @property
    def symbol(self) -> str:
        """Exchange id, e.g. ``BTCUSDT``."""
        return f"{self.base}{self.quote}"

    @property
    def tick(self) -> Decimal:
        """PRICE_FILTER tickSize as a Decimal."""
        return Decimal(self.tick_size)

    @property
    def step(self) -> Decimal:
        """LOT_SIZE stepSize as a Decimal."""
        return Decimal(self.step_size)


DEFAULT_SYMBOLS: tuple[SymbolSpec, ...] = (
    SymbolSpec("BTC", "USDT", 60_000.0, "0.01", "0.00001", "0.00001", "9000", "5", 0.03, 12.0),
    SymbolSpec("ETH", "USDT", 3_000.0, "0.01", "0.0001", "0.0001", "100000", "5", 0.04, 150.0),
    SymbolSpec("SOL", "USDT", 150.0, "0.01", "0.001", "0.001", "100000", "5", 0.05, 900.0),
    SymbolSpec("BNB", "USDT", 600.0, "0.01", "0.001", "0.001", "100000", "5", 0.03, 80.0),
    SymbolSpec("ETH", "BTC", 0.05, "0.00001", "0.0001", "0.0001", "100000", "0.0001", 0.025, 40.0),
)

DEFAULT_BALANCES: Mapping[str, str | float] = {
    "USDT": "100000",
    "BTC": "10",
    "ETH": "100",
    "SOL": "1000",
    "BNB": "100",
}


@dataclass
class SimulatorConfig:
    """How a simulator instance behaves; every field has a usable default."""

    seed: int = 42
    symbols: tuple[SymbolSpec, ...] = DEFAULT_SYMBOLS
    balances: Mapping[str, str | float] = field(default_factory=lambda: dict(DEFAULT_BALANCES))
    """Starting free balance of every account, asset -> amount (decimal string or number)."""
    api_key: str = DEFAULT_API_KEY
    api_secret: str = DEFAULT_API_SECRET
    extra_accounts: Mapping[str, str] = field(default_factory=dict)
    """More accounts: API key -> secret, each with its own balances and orders."""
    fee_rate: str = "0.001"
    """Maker and taker fee, charged in the received asset like Binance without BNB."""
    spread_bps: float = 2.0
    """Full bid/ask spread around the mid, in basis points (at least one tick)."""
    clock: Clock = wall_clock
    """Drives prices, candles, fills and order timestamps."""
    check_timestamps: bool = True
    """Enforce ``timestamp``/``recvWindow`` against the host's real clock (the client
    signs with its real clock even when a test moves the market clock)."""
    sweep_interval_s: float = 1.0
    """Period of the background task filling resting limit orders (0 = only lazily)."""
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    replay: Mapping[str, Sequence[tuple[int, float, float, float, float, float]]] = field(
        default_factory=dict
    )
    """Symbols (exchange ids, e.g. ``BTCUSDT``) whose prices replay these candles
    (open time ms, open, high, low, close, volume) instead of the seeded path."""
    admin_loopback_only: bool = True
    """Refuse ``/_sim/`` admin requests from anything but loopback addresses."""
    admin_token: str | None = None
    """When set, every ``/_sim/`` admin request (but ``/_sim/health``) must carry it in
    the ``X-Sim-Admin-Token`` header, whatever its address. Required for admin access
    when the simulator listens beyond loopback."""

    def with_overrides(self, **changes: Any) -> SimulatorConfig:
        """A copy with some fields replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def uses_default_keys(self) -> bool:
        """Whether any account is reachable with the documented default key or secret."""
        return (
            self.api_key == DEFAULT_API_KEY
            or self.api_secret == DEFAULT_API_SECRET
            or DEFAULT_API_SECRET in self.extra_accounts.values()
        )

    def accounts(self) -> dict[str, str]:
        """All API key -> secret pairs this simulator accepts."""
        return {self.api_key: self.api_secret, **self.extra_accounts}
