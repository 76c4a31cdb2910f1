"""Bot configs: the YAML schema, and a loader whose errors name file, line and field.

`load_bot_config` either returns a fully validated `BotConfig` or raises `BotConfigError`
listing every problem in the file at once, each as `path:line: field: message`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from engine.errors import BotConfigError
from engine.risk import RiskLimits

MIN_INTERVAL_S = 1.0
MAX_INTERVAL_S = 24 * 3600.0
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_INLINE_SECRET = re.compile(r"^(api_?key|secret|password|passphrase|private_?key|token)$", re.I)
TIMEFRAMES = ("1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d")


def parse_duration(value: object) -> float:
    """Turn `30s`, `5m`, `1h`, `1.5` or `90` into seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a duration like 30s, 5m or 1h")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return float(match.group(1)) * _UNITS[match.group(2)]
    raise ValueError("must be a duration like 30s, 5m or 1h")


def _interval(value: object) -> float:
    seconds = parse_duration(value)
    if not MIN_INTERVAL_S <= seconds <= MAX_INTERVAL_S:
        raise ValueError("must be between 1s and 24h")
    return seconds


Interval = Annotated[float, BeforeValidator(_interval)]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StrategySpec(_Strict):
    """Which strategy runs (registered name or `pkg.module:Class`) and its params."""

    name: str = Field(min_length=1, max_length=200)
    params: dict[str, Any] = Field(default_factory=dict)


class PaperSettings(_Strict):
    """Paper trading: starting balances and the fill model."""

    balances: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: {"USDT": 10_000.0}
    )
    fee_rate: float = Field(0.001, ge=0, le=0.05)
    slippage: float = Field(0.0005, ge=0, le=0.05)


class Credentials(_Strict):
    """Names of the environment variables holding the keys; never the keys themselves."""

    api_key_env: EnvName
    secret_env: EnvName
    password_env: EnvName | None = None


class BotConfig(_Strict):
    """One bot, as written in `bots/*.yaml`."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    exchange: str = Field(min_length=1, max_length=64)
    mode: Literal["paper", "live"] = "paper"
    symbol: str = Field(pattern=r"^[A-Z0-9]{1,16}/[A-Z0-9]{1,16}$")
    timeframe: Literal[TIMEFRAMES] = "1m"  # type: ignore[valid-type]
    check_interval: Interval = 60.0
    strategy: StrategySpec
    paper: PaperSettings = Field(default_factory=PaperSettings)
    credentials: Credentials | None = None
    exchange_options: dict[str, Any] = Field(default_factory=dict)
    base_url: str | None = Field(None, pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    sandbox: bool = False
    risk: RiskLimits = Field(default_factory=RiskLimits)
    on_stop: Literal["leave", "cancel"] = "leave"

    @field_validator("exchange")
    @classmethod
    def _known_exchange(cls, value: str) -> str:
        from engine.exchange.catalog import is_known_exchange  # lazy: ccxt is slow

        if not is_known_exchange(value):
            raise ValueError(f"unknown exchange {value!r} (a ccxt exchange id or 'simulator')")
        return value

    @model_validator(mode="after")
    def _live_needs_credentials(self) -> BotConfig:
        if self.mode == "live" and self.credentials is None and self.exchange != "simulator":
            raise ValueError("credentials: required in live mode")
        return self

    @property
    def base(self) -> str:
        """Base currency of the symbol (BTC in BTC/USDT)."""
        return self.symbol.split("/")[0]

    @property
    def quote(self) -> str:
        """Quote currency of the symbol (USDT in BTC/USDT)."""
        return self.symbol.split("/")[1]

    def config_hash(self) -> str:
        """A stable digest of the config: equal configs give equal hashes."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


Lines = dict[tuple[str | int, ...], int]


def _index_lines(node: yaml.Node, path: tuple[str | int, ...], out: Lines) -> None:
    """Record the 1-based line of every key and list item below `node`."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            out[(*path, key)] = key_node.start_mark.line + 1
            _index_lines(value_node, (*path, key), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[(*path, i)] = item.start_mark.line + 1
            _index_lines(item, (*path, i), out)


def _line_for(lines: Lines, loc: tuple[str | int, ...]) -> int:
    for cut in range(len(loc), -1, -1):
        if loc[:cut] in lines:
            return lines[loc[:cut]]
    return 1


def _field_name(loc: tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(file)"


def parse_bot_config(text: str, source: str = "<string>") -> BotConfig:
    """Validate a bot config given as YAML (or JSON) text; errors name `source`."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BotConfigError([f"{source}:{line}: (file): invalid YAML: {problem}"]) from None
    if not isinstance(data, dict) or root is None:
        raise BotConfigError([f"{source}:1: (file): must be a mapping of settings"])
    lines: Lines = {(): 1}
    _index_lines(root, (), lines)
    problems = _shape_problems(data, lines, source)
    config: BotConfig | None = None
    try:
        config = BotConfig.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
            message = err["msg"].removeprefix("Value error, ")
            if message.startswith("credentials: "):
                loc, message = ("credentials",), message.removeprefix("credentials: ")
            elif err["type"] == "extra_forbidden":
                message = _extra_message(loc)
            problems.append(f"{source}:{_line_for(lines, loc)}: {_field_name(loc)}: {message}")
    if config is not None:
        problems += _strategy_problems(config, lines, source)
    if problems:
        raise BotConfigError(sorted(set(problems), key=_problem_line))
    assert config is not None
    return config


def _problem_line(problem: str) -> tuple[int, str]:
    parts = problem.split(":")
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0, problem)


def _extra_message(loc: tuple[str | int, ...]) -> str:
    if loc and isinstance(loc[-1], str) and _INLINE_SECRET.match(loc[-1]):
        return "inline secrets are not allowed; name an environment variable in credentials"
    return "unknown key"


def _shape_problems(data: dict[Any, Any], lines: Lines, source: str) -> list[str]:
    return [
        f"{source}:{lines.get((key,), 1)}: {key}: keys must be strings"
        for key in data
        if not isinstance(key, str)
    ]


def _strategy_problems(config: BotConfig, lines: Lines, source: str) -> list[str]:
    from strategies.registry import StrategyLookupError, build

    spec = config.strategy
    try:
        build(spec.name, spec.params)
    except StrategyLookupError as exc:
        loc: tuple[str | int, ...] = ("strategy", "name")
        return [f"{source}:{_line_for(lines, loc)}: strategy.name: {exc}"]
    except ValidationError as exc:
        out = []
        for err in exc.errors():
            loc = ("strategy", "params", *err["loc"])
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown key"
            out.append(f"{source}:{_line_for(lines, loc)}: {_field_name(loc)}: {message}")
        return out
    return []


def load_bot_config(path: str | Path) -> BotConfig:
    """Read and validate one bot config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BotConfigError([f"{path}:1: (file): cannot read: {exc}"]) from None
    return parse_bot_config(text, str(path))


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema of a bot config file, for editors."""
    return BotConfig.model_json_schema()
