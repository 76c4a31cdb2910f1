"""Telegram: alerts to the configured chats, and commands through a real lifecycle.

A loopback fake of the Bot API (tests/telegram_fake.py) stands in for Telegram; Redis
and the database are real, and `/stop` runs `engine.lifecycle.stop` as the CLI does.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlmodel import Session

from engine import lifecycle, notify, routing
from engine.botapi import BotApi
from engine.channels import TelegramChannel
from engine.coordination import RedisCoordinator
from engine.embedded import free_port
from engine.errors import ConfigError
from engine.logging import redactor
from engine.models import Bot, BotStatus
from engine.runtime import Runtime, claim_ttl
from engine.settings import Settings
from engine.telegram import LEASE_KEY, OFFSET_KEY, Lease, Poller
from tests.chain_support import bot_config
from tests.logcapture import json_logs
from tests.support import python_env
from tests.telegram_fake import BOT_USERNAME, FakeBotApi, fake_bot_api
from tests.test_api import _runtime

TOKEN = "123456789:AAFake-token-for-tests_0123456789"
OPERATORS = 4242
STRANGER = 666


@pytest.fixture
def fake() -> Iterator[FakeBotApi]:
    """The fake Bot API for TOKEN."""
    with fake_bot_api(TOKEN) as api:
        yield api


def make_runtime(redis_url: str, db_url: str) -> Runtime:
    """A runtime on the test Redis and database; ticks are not sent anywhere."""
    return _runtime(redis_url, db_url, token=None)


@pytest.fixture
def rt(redis_url: str, db_url: str) -> Runtime:
    """A runtime on the test stores."""
    return make_runtime(redis_url, db_url)


@pytest.fixture
def alerts(fake: FakeBotApi, db_url: str, monkeypatch: pytest.MonkeyPatch) -> FakeBotApi:
    """notify() configured with the fake Telegram (two chats) and nothing else."""
    settings = Settings(
        webhook_url=None,
        telegram_bot_token=TOKEN,
        telegram_chat_ids=[str(OPERATORS), "-1001234"],
        telegram_api_url=fake.url,
        database_url=db_url,
    )
    monkeypatch.setattr(notify, "get_settings", lambda: settings)
    routing.forget()
    return fake


def status_of(rt: Runtime, name: str) -> str:
    """The bot's status in the database."""
    with Session(rt.db) as session:
        bot = session.get(Bot, name)
        assert bot is not None
        return str(bot.status)


def poller(rt: Runtime, fake: FakeBotApi, lease: Lease | None = None) -> Poller:
    """A poller for the operators' chat, polling the fake with a short timeout."""
    assert rt.redis is not None
    api = BotApi(fake.url, TOKEN)
    return Poller(rt, api, [str(OPERATORS)], store=rt.redis, poll_timeout_s=1, lease=lease)


# -- alerts ---------------------------------------------------------------------------


def test_an_alert_reaches_every_configured_chat(alerts: FakeBotApi) -> None:
    # When a bot error is notified
    assert notify.notify(notify.BOT_ERROR, bot="alpha", generation=3, error="boom")
    # Then each chat gets one plain-text message naming the event, the bot and the error
    assert alerts.wait_sent(2)
    assert sorted(str(m["chat_id"]) for m in alerts.sent) == ["-1001234", str(OPERATORS)]
    text = alerts.texts(str(OPERATORS))[0]
    assert text.startswith("bot.error - alpha")
    assert "error: boom" in text
    assert "generation: 3" in text


def test_fills_are_off_by_default_and_fleet_events_on(alerts: FakeBotApi) -> None:
    # Given a bot without `notify:` routing, known to this process
    routing.remember("alpha", None)
    # When a fill and a stalled fleet are notified
    filled = notify.notify(notify.ORDER_FILLED, bot="alpha", client_order_id="x")
    stalled = notify.notify(notify.FLEET_STALLED, reasons=["no worker"])
    # Then only the fleet event is sent (TELEGRAM_EVENTS leaves fills out)
    assert (filled, stalled) == (False, True)
    assert alerts.wait_sent(2)
    assert notify.flush(5)
    assert all(t.startswith("fleet.stalled") for t in alerts.texts())


