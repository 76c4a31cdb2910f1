"""Email alerts, delivered to a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import email
import email.policy
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from engine import channels, notify, routing
from engine.channels import EmailChannel
from engine.embedded import free_port
from engine.settings import Settings
from tests.logcapture import json_logs

USER = "alerts"
PASSWORD = "smtp-Pa55word-9876"


class Mailbox:
    """An SMTP server that takes mail for anyone after a login with USER/PASSWORD."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.recipients: list[list[str]] = []
        self.arrived = threading.Event()
        self.port = free_port()
        self.controller = Controller(
            self,
            hostname="127.0.0.1",
            port=self.port,
            authenticator=self._authenticate,
            auth_require_tls=False,  # loopback only; TLS would need a certificate here
        )

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """Keep the message."""
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.recipients.append(list(envelope.rcpt_tos))
        self.arrived.set()
        return "250 OK"

    @staticmethod
    def _authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            USER.encode(),
            PASSWORD.encode(),
        )
        return AuthResult(success=ok, handled=False)  # the server answers 235/535 itself


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    """A running loopback SMTP server."""
    box = Mailbox()
    box.controller.start()
    yield box
    box.controller.stop()


def mail_settings(box: Mailbox, **extra: Any) -> Settings:
    """Settings that mail alerts to the loopback server."""
    values: dict[str, Any] = {
        "webhook_url": None,
        "smtp_host": "127.0.0.1",
        "smtp_port": box.port,
        "smtp_user": USER,
        "smtp_password": PASSWORD,
        "smtp_from": "botengine@example.com",
        "smtp_to": "ops@example.com,oncall@example.com",
        "smtp_starttls": False,
    }
    values.update(extra)
    return Settings(**values)


@pytest.fixture
def mail(mailbox: Mailbox, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Mailbox:
    """notify() mails to the loopback server and sends nothing else; bot routings are
    read from the (empty) test database."""
    settings = mail_settings(mailbox, database_url=db_url)
    monkeypatch.setattr(notify, "get_settings", lambda: settings)
    routing.forget()
    return mailbox


def test_an_error_is_mailed_with_the_event_and_bot(mail: Mailbox) -> None:
    # When a bot error is notified
    assert notify.notify(
        notify.BOT_ERROR, bot="alpha", generation=2, error="OperationalError: bad key"
    )
    # Then one mail reaches both recipients, its subject and body naming event and bot
    assert notify.flush(10)
    assert mail.arrived.wait(5)
    [message] = mail.messages
    assert message["Subject"] == "[botengine] bot.error: alpha"
    assert message["From"] == "botengine@example.com"
    assert message["X-Botengine-Event"] == "bot.error"
    assert mail.recipients == [["ops@example.com", "oncall@example.com"]]
    body = message.get_content()
    assert body.startswith("bot.error - alpha")
    assert "error: OperationalError: bad key" in body


def test_email_sends_only_urgent_events_by_default(mail: Mailbox) -> None:
    # Given a bot without `notify:` routing, known to this process
    routing.remember("alpha", None)
    # When a stop and an exit are notified (informative, not urgent)
    assert notify.notify(notify.BOT_STOPPED, bot="alpha") is False
    assert notify.notify(notify.EXIT, bot="alpha", kind="take_profit") is False
    # And a db outage (urgent)
    assert notify.notify(notify.DB_OUTAGE, pause_after_s=60)
    assert notify.flush(10)
    assert [m["Subject"] for m in mail.messages] == ["[botengine] fleet.db_outage"]


def test_a_refused_login_is_not_retried_and_the_password_never_logged(
    mailbox: Mailbox,
) -> None:
    # Given the server refuses the password the settings hold
    settings = mail_settings(mailbox, smtp_password=PASSWORD + "-wrong")
    [target] = channels.configured(settings)
    sleeps: list[float] = []
    notifier = notify.Notifier(target.channel, sleep=sleeps.append)
    # When an error is delivered
    with json_logs() as lines:
        assert notifier.deliver({"event": "bot.error", "bot": "alpha"}) is False
    # Then it was given up at once, logged without the password
    assert sleeps == []
    [failed] = lines.named("notify.failed")
    assert failed["channel"] == "email"
    assert "SMTP login refused: 535" in failed["error"]
    assert PASSWORD not in lines.getvalue()
    assert "wrong" not in lines.getvalue()
    assert PASSWORD not in repr(target.channel)


def test_an_unreachable_server_is_retried() -> None:
    # Given nothing listens on the SMTP port
    channel = EmailChannel("127.0.0.1", free_port(), "a@example.com", ("b@example.com",))
    sleeps: list[float] = []
    notifier = notify.Notifier(channel, attempts=3, sleep=sleeps.append)
    # Then the mail is tried three times, then given up
    assert notifier.deliver({"event": "bot.error", "bot": "alpha"}) is False
    assert len(sleeps) == 2


def test_starttls_is_never_skipped_silently(mailbox: Mailbox) -> None:
    # Given SMTP_STARTTLS (the default) and a server that offers no TLS
    settings = mail_settings(mailbox, smtp_starttls=True)
    [target] = channels.configured(settings)
    sleeps: list[float] = []
    # Then nothing is sent (the password would travel in clear), and it is not retried
    assert notify.Notifier(target.channel, sleep=sleeps.append).deliver({"event": "x"}) is False
    assert (mailbox.messages, sleeps) == ([], [])
