"""Bounded parsing of config documents (YAML or JSON) into plain data, with line numbers.

PyYAML's `safe_load` expands aliases (a 482-byte alias bomb grew an API process past
2 GB), builds arbitrary tagged values (`!!binary` turned a strategy name into bytes that
slipped past string checks), keeps the last of duplicate keys and recurses in its
composer. Here the document is built from PyYAML's *event stream* instead, so nothing
is ever expanded and every limit is checked before the next event is read:

- only plain data: mappings, sequences and scalars; no tags (`!!binary`, `!foo`), no
  anchors (`&a`) or aliases (`*a`), one document per file;
- keys are scalars and unique;
- at most `max_bytes` of text, `max_depth` levels of nesting, `max_nodes` values and
  `max_scalar_chars` per scalar;
- numbers are finite (no `.inf`/`.nan`, nothing that overflows a float) and integers fit
  in 64 bits.

Untagged plain scalars resolve as `yaml.safe_load` resolves them (null, bool, int,
float, else str), except timestamps, which stay strings. JSON documents are held to the
same rules (`json` itself accepts `NaN`, duplicate keys and any nesting).

Every refusal is a `DocumentError` carrying a line, a field path and a message.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from engine.errors import ConfigError

Path = tuple[str | int, ...]
Lines = dict[Path, int]

MAX_INT = 2**63 - 1
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster
_RESOLVER = yaml.resolver.Resolver()
_CONSTRUCTOR = yaml.constructor.SafeConstructor()
_TAG = "tag:yaml.org,2002:"


@dataclass(frozen=True)
class Limits:
    """How big a config document may be. A bot config is ~1 KB and 4 levels deep."""

    max_bytes: int = 64 * 1024
    max_depth: int = 16
    max_nodes: int = 4096
    max_scalar_chars: int = 4096


LIMITS = Limits()


class DocumentError(ConfigError):
    """Raised when a config document is malformed or breaks a limit; names line and field."""

    def __init__(self, line: int, field: str, message: str) -> None:
        self.line = line
        self.field = field
        self.message = message
        super().__init__(f"{line}: {field}: {message}")


@dataclass(frozen=True)
class Document:
    """Parsed data and the 1-based line of every key and sequence item, by path."""

    data: Any
    lines: Lines = field(default_factory=dict)


def field_name(path: Path) -> str:
    """`strategy.params.fast` for a path; `(file)` for the document itself."""
    return ".".join(str(p) for p in path) or "(file)"


def _check_size(text: str, limits: Limits) -> None:
    # len(text) <= bytes <= 4 * len(text): encode only when the cheap bound is unclear.
    if len(text) * 4 > limits.max_bytes and len(text.encode("utf-8", "surrogatepass")) > (
        limits.max_bytes
    ):
        raise DocumentError(1, "(file)", f"too large: a config is at most {limits.max_bytes} B")


# -- YAML -------------------------------------------------------------------------------


class _Frame:
    """One open mapping or sequence while the event stream is read."""

    __slots__ = ("is_map", "key", "keys", "path", "value")

    def __init__(self, value: dict[Any, Any] | list[Any], path: Path) -> None:
        self.value = value
        self.path = path
        self.is_map = isinstance(value, dict)
        self.key: Any = _NO_KEY
        self.keys: dict[Any, int] = {}  # key -> its line, to name the first of duplicates


_NO_KEY = object()


class _Builder:
    """Builds plain data from YAML events, refusing what a config must not contain."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.stack: list[_Frame] = []
        self.lines: Lines = {(): 1}
        self.nodes = 0
        self.documents = 0
        self.root: Any = None

    def feed(self, event: yaml.Event) -> None:
        mark = event.start_mark
        line = 1 if mark is None else int(mark.line) + 1
        if isinstance(event, yaml.DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                raise DocumentError(line, "(file)", "one document per file (a second '---')")
        elif isinstance(event, yaml.AliasEvent):
            path = self._path_here()
            raise DocumentError(
                line, field_name(path), f"aliases (*{event.anchor}) are not allowed"
            )
        elif isinstance(event, yaml.ScalarEvent | yaml.CollectionStartEvent):
            self._node(event, line)
        elif isinstance(event, yaml.CollectionEndEvent):
            frame = self.stack.pop()
            self._attach(frame.value, line)

    def _path_here(self) -> Path:
        """Where the next value goes (for messages)."""
        if not self.stack:
            return ()
        top = self.stack[-1]
        if top.is_map:
            return top.path if top.key is _NO_KEY else (*top.path, top.key)
        return (*top.path, len(top.value))

    def _node(self, event: yaml.NodeEvent, line: int) -> None:
        path = self._path_here()
        if event.anchor is not None:
            raise DocumentError(
                line, field_name(path), f"anchors (&{event.anchor}) are not allowed"
            )
        tag = getattr(event, "tag", None)
        if tag is not None:
            shown = tag.replace(_TAG, "!!")
            raise DocumentError(line, field_name(path), f"tags ({shown}) are not allowed")
        self.nodes += 1
        if self.nodes > self.limits.max_nodes:
            raise DocumentError(
                line, field_name(path), f"too many values (at most {self.limits.max_nodes})"
            )
        top = self.stack[-1] if self.stack else None
        if top is not None and top.is_map and top.key is _NO_KEY:
            self._key(top, event, line)
            return
        if top is not None and not top.is_map:
            self.lines[path] = line
        if isinstance(event, yaml.ScalarEvent):
            self._attach(self._scalar(event, line, path), line)
            return
        if len(self.stack) >= self.limits.max_depth:
            raise DocumentError(
                line,
                field_name(path),
                f"nested too deeply (at most {self.limits.max_depth} levels)",
            )
        container: dict[Any, Any] | list[Any] = (
            {} if isinstance(event, yaml.MappingStartEvent) else []
        )
        self.stack.append(_Frame(container, path))

    def _key(self, frame: _Frame, event: yaml.NodeEvent, line: int) -> None:
        if not isinstance(event, yaml.ScalarEvent):
            raise DocumentError(
                line, field_name(frame.path), "keys must be plain values, not lists or mappings"
            )
        key = self._scalar(event, line, frame.path)
        path = (*frame.path, key if isinstance(key, str | int) else str(key))
        first = frame.keys.get(key)
        if first is not None:
            raise DocumentError(line, field_name(path), f"duplicate key (first at line {first})")
        frame.keys[key] = line
        frame.key = key
        self.lines[path] = line

    def _attach(self, value: Any, line: int) -> None:
        if not self.stack:
            self.root = value
            return
        top = self.stack[-1]
        if top.is_map:
            assert isinstance(top.value, dict)
            top.value[top.key] = value
            top.key = _NO_KEY
        else:
            assert isinstance(top.value, list)
            top.value.append(value)

    def _scalar(self, event: yaml.ScalarEvent, line: int, path: Path) -> Any:
        text = event.value
        if len(text) > self.limits.max_scalar_chars:
            raise DocumentError(
                line,
                field_name(path),
                f"value too long (at most {self.limits.max_scalar_chars} characters)",
            )
        if event.style not in (None, "") or not event.implicit[0]:
            return text  # quoted or block scalar: always a string
        return resolve_plain(text, line, path)


def resolve_plain(text: str, line: int, path: Path) -> Any:
    """An untagged plain scalar as `yaml.safe_load` reads it (timestamps stay strings),
    refusing numbers that are not finite or do not fit in 64 bits."""
    tag: str = _RESOLVER.resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
    node = yaml.ScalarNode(tag, text)
    if tag == _TAG + "null":
        return None
    if tag == _TAG + "bool":
        return _CONSTRUCTOR.construct_yaml_bool(node)
    if tag == _TAG + "int":
        number = int(_CONSTRUCTOR.construct_yaml_int(node))
        return check_number(number, line, path)
    if tag == _TAG + "float":
        return check_number(float(_CONSTRUCTOR.construct_yaml_float(node)), line, path)
    return text


def check_number(number: int | float, line: int, path: Path) -> int | float:
    """`number` if a finite float or an integer within 64 bits, else a DocumentError.
    (Ranges that make sense for a field are the config model's business.)"""
    if isinstance(number, float):
        if not math.isfinite(number):
            raise DocumentError(line, field_name(path), "must be a finite number")
    elif abs(number) > MAX_INT:
        raise DocumentError(line, field_name(path), f"number out of range (at most {MAX_INT})")
    return number


def parse_yaml(text: str, limits: Limits = LIMITS) -> Document:
    """Parse one YAML document under `limits` (see the module docstring)."""
    _check_size(text, limits)
    builder = _Builder(limits)
    try:
        for event in yaml.parse(text, Loader=_LOADER):
            builder.feed(event)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = 1 if mark is None else int(mark.line) + 1
        problem = exc.problem or str(exc).splitlines()[0]
        if "nesting depth" in problem:  # libyaml's own limit, read ahead of our events
            raise DocumentError(
                line, "(file)", f"nested too deeply (at most {limits.max_depth} levels)"
            ) from None
        raise DocumentError(line, "(file)", f"invalid YAML: {problem}") from None
    except (yaml.YAMLError, UnicodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DocumentError(1, "(file)", f"invalid YAML: {first}") from None
    return Document(builder.root, builder.lines)


# -- JSON -------------------------------------------------------------------------------

_JSON_TOKENS = re.compile(r'"(?:[^"\\\n]|\\.)*"|[\[\]{}\n]')


class _DuplicateKeyError(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _json_depth(text: str, limits: Limits) -> None:
    """Refuse JSON nested deeper than the limit before `json` recurses into it."""
    depth, line = 0, 1
    for match in _JSON_TOKENS.finditer(text):
        char = match.group()
        if char == "\n":
            line += 1
        elif char in "[{":
            depth += 1
            if depth > limits.max_depth:
                raise DocumentError(
                    line, "(file)", f"nested too deeply (at most {limits.max_depth} levels)"
                )
        elif char in "]}":
            depth -= 1


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


def _json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed: numbers must be finite")


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("numbers must be finite")
    return value


def _json_int(text: str) -> int:
    value = int(text)
    if abs(value) > MAX_INT:
        raise ValueError(f"number out of range (at most {MAX_INT})")
    return value


def _json_lines(text: str, limits: Limits) -> Lines:
    """Lines of keys, from the YAML reading of the JSON text (JSON is nearly YAML);
    best effort: a document YAML cannot read gets every problem on line 1."""
    try:
        # YAML forbids tabs as indentation; in valid JSON tabs are whitespace outside
        # strings, so spaces keep the lines.
        return parse_yaml(text.replace("\t", " "), limits).lines
    except DocumentError:
        return {(): 1}


def _check_tree(data: Any, lines: Lines, limits: Limits) -> None:
    """The node count and scalar lengths of already-parsed JSON data (iteratively)."""
    nodes = 0
    stack: list[tuple[Any, Path]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        nodes += 1
        if nodes > limits.max_nodes:
            raise DocumentError(1, "(file)", f"too many values (at most {limits.max_nodes})")
        if isinstance(value, dict):
            for key, item in value.items():
                stack.append((key, path))
                stack.append((item, (*path, key)))
        elif isinstance(value, list):
            stack.extend((item, (*path, i)) for i, item in enumerate(value))
        elif isinstance(value, str) and len(value) > limits.max_scalar_chars:
            raise DocumentError(
                lines.get(path, 1),
                field_name(path),
                f"value too long (at most {limits.max_scalar_chars} characters)",
            )


def parse_json(text: str, limits: Limits = LIMITS) -> Document:
    """Parse one JSON document under the same rules as YAML (see the module docstring)."""
    _check_size(text, limits)
    _json_depth(text, limits)
    try:
        data = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_constant=_json_constant,
            parse_float=_json_float,
            parse_int=_json_int,
        )
    except json.JSONDecodeError as exc:
        raise DocumentError(exc.lineno, "(file)", f"invalid JSON: {exc.msg}") from None
    except _DuplicateKeyError as dup:
        try:  # the YAML reading finds the same duplicate, with its line
            parse_yaml(text.replace("\t", " "), limits)
        except DocumentError as exc:
            if "duplicate key" in exc.message:
                raise exc from None
        raise DocumentError(1, repr(dup.key), "duplicate key") from None
    except (ValueError, RecursionError) as exc:
        # parse_* hooks, or int() refusing a number of thousands of digits
        raise DocumentError(1, "(file)", f"invalid JSON: {exc}") from None
    lines = _json_lines(text, limits)
    _check_tree(data, lines, limits)
    return Document(data, lines)
