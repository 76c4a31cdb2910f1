"""Capture what a process would really log: the engine's JSON lines, redactor included.

structlog's `capture_logs()` sees events before the processors run, so it cannot show
whether a secret reaches the output; this routes every line through
`configure_logging` into a buffer and puts the previous configuration back afterwards.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog

from engine import logging as elog


class Lines(io.StringIO):
    """The captured output."""

    def events(self) -> list[dict[str, Any]]:
        """Every line, parsed."""
        return [json.loads(line) for line in self.getvalue().splitlines() if line.strip()]

    def named(self, event: str) -> list[dict[str, Any]]:
        """The lines of one event."""
        return [e for e in self.events() if e.get("event") == event]


@contextmanager
def json_logs(level: str = "DEBUG") -> Iterator[Lines]:
    """Log JSON lines into the returned buffer while the block runs."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, root_level = list(root.handlers), root.level
    output = (elog._Output.handler, elog._Output.level, elog._Output.renderer)
    lines = Lines()
    elog.configure_logging(level, "json", stream=lines)
    try:
        yield lines
    finally:
        structlog.configure(**saved)
        root.handlers, root.level = handlers, root_level
        elog._Output.handler, elog._Output.level, elog._Output.renderer = output
