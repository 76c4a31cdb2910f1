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
        self._values: set[str] = set()
        self._lock = threading.Lock()

    def add(self, *values: str | None) -> None:
        """Register secret values to hide wherever they appear (short values are ignored)."""
        with self._lock:
            # Very short strings would redact innocent text; real secrets are long.
            self._values |= {v for v in values if v and len(v) >= 6}

    def redact_text(self, text: str) -> str:
        """Return `text` with URL passwords and registered secret values replaced."""
        if "@" in text:  # every log line passes here: skip the regex where it cannot match
            text = _URL_PASSWORD.sub(rf"\g<scheme>\g<user>:{_REDACTED}@", text)
        for value in self._values:
            if value in text:
                text = text.replace(value, _REDACTED)
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
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
    ]


def configure_logging(level: str = "INFO", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Route structlog and the standard library through one JSON (or console) renderer."""
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    tail: list[Processor] = [
        structlog.processors.format_exc_info,
        redactor,
        renderer,
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
    )
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "asyncio", "aiohttp.access", "ccxt.base.exchange"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)
    structlog.configure(
        processors=[
            *_shared_processors()[:-1],
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
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
