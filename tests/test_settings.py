"""engine/settings.py: limits between settings, the allow-lists, and the token rules."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from engine.logging import SecretRedactor
from engine.settings import Settings


def test_eta_messages_are_never_held_past_the_visibility_timeout() -> None:
    with pytest.raises(ValidationError, match="ETA_HORIZON_S must be below VISIBILITY_TIMEOUT_S"):
        Settings(eta_horizon_s=600, visibility_timeout_s=600)


def test_the_default_horizon_parks_slots_more_than_5_s_away() -> None:
    assert Settings(_env_file=None).eta_horizon_s == 5


def test_a_short_api_token_is_refused_naming_the_variable() -> None:
    with pytest.raises(ValidationError, match="API_TOKEN must be at least 16 characters"):
        Settings(_env_file=None, api_token=SecretStr("x"))
    assert Settings(_env_file=None, api_token=SecretStr("t" * 16)).api_token is not None


def test_allow_lists_are_comma_separated_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the allow-lists as an operator writes them in .env
    monkeypatch.setenv("ALLOWED_BASE_URLS", "https://testnet.binance.vision, 10.0.0.0/8")
    monkeypatch.setenv("ALLOWED_EXCHANGE_OPTIONS", "headers,options.hostname")
    settings = Settings(_env_file=None)
    assert settings.allowed_base_urls == ["https://testnet.binance.vision", "10.0.0.0/8"]
    policy = settings.outbound_policy()
    assert policy.base_url_problem("https://testnet.binance.vision/api") is None
    assert policy.base_url_problem("http://127.0.0.1:8765") is not None  # replaced, not added
    assert policy.extra_options == {"headers", "options.hostname"}
    # And an entry that could be misread is refused at start
    monkeypatch.setenv("ALLOWED_BASE_URLS", "http://user@127.0.0.1")
    with pytest.raises(ValidationError, match="user info"):
        Settings(_env_file=None)


def test_the_default_allow_list_is_loopback_only() -> None:
    policy = Settings(_env_file=None).outbound_policy()
    for url in ("http://127.0.0.1:8765", "http://127.9.9.9", "http://[::1]:1", "http://localhost"):
        assert policy.base_url_problem(url) is None, url
    for url in ("http://10.0.0.1", "http://169.254.169.254", "http://localhost.example"):
        assert policy.base_url_problem(url) is not None, url


def test_every_registered_secret_is_redacted_whatever_its_length() -> None:
    # Given secrets of every length, the simulator's default among them
    redactor = SecretRedactor()
    settings = Settings(_env_file=None, database_url="postgresql://u:pw@db/x")
    redactor.add(*settings.secret_values(), "abc")
    # Then each is hidden where it stands, and short ones do not eat other words
    line = "signed with simulator-secret; pw=pw; token abc; abcdef and crab stay"
    assert redactor.redact_text(line) == "signed with ***; ***=***; token ***; abcdef and crab stay"
