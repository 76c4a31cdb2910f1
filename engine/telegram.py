"""`botengine telegram`: the fleet's Telegram bot answers commands from operators' chats.

    /status          counts by status, and the bots in error
    /bot NAME        one bot: status, last tick, last error, orders
    /stop NAME       /pause NAME       /resume NAME

The process long-polls the Bot API's `getUpdates` and runs each command through the
same functions as the CLI and the HTTP API (engine/lifecycle.py, engine/views.py), so a
`/stop` from Telegram is exactly a `botengine stop-bot`. Only the chats in
`TELEGRAM_CHAT_IDS` are obeyed; a command from any other chat is logged and ignored
(not even answered: a stranger learns nothing, not even that the bot listens).

One poller per fleet: two would each take updates from Telegram (which refuses the
second `getUpdates` with 409 anyway) and answer in turns. It holds a Redis lease,
renewed while it runs; a second `botengine telegram` refuses to start, or with
`--standby` waits and takes over when the first one stops or dies.

Each update is handled at most once: its offset is stored in Redis before the command
runs, so a restarted poller resumes after it. At most, not at least: a `/resume`
replayed after a crash (perhaps hours later, after someone stopped the bot again) would
do more harm than a command lost in one, which its sender sees unanswered and repeats.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Collection
from contextlib import suppress
from typing import Any

import redis
from sqlalchemy import func
from sqlmodel import Session, col, select

from engine import lifecycle
from engine.botapi import BotApi
from engine.errors import (
    BotEngineError,
    ConfigError,
    DeliveryError,
    DeliveryRejectedError,
    PollerBusyError,
)
from engine.logging import get_logger, register_secrets
from engine.models import Bot, BotStatus
from engine.runtime import Runtime
from engine.views import bot_summary

log = get_logger("engine.telegram")

LEASE_KEY = "telegram:poller"
OFFSET_KEY = "telegram:offset"
LEASE_TTL_S = 30.0
"""How long a dead poller blocks its successor; renewed every third of it."""
SEND_TIMEOUT_S = 10.0
MAX_COMMAND_AGE_S = 300.0
"""Older commands are not run: Telegram keeps updates for a day, and a `/stop` or
`/resume` typed while no poller ran may no longer be what anyone wants."""
MAX_ERRORS_SHOWN = 10
HELP = (
    "commands:\n"
    "/status - bots by status, and those in error\n"
    "/bot NAME - one bot's status, last tick, last error, orders\n"
    "/stop NAME, /pause NAME, /resume NAME"
)

# Renew only our own lease, and take it back if it expired while Redis was away and no
# one else took it meanwhile (a Redis restart without persistence forgets every key).
_RENEW = """
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return 1
elseif not holder then
  redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class Lease:
    """The fleet's one-poller lock in Redis: a token under `key`, renewed while held."""

    def __init__(self, client: redis.Redis, key: str = LEASE_KEY, ttl_s: float = LEASE_TTL_S):
        self.client = client
        self.key = key
        self.ttl_ms = max(1, round(ttl_s * 1000))
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def acquire(self) -> bool:
        """Take the lease if no one holds it; True when it is ours."""
        return bool(self.client.set(self.key, self.owner, nx=True, px=self.ttl_ms))

    def holder(self) -> str | None:
        """Who holds the lease (`host:pid:token`), or None."""
        value = self.client.get(self.key)
        return value.decode() if isinstance(value, bytes) else None

    def renew(self) -> bool:
        """Extend the lease; False when another poller holds it now."""
        return bool(self._renew(keys=[self.key], args=[self.owner, self.ttl_ms]))

    def keep(self) -> None:
        """Renew the lease from a daemon thread until `release`; sets `lost` if taken."""

        def loop() -> None:
            while not self._stop.wait(self.ttl_ms / 3000):
                try:
                    if not self.renew():
                        log.error("telegram.lease_lost", holder=self.holder())
                        self.lost.set()
                        return
                except redis.RedisError as exc:
                    # Go on answering (a lifecycle command then says Redis is down); the
                    # lease is taken back, or found lost, once Redis answers again.
                    log.warning("telegram.lease_unrenewed", error=type(exc).__name__)

        threading.Thread(target=loop, name="botengine-telegram-lease", daemon=True).start()

    def release(self) -> None:
        """Stop renewing and give the lease up (if it is still ours)."""
        self._stop.set()
        with suppress(redis.RedisError):  # it expires on its own
            self._release(keys=[self.key], args=[self.owner])


