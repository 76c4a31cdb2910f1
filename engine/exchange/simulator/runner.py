"""Running the simulator: blocking (the ``botengine simulator`` command) or in a
background thread with its own event loop (tests, the embedded demo).

Beyond loopback (``--host 0.0.0.0``) the simulator is a real signing endpoint on the
network: with the documented default keys anyone who reaches it trades its accounts,
and its admin endpoints reset balances, move the clock and list orders. So a
non-loopback bind is refused with the default keys unless ``allow_default_keys`` says
the port is not reachable from elsewhere (a container whose port is published on
loopback only), is logged as a warning, and serves admin endpoints only with an admin
token (`SimulatorConfig.admin_token`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import threading
from types import TracebackType
from typing import Any

from aiohttp import web

from engine.errors import ConfigError
from engine.logging import get_logger

from .config import SimulatorConfig
from .core import Simulator
from .faults import FaultRule
from .server import create_app

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
_SHUTDOWN_TIMEOUT_S = 0.5  # held (faulted) requests must not delay shutdown


def _fast_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (about 10 % more requests per second), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


log = get_logger("engine.simulator")


def _config(config: SimulatorConfig | None, overrides: dict[str, Any]) -> SimulatorConfig:
    return (config or SimulatorConfig()).with_overrides(**overrides)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost` (``0.0.0.0`` and ``::`` are not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, config: SimulatorConfig, *, allow_default_keys: bool = False) -> bool:
    """Whether serving on `host` is public (beyond loopback); ConfigError when it would
    expose the default keys. A public bind is logged as a warning."""
    if is_loopback(host):
        return False
    if config.uses_default_keys() and not allow_default_keys:
        raise ConfigError(
            f"refusing to serve the simulator on {host} with the default keys: anyone who"
            " reaches it could trade with the documented secret. Set SIMULATOR_API_KEY and"
            " SIMULATOR_API_SECRET, or pass --allow-default-keys when the port is only"
            " reachable from this host (e.g. a container port published on 127.0.0.1)"
        )
    log.warning(
        "simulator.public_bind",
        host=host,
        default_keys=config.uses_default_keys(),
        admin="token required" if config.admin_token else "off (no admin token)",
    )
    return True


def run_simulator(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    seed: int | None = None,
    latency_ms: float | None = None,
    api_key: str | None = None,
    api_secret: str | None = None,
    config: SimulatorConfig | None = None,
    *,
    admin_token: str | None = None,
    allow_default_keys: bool = False,
    **overrides: Any,
) -> None:
    """Serve the simulator until interrupted (SIGINT/SIGTERM); blocks.

    Arguments left as None keep the value of ``config`` (or the defaults). A host beyond
    loopback is refused with the default keys unless ``allow_default_keys`` (see the
    module docstring); its admin endpoints then need ``admin_token``.
    """
    settings = _config(
        config,
        {
            "seed": seed,
            "latency_ms": latency_ms,
            "api_key": api_key,
            "api_secret": api_secret,
            "admin_token": admin_token,
            **overrides,
        },
    )
    public = check_bind(host, settings, allow_default_keys=allow_default_keys)
    sim = Simulator(settings)
    web.run_app(
        create_app(sim, public=public),
        host=host,
        port=port,
        access_log=None,
        shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
        print=lambda *_: None,
        loop=_fast_loop(),
    )


class SimulatorServer:
    """The simulator on a loopback port, served from a background thread.

    ``with SimulatorServer(port=0) as server: server.url`` starts it on a free port and
    stops it on exit. The in-process API of :class:`Simulator` is on ``server.sim``;
    the most used parts are repeated here.
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        allow_default_keys: bool = False,
        **overrides: Any,
    ) -> None:
        settings = _config(config, overrides)
        self.public = check_bind(host, settings, allow_default_keys=allow_default_keys)
        self.sim = Simulator(settings)
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """Origin of the running server, e.g. ``http://127.0.0.1:40123``."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> SimulatorServer:
        """Start serving; returns once the port is bound (raises if binding failed)."""
        if self._thread is not None:
            raise RuntimeError("simulator already started")
        self._thread = threading.Thread(target=self._serve, name="simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=10):
            raise RuntimeError("simulator did not start within 10 s")
        if self._error is not None:
            raise RuntimeError("simulator failed to start") from self._error
        return self

    def stop(self) -> None:
        """Stop serving and join the thread (idempotent)."""
        loop, stopped, thread = self._loop, self._stopped, self._thread
        if loop is not None and stopped is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop already gone
                loop.call_soon_threadsafe(stopped.set)
        if thread is not None:
            thread.join(timeout=10)
        self._thread = None

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except Exception as exc:  # noqa: BLE001 - handed to start(), which re-raises it
            self._error = exc
        finally:
            self._ready.set()
            # handlers still held by a fault (timeout, delayed response) end here
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()
            asyncio.set_event_loop(None)

    async def _main(self) -> None:
        self._stopped = asyncio.Event()
        runner = web.AppRunner(
            create_app(self.sim, public=self.public),
            access_log=None,
            shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
            await site.start()
            self.port = runner.addresses[0][1]
            self._ready.set()
            await self._stopped.wait()
        finally:
            await runner.cleanup()

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- shortcuts to the in-process API ---------------------------------------------

    def orders(
        self, symbol: str | None = None, client_order_id: str | None = None
    ) -> list[dict[str, Any]]:
        """The order log; see :meth:`Simulator.orders`."""
        return self.sim.orders(symbol, client_order_id)

    def request_count(
        self, path: str | None = None, method: str | None = None, symbol: str | None = None
    ) -> int:
        """Requests received; see :meth:`Simulator.request_count`."""
        return self.sim.request_count(path, method, symbol)

    def add_fault(self, kind: str, **options: Any) -> FaultRule:
        """Add one fault rule; see :meth:`Simulator.add_fault`."""
        return self.sim.add_fault(kind, **options)

    def stats(self) -> dict[str, Any]:
        """The ``GET /_sim/stats`` JSON; see :meth:`Simulator.stats_snapshot`."""
        return self.sim.stats_snapshot()

    def set_faults(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Apply ``/_sim/faults`` JSON; see :meth:`FaultInjector.configure`."""
        return self.sim.set_faults(spec)

    def reset(self) -> None:
        """Forget orders, restore balances, zero counters, clear faults."""
        self.sim.reset()