def test_429_and_5xx_are_retried_honouring_retry_after(fake: FakeBotApi) -> None:
    # Given Telegram answers 429 (retry after 3 s), then 502, then takes the message
    fake.fail("sendMessage", 429, retry_after=3)
    fake.fail("sendMessage", 502)
    sleeps: list[float] = []
    channel = TelegramChannel(BotApi(fake.url, TOKEN), str(OPERATORS), fake.url)
    notifier = notify.Notifier(channel, backoff_initial_s=0.1, sleep=sleeps.append)
    # When one event is delivered
    assert notifier.deliver({"event": "bot.exit", "bot": "alpha", "kind": "stop_loss"})
    # Then it arrives once, after a wait of at least the asked 3 s, then a short backoff
    assert len(fake.sent) == 1
    assert [m for m, _ in fake.calls] == ["sendMessage"] * 3
    assert sleeps[0] >= 3
    assert sleeps[1] < 1


def test_a_refusal_is_not_retried(fake: FakeBotApi) -> None:
    # Given Telegram refuses the chat (400: chat not found)
    fake.fail("sendMessage", 400)
    sleeps: list[float] = []
    channel = TelegramChannel(BotApi(fake.url, TOKEN), "12345", fake.url)
    notifier = notify.Notifier(channel, sleep=sleeps.append)
    # Then the event is dropped at once
    assert notifier.deliver({"event": "bot.error", "bot": "alpha"}) is False
    assert (sleeps, notifier.failed) == ([], 1)


def test_the_bot_token_never_reaches_the_logs(
    alerts: FakeBotApi, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a chat Telegram refuses, a dead Bot API, and a poller with refused commands
    alerts.fail("sendMessage", 400)
    lifecycle.start(rt, bot_config("alpha"))
    with json_logs() as lines:
        notify.notify(notify.BOT_ERROR, bot="alpha", error="boom")
        assert notify.flush(10)
        dead = BotApi(f"http://127.0.0.1:{free_port()}", TOKEN)
        dead_chat = notify.Notifier(TelegramChannel(dead, "1", "dead"), attempts=1)
        dead_chat.deliver({"event": "bot.error"})
        alerts.push("/stop alpha", STRANGER)
        alerts.push("/status", OPERATORS)
        poller(rt, alerts).poll_once()
    # Then the failures and the refusal were logged, and nowhere with the token
    output = lines.getvalue()
    assert lines.named("notify.failed")
    assert lines.named("telegram.refused")
    assert TOKEN not in output
    assert TOKEN.split(":")[1] not in output
    # And were a URL with it logged anyway, the redactor would hide it
    assert TOKEN not in redactor.redact_text(f"GET {alerts.url}/bot{TOKEN}/getMe failed")


def test_the_token_and_smtp_password_are_secrets_of_the_settings() -> None:
    settings = Settings(
        telegram_bot_token=TOKEN,
        telegram_chat_ids=["1"],
        smtp_host="127.0.0.1",
        smtp_to=["ops@example.com"],
        smtp_password="smtp-pass-123456",
    )
    assert {TOKEN, "smtp-pass-123456"} <= set(settings.secret_values())
    assert TOKEN not in repr(settings)


# -- commands -------------------------------------------------------------------------


def test_stop_from_an_allowed_chat_stops_the_bot(rt: Runtime, fake: FakeBotApi) -> None:
    # Given a running bot
    lifecycle.start(rt, bot_config("alpha"))
    # When the operators' chat sends /stop alpha
    fake.push("/stop alpha", OPERATORS)
    assert poller(rt, fake).poll_once() == 1
    # Then the database holds it stopped, and the chat is told so
    assert status_of(rt, "alpha") == BotStatus.STOPPED
    assert fake.texts() == ["alpha: stopped (generation 2)"]
    assert str(fake.sent[0]["chat_id"]) == str(OPERATORS)


def test_a_foreign_chat_changes_nothing_and_gets_no_answer(rt: Runtime, fake: FakeBotApi) -> None:
    # Given a running bot
    lifecycle.start(rt, bot_config("alpha"))
    # When a chat not in TELEGRAM_CHAT_IDS sends /stop alpha and /status
    fake.push("/stop alpha", STRANGER, user="mallory")
    fake.push("/status", STRANGER, user="mallory")
    with json_logs() as lines:
        poller(rt, fake).poll_once()
    # Then the bot still runs, nothing was answered, and both attempts were logged
    assert status_of(rt, "alpha") == BotStatus.RUNNING
    assert fake.sent == []
    refused = lines.named("telegram.refused")
    assert [(e["chat"], e["user"], e["command"]) for e in refused] == [
        (str(STRANGER), "mallory", "/stop"),
        (str(STRANGER), "mallory", "/status"),
    ]


def test_status_bot_pause_resume_and_unknown_names(rt: Runtime, fake: FakeBotApi) -> None:
    # Given two running bots, one of which then errs
    lifecycle.start(rt, bot_config("alpha"))
    lifecycle.start(rt, bot_config("beta"))
    with rt.db.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE bots SET status = 'error', last_error = 'OperationalError: bad key'"
            " WHERE name = 'beta'"
        )
    # When the operators ask
    for text in ("/status", "/bot beta", "/pause alpha", "/resume alpha", "/stop ghost", "/bot"):
        fake.push(text, OPERATORS)
    fake.push(f"/bot@{BOT_USERNAME} ghost", OPERATORS)
    fake.push("/status@some_other_bot", OPERATORS)  # for another bot in the group
    p = poller(rt, fake)
    p.username = BOT_USERNAME
    p.poll_once()
    # Then each gets its short answer, in order; the other bot's command none
    status, bot, paused, resumed, ghost, usage, ghost2 = fake.texts()
    assert status.splitlines() == [
        "bots: 2 (stopped 0, running 1, paused 0, error 1)",
        "error: beta: OperationalError: bad key",
    ]
    assert bot.splitlines()[0] == "beta: error (generation 1, every 1s)"
    assert "last error: OperationalError: bad key" in bot
    assert "orders: 0" in bot
    assert paused == "alpha: paused (generation 2)"
    assert resumed == "alpha: resumed (generation 3)"
    assert ghost.startswith("no bot named 'ghost'")
    assert usage == "usage: /bot NAME"
    assert ghost2 == "no bot named 'ghost'"
    assert status_of(rt, "alpha") == BotStatus.RUNNING


