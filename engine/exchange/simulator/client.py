"""A real, unmodified ccxt ``binance`` client pointed at a simulator.

Deliberately small and obvious: the engine's generic "point every REST URL of a ccxt
class at one origin" function (``base_url`` in bot configs) can replace it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from .config import DEFAULT_API_KEY, DEFAULT_API_SECRET

SIMULATOR_CCXT_OPTIONS: dict[str, Any] = {
    "defaultType": "spot",
    # only GET /api/v3/exchangeInfo on load_markets: no futures, no margin pairs ...
    "fetchMarkets": {"types": ["spot"]},
    "fetchMargins": False,
    # ... and no sapi/capital/config/getall for currencies
    "fetchCurrencies": False,
    # openOrders without a symbol is fine on the simulator
    "fetchOpenOrders": {"warnWithoutSymbol": False},
}
"""ccxt ``options`` the simulator needs: without them ``load_markets()`` also calls
fapi/dapi exchangeInfo, sapi margin pairs and sapi capital config."""


def point_urls_at(exchange: Any, base_url: str) -> None:
    """Rewrite every ``exchange.urls["api"]`` entry to ``base_url``'s origin, keeping
    each entry's path (``https://api.binance.com/api/v3`` -> ``{base_url}/api/v3``)."""
    origin = base_url.rstrip("/")
    api = exchange.urls["api"]
    for name, url in list(api.items()):
        if isinstance(url, str):
            api[name] = origin + urlsplit(url).path


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

    ccxt's client-side throttle is off by default (the simulator does not rate limit
    unless told to by a fault); pass ``enableRateLimit=True`` to turn it back on.
    Returns ``ccxt.binance`` (typed ``Any``: ccxt ships no type information).
    """
    import ccxt  # here, not at module level: the server itself never needs ccxt

    exchange = ccxt.binance(
        {
            "apiKey": api_key,
            "secret": api_secret,
            "timeout": timeout_ms,
            "enableRateLimit": False,
            **config,
            "options": {**SIMULATOR_CCXT_OPTIONS, **(options or {})},
        }
    )
    point_urls_at(exchange, base_url)
    return exchange
