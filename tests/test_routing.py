"""Per-bot routing: a bot's `notify:` decides which of its events each channel sends."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from engine import lifecycle, notify, routing, tick
from engine.config import parse_bot_config
from engine.errors import BotConfigError
from engine.routing import DEFAULT, BotRoutes, wants
from engine.runtime import Runtime
from engine.settings import Settings
from tests.chain_support import bot_config, bot_yaml
from tests.telegram_fake import FakeBotApi, fake_bot_api
from tests.test_telegram import OPERATORS, TOKEN, make_runtime

EXITS_ONLY = "notify:\n  telegram: [bot.exit]\n"


@pytest.fixture
def fake() -> Iterator[FakeBotApi]:
    """The fake Bot API for TOKEN."""
    with fake_bot_api(TOKEN) as api:
        yield api


@pytest.fixture
def rt(redis_url: str, db_url: str) -> Runtime:
    """A runtime on the test stores whose gateways are never used."""
    runtime = make_runtime(redis_url, db_url)
    runtime.gateway_for = lambda config: object()  # type: ignore[assignment,return-value]
    return runtime


@pytest.fixture
def telegram(fake: FakeBotApi, db_url: str, monkeypatch: pytest.MonkeyPatch) -> FakeBotApi:
    """notify() sends to the fake Telegram only, reading routings from the test database."""
    settings = Settings(
        webhook_url=None,
        telegram_bot_token=TOKEN,
        telegram_chat_ids=[str(OPERATORS)],
        telegram_api_url=fake.url,
        database_url=db_url,
    )
    monkeypatch.setattr(notify, "get_settings", lambda: settings)
    routing.forget()
    yield fake
    routing.forget()


def events_sent(fake: FakeBotApi) -> list[str]:
    """The event names of the messages sent, after every queue drained."""
    assert notify.flush(10)
    return [text.split(" - ")[0] for text in fake.texts()]


@pytest.mark.parametrize(
    ("routes", "event", "expected"),
    [
        (None, "bot.error", True),  # no routing: the channel's global list
        (None, "order.filled", False),
        (BotRoutes(telegram=True), "bot.exit", True),
        (BotRoutes(telegram=False), "bot.error", False),
        (BotRoutes(telegram=("bot.exit",)), "bot.error", False),
        (BotRoutes(telegram=("order.filled",)), "order.filled", True),  # widens the global
        (BotRoutes(telegram=False), "fleet.stalled", True),  # fleet events: global only
        (BotRoutes(email=False), "bot.error", True),  # another channel's choice
    ],
)
def test_wants(routes: BotRoutes | None, event: str, expected: bool) -> None:
    alerts = ("bot.error", "bot.exit", "fleet.stalled")
    assert wants("telegram", event, routes, alerts) is expected


def test_a_bot_routed_to_exits_sends_exits_but_not_errors(
    rt: Runtime, telegram: FakeBotApi
) -> None:
    # Given a bot whose config routes only exits to Telegram, set up by a tick
    config = parse_bot_config(bot_yaml("alpha", extra=EXITS_ONLY), "alpha.yaml")
    lifecycle.start(rt, config)
    tick.bot_setup(rt, "alpha", 1)
    assert routing.known("alpha") == BotRoutes(telegram=("bot.exit",))
    # When the tick notifies an error and an exit
    notify.notify(notify.BOT_ERROR, bot="alpha", error="boom")
    notify.notify(notify.EXIT, bot="alpha", kind="stop_loss", symbol="BTC/USDT")
    # Then only the exit reaches Telegram
    assert events_sent(telegram) == ["bot.exit"]


def test_a_process_that_never_ran_the_bot_reads_its_routing(
    rt: Runtime, telegram: FakeBotApi
) -> None:
    # Given two bots, one routed to exits only, that this process never ticked
    lifecycle.start(rt, parse_bot_config(bot_yaml("alpha", extra=EXITS_ONLY), "alpha.yaml"))
    lifecycle.start(rt, bot_config("beta"))
    assert routing.known("alpha") is None
    # When both are stopped here, as `botengine stop-bot` would
    lifecycle.stop(rt, "alpha")
    lifecycle.stop(rt, "beta")
    # Then the delivery thread looked each routing up: only beta's stop is sent
    assert events_sent(telegram) == ["bot.stopped"]
    assert "beta" in telegram.texts()[0]


def test_equal_routings_share_one_object() -> None:
    routing.remember("a", BotRoutes(telegram=("bot.exit",)))
    routing.remember("b", BotRoutes(telegram=("bot.exit",)))
    routing.remember("c", None)
    assert routing.known("a") is routing.known("b")
    assert routing.known("c") is DEFAULT
    routing.forget()


BAD = [
    ("notify:\n  telegram: [bot.error, bot.typo]\n", "notify.telegram: unknown event 'bot.typo'"),
    ("notify:\n  telegram: [fleet.stalled]\n", "notify.telegram: fleet.stalled is a fleet event"),
    ("notify:\n  sms: true\n", "notify.sms: unknown key"),
    ("notify:\n  email: maybe\n", "notify.email: must be true, false or a list of bot events"),
    ("notify: [bot.error]\n", "notify: Input should be a valid dictionary"),
]


@pytest.mark.parametrize(("extra", "message"), BAD)
def test_bad_routing_names_file_line_and_field(extra: str, message: str) -> None:
    # Given a config whose last line is the bad routing
    text = bot_yaml("alpha", extra=extra)
    line = len(text.splitlines())
    # Then validation names the file, that line and the field, and nothing else is wrong
    with pytest.raises(BotConfigError) as caught:
        parse_bot_config(text, "bots/alpha.yaml")
    [problem] = caught.value.problems
    assert problem.startswith(f"bots/alpha.yaml:{line}: {message}")


def test_a_config_without_notify_or_labels_keeps_its_hash() -> None:
    # A config written before `notify:` and `labels:` existed must not look changed to
    # `start-bot`.
    config = bot_config("alpha")
    data: dict[str, Any] = config.model_dump(mode="json")
    del data["notify"], data["labels"]
    before = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    assert config.config_hash() == before
    routed = parse_bot_config(bot_yaml("alpha", extra=EXITS_ONLY), "alpha.yaml")
    assert routed.config_hash() != before
    labelled = parse_bot_config(bot_yaml("alpha", extra="labels: [x]\n"), "alpha.yaml")
    assert labelled.config_hash() != before
