"""A real, unmodified ccxt ``binance`` client pointed at a simulator (for tests/tools).

The engine builds the same client for `exchange: simulator` bots; this only fills in
the simulator's default keys.
"""

from __future__ import annotations

from typing import Any

from .config import DEFAULT_API_KEY, DEFAULT_API_SECRET


def make_ccxt_client(
    base_url: str,
    api_key: str = DEFAULT_API_KEY,
    api_secret: str = DEFAULT_API_SECRET,
    *,
    timeout_ms: int = 10_000,
    options: dict[str, Any] | None = None,
    **config: Any,
) -> Any:
    """A sync ``ccxt.binance`` talking to the simulator at ``base_url``.

    Built exactly as the engine builds it (`engine.exchange.clients.build_exchange`):
    ccxt's own throttle off, spot-only market loading, every REST URL on ``base_url``.
    Returns ``ccxt.binance`` (typed ``Any``: ccxt ships no type information).
    """
    # lazy: the server itself never needs ccxt
    from engine.exchange.clients import ClientSpec, build_exchange

    spec = ClientSpec(
        exchange_id="simulator",
        api_key=api_key,
        secret=api_secret,
        base_url=base_url,
        options={"timeout": timeout_ms, **config, "options": options or {}},
    )
    return build_exchange(spec)
