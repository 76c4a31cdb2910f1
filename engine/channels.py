"""Where notifications go: a webhook, Telegram chats, a mailbox.

A channel sends one event payload, once, and says by its exception whether trying again
may help (`DeliveryError`) or not (`DeliveryRejectedError`). Queueing, retries and the
delivery thread are the notifier's (engine/notify.py), the same for every channel.

`configured(settings)` lists the channels the settings describe, each with the events
its global list names; a Telegram bot with three chats is three channels, so a chat
that is down delays only its own alerts, and a retry never repeats one to the others.
"""

from __future__ import annotations

import json
import smtplib
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any, Protocol

from engine.botapi import BotApi
from engine.errors import DeliveryError, DeliveryRejectedError
from engine.logging import register_secrets

if TYPE_CHECKING:
    from engine.settings import Settings

_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
TELEGRAM_LIMIT = 4096
"""Characters in one Telegram message; longer texts are cut."""
_HEADLINE = ("bot", "exchange", "kind", "symbol")
_FOOTER = ("time", "host")


class Channel(Protocol):
    """One destination of notifications."""

    @property
    def kind(self) -> str:
        """`webhook`, `telegram` or `email`: the key of a bot config's `notify:`."""

    @property
    def key(self) -> str:
        """Which destination this is, for one notifier per destination (no secrets)."""

    def send(self, payload: dict[str, Any], timeout_s: float) -> None:
        """Deliver one event; raises DeliveryError or DeliveryRejectedError."""


def alert_text(payload: dict[str, Any]) -> tuple[str, str]:
    """A subject line and a short plain-text body for people (chat, mail).

    Plain text on purpose: Telegram's Markdown would need every `_` and `*` of an error
    message escaped, and a message it cannot parse is refused outright.
    """
    event = str(payload.get("event", "event"))
    about = " ".join(str(payload[k]) for k in _HEADLINE if payload.get(k) not in (None, ""))
    subject = f"[botengine] {event}" + (f": {about}" if about else "")
    skip = {"event", *_HEADLINE, *_FOOTER}
    lines = [f"{event}" + (f" - {about}" if about else "")]
    lines += [f"{key}: {value}" for key, value in payload.items() if key not in skip]
    lines += [f"{key}: {payload[key]}" for key in _FOOTER if key in payload]
    return subject, "\n".join(lines)


def post_json(url: str, payload: dict[str, Any], timeout_s: float) -> int:
    """POST `payload` as JSON with the standard library; returns the HTTP status."""
    if not url.startswith(("http://", "https://")):
        raise DeliveryRejectedError(f"webhook URL must be http(s), got {url[:16]!r}...")
    body = json.dumps(payload, default=str).encode()
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "botengine-webhook/1",
            "X-Botengine-Event": str(payload.get("event", "")),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError) as exc:  # refused, DNS, timeout
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class WebhookChannel:
    """POSTs the event as JSON to one URL (2xx: taken; 408/429/5xx: retried)."""

    url: str
    post: Callable[[str, dict[str, Any], float], int] = field(
        default=post_json, compare=False, repr=False
    )
    kind: str = "webhook"

    @property
    def key(self) -> str:
        """The URL: one notifier per webhook."""
        return f"webhook:{self.url}"

    def send(self, payload: dict[str, Any], timeout_s: float) -> None:
        """POST one event."""
        status = self.post(self.url, payload, timeout_s)
        if status in _RETRY_STATUS:
            raise DeliveryError(f"HTTP {status}")
        if not 200 <= status < 300:
            raise DeliveryRejectedError(f"HTTP {status}")


@dataclass(frozen=True)
class TelegramChannel:
    """Sends the event's text to one chat with the Bot API's `sendMessage`."""

    api: BotApi = field(compare=False)
    chat_id: str
    api_url: str
    kind: str = "telegram"

    @property
    def key(self) -> str:
        """The API and chat: one notifier per chat (the token is no part of it)."""
        return f"telegram:{self.api_url}:{self.chat_id}"

    def send(self, payload: dict[str, Any], timeout_s: float) -> None:
        """Send one message."""
        text = alert_text(payload)[1][:TELEGRAM_LIMIT]
        params = {"chat_id": self.chat_id, "text": text, "disable_web_page_preview": True}
        self.api.call("sendMessage", params, timeout_s)


