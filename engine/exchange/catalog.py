"""Which exchange ids a bot config may name."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

SIMULATOR = "simulator"


@lru_cache(maxsize=1)
def exchange_ids() -> frozenset[str]:
    """Every ccxt exchange id, plus `simulator` (the loopback Binance imitation)."""
    import ccxt  # lazy: importing ccxt costs ~1 s; only when a config names one

    return frozenset(ccxt.exchanges) | {SIMULATOR}


def is_known_exchange(exchange_id: str) -> bool:
    """True when `exchange_id` is a ccxt exchange id or `simulator`."""
    return exchange_id in exchange_ids()


CCXT_CLASS = {SIMULATOR: "binance"}
"""The ccxt class each non-ccxt exchange id speaks (the simulator imitates Binance spot)."""


def ccxt_class_id(exchange_id: str) -> str:
    """The ccxt class behind `exchange_id` (`simulator` → `binance`)."""
    return CCXT_CLASS.get(exchange_id, exchange_id)


@dataclass(frozen=True, slots=True)
class ClientIdRules:
    """What an exchange accepts as a client order id, and how to look an order up by it.

    `allowed` is a regex character class. `param` is the ccxt params key for
    fetch_order/cancel_order by client id: ccxt's unified `clientOrderId` is mapped by
    most classes; an entry names the native key where that is the documented way.
    """

    max_len: int
    allowed: str
    param: str = "clientOrderId"


_BINANCE = ClientIdRules(36, r"[.A-Z:/a-z0-9_-]", "origClientOrderId")
CLIENT_ID_RULES: dict[str, ClientIdRules] = {
    "binance": _BINANCE,
    "binanceus": _BINANCE,
    SIMULATOR: _BINANCE,
    "okx": ClientIdRules(32, r"[A-Za-z0-9]", "clOrdId"),
    "bybit": ClientIdRules(36, r"[A-Za-z0-9_-]", "orderLinkId"),
    "kucoin": ClientIdRules(40, r"[A-Za-z0-9_-]", "clientOid"),
}
DEFAULT_CLIENT_ID_RULES = ClientIdRules(32, r"[A-Za-z0-9]")
"""Conservative for exchanges without an entry: 32 letters and digits fit nearly all."""


def client_id_rules(exchange_id: str) -> ClientIdRules:
    """Client order id limits of `exchange_id` (conservative default when unknown)."""
    return CLIENT_ID_RULES.get(exchange_id, DEFAULT_CLIENT_ID_RULES)