class Poller:
    """Long-polls `getUpdates` and answers the commands of the allowed chats."""

    def __init__(
        self,
        rt: Runtime,
        api: BotApi,
        chats: Collection[str],
        *,
        store: redis.Redis,
        poll_timeout_s: int = 30,
        lease: Lease | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rt = rt
        self.api = api
        self.chats = frozenset(str(c) for c in chats)
        self.store = store
        self.poll_timeout_s = poll_timeout_s
        self.lease = lease
        self.sleep = sleep
        self.clock = clock
        self.username: str | None = None  # ours, to ignore `/cmd@other_bot` in groups
        self.offset = self._stored_offset()

    def run(self, stop: threading.Event) -> None:
        """Poll until `stop` is set or the lease is lost; temporary failures back off."""
        failures = 0
        while not stop.is_set() and not self._lost():
            try:
                if self.username is None:
                    me = self.api.call("getMe", {}, SEND_TIMEOUT_S)
                    self.username = str((me or {}).get("username") or "") or None
                self.poll_once()
                failures = 0
            except DeliveryError as exc:
                failures += 1
                wait = min(30.0, 2.0 ** min(failures, 5))
                log.warning("telegram.poll_failed", error=str(exc), retry_in_s=wait)
                self.sleep(max(wait, exc.retry_after or 0.0))
            except DeliveryRejectedError as exc:
                # 401: the token is wrong or revoked; nothing will fix that but the operator.
                if exc.status in (401, 404):
                    raise ConfigError(f"Telegram refused the bot token: {exc}") from None
                # 409: a webhook is set, or a poller outside this fleet uses the token.
                failures += 1
                log.error("telegram.poll_refused", error=str(exc))
                self.sleep(min(60.0, 5.0 * failures))

    def poll_once(self) -> int:
        """One `getUpdates` (waiting up to the poll timeout); returns the updates handled."""
        params: dict[str, Any] = {"timeout": self.poll_timeout_s, "allowed_updates": ["message"]}
        if self.offset is not None:
            params["offset"] = self.offset
        updates = self.api.call("getUpdates", params, self.poll_timeout_s + SEND_TIMEOUT_S)
        handled = 0
        for update in updates or []:
            update_id = update.get("update_id")
            if not isinstance(update_id, int) or (self.offset and update_id < self.offset):
                continue  # already handled (a server that ignores the offset)
            if self._lost():
                break  # another poller holds the fleet now: leave the rest to it
            self._advance(update_id + 1)  # before handling: at most once (module docstring)
            self.handle(update)
            handled += 1
        return handled

    def handle(self, update: dict[str, Any]) -> None:
        """Answer one update, if it is a command from an allowed chat."""
        message = update.get("message")
        if not isinstance(message, dict):
            return
        text = message.get("text")
        chat = str((message.get("chat") or {}).get("id", ""))
        user = (message.get("from") or {}).get("username")
        if not isinstance(text, str) or not text.startswith("/"):
            return
        command, _, rest = text.partition(" ")
        command, _, addressee = command.partition("@")
        if addressee and self.username and addressee.lower() != self.username.lower():
            return  # for another bot in the same group
        if chat not in self.chats:
            log.warning("telegram.refused", chat=chat, user=user, command=command)
            return
        age = self.clock() - float(message.get("date") or 0)
        if age > MAX_COMMAND_AGE_S:
            reply = (
                f"not run: this {command} was sent {age / 60:.0f} min ago, while no poller"
                " ran; send it again if it still stands"
            )
        else:
            reply = self.answer(command.lower(), rest.split())
        log.info(
            "telegram.command",
            chat=chat,
            user=user,
            command=command,
            args=rest[:64],
            ran=age <= MAX_COMMAND_AGE_S,
        )
        try:
            self.api.call("sendMessage", {"chat_id": chat, "text": reply[:4096]}, SEND_TIMEOUT_S)
        except (DeliveryError, DeliveryRejectedError) as exc:
            log.warning("telegram.reply_failed", chat=chat, command=command, error=str(exc))

    def answer(self, command: str, args: list[str]) -> str:
        """The reply to one command (never raises: a failure is the reply)."""
        try:
            if command == "/status":
                return status_text(self.rt)
            if command in ("/bot", "/stop", "/pause", "/resume"):
                if len(args) != 1:
                    return f"usage: {command} NAME"
                if command == "/bot":
                    return bot_text(self.rt, args[0])
                return self._lifecycle(command[1:], args[0])
            if command in ("/help", "/start"):
                return HELP
            return f"unknown command {command}\n{HELP}"
        except BotEngineError as exc:  # not found, Redis down, busy elsewhere: say it
            return str(exc)
        except redis.RedisError as exc:
            return f"Redis cannot be reached ({type(exc).__name__}); nothing was changed"
        except Exception as exc:  # a command must never end the poller
            log.exception("telegram.command_failed", command=command)
            return f"{command} failed: {type(exc).__name__} (see the poller's log)"

    def _lifecycle(self, command: str, name: str) -> str:
        action: Callable[[Runtime, str], lifecycle.Result] = getattr(lifecycle, command)
        result = action(self.rt, name)
        note = "" if result.drained else " (a tick was still running at the time limit)"
        return f"{result.bot}: {result.change.value} (generation {result.generation}){note}"

    def _stored_offset(self) -> int | None:
        try:
            value = self.store.get(OFFSET_KEY)
        except redis.RedisError:
            return None
        return int(value) if value is not None else None

    def _advance(self, offset: int) -> None:
        self.offset = offset
        try:
            self.store.set(OFFSET_KEY, offset)
        except redis.RedisError as exc:  # kept in memory: Telegram forgets it on the next poll
            log.warning("telegram.offset_unsaved", offset=offset, error=type(exc).__name__)

    def _lost(self) -> bool:
        return self.lease is not None and self.lease.lost.is_set()


def status_text(rt: Runtime) -> str:
    """`/status`: bot counts by status (one grouped query), then the bots in error."""
    with Session(rt.db) as session:
        rows = session.exec(select(Bot.status, func.count()).group_by(Bot.status)).all()
        counts = {str(status): int(n) for status, n in rows}
        errored = session.exec(
            select(Bot)
            .where(col(Bot.status) == BotStatus.ERROR.value)
            .order_by(col(Bot.name))
            .limit(MAX_ERRORS_SHOWN)
        ).all()
        summaries = [bot_summary(bot) for bot in errored]
    by_status = ", ".join(f"{s.value} {counts.get(s.value, 0)}" for s in BotStatus)
    lines = [f"bots: {sum(counts.values())} ({by_status})"]
    for summary in summaries:
        lines.append(f"error: {summary['name']}: {_short(summary['last_error'])}")
    if counts.get(BotStatus.ERROR.value, 0) > len(summaries):
        lines.append(f"... and {counts[BotStatus.ERROR.value] - len(summaries)} more in error")
    return "\n".join(lines)


def bot_text(rt: Runtime, name: str) -> str:
    """`/bot NAME`: the fields of `botengine status` for one bot."""
    with Session(rt.db) as session:
        bot = session.get(Bot, name)
        summary = bot_summary(bot) if bot is not None else None
    if summary is None:
        return f"no bot named {name!r}"
    lines = [
        f"{summary['name']}: {summary['status']} (generation {summary['generation']},"
        f" every {summary['interval_s']:g}s)",
        f"last tick: {summary['last_tick_at'] or 'never'}",
        f"ticks: {summary['ticks_ok']} ok, {summary['ticks_failed']} failed,"
        f" {summary['ticks_missed']} missed",
        f"orders: {summary['orders']}",
        f"last error: {_short(summary['last_error']) if summary['last_error'] else 'none'}",
    ]
    if summary["next_due_at"]:
        lines.insert(2, f"next due: {summary['next_due_at']}")
    return "\n".join(lines)


def _short(text: object, limit: int = 200) -> str:
    value = str(text)
    return value if len(value) <= limit else value[: limit - 3] + "..."


def serve(*, standby: bool = False) -> None:
    """The `botengine telegram` process: take the lease, then poll until stopped.

    Raises ConfigError without a token, PollerBusyError when another poller holds the
    lease (unless `standby`: then wait for it).
    """
    from engine.db import migrate  # lazy: the CLI imports this module only to run it
    from engine.logging import configure_logging
    from engine.runtime import get_runtime
    from engine.settings import get_settings, redact_url

    settings = get_settings()
    if settings.telegram_bot_token is None:
        raise ConfigError("TELEGRAM_BOT_TOKEN is not set (docs/notifications.md)")
    configure_logging(settings.log_level, settings.log_format)  # a service: logs to stdout
    token = settings.telegram_bot_token.get_secret_value()
    register_secrets([token, *settings.secret_values()])
    migrate(settings.database_url)
    rt = get_runtime()
    assert rt.redis is not None  # the fleet's runtime always has one
    lease = Lease(rt.redis)
    try:
        while not lease.acquire():
            if not standby:
                raise PollerBusyError(
                    f"another `botengine telegram` polls for this fleet ({lease.holder()}); "
                    "only one may. Stop it first, or start this one with --standby to take "
                    "over when it stops"
                )
            log.info("telegram.standby", holder=lease.holder())
            time.sleep(lease.ttl_ms / 3000)
    except redis.RedisError as exc:
        raise PollerBusyError(
            f"cannot reach Redis at {redact_url(settings.redis_url)} ({type(exc).__name__}):"
            " the poller needs it for its lock"
        ) from None
    stop = threading.Event()
    # SIGTERM (docker stop) ends the process through `finally`, so the lease is freed
    # at once rather than after its TTL.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    lease.keep()
    api = BotApi(settings.telegram_api_url, token)
    poller = Poller(
        rt,
        api,
        settings.telegram_chat_ids,
        store=rt.redis,
        poll_timeout_s=settings.telegram_poll_timeout_s,
        lease=lease,
    )
    log.info("telegram.polling", chats=len(poller.chats), offset=poller.offset)
    try:
        poller.run(stop)
    finally:
        lease.release()
    if lease.lost.is_set():
        raise PollerBusyError("another poller took the lease over; this one stopped")
