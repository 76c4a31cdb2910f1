"""Many bots in one command: which files or stored bots a command names, and one
lifecycle call per bot with one runtime (`botengine start-bot bots/`, `--label`, the
API's batch routes).

A file-based start is all or nothing up to the lifecycle calls: every file is read and
validated, every exchange asked about its symbols, and any problem starts nothing. The
calls themselves are independent: one bot refused (run elsewhere, say) does not stop
the others, and each outcome is reported.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from sqlalchemy import Engine, or_
from sqlmodel import Session, col, select

from engine import lifecycle
from engine.config import BotConfig, load_bot_config
from engine.errors import BotConfigError, BotEngineError, BotNotFoundError
from engine.models import Bot
from engine.preflight import Findings, check_market
from engine.runtime import Runtime
from engine.settings import Settings

BOT_SUFFIXES = (".yaml", ".yml", ".json")
SCHEMA_SUFFIX = ".schema.json"  # bots/bot.schema.json sits beside the bots: not one of them
ACTIONS = ("start", "stop", "pause", "resume")


@dataclass(frozen=True)
class Outcome:
    """What one bot's lifecycle call did: `change` on success, `error` otherwise."""

    bot: str
    change: str | None = None
    generation: int | None = None
    error: str | None = None
    drained: bool = True
    """False when a stop gave up waiting for a running tick (see lifecycle.Result)."""

    @property
    def ok(self) -> bool:
        """True when the call succeeded."""
        return self.error is None


def bot_files(targets: Sequence[str]) -> list[Path]:
    """The bot files named by files, directories (their `*.yaml|yml|json` but JSON
    schemas, sorted) and glob patterns, in order, each once. Raises `BotConfigError`
    for a target that names no file."""
    found: dict[Path, None] = {}
    problems = []
    for target in targets:
        path = Path(target)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if _bot_file(p))
        elif path.is_file():
            matches = [path]
        elif glob.has_magic(target):
            matches = sorted(p for p in map(Path, glob.glob(target)) if _bot_file(p))
        else:
            matches = []
        if not matches:
            problems.append(f"{target}:1: (file): no such bot file or directory")
        found.update(dict.fromkeys(matches))
    if problems:
        raise BotConfigError(problems)
    return list(found)


def _bot_file(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(BOT_SUFFIXES) and not name.endswith(SCHEMA_SUFFIX)


def load_configs(paths: Iterable[Path]) -> tuple[list[tuple[Path, BotConfig]], list[str]]:
    """The valid files' configs, and every problem of the others (two files naming one
    bot included)."""
    loaded: list[tuple[Path, BotConfig]] = []
    problems: list[str] = []
    names: dict[str, Path] = {}
    for path in paths:
        try:
            config = load_bot_config(path)
        except BotConfigError as exc:
            problems += exc.problems
            continue
        if config.name in names:
            problems.append(
                f"{path}:1: name: {config.name!r} is also the name in {names[config.name]}"
            )
            continue
        names[config.name] = path
        loaded.append((path, config))
    return loaded, problems


def check_markets(
    items: Sequence[tuple[str, BotConfig]],
    settings: Settings,
    on_each: Callable[[], None] = lambda: None,
) -> list[Findings]:
    """`preflight.check_market` of each (where, config), in order. An exchange that
    cannot be reached is tried once: one timeout and one warning, not one per bot."""
    found: list[Findings] = []
    unreachable: set[tuple[str, str | None]] = set()
    for where, config in items:
        venue = (config.exchange, config.base_url)
        one = Findings()
        if venue not in unreachable:
            one = check_market(config, settings, where)
            if one.warnings:
                unreachable.add(venue)
                rest = sum(1 for _, c in items if (c.exchange, c.base_url) == venue) - 1
                if rest:
                    one.warnings = [f"{w} (nor of {rest} more bots on it)" for w in one.warnings]
        found.append(one)
        on_each()
    return found


def select_bots(
    db: Engine, *, names: Sequence[str] = (), labels: Sequence[str] = (), every: bool = False
) -> list[str]:
    """Stored bot names: `every` bot, or those named plus those carrying any of `labels`.
    Raises `BotNotFoundError` naming every unknown name."""
    with Session(db) as session:
        if every:
            return list(session.exec(select(Bot.name).order_by(col(Bot.name))))
        chosen: dict[str, None] = {}
        if names:
            known = set(session.exec(select(Bot.name).where(col(Bot.name).in_(list(names)))))
            missing = [n for n in names if n not in known]
            if missing:
                raise BotNotFoundError(f"no bot named {', '.join(map(repr, missing))}")
            chosen.update(dict.fromkeys(names))
        if labels:
            tagged = select(Bot.name).where(
                or_(*(col(Bot.labels).contains(f",{la},") for la in labels))
            )
            chosen.update(dict.fromkeys(session.exec(tagged.order_by(col(Bot.name)))))
        return list(chosen)


def start_configs(
    rt: Runtime,
    items: Sequence[tuple[str | None, BotConfig]],
    on_each: Callable[[Outcome], None] = lambda _: None,
) -> list[Outcome]:
    """`lifecycle.start` of each (source, config)."""
    return [
        _call(config.name, partial(lifecycle.start, rt, config, source=source), on_each)
        for source, config in items
    ]


def apply(
    rt: Runtime,
    action: str,
    names: Sequence[str],
    on_each: Callable[[Outcome], None] = lambda _: None,
) -> list[Outcome]:
    """`action` (start, stop, pause, resume) on each stored bot; start uses the stored
    config."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; expected one of {ACTIONS}")
    call = start_stored if action == "start" else getattr(lifecycle, action)
    return [_call(name, partial(call, rt, name), on_each) for name in names]


def start_stored(rt: Runtime, name: str) -> lifecycle.Result:
    """Start (or restart) a stored bot with its stored config."""
    bot = lifecycle.load(rt, name)
    return lifecycle.start(rt, BotConfig.model_validate(bot.config), source=bot.source)


def _call(
    name: str, call: Callable[[], lifecycle.Result], on_each: Callable[[Outcome], None]
) -> Outcome:
    try:
        result = call()
    except BotEngineError as exc:
        outcome = Outcome(name, error=str(exc))
    else:
        outcome = Outcome(
            result.bot, result.change.value, result.generation, drained=result.drained
        )
    on_each(outcome)
    return outcome