def test_a_command_sent_while_no_poller_ran_is_not_run(rt: Runtime, fake: FakeBotApi) -> None:
    # Given a running bot, and a /stop typed an hour ago, when no poller ran
    lifecycle.start(rt, bot_config("alpha"))
    fake.push("/stop alpha", OPERATORS, age_s=3600)
    # When the poller starts and reads it
    poller(rt, fake).poll_once()
    # Then it is answered, not run
    assert status_of(rt, "alpha") == BotStatus.RUNNING
    assert fake.texts() == [
        "not run: this /stop was sent 60 min ago, while no poller ran; send it again if it"
        " still stands"
    ]


def test_redis_down_is_relayed_and_changes_nothing(
    rt: Runtime, fake: FakeBotApi, redis_client: redis.Redis
) -> None:
    # Given a running bot, and a runtime whose Redis is gone
    lifecycle.start(rt, bot_config("alpha"))
    dead = redis_client_for_dead_port()
    broken = Runtime(
        settings=rt.settings,
        redis=dead,
        db=rt.db,
        coordinator=RedisCoordinator(dead, claim_ttl(rt.settings)),
        enqueue=lambda *a: None,
    )
    # When /stop alpha arrives (the poller's own offset store still works)
    fake.push("/stop alpha", OPERATORS)
    Poller(broken, BotApi(fake.url, TOKEN), [str(OPERATORS)], store=redis_client).poll_once()
    # Then the refusal is the answer, and the bot runs on
    assert fake.texts() == ["Redis cannot be reached (ConnectionError); nothing was changed"]
    assert status_of(rt, "alpha") == BotStatus.RUNNING


def redis_client_for_dead_port() -> redis.Redis:
    """A client for a port nothing listens on."""
    return redis.Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )


def test_each_update_is_handled_once_across_a_restart(rt: Runtime, fake: FakeBotApi) -> None:
    # Given a poller that handled /status, then stopped
    fake.push("/status", OPERATORS)
    assert poller(rt, fake).poll_once() == 1
    # When a new poller starts (the fake never forgets an update) and a command follows
    fake.push("/bot alpha", OPERATORS)
    restarted = poller(rt, fake)
    handled = restarted.poll_once()
    # Then it resumes after the first update: each was answered exactly once
    assert handled == 1
    assert len(fake.texts()) == 2
    assert fake.texts()[1] == "no bot named 'alpha'"
    assert fake.calls[-2] == (
        "getUpdates",
        {"timeout": 1, "allowed_updates": ["message"], "offset": fake.updates[1]["update_id"]},
    )
    assert rt.redis is not None
    assert int(rt.redis.get(OFFSET_KEY) or 0) == fake.updates[1]["update_id"] + 1


