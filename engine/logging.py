"""structlog configuration: one JSON object per line for every process, secrets redacted.

Standard-library records (Celery's, kombu's, uvicorn's) are routed through the same
processors via `ProcessorFormatter`, so a log shipper can parse every line as JSON.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable
from functools import lru_cache
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor

_SECRET_KEY = re.compile(r"(secret|password|passwd|token|api_?key|authorization|signature)", re.I)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@")
_REDACTED = "***"
SHORT_SECRET = 8
"""Registered secrets shorter than this are redacted only as whole words."""


@lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    """Whether a field named `key` holds a secret (log lines reuse a few key names)."""
    return _SECRET_KEY.search(key) is not None


class SecretRedactor:
    """A processor that hides secrets: by key name, by URL password and by known value.

    Known values (API tokens, exchange secrets read from the environment) are registered
    with `add`, so they are hidden even where they appear inside free text.
    """

    def __init__(self) -> None:
        # Replaced, never mutated: every log line iterates them without the lock.
        self._values: frozenset[str] = frozenset()
        self._short: frozenset[str] = frozenset()
        self._short_pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def add(self, *values: str | None) -> None:
        """Register secret values to hide wherever they appear, whatever their length.

        A value shorter than `SHORT_SECRET` characters is hidden only where it stands
        alone (not inside a longer word or number): replacing every `ab` in every line
        would make logs unreadable, yet a short password must still never be printed.
        Settings refuse short API tokens, so this only concerns secrets the engine does
        not choose (URL passwords, exchange keys).
        """
        with self._lock:
            for value in values:
                if not value:
                    continue
                if len(value) >= SHORT_SECRET:
                    self._values = self._values | {value}
                elif value not in self._short:
                    self._short = self._short | {value}
                    alternatives = "|".join(
                        re.escape(v) for v in sorted(self._short, key=len, reverse=True)
                    )
                    self._short_pattern = re.compile(
                        rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])"
                    )

    def redact_text(self, text: str) -> str:
        """Return `text` with URL passwords and registered secret values replaced."""
        if "@" in text:  # every log line passes here: skip the regex where it cannot match
            text = _URL_PASSWORD.sub(rf"\g<scheme>\g<user>:{_REDACTED}@", text)
        for value in self._values:
            if value in text:
                text = text.replace(value, _REDACTED)
        short = self._short_pattern
        if short is not None:
            text = short.sub(_REDACTED, text)
        return text

    def _clean(self, key: str, value: Any) -> Any:
        if _secret_key(key) and value not in (None, "", False):
            return _REDACTED
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, dict):
            return {k: self._clean(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(key, v) for v in value]
        return value

    def __call__(self, _: Any, __: str, event_dict: EventDict) -> EventDict:
        for key, value in list(event_dict.items()):
            event_dict[key] = self._clean(key, value)
        return event_dict


redactor = SecretRedactor()


def _shared_processors() -> list[Processor]:
    """What every line gets first: context, level, logger name and time."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _tail() -> list[Processor]:
    """What every line gets last: the exception text, redaction, the renderer."""
    return [structlog.processors.format_exc_info, redactor, _render]


class _Output:
    """Where this process's log lines go: set by `configure_logging`, read per line, so
    loggers cached on first use follow a later reconfiguration."""

    handler: logging.StreamHandler[TextIO] = logging.StreamHandler(sys.stdout)
    level: int = logging.INFO
    renderer: Processor = structlog.processors.JSONRenderer()


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "exception": 40}


def _below_level(_: Any, method: str, event_dict: EventDict) -> EventDict:
    if _LEVELS.get(method, logging.CRITICAL) < _Output.level:
        raise structlog.DropEvent
    return event_dict


def _render(logger: Any, method: str, event_dict: EventDict) -> Any:
    return _Output.renderer(logger, method, event_dict)


class _LineWriter:
    """structlog's logger: writes each rendered line through the standard library's
    handler, under its lock, so engine and library lines never interleave."""

    def __init__(self, name: str = "botengine") -> None:
        self.name = name  # read by add_logger_name

    def write(self, line: str) -> None:
        """Write one rendered line."""
        handler = _Output.handler
        with handler.lock:  # type: ignore[union-attr]  # a Handler's lock is set at init
            handler.stream.write(line + "\n")
            handler.flush()

    debug = info = warning = warn = error = exception = critical = msg = write


def configure_logging(level: str = "INFO", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Route structlog and the standard library through one JSON (or console) renderer.

    The engine's own events skip the standard library: a line through `logging` (a
    record, its handler and formatter) costs ~70 us, one rendered here ~30 us, and a
    tick writes two. Celery's and the libraries' records still pass the same processors
    in the handler's formatter.
    """
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_shared_processors(), structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *_tail()],
    )
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    _Output.handler, _Output.level, _Output.renderer = handler, root.level, renderer
    for noisy in ("urllib3", "asyncio", "aiohttp.access", "ccxt.base.exchange"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)
    # Lines are rendered from the event dict, never from these record attributes, and
    # filling them costs every record (Celery's filtered per-task ones too) a few us.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    structlog.configure(
        processors=[
            _below_level,
            *_shared_processors(),
            structlog.processors.StackInfoRenderer(),
            *_tail(),
        ],
        logger_factory=_LineWriter,
        # The level is checked by `_below_level` against the current configuration.
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str = "botengine") -> Any:
    """Return a structlog logger; bound context (bot, slot, task_id) is merged in."""
    return structlog.get_logger(name)


def bind(**context: Any) -> None:
    """Bind context (task_id, bot, generation, slot, ...) to every log line of this thread."""
    structlog.contextvars.bind_contextvars(**context)


def unbind(*keys: str) -> None:
    """Forget some bound context keys (the end of a tick inside a longer task)."""
    structlog.contextvars.unbind_contextvars(*keys)


def clear() -> None:
    """Forget the context bound by `bind` (at task end)."""
    structlog.contextvars.clear_contextvars()


def register_secrets(values: Iterable[str | None]) -> None:
    """Hide these values from every log line from now on."""
    redactor.add(*values)
