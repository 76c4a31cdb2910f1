"""Bot configs: the YAML schema, and a loader whose errors name file, line and field.

`load_bot_config` (files) and `parse_bot_config` (any text: files, the CLI, the HTTP API)
either return a fully validated `BotConfig` or raise `BotConfigError` listing every
problem at once, each as `source:line: field: message`.

What a config may do is bounded (see docs/security.md):
- it is plain data, parsed under size, depth and count limits (engine/yamlsafe.py);
- it holds no secret: keys come from a credential set it names (engine/credentials.py);
- its requests go only where the operator allows (engine/outbound.py);
- numbers are finite and within sane ranges;
- a config from the HTTP API names only registered strategies, and nothing is imported
  while it is checked (`allow_custom=False`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from engine.credentials import LEGACY_KEYS, LEGACY_MESSAGE, SET_NAME
from engine.errors import BotConfigError
from engine.exits import ExitRules
from engine.outbound import parse_base_url
from engine.protections import Protections
from engine.risk import RiskLimits
from engine.routing import BotRoutes
from engine.schedule import timeframe_ms
from engine.secretkeys import INLINE_SECRET, secret_paths
from engine.units import parse_duration
from engine.yamlsafe import DocumentError, Lines, field_name, parse_json, parse_yaml

if TYPE_CHECKING:
    from engine.settings import Settings

MIN_INTERVAL_S = 1.0
MAX_INTERVAL_S = 24 * 3600.0
MAX_AMOUNT = 1e12
"""Largest balance (or amount) a config may state: far above any real account, far
below where float arithmetic on it (times a price, a fee) loses meaning or overflows."""
TIMEFRAMES = ("1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d")
_NEW_INPUT = "new_input"
"""Validation context key: set while a config is read from text (files, API), absent
when a stored config is loaded back, so old stored forms still load and are refused
where they would be used (engine/exchange/factory.py)."""


def _interval(value: object) -> float:
    seconds = parse_duration(value)
    if not MIN_INTERVAL_S <= seconds <= MAX_INTERVAL_S:
        raise ValueError("must be between 1s and 24h")
    return seconds


Interval = Annotated[float, BeforeValidator(_interval)]


def _optional_duration(value: object) -> object:
    return None if value is None else parse_duration(value)


EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class StrategySpec(_Strict):
    """Which strategy runs (registered name or `pkg.module:Class`) and its params."""

    name: StrictStr = Field(min_length=1, max_length=200)
    params: dict[str, Any] = Field(default_factory=dict)


class PaperSettings(_Strict):
    """Paper trading: starting balances and the fill model."""

    balances: dict[str, Annotated[float, Field(ge=0, le=MAX_AMOUNT)]] = Field(
        default_factory=lambda: {"USDT": 10_000.0}
    )
    fee_rate: float = Field(0.001, ge=0, le=0.05)
    slippage: float = Field(0.0005, ge=0, le=0.05)


class LegacyCredentials(_Strict):
    """The old `{api_key_env, secret_env}` form: still loads from the database, so a bot
    stored with it stops with a clear error instead of failing to load; never accepted
    from a file or the API."""

    api_key_env: EnvName
    secret_env: EnvName
    password_env: EnvName | None = None


def _credentials(value: object, info: ValidationInfo) -> object:
    """One clear message per wrong form (a plain union would report one per member)."""
    if value is None or isinstance(value, LegacyCredentials):
        return value
    if isinstance(value, str):
        if not re.match(SET_NAME, value):
            raise ValueError(
                "credentials: must be a credential set name: lowercase letters, digits,"
                " - and _ (e.g. binance-main)"
            )
        return value
    if isinstance(value, dict) and {"api_key_env", "secret_env"} <= set(value) <= LEGACY_KEYS:
        if info.context and info.context.get(_NEW_INPUT):
            raise ValueError(f"credentials: {LEGACY_MESSAGE}")
        return LegacyCredentials.model_validate(value)
    raise ValueError(
        "credentials: must name a declared credential set, e.g. `credentials: binance-main`"
    )


BOT_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"
LATER_FIELDS: dict[str, Any] = {"labels": [], "notify": None}
"""Fields added after configs were first stored, and their unset values (config_hash)."""
LABEL = r"^[a-z0-9][a-z0-9_.-]{0,31}$"


class BotConfig(_Strict):
    """One bot, as written in `bots/*.yaml`."""

    name: StrictStr = Field(pattern=BOT_NAME)
    exchange: StrictStr = Field(min_length=1, max_length=64)
    mode: Literal["paper", "live"] = "paper"
    symbol: str = Field(pattern=r"^[A-Z0-9]{1,16}/[A-Z0-9]{1,16}$")
    timeframe: Literal[TIMEFRAMES] = "1m"  # type: ignore[valid-type]
    check_interval: Interval = 60.0
    # `candle`: slots fall `offset` after each `timeframe` candle closes (a 1h bot started
    # at 10:17 first ticks at 11:00:02 with offset 2s), which is what a candle strategy
    # expects; the interval is then the timeframe (or a multiple of it).
    align: Literal["none", "candle"] = "none"
    offset: Annotated[float, BeforeValidator(parse_duration)] = Field(0.0, ge=0.0, le=3600.0)
    strategy: StrategySpec
    paper: PaperSettings = Field(default_factory=PaperSettings)
    credentials: Annotated[
        Annotated[StrictStr, Field(pattern=SET_NAME)] | SkipJsonSchema[LegacyCredentials] | None,
        BeforeValidator(_credentials),
    ] = Field(
        None,
        description="Name of a credential set the operator declared"
        " (BOTENGINE_CRED_<NAME>_KEY/_SECRET); never the keys themselves",
    )
    exchange_options: dict[str, Any] = Field(default_factory=dict)
    base_url: str | None = Field(None, max_length=2048)
    sandbox: bool = False
    risk: RiskLimits = Field(default_factory=RiskLimits)
    exits: ExitRules = Field(
        default_factory=ExitRules,
        description="stop_loss / take_profit / trailing_stop, percent of the entry price",
    )
    protections: Protections = Field(default_factory=Protections)
    order_timeout: Annotated[float | None, BeforeValidator(_optional_duration)] = Field(
        None, gt=0, le=30 * 86400.0, description="cancel unfilled limit orders this old"
    )
    on_stop: Literal["leave", "cancel"] = "leave"
    labels: list[Annotated[StrictStr, Field(pattern=LABEL)]] = Field(
        default_factory=list,
        max_length=16,
        description="Tags to select bots by (`--label`, the dashboard's filter)",
    )
    notify: BotRoutes | None = Field(
        None,
        description="per channel (webhook, telegram, email): true, false or the bot events"
        " it sends, e.g. {telegram: [bot.error, bot.exit]}; see docs/notifications.md",
    )

    @field_validator("exchange")
    @classmethod
    def _known_exchange(cls, value: str) -> str:
        from engine.exchange.catalog import is_known_exchange  # lazy: ccxt is slow

        if not is_known_exchange(value):
            raise ValueError(f"unknown exchange {value!r} (a ccxt exchange id or 'simulator')")
        return value

    @field_validator("base_url")
    @classmethod
    def _well_formed_url(cls, value: str | None) -> str | None:
        if value is not None:
            parse_base_url(value)  # ValueError says what is wrong; the allow-list is later
        return value

    @model_validator(mode="after")
    def _candle_alignment(self) -> BotConfig:
        width = timeframe_ms(self.timeframe) / 1000
        if self.align == "candle":
            if "check_interval" not in self.model_fields_set:
                object.__setattr__(self, "check_interval", width)  # frozen model
            elif self.check_interval % width:
                raise ValueError(
                    f"check_interval: must be a multiple of the timeframe ({self.timeframe}) "
                    "with align: candle"
                )
            if self.offset >= width:
                raise ValueError(f"offset: must be shorter than the timeframe ({self.timeframe})")
        elif self.offset:
            raise ValueError("offset: only applies with align: candle")
        return self

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
        data = self.model_dump(mode="json")
        for key, unset in LATER_FIELDS.items():
            # Left out when unset, so configs written before the field existed keep their
            # hash (and a running bot is not "reconfigured" by the upgrade).
            if data.get(key) == unset:
                data.pop(key, None)
        canonical = json.dumps(data, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


Loc = tuple[str | int, ...]


def _line_for(lines: Lines, loc: Loc) -> int:
    for cut in range(len(loc), -1, -1):
        if loc[:cut] in lines:
            return lines[loc[:cut]]
    return 1


class _Problems:
    """`source:line: field: message` lines, collected in any order, reported by line."""

    def __init__(self, source: str, lines: Lines) -> None:
        self.source = source
        self.lines = lines
        self.items: set[str] = set()

    def add(self, loc: Loc, message: str) -> None:
        self.items.add(f"{self.source}:{_line_for(self.lines, loc)}: {field_name(loc)}: {message}")

    def raise_any(self) -> None:
        if self.items:
            raise BotConfigError(sorted(self.items, key=_problem_line))


def parse_bot_config(
    text: str,
    source: str = "<string>",
    *,
    fmt: Literal["yaml", "json"] = "yaml",
    allow_custom: bool = True,
    settings: Settings | None = None,
    check_credentials: bool = False,
    expect_name: str | None = None,
) -> BotConfig:
    """Validate a bot config given as YAML (or JSON) text; errors name `source`.

    `allow_custom=False` (the HTTP API) refuses dotted strategy paths without importing
    anything. `settings` (default: the process's) gives the outbound allow-lists and,
    with `check_credentials`, where credential sets are declared: a live config naming
    an undeclared set then fails here rather than on its first tick. `expect_name`
    requires the config's (validated) name to equal it.
    """
    try:
        document = parse_json(text) if fmt == "json" else parse_yaml(text)
    except DocumentError as exc:
        raise BotConfigError([f"{source}:{exc.line}: {exc.field}: {exc.message}"]) from None
    data, lines = document.data, document.lines
    if not isinstance(data, dict):
        raise BotConfigError([f"{source}:1: (file): must be a mapping of settings"])
    problems = _Problems(source, lines)
    for key in data:
        if not isinstance(key, str):
            problems.add((str(key),), "keys must be strings")
    secrets = _secret_problems(data, problems)
    config: BotConfig | None = None
    try:
        config = BotConfig.model_validate(data, context={_NEW_INPUT: True})
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
            message = err["msg"].removeprefix("Value error, ")
            head, sep, rest = message.partition(": ")
            if sep and head in ("credentials", "check_interval", "offset") and len(loc) <= 1:
                loc, message = (head,), rest
            elif err["type"] == "extra_forbidden":
                if loc in secrets:
                    continue  # reported as an inline secret
                message = "unknown key"
            problems.add(loc, message)
    _policy_problems(
        _Outbound.of(config, data), problems, settings, check_credentials=check_credentials
    )
    if config is not None:
        _strategy_problems(config, problems, allow_custom=allow_custom)
        if expect_name is not None and config.name != expect_name:
            problems.add(("name",), f"{config.name!r} does not match {expect_name!r} in the URL")
    problems.raise_any()
    assert config is not None
    return config


def _problem_line(problem: str) -> tuple[int, str]:
    head = problem.split(": ", 1)[0]
    line = head.rsplit(":", 1)[-1]
    return (int(line) if line.isdigit() else 0, problem)


def _secret_problems(data: dict[Any, Any], problems: _Problems) -> set[Loc]:
    """Refuse every secret-named key, at any depth; `credentials` holds a set's name."""
    found: set[Loc] = set(secret_paths({k: v for k, v in data.items() if k != "credentials"}))
    creds = data.get("credentials")
    if isinstance(creds, dict):
        sub = {k: v for k, v in creds.items() if k not in LEGACY_KEYS}
        found |= {("credentials", *path) for path in secret_paths(sub)}
    for loc in found:
        problems.add(loc, INLINE_SECRET)
    return found


def _strategy_problems(config: BotConfig, problems: _Problems, *, allow_custom: bool) -> None:
    from strategies.registry import StrategyLookupError, build

    spec = config.strategy
    try:
        build(spec.name, spec.params, allow_custom=allow_custom)
    except StrategyLookupError as exc:
        problems.add(("strategy", "name"), str(exc))
    except ValidationError as exc:
        for err in exc.errors():
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown key"
            problems.add(("strategy", "params", *err["loc"]), message)


@dataclass(frozen=True)
class _Outbound:
    """The fields the operator's rules look at."""

    base_url: str | None
    options: dict[str, Any]
    credentials: str | None
    live: bool

    @classmethod
    def of(cls, config: BotConfig | None, data: dict[Any, Any]) -> _Outbound:
        """From the validated config; from the data where validation failed elsewhere,
        so a refusal is reported with the other problems (it never permits anything:
        an invalid config is refused anyway)."""
        if config is not None:
            creds = config.credentials if isinstance(config.credentials, str) else None
            return cls(config.base_url, config.exchange_options, creds, config.mode == "live")
        base_url, options, creds = (
            data.get(k) for k in ("base_url", "exchange_options", "credentials")
        )
        return cls(
            base_url if isinstance(base_url, str) else None,
            options if isinstance(options, dict) else {},
            creds if isinstance(creds, str) else None,
            data.get("mode") == "live",
        )


def _policy_problems(
    fields: _Outbound, problems: _Problems, settings: Settings | None, *, check_credentials: bool
) -> None:
    """The operator's rules: outbound allow-lists and declared credential sets."""
    check_creds = check_credentials and fields.live and fields.credentials is not None
    if fields.base_url is None and not fields.options and not check_creds:
        return  # nothing to check: do not require valid settings to validate a file
    if settings is None:
        from engine.settings import get_settings

        settings = get_settings()
    policy = settings.outbound_policy()
    if fields.base_url is not None and (problem := policy.base_url_problem(fields.base_url)):
        problems.add(("base_url",), problem)
    for path, message in policy.option_problems(fields.options):
        problems.add(("exchange_options", *path), message)
    if (
        check_creds
        and fields.credentials is not None
        and (problem := settings.credential_store().problem(fields.credentials))
    ):
        problems.add(("credentials",), problem)


def load_bot_config(
    path: str | Path, *, settings: Settings | None = None, check_credentials: bool = True
) -> BotConfig:
    """Read and validate one bot config file (`.json` files as JSON).

    A live config's credential set must be declared where this runs (`botengine
    validate` and `start-bot` catch a missing variable before anything starts).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BotConfigError([f"{path}:1: (file): cannot read: {exc}"]) from None
    return parse_bot_config(
        text,
        str(path),
        fmt="json" if path.suffix.lower() == ".json" else "yaml",
        settings=settings,
        check_credentials=check_credentials,
    )


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema of a bot config file, for editors."""
    return BotConfig.model_json_schema()