def test_the_poll_loop_retries_getupdates_failures(rt: Runtime, fake: FakeBotApi) -> None:
    # Given the Bot API fails getUpdates with 502 and then 429, then works
    fake.fail("getUpdates", 502)
    fake.fail("getUpdates", 429, retry_after=20)
    sleeps: list[float] = []
    p = poller(rt, fake)
    p.sleep = sleeps.append
    stop = threading.Event()
    loop = threading.Thread(target=p.run, args=(stop,), daemon=True)
    # When the loop runs and a command arrives
    loop.start()
    fake.push("/status", OPERATORS)
    # Then the command is answered after the retries, with getMe asked once
    assert fake.wait_sent(1)
    stop.set()
    loop.join(5)
    assert not loop.is_alive()
    assert len(sleeps) == 2
    assert sleeps[1] >= 20  # Telegram's retry_after, above the loop's own backoff
    assert p.username == BOT_USERNAME
    assert [m for m, _ in fake.calls].count("getMe") == 1


def test_a_revoked_token_ends_the_poller_with_a_clear_error(rt: Runtime, fake: FakeBotApi) -> None:
    # Given a token the Bot API does not know (401)
    wrong = "987654321:AAWrong-token-0123456789abcdef"
    assert rt.redis is not None
    p = Poller(rt, BotApi(fake.url, wrong), [str(OPERATORS)], store=rt.redis, poll_timeout_s=1)
    # Then the loop stops at once, saying why, without the token
    with pytest.raises(ConfigError) as caught:
        p.run(threading.Event())
    assert "Telegram refused the bot token" in str(caught.value)
    assert wrong not in str(caught.value)


# -- one poller per fleet -------------------------------------------------------------


def test_a_second_poller_cannot_take_a_held_lease(redis_url: str) -> None:
    # Given poller A holds the lease and renews it
    first = Lease(redis.Redis.from_url(redis_url), ttl_s=0.6)
    second = Lease(redis.Redis.from_url(redis_url), ttl_s=0.6)
    assert first.acquire()
    first.keep()
    # When B tries, before and after A's TTL would have run out
    before = second.acquire()
    time.sleep(1.0)
    after = second.acquire()
    # Then B never gets it while A runs, and gets it once A releases it
    assert (before, after) == (False, False)
    assert second.holder() == first.owner
    first.release()
    assert second.acquire()
    assert not first.lost.is_set()


def test_a_poller_that_lost_its_lease_handles_nothing(rt: Runtime, fake: FakeBotApi) -> None:
    # Given poller A's lease was taken over (it stalled past its TTL, say)
    assert rt.redis is not None
    lease = Lease(rt.redis, ttl_s=0.3)
    assert lease.acquire()
    lease.keep()
    rt.redis.set(LEASE_KEY, "other-host:1:token")
    deadline = time.monotonic() + 5
    while not lease.lost.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    # When a command arrives
    fake.push("/status", OPERATORS)
    # Then A leaves it to the new holder
    assert lease.lost.is_set()
    assert poller(rt, fake, lease).poll_once() == 0
    assert fake.sent == []


def test_botengine_telegram_refuses_while_another_poller_runs(
    redis_url: str, db_url: str, fake: FakeBotApi
) -> None:
    # Given another poller holds the fleet's lease
    holder = redis.Redis.from_url(redis_url)
    holder.set(LEASE_KEY, "elsewhere:99:abcd", px=30_000)
    env = python_env(
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
        CELERY_RESULT_BACKEND=redis_url,
        DATABASE_URL=db_url,
        TELEGRAM_BOT_TOKEN=TOKEN,
        TELEGRAM_CHAT_IDS=str(OPERATORS),
        TELEGRAM_API_URL=fake.url,
    )
    # When `botengine telegram` starts
    done = subprocess.run(
        [sys.executable, "-m", "engine", "telegram"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then it refuses, naming the holder, and never polls
    assert done.returncode == 1
    assert "another `botengine telegram` polls for this fleet (elsewhere:99:abcd)" in done.stderr
    assert "--standby" in done.stderr
    assert fake.calls == []
    assert TOKEN not in done.stdout + done.stderr
