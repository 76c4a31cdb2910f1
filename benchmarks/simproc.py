"""The exchange simulator as its own process, plus a duplicate-order counter.

`python -m benchmarks.simproc --port P [--latency-ms L] [--seed S]` serves the
simulator on 127.0.0.1:P. It runs apart from the harness so the two never share a GIL:
a benchmark must not slow down its own exchange.

The simulator refuses a reused client order id ("Duplicate order sent.", code -2010,
the same code as an unpayable order), but does not count those refusals. A chaos run
needs exactly that count, so this wrapper counts them and serves the figure at
`GET /_sim/bench` (admin paths are not counted as exchange traffic).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from engine.exchange.simulator import SimulatorConfig, create_app
from engine.exchange.simulator.core import Simulator
from engine.exchange.simulator.errors import ApiError
from engine.exchange.simulator.matching import Exchange
from engine.exchange.simulator.orders import Account, Order
from engine.exchange.simulator.runner import check_bind

DUPLICATE_MESSAGE = "Duplicate order sent."
duplicates: list[str] = []


def _loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (as `botengine simulator` uses), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _counting_place(original: Any) -> Any:
    def place(self: Exchange, account: Account, params: Mapping[str, str], now_ms: int) -> Order:
        try:
            return original(self, account, params, now_ms)  # type: ignore[no-any-return]
        except ApiError as exc:
            if exc.msg == DUPLICATE_MESSAGE:
                duplicates.append(str(params.get("newClientOrderId")))
            raise

    return place


async def bench_stats(request: web.Request) -> web.StreamResponse:
    """`GET /_sim/bench`: duplicate client order ids refused so far."""
    return web.json_response({"duplicate_rejections": len(duplicates), "ids": duplicates[:100]})


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 for remote workers")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    Exchange.place = _counting_place(Exchange.place)  # type: ignore[method-assign]
    # Plenty of quote currency: a long benchmark's DCA bots share one simulator account.
    config = SimulatorConfig(
        seed=args.seed,
        latency_ms=args.latency_ms,
        balances={
            "USDT": "1000000000",
            "BTC": "1000",
            "ETH": "10000",
            "SOL": "100000",
            "BNB": "100000",
        },
    )
    check_bind(args.host, config)  # the default keys stay on loopback here too
    app = create_app(Simulator(config))
    app.router.add_route("GET", "/_sim/bench", bench_stats)
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        access_log=None,
        shutdown_timeout=0.5,
        print=lambda *_: None,
        loop=_loop(),
    )


if __name__ == "__main__":
    main()
