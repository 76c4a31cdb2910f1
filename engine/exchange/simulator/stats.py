"""Request counters, so tests and benchmarks can assert on the traffic they caused."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Any


class RequestStats:
    """Counts per endpoint (``"GET /api/v3/ticker/24hr"``), symbol, status and fault."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.total = 0
        self.by_endpoint: Counter[str] = Counter()
        self.by_symbol: Counter[str] = Counter()
        self.by_endpoint_symbol: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.by_status: Counter[int] = Counter()
        self.faults: Counter[str] = Counter()

    def arrived(self, endpoint: str) -> None:
        """Count a request when it arrives (held requests are visible while held)."""
        self.total += 1
        self.by_endpoint[endpoint] += 1

    def symbol(self, endpoint: str, symbol: str) -> None:
        """Attribute a counted request to a symbol, once its parameters are parsed."""
        self.by_symbol[symbol] += 1
        self.by_endpoint_symbol[endpoint][symbol] += 1

    def finished(self, status: int) -> None:
        """Count the HTTP status sent (0: the connection was dropped on purpose)."""
        self.by_status[status] += 1

    def count(
        self, path: str | None = None, method: str | None = None, symbol: str | None = None
    ) -> int:
        """Requests matching every given filter (path is exact, e.g. ``/api/v3/order``)."""
        total = 0
        for endpoint, n in self.by_endpoint.items():
            verb, _, endpoint_path = endpoint.partition(" ")
            if path is not None and endpoint_path != path:
                continue
            if method is not None and verb != method.upper():
                continue
            if symbol is None:
                total += n
            elif endpoint in self.by_endpoint_symbol:
                total += self.by_endpoint_symbol[endpoint][symbol]
        return total

    def snapshot(self) -> dict[str, Any]:
        """The JSON of ``GET /_sim/stats``."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {
            "total": self.total,
            "elapsed_s": round(elapsed, 3),
            "rate_per_s": round(self.total / elapsed, 1),
            "by_endpoint": dict(self.by_endpoint),
            "by_symbol": dict(self.by_symbol),
            "by_endpoint_symbol": {k: dict(v) for k, v in self.by_endpoint_symbol.items()},
            "by_status": {str(k): v for k, v in self.by_status.items()},
            "faults": dict(self.faults),
        }
