"""Per-bot notification routing: which of a bot's events each channel sends.

A bot config may carry

    notify:
      telegram: [bot.error, bot.exit]   # only these events of this bot go to Telegram
      email: false                      # none go by email
      webhook: true                     # the channel's global list (WEBHOOK_EVENTS)

A channel left out (or `true`) sends the bot's events in its global list
(`TELEGRAM_EVENTS`, ...); a list replaces that list for the bot, and may add events the
global one leaves out (`order.filled`). Only bot events can be routed per bot; fleet
events (`fleet.*`, `exchange.banned`) follow the global settings alone.

Finding a bot's routing costs a tick nothing: `tick.bot_setup` already validates the
bot's config once per generation and process, and `remember`s its routing here; `notify`
reads it from this dict. A process that never ran the bot (the CLI or API stopping it,
the beat settling its orders) does not know it: `notify` then lets each channel's
delivery thread `lookup` the stored config (cached briefly), never the caller.
"""

from __future__ import annotations

import threading
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict

from engine.events import BOT_EVENTS, FLEET_EVENTS, BotEvent
from engine.logging import get_logger

log = get_logger("engine.routing")

Kind = Literal["webhook", "telegram", "email"]
KINDS: tuple[Kind, ...] = ("webhook", "telegram", "email")
LOOKUP_TTL_S = 30.0
"""How long a delivery thread trusts a stored routing it read (the API process lives
long; a config changed meanwhile takes effect after this)."""
_LOOKUP_MAX = 10_000


def _route(value: object) -> object:
    """One clear message per wrong form (a plain union would report one per member)."""
    if value is None or isinstance(value, bool | tuple):
        return value
    if not isinstance(value, list):
        raise ValueError("must be true, false or a list of bot events (e.g. [bot.error])")
    for item in value:
        if item in FLEET_EVENTS:
            raise ValueError(f"{item} is a fleet event: only the global settings route it")
        if item not in BOT_EVENTS:
            raise ValueError(f"unknown event {item!r} (bot events: {', '.join(BOT_EVENTS)})")
    return tuple(dict.fromkeys(value))


Route = Annotated[bool | tuple[BotEvent, ...] | None, BeforeValidator(_route)]


class BotRoutes(BaseModel):
    """`notify:` of a bot config: per channel, true (global list), false, or its events."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    webhook: Route = None
    telegram: Route = None
    email: Route = None


DEFAULT = BotRoutes()
"""A bot without `notify:`: every channel sends what its global list names."""


def wants(kind: str, event: str, routes: BotRoutes | None, default: tuple[str, ...]) -> bool:
    """Whether channel `kind`, whose global list is `default`, sends `event` for a bot
    routed by `routes` (None: the global list)."""
    choice = getattr(routes, kind, None) if event in BOT_EVENTS else None
    if choice is None or choice is True:
        return event in default
    if choice is False:
        return False
    return event in choice


_known: dict[str, BotRoutes] = {}
_shared: dict[BotRoutes, BotRoutes] = {DEFAULT: DEFAULT}


def remember(bot: str, routes: BotRoutes | None) -> None:
    """Record the routing of a bot this process runs (equal routings share one object)."""
    routes = routes or DEFAULT
    _known[bot] = _shared.setdefault(routes, routes)


def known(bot: str) -> BotRoutes | None:
    """The routing remembered for `bot` in this process, or None."""
    return _known.get(bot)


_looked_up: dict[tuple[str, str], tuple[float, BotRoutes]] = {}
_lookup_lock = threading.Lock()


def lookup(bot: str, database_url: str) -> BotRoutes:
    """The bot's routing: remembered, else read from its stored config (for a delivery
    thread only: it may query the database). Any failure gives the default routing: a
    notification is sent by the global lists rather than lost."""
    if (routes := known(bot)) is not None:
        return routes
    key, now = (database_url, bot), time.monotonic()
    with _lookup_lock:
        cached = _looked_up.get(key)
        if cached is not None and now - cached[0] < LOOKUP_TTL_S:
            return cached[1]
        routes = _stored(bot, database_url)
        if len(_looked_up) >= _LOOKUP_MAX:
            _looked_up.clear()
        _looked_up[key] = (now, routes)
        return routes


def forget() -> None:
    """Drop every remembered and looked-up routing (tests; a process that changes hands)."""
    _known.clear()
    with _lookup_lock:
        _looked_up.clear()


def _stored(bot: str, database_url: str) -> BotRoutes:
    from engine import store  # lazy: the CLI imports this module through the config
    from engine.db import engine_for

    try:
        row = store.config_row(engine_for(database_url), bot)
        raw: Any = None if row is None else (row.config or {}).get("notify")
        return DEFAULT if raw is None else BotRoutes.model_validate(raw)
    except Exception as exc:  # noqa: BLE001 - see the docstring of lookup
        log.warning("notify.routing_unknown", bot=bot, error=f"{type(exc).__name__}: {exc}")
        return DEFAULT
