"""Bot configs arriving over HTTP: the same validation and messages as files, plus two
rules of the API — the body's name must be the URL's, and only registered strategies
are allowed (a dotted path would import, i.e. run, code the client chose).

Both rules are checked on the validated config, never on a first reading of the raw
body: the raw body once said one thing to the check (`!!binary` bytes are not a str)
and another to the loader. Nothing is imported while a config is checked here.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from engine import lifecycle
from engine.api.deps import RtDep
from engine.api.errors import ApiError
from engine.config import BotConfig, parse_bot_config
from engine.db import session_scope
from engine.errors import BotEngineError
from engine.models import Bot, BotStatus, utcnow
from engine.runtime import Runtime
from engine.settings import Settings

YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})
JSON_TYPES = frozenset({"application/json"})
MAX_BODY_BYTES = 256 * 1024
_CAS_ATTEMPTS = 20


@dataclass(frozen=True)
class ConfigBody:
    """A request body holding a bot config, whether it claimed to be JSON, and the
    settings whose outbound policy it is checked against."""

    text: str
    is_json: bool
    settings: Settings | None = None


async def config_body(request: Request, rt: RtDep) -> ConfigBody:
    """Dependency: read a YAML or JSON body (bounded), refusing other content types."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in YAML_TYPES | JSON_TYPES:
        raise ApiError(
            415,
            "unsupported_media_type",
            "send the bot config as application/yaml or application/json",
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, "payload_too_large", f"a bot config is at most {MAX_BODY_BYTES} B")
        chunks.append(chunk)
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(
            422,
            "invalid_request",
            "the body is not UTF-8 text",
            [{"field": "(body)", "in": "body", "message": "not UTF-8"}],
        ) from None
    return ConfigBody(text, media in JSON_TYPES, rt.settings)


def parse_api_config(name: str, body: ConfigBody) -> BotConfig:
    """Validate a config sent for bot `name`; BotConfigError lists every problem as
    `api:{name}:line: field: message`, exactly like `botengine validate` does for files.

    Credential sets are not checked for being declared: the API process need not hold
    exchange keys (the worker reports an undeclared set when the bot runs).
    """
    return parse_bot_config(
        body.text,
        f"api:{name}",
        fmt="json" if body.is_json else "yaml",
        allow_custom=False,
        settings=body.settings,
        expect_name=name,
    )


@dataclass(frozen=True)
class Applied:
    """What `PUT /bots/{name}` did."""

    bot: str
    change: str  # created | updated | unchanged | reconfigured
    generation: int
    status: str


def apply_config(rt: Runtime, config: BotConfig, source: str) -> Applied:
    """Create or update a bot's stored config; a running bot is reconfigured live.

    A stopped, paused or errored bot only gets its stored config replaced (and its
    generation bumped, as every config change does); `start`/`resume` use it later.
    """
    digest = config.config_hash()
    values = lifecycle.stored_config(config, source)
    for _ in range(_CAS_ATTEMPTS):
        with Session(rt.db) as session:
            bot = session.get(Bot, config.name)
        if bot is None:
            try:
                with session_scope(rt.db) as session:
                    session.add(Bot(name=config.name, **values))
            except IntegrityError:
                continue  # created concurrently: read it and go on from there
            return Applied(config.name, "created", 0, BotStatus.STOPPED.value)
        if bot.status == BotStatus.RUNNING:
            result = lifecycle.start(rt, config, source=source)
            return Applied(result.bot, result.change.value, result.generation, result.status)
        if bot.config_hash == digest:
            return Applied(bot.name, "unchanged", bot.generation, bot.status)
        with session_scope(rt.db) as session:
            cas = session.exec(
                update(Bot)
                .where(Bot.name == bot.name, Bot.generation == bot.generation)  # type: ignore[arg-type]
                .values(generation=bot.generation + 1, updated_at=utcnow(), **values)
            )
        if cas.rowcount == 1:
            return Applied(bot.name, "updated", bot.generation + 1, bot.status)
    raise BotEngineError(f"bot {config.name}: too many concurrent changes")
