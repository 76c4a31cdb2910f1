"""One typed settings object, read from the environment and `.env`.

A malformed value fails at start with a message naming the variable, instead of
surfacing later as an odd runtime error deep inside a tick.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from engine.credentials import CredentialStore
from engine.errors import ConfigError
from engine.events import ALERTS, EVENTS, URGENT, parse_events
from engine.outbound import DEFAULT_ALLOWED_BASE_URLS, OutboundPolicy, parse_rule

MIN_TOKEN_LENGTH = 16
"""API_TOKEN's minimum length: a short token is guessable, and the log redactor hides
registered secrets wherever they appear, which for a 3-letter value would mangle logs."""

CommaList = Annotated[list[str], NoDecode]
"""A list setting written `a,b,c` in the environment."""
EventList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(parse_events)]
"""Event names written `bot.error,bot.exit` (or `all`, `none`); see engine/events.py."""
_CHAT_ID = re.compile(r"^(-?\d{1,20}|@[A-Za-z][A-Za-z0-9_]{3,31})$")
_BOT_TOKEN = re.compile(r"^\d{1,20}:[A-Za-z0-9_-]{10,}$")


class Settings(BaseSettings):
    """Everything the worker, beat, API and CLI need to know about their surroundings."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        case_sensitive=False,
    )

    celery_broker_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker")
    celery_result_backend: str = Field("redis://127.0.0.1:6379/0", description="Task results")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Claims, locks, cache")
    database_url: str = Field("sqlite:///botengine.db", description="Bots, ticks, orders")
    api_token: SecretStr | None = Field(
        None, description=f"Bearer token of the API, at least {MIN_TOKEN_LENGTH} characters"
    )
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    flower_user: str = "admin"
    flower_password: SecretStr | None = None
    simulator_url: str = "http://127.0.0.1:8765"
    simulator_api_key: str = "simulator-key"
    simulator_api_secret: SecretStr = SecretStr("simulator-secret")
    # Required by the simulator's /_sim/ admin endpoints when it listens beyond loopback.
    simulator_admin_token: SecretStr | None = None
    # Outbound policy (engine/outbound.py): where a bot config's base_url may point, and
    # which ccxt constructor keys its exchange_options may set beyond the safe defaults.
    allowed_base_urls: CommaList = Field(default_factory=lambda: list(DEFAULT_ALLOWED_BASE_URLS))
    allowed_exchange_options: CommaList = Field(default_factory=list)
    # Credential sets (engine/credentials.py): BOTENGINE_CRED_<SET>_KEY/_SECRET/_PASSWORD
    # from the environment, or files of those names in this directory (Docker secrets).
    credentials_dir: Path | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    timezone: str = "UTC"
    # Tick protocol tuning.
    tick_time_limit_s: int = Field(60, ge=5, le=3600)
    # Ticks of one worker process that compute at once (0: as many as it has threads);
    # the others wait their turn, and a tick waiting on an exchange gives its turn up.
    # More than two or three at once only slow each other down (see engine/admission.py).
    tick_concurrency: int = Field(2, ge=0)
    max_consecutive_failures: int = Field(5, ge=1)
    reconcile_every_s: float = Field(10.0, gt=0)
    reconcile_grace_s: float = Field(15.0, ge=0)
    reconcile_backlog_limit: int = Field(1000, ge=0)
    # A successor due within this many seconds is sent at once as an ETA message; one
    # due later is parked in Redis and sent when due by the workers' dispatcher
    # (engine/dispatcher.py), so no worker holds it for an interval. Each held message
    # is ~30 objects in reference cycles (celery's request, timer entry and promises)
    # that the collector walks in every full pass: at 10k bots x 60 s a 30 s horizon
    # cost ~0.1 cores and p99 lateness 72 ms against 14.5 ms at 3 s (benchmarks/README.md).
    eta_horizon_s: int = Field(5, ge=2)
    # Beat's dispatch of due parked slots, for when no worker's dispatcher runs.
    dispatch_every_s: float = Field(1.0, gt=0)
    # Messages one worker process holds at once, ETA ones included (0: no cap). Celery
    # lets a worker take every ETA message it can read, so one worker may take a burst
    # of them and run it late while its peers idle (see engine.broker.QoS). Parked slots
    # no longer arrive as such bursts (engine/dispatcher.py); a cap also holds back
    # messages queued behind the held ones (benchmarks/README.md).
    worker_max_held: int = Field(0, ge=0)
    visibility_timeout_s: int = Field(3600, ge=60)
    stop_drain_timeout_s: float = Field(30.0, ge=0)
    # A database outage longer than this ends every chain; when the database is back the
    # reconciler pauses the running bots with the reason, for an operator to resume them
    # (positions and orders may need a look after that long). Shorter ones are ridden
    # out: ticks are skipped meanwhile, counting towards no bot's failure budget.
    db_outage_pause_s: float = Field(60.0, gt=0)
    # Tick metrics are summed in each worker and written to Redis this often (0: per tick).
    metrics_flush_s: float = Field(1.0, ge=0)
    # Maintenance. The *_every_s overrides replace the calendar schedules (hourly
    # snapshot, daily cleanup at 02:00, cache clean-up every 6 h) with plain intervals.
    retention_days: int = Field(30, ge=1)
    snapshot_every_s: float | None = Field(None, gt=0)
    cleanup_every_s: float | None = Field(None, gt=0)
    cache_cleanup_every_s: float | None = Field(None, gt=0)
    # Notifications (engine/notify.py, docs/notifications.md): each channel sends the
    # events of its list; a bot config's `notify:` may narrow or widen them per bot.
    webhook_url: str | None = None
    webhook_events: EventList = EVENTS
    # Telegram: one bot for the fleet, alerting these chats and taking commands from them
    # only (`botengine telegram`). The token is part of every Bot API URL: a secret.
    telegram_bot_token: SecretStr | None = None
    telegram_chat_ids: CommaList = Field(default_factory=list)
    telegram_api_url: str = "https://api.telegram.org"
    telegram_events: EventList = ALERTS
    telegram_poll_timeout_s: int = Field(30, ge=1, le=50)  # the Bot API allows up to 50
    # Email over SMTP: SMTP_STARTTLS upgrades a plain connection (port 587), SMTP_SSL
    # speaks TLS from the start (port 465; SMTP_STARTTLS then has nothing to upgrade).
    smtp_host: str | None = None
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str | None = None
    smtp_to: CommaList = Field(default_factory=list)
    smtp_starttls: bool = True
    smtp_ssl: bool = False
    email_events: EventList = URGENT

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("api_token")
    @classmethod
    def _long_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"API_TOKEN must be at least {MIN_TOKEN_LENGTH} characters (generate one with"
                " `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        return value

    @field_validator(
        "allowed_base_urls",
        "allowed_exchange_options",
        "telegram_chat_ids",
        "smtp_to",
        mode="before",
    )
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("allowed_base_urls")
    @classmethod
    def _valid_rules(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            parse_rule(entry)  # ValueError names the entry
        return entries

    @field_validator("telegram_chat_ids")
    @classmethod
    def _chat_ids(cls, ids: list[str]) -> list[str]:
        for chat in ids:
            if not _CHAT_ID.match(chat):
                raise ValueError(f"{chat!r} is not a chat id (a number like -1001234567890)")
        return ids

    @field_validator("telegram_bot_token")
    @classmethod
    def _bot_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _BOT_TOKEN.match(value.get_secret_value()):
            # The value itself is never repeated: it is a secret, even when malformed.
            raise ValueError("must look like 123456789:AA... (as @BotFather gives it)")
        return value

    @field_validator("telegram_api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _channels_complete(self) -> Settings:
        # A channel half configured would drop every alert in silence: refuse it at start.
        if self.telegram_bot_token is not None and not self.telegram_chat_ids:
            raise ValueError(
                "TELEGRAM_CHAT_IDS is required with TELEGRAM_BOT_TOKEN (docs/notifications.md)"
            )
        if self.smtp_host and not self.smtp_to:
            raise ValueError("SMTP_TO is required with SMTP_HOST")
        return self

    def outbound_policy(self) -> OutboundPolicy:
        """The base URL and exchange_options allow-lists (engine/outbound.py)."""
        return OutboundPolicy.from_entries(self.allowed_base_urls, self.allowed_exchange_options)

    def credential_store(self) -> CredentialStore:
        """Where declared credential sets are read from (engine/credentials.py)."""
        return CredentialStore(directory=self.credentials_dir)

    @model_validator(mode="after")
    def _horizon_below_visibility(self) -> Settings:
        # An ETA message held longer than the visibility timeout is redelivered (celery #2481).
        if self.eta_horizon_s >= self.visibility_timeout_s:
            raise ValueError("ETA_HORIZON_S must be below VISIBILITY_TIMEOUT_S")
        return self

    def secret_values(self) -> list[str]:
        """Every secret these settings hold, for the log redactor."""
        held = (
            self.api_token,
            self.flower_password,
            self.simulator_admin_token,
            self.telegram_bot_token,
            self.smtp_password,
        )
        values = [s.get_secret_value() for s in held if s]
        values.append(self.simulator_api_secret.get_secret_value())
        for url in (
            self.celery_broker_url,
            self.celery_result_backend,
            self.redis_url,
            self.database_url,
        ):
            password = urlsplit(url).password
            if password:
                values.append(password)
        return values


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, failing with a one-line message on bad values."""
    try:
        return Settings()
    except ValidationError as exc:
        # A check across fields (loc empty) names its variables in its own message.
        problems = "; ".join(
            ": ".join(
                part
                for part in (
                    ".".join(str(p) for p in err["loc"]).upper(),
                    err["msg"].removeprefix("Value error, "),
                )
                if part
            )
            for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None


def redact_url(url: str) -> str:
    """Hide the password in a URL (`redis://:secret@host` → `redis://:***@host`)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))
