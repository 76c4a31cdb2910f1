"""engine/settings.py: limits between settings that no single field check can see."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from engine.settings import Settings


def test_eta_messages_are_never_held_past_the_visibility_timeout() -> None:
    with pytest.raises(ValidationError, match="ETA_HORIZON_S must be below VISIBILITY_TIMEOUT_S"):
        Settings(eta_horizon_s=600, visibility_timeout_s=600)


def test_the_default_horizon_parks_slots_more_than_5_s_away() -> None:
    assert Settings(_env_file=None).eta_horizon_s == 5
