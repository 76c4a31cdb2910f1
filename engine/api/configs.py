"""Bot configs arriving over HTTP: the same validation and messages as files, plus two
rules of the API — the body's name must be the URL's, and only registered strategies
are allowed (a dotted path would import, i.e. run, code the client chose).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yaml
from fastapi import Request
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from engine import lifecycle
from engine.api.errors import ApiError
from engine.config import BotConfig, parse_bot_config
from engine.db import session_scope
from engine.errors import BotConfigError, BotEngineError
from engine.models import Bot, BotStatus, utcnow
from engine.runtime import Runtime
from strategies.registry import StrategyLookupError, resolve

YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})
JSON_TYPES = frozenset({"application/json"})
MAX_BODY_BYTES = 256 * 1024
_CAS_ATTEMPTS = 20


@dataclass(frozen=True)
class ConfigBody:
    """A request body holding a bot config, and whether it claimed to be JSON."""

    text: str
    is_json: bool


async def config_body(request: Request) -> ConfigBody:
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
    return ConfigBody(text, media in JSON_TYPES)


def parse_api_config(name: str, body: ConfigBody) -> BotConfig:
    """Validate a config sent for bot `name`; BotConfigError lists every problem as
    `api:{name}:line: field: message`, exactly like `botengine validate` does for files."""
    source = f"api:{name}"
    text = body.text
    if body.is_json:
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise BotConfigError(
                [f"{source}:{exc.lineno}: (file): invalid JSON: {exc.msg}"]
            ) from None
        # Valid JSON is YAML too, except that YAML forbids tabs as indentation; tabs in
        # valid JSON are whitespace (never inside strings), so spaces keep line numbers.
        text = text.replace("\t", " ")
    data = _peek(text)
    problems: list[str] = []
    strategy = _dig(data, "strategy", "name")
    refused = False
    if isinstance(strategy, str):
        try:
            resolve(strategy, allow_custom=False)
        except StrategyLookupError as exc:
            refused = True
            line = _line_of(text, ("strategy", "name"))
            problems.append(f"{source}:{line}: strategy.name: {exc}")
    body_name = _dig(data, "name")
    if isinstance(body_name, str) and body_name != name:
        line = _line_of(text, ("name",))
        problems.append(f"{source}:{line}: name: {body_name!r} does not match {name!r} in the URL")
    if refused and ":" in str(strategy):
        # Never hand a dotted path to the loader: resolving it imports the module.
        raise BotConfigError(problems)
    try:
        config = parse_bot_config(text, source)
    except BotConfigError as exc:
        theirs = [p for p in exc.problems if not (refused and ": strategy.name: " in p)]
        raise BotConfigError(sorted(set(problems + theirs), key=_line_key)) from None
    if problems:
        raise BotConfigError(problems)
    return config


def _line_key(problem: str) -> tuple[int, str]:
    head = problem.split(": ", 1)[0]
    line = head.rsplit(":", 1)[-1]
    return (int(line) if line.isdigit() else 0, problem)


def _peek(text: str) -> Any:
    """The document as data, or None when it does not parse (the loader reports that)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def _dig(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _line_of(text: str, path: tuple[str, ...]) -> int:
    """1-based line of the key at `path` in a YAML document (1 when not found)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return 1
    line = 1
    for key in path:
        if not isinstance(node, yaml.MappingNode):
            return line
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                line, node = key_node.start_mark.line + 1, value_node
                break
        else:
            return line
    return line


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
    values: dict[str, Any] = {
        "config": config.model_dump(mode="json"),
        "config_hash": digest,
        "source": source,
        "interval_s": config.check_interval,
    }
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
