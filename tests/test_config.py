"""Bot config validation: every bad input gets file, line and field, and nothing starts."""

from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import BotConfig, load_bot_config, parse_bot_config, parse_duration
from engine.errors import BotConfigError

ROOT = Path(__file__).resolve().parent.parent

VALID = """\
name: test-bot
exchange: simulator
symbol: BTC/USDT
timeframe: 1m
check_interval: 30s
strategy:
  name: sma_cross
  params:
    fast: 5
    slow: 20
    quote_amount: 100
paper:
  balances:
    USDT: 1000
risk:
  max_orders_per_tick: 2
"""


def _replace(old: str, new: str) -> str:
    assert old in VALID
    return VALID.replace(old, new)


# (case id, config text, expected "line: field: message fragment")
MALFORMED = [
    (
        "interval too short",
        _replace("30s", "500ms"),
        "5: check_interval: must be between 1s and 24h",
    ),
    ("interval too long", _replace("30s", "25h"), "5: check_interval: must be between 1s and 24h"),
    ("interval garbage", _replace("30s", "soon"), "5: check_interval: must be a duration"),
    ("interval bool", _replace("30s", "true"), "5: check_interval: must be a duration"),
    ("unknown top key", VALID + "colour: blue\n", "17: colour: unknown key"),
    ("inline secret", VALID + "api_key: abc\n", "17: api_key: inline secrets are not allowed"),
    ("missing name", VALID.replace("name: test-bot\n", ""), "1: name: Field required"),
    ("bad name", _replace("name: test-bot", "name: Test Bot!"), "1: name: String should match"),
    (
        "unknown exchange",
        _replace("exchange: simulator", "exchange: nope"),
        "2: exchange: unknown exchange",
    ),
    ("bad symbol", _replace("BTC/USDT", "btcusdt"), "3: symbol: String should match"),
    ("bad timeframe", _replace("timeframe: 1m", "timeframe: 7m"), "4: timeframe: Input should be"),
    ("bad mode", VALID + "mode: yolo\n", "17: mode: Input should be 'paper' or 'live'"),
    (
        "live without credentials",
        _replace("exchange: simulator", "exchange: binance") + "mode: live\n",
        "1: credentials: required in live mode",
    ),
    ("unknown strategy", _replace("name: sma_cross", "name: nope"), "7: strategy.name:"),
    (
        "custom path missing",
        _replace("name: sma_cross", "name: no_such_pkg.mod:Cls"),
        "7: strategy.name:",
    ),
    (
        "bad strategy param",
        _replace("fast: 5", "fast: -1"),
        "9: strategy.params.fast: Input should be greater than or equal to 1",
    ),
    (
        "unknown strategy param",
        _replace("fast: 5", "fast: 5\n    speed: 3"),
        "10: strategy.params.speed: unknown key",
    ),
    ("fast not below slow", _replace("fast: 5", "fast: 50"), "strategy.params"),
    (
        "negative balance",
        _replace("USDT: 1000", "USDT: -5"),
        "14: paper.balances.USDT: Input should be greater than or equal to 0",
    ),
    (
        "fee too high",
        VALID.replace("paper:\n", "paper:\n  fee_rate: 0.5\n"),
        "13: paper.fee_rate: Input should be less than or equal to 0.05",
    ),
    (
        "risk unknown key",
        _replace("max_orders_per_tick: 2", "max_orderz: 2"),
        "16: risk.max_orderz: unknown key",
    ),
    (
        "risk negative",
        _replace("max_orders_per_tick: 2", "max_orders_per_tick: -1"),
        "16: risk.max_orders_per_tick:",
    ),
    (
        "on_stop invalid",
        VALID + "on_stop: panic\n",
        "17: on_stop: Input should be 'leave' or 'cancel'",
    ),
    (
        "credentials inline key",
        VALID + "credentials:\n  api_key: xyz\n",
        "18: credentials.api_key: inline secrets are not allowed",
    ),
    (
        "credentials in the old env-name form",
        VALID + "credentials:\n  api_key_env: BINANCE_KEY\n  secret_env: BINANCE_SECRET\n",
        "17: credentials: the {api_key_env, secret_env} form is no longer accepted",
    ),
    (
        "credentials bad set name",
        VALID + "credentials: Binance Main\n",
        "17: credentials: must be a credential set name",
    ),
    (
        "credentials not a name",
        VALID + "credentials: {account: main}\n",
        "17: credentials: must name a declared credential set",
    ),
    (
        "base_url not http",
        VALID + "base_url: ftp://x\n",
        "17: base_url: must start with http:// or https://",
    ),
    (
        "strategy not mapping",
        _replace("strategy:\n  name: sma_cross", "strategy: 5\nx:\n  name: sma_cross"),
        "strategy: Input should be a valid dictionary",
    ),
    ("not a mapping", "- just\n- a list\n", "1: (file): must be a mapping"),
    ("empty file", "", "1: (file): must be a mapping"),
    ("broken yaml", "name: [unclosed\n", "(file): invalid YAML"),
    ("tab indentation", "name: x\n\tsymbol: y\n", "(file): invalid YAML"),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed_configs_name_file_line_and_field(text: str, expected: str) -> None:
    # Given a config file with one mistake
    # When it is parsed
    with pytest.raises(BotConfigError) as info:
        parse_bot_config(text, "bots/x.yaml")
    # Then one problem names the file, the line and the field
    problems = info.value.problems
    assert any(p.startswith("bots/x.yaml:") and expected in p for p in problems), problems


def test_every_problem_in_a_file_is_reported_at_once() -> None:
    # Given a config with three independent mistakes
    text = _replace("30s", "0s").replace("BTC/USDT", "nope") + "colour: red\n"
    # When it is parsed
    with pytest.raises(BotConfigError) as info:
        parse_bot_config(text, "f.yaml")
    # Then all three are listed, in line order
    fields = [p.split(":")[2].strip() for p in info.value.problems]
    assert fields == ["symbol", "check_interval", "colour"]


def test_valid_config_and_derived_values() -> None:
    config = parse_bot_config(VALID, "f.yaml")
    assert config.check_interval == 30.0
    assert (config.base, config.quote) == ("BTC", "USDT")
    assert config.mode == "paper"
    assert config.config_hash() == parse_bot_config(VALID, "other.yaml").config_hash()
    assert config.config_hash() != parse_bot_config(_replace("30s", "31s")).config_hash()


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("30s", 30), ("5m", 300), ("1h", 3600), (90, 90), ("1.5", 1.5), ("250ms", 0.25)],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