@dataclass(frozen=True)
class EmailChannel:
    """Mails the event to the recipients through one SMTP server (stdlib smtplib)."""

    host: str
    port: int
    sender: str
    to: tuple[str, ...]
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    starttls: bool = True
    tls: bool = False
    kind: str = "email"

    @property
    def key(self) -> str:
        """The server and recipients: one notifier per mailbox set."""
        return f"email:{self.host}:{self.port}:{','.join(self.to)}"

    def send(self, payload: dict[str, Any], timeout_s: float) -> None:
        """Send one mail; a new connection each time (alerts are rare, servers drop idle
        connections)."""
        subject, body = alert_text(payload)
        message = EmailMessage()
        message["Subject"] = subject
        message["From"] = self.sender
        message["To"] = ", ".join(self.to)
        message["X-Botengine-Event"] = str(payload.get("event", ""))
        message.set_content(body)
        context = ssl.create_default_context()
        try:
            smtp = (
                smtplib.SMTP_SSL(self.host, self.port, timeout=timeout_s, context=context)
                if self.tls
                else smtplib.SMTP(self.host, self.port, timeout=timeout_s)
            )
            with smtp:
                if self.starttls and not self.tls:
                    smtp.starttls(context=context)
                if self.user:
                    smtp.login(self.user, self.password or "")
                smtp.send_message(message)
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryRejectedError(f"SMTP login refused: {exc.smtp_code}") from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise DeliveryRejectedError(f"SMTP refused {sorted(exc.recipients)}") from None
        except smtplib.SMTPResponseException as exc:
            text = f"SMTP {exc.smtp_code}: {exc.smtp_error!r}"[:300]
            if 400 <= exc.smtp_code < 500:  # a temporary refusal, by SMTP's own rules
                raise DeliveryError(text) from None
            raise DeliveryRejectedError(text) from None
        except (smtplib.SMTPNotSupportedError, ssl.SSLError) as exc:  # no TLS, bad certificate
            raise DeliveryRejectedError(f"SMTP: {type(exc).__name__}: {exc}") from None
        except (smtplib.SMTPException, OSError) as exc:  # refused, timeout, disconnected
            raise DeliveryError(f"SMTP: {type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class Target:
    """A configured channel and the events its global list names."""

    channel: Channel
    events: tuple[str, ...]


_cache: tuple[Settings, tuple[Target, ...]] | None = None


def configured(settings: Settings) -> tuple[Target, ...]:
    """The channels `settings` configure (built once per settings object)."""
    global _cache  # one settings object per process: build its channels once
    cached = _cache
    if cached is not None and cached[0] is settings:
        return cached[1]
    targets: list[Target] = []
    if settings.webhook_url:
        targets.append(Target(WebhookChannel(settings.webhook_url), settings.webhook_events))
    if settings.telegram_bot_token is not None:
        token = settings.telegram_bot_token.get_secret_value()
        register_secrets([token])  # it is in every Bot API URL
        api = BotApi(settings.telegram_api_url, token)
        for chat in settings.telegram_chat_ids:
            channel = TelegramChannel(api, chat, settings.telegram_api_url)
            targets.append(Target(channel, settings.telegram_events))
    if settings.smtp_host:
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        register_secrets([password])
        mailbox = EmailChannel(
            host=settings.smtp_host,
            port=settings.smtp_port,
            sender=settings.smtp_from or settings.smtp_user or f"botengine@{socket.gethostname()}",
            to=tuple(settings.smtp_to),
            user=settings.smtp_user,
            password=password,
            starttls=settings.smtp_starttls,
            tls=settings.smtp_ssl,
        )
        targets.append(Target(mailbox, settings.email_events))
    built = tuple(targets)
    _cache = (settings, built)
    return built
