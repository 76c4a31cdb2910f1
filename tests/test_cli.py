"""The `botengine` command line as an operator uses it, in subprocesses."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.chain_support import Engine, bot_yaml
from tests.support import bin_path, wait_for

pytestmark = pytest.mark.slow


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [bin_path("botengine"), *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.sqlite_only
def test_start_status_ticks_stop_through_the_cli(engine: Engine, tmp_path: Path) -> None:
    engine.procs.worker("w1")
    bot = tmp_path / "cli-bot.yaml"
    bot.write_text(bot_yaml("cli-bot", interval="1s"))
    # When an operator starts a bot from its file
    started = _cli(engine.env, "start-bot", str(bot))
    assert started.returncode == 0, started.stderr
    assert "cli-bot: started (generation 1)" in started.stdout
    # Then starting it again changes nothing
    assert "unchanged" in _cli(engine.env, "start-bot", str(bot)).stdout
    assert wait_for(lambda: engine.bot("cli-bot").ticks_ok >= 3, 20)
    # And status shows it, as a table and as JSON
    table = _cli(engine.env, "status")
    assert "cli-bot" in table.stdout
    assert "running" in table.stdout
    rows = json.loads(_cli(engine.env, "status", "--json").stdout)
    assert rows[0]["name"] == "cli-bot"
    assert rows[0]["status"] == "running"
    assert rows[0]["ticks_ok"] >= 3
    # And ticks lists recorded ticks with ISO 8601 UTC times and lateness
    ticks = json.loads(_cli(engine.env, "ticks", "cli-bot", "--json", "--limit", "2").stdout)
    assert len(ticks) == 2
    for tick in ticks:
        assert {"slot", "due_at", "started_at", "finished_at", "lateness_ms", "outcome"} <= set(
            tick
        )
        assert tick["due_at"].endswith("+00:00")
    # And the bot stops by file name too, once
    stopped = _cli(engine.env, "stop-bot", str(bot))
    assert "cli-bot: stopped" in stopped.stdout
    assert "unchanged" in _cli(engine.env, "stop-bot", "cli-bot").stdout


@pytest.mark.sqlite_only
def test_cli_errors_are_one_clear_line(engine: Engine, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(bot_yaml("bad", interval="0s"))
    # A malformed file: file, line and field; nothing started
    result = _cli(engine.env, "start-bot", str(bad))
    assert result.returncode == 1
    assert f"{bad}:4: check_interval: must be between 1s and 24h" in result.stderr
    assert json.loads(_cli(engine.env, "status", "--json").stdout) == []
    # An unknown bot
    result = _cli(engine.env, "stop-bot", "nobody")
    assert result.returncode == 1
    assert "no bot named 'nobody'" in result.stderr
    # No broker: one line naming the alternatives
    good = tmp_path / "good.yaml"
    good.write_text(bot_yaml("good"))
    env = dict(
        engine.env, CELERY_BROKER_URL="redis://127.0.0.1:1/0", REDIS_URL="redis://127.0.0.1:1/0"
    )
    result = _cli(env, "start-bot", str(good))
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "make demo" in result.stderr
    assert "botengine run" in result.stderr
    # validate reports every file
    result = _cli(engine.env, "validate", str(good), str(bad))
    assert result.returncode == 1
    assert "good.yaml: ok" in result.stdout
    assert "check_interval" in result.stderr


@pytest.mark.sqlite_only
def test_validate_and_start_bot_ask_the_exchange_for_the_symbol(
    engine: Engine, tmp_path: Path
) -> None:
    # Given a valid file whose symbol the exchange (the simulator) does not list
    bad = tmp_path / "typo.yaml"
    bad.write_text(bot_yaml("typo", symbol="BTC/USDX"))
    # When it is validated, then started
    validated = _cli(engine.env, "validate", str(bad))
    started = _cli(engine.env, "start-bot", str(bad))
    # Then both refuse, naming file, line and field, and nothing was created
    for done in (validated, started):
        assert done.returncode == 1
        assert f"{bad}:3: symbol: BTC/USDX is not listed on simulator" in done.stderr
    assert "typo" not in _cli(engine.env, "status", "--json").stdout
    # And --offline skips that question
    assert _cli(engine.env, "validate", "--offline", str(bad)).returncode == 0
    # And an exchange that cannot be reached is a warning, not a refusal
    away = {**engine.env, "SIMULATOR_URL": "http://127.0.0.1:1"}
    unreachable = _cli(away, "validate", str(bad))
    assert unreachable.returncode == 0
    assert "warning:" in unreachable.stderr
    assert "could not check" in unreachable.stderr