def test_example_bots_are_valid() -> None:
    files = sorted((ROOT / "bots").glob("*.yaml"))
    assert len(files) >= 4
    for path in files:
        assert isinstance(load_bot_config(path), BotConfig)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(BotConfigError, match=r"missing.yaml:1: \(file\): cannot read"):
        load_bot_config(tmp_path / "missing.yaml")


def test_exported_json_schema_is_current() -> None:
    import json

    from engine.config import config_json_schema

    committed = json.loads((ROOT / "bots" / "bot.schema.json").read_text())
    assert committed == config_json_schema(), "run `botengine schema -o bots/bot.schema.json`"


yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
known_keys = st.sampled_from(
    [
        "name",
        "exchange",
        "symbol",
        "timeframe",
        "check_interval",
        "strategy",
        "paper",
        "risk",
        "mode",
        "credentials",
        "on_stop",
        "base_url",
        "exchange_options",
        "sandbox",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(known_keys, yaml_values, max_size=10))
def test_fuzzed_structures_either_load_or_fail_cleanly(data: dict[str, object]) -> None:
    # Given any structure of known keys with arbitrary values
    text = yaml.safe_dump(data)
    # When it is parsed, then it is a BotConfig or a BotConfigError — nothing else
    try:
        parse_bot_config(text, "fuzz.yaml")
    except BotConfigError as exc:
        assert exc.problems
        assert all(p.startswith("fuzz.yaml:") for p in exc.problems)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fuzzed_text_either_loads_or_fails_cleanly(text: str) -> None:
    try:
        parse_bot_config(text, "fuzz.yaml")
    except BotConfigError as exc:
        assert all(p.startswith("fuzz.yaml:") for p in exc.problems)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(MALFORMED), st.integers(0, len(VALID)))
def test_fuzzed_mutations_of_a_valid_file(case: tuple[str, str, str], cut: int) -> None:
    # Truncating a config anywhere gives a config or clean errors, never a crash.
    with contextlib.suppress(BotConfigError):
        parse_bot_config(VALID[:cut] + textwrap.dedent(case[1])[cut:], "fuzz.yaml")
