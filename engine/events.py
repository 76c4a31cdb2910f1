"""The names of the events the engine notifies, and which of them belong to one bot.

Settings (`WEBHOOK_EVENTS`, `TELEGRAM_EVENTS`, `EMAIL_EVENTS`) and a bot config's
`notify:` routing name events from these lists; a name outside them is refused where it
is read, so a typo never silently mutes an alert.
"""

from __future__ import annotations

from typing import Literal, get_args

BOT_ERROR = "bot.error"
BOT_STOPPED = "bot.stopped"
ORDER_FILLED = "order.filled"
EXIT = "bot.exit"
BOT_PAUSED = "bot.paused"
EXCHANGE_BANNED = "exchange.banned"
FLEET_STALLED = "fleet.stalled"
FLEET_RECOVERED = "fleet.recovered"
DB_OUTAGE = "fleet.db_outage"
FLEET_PAUSED = "fleet.paused"

BotEvent = Literal["bot.error", "bot.stopped", "order.filled", "bot.exit", "bot.paused"]
"""An event about one bot: sent with `bot=`, routed by that bot's `notify:` config."""

BOT_EVENTS: tuple[str, ...] = get_args(BotEvent)
FLEET_EVENTS = (EXCHANGE_BANNED, FLEET_STALLED, FLEET_RECOVERED, DB_OUTAGE, FLEET_PAUSED)
"""Events about an exchange or the whole fleet: routed by the global settings only."""
EVENTS = (
    BOT_ERROR,
    BOT_STOPPED,
    ORDER_FILLED,
    EXCHANGE_BANNED,
    FLEET_STALLED,
    FLEET_RECOVERED,
    DB_OUTAGE,
    FLEET_PAUSED,
    EXIT,
    BOT_PAUSED,
)
ALERTS = tuple(e for e in EVENTS if e != ORDER_FILLED)
"""The default for chat and mail: everything but fills, which a busy fleet has by the
thousand (turn them on with `order.filled` in the channel's list)."""
URGENT = (BOT_ERROR, BOT_PAUSED, EXCHANGE_BANNED, FLEET_STALLED, DB_OUTAGE, FLEET_PAUSED)
"""The default for email: what needs an operator, not what only informs one."""


def parse_events(value: object) -> tuple[str, ...]:
    """An event list from a setting: `a,b,c` or a list; `all` and `none` as shorthands.

    Raises ValueError naming the unknown event, so the setting fails at start-up.
    """
    items = [p.strip() for p in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError("must be a comma-separated list of event names")
    names = [str(i) for i in items if str(i)]
    if names == ["all"]:
        return EVENTS
    if names == ["none"]:
        return ()
    unknown = [n for n in names if n not in EVENTS]
    if unknown:
        raise ValueError(f"unknown event {unknown[0]!r} (known: {', '.join(EVENTS)}, all, none)")
    return tuple(dict.fromkeys(names))
