"""Many bots in one command: files, directories and globs, `--all` / `--label`, and the
API's batch routes, against a real Redis, database and simulator."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from engine.models import Bot
from tests.chain_support import Engine, bot_yaml
from tests.support import bin_path
from tests.test_api import Api, make_api

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.sqlite_only


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [bin_path("botengine"), *args], env=env, capture_output=True, text=True, timeout=120
    )


def _fleet(tmp_path: Path, count: int = 6) -> Path:
    """`count` bot files in one folder; even ones labelled `even`, all `demo`."""
    folder = tmp_path / "bots"
    folder.mkdir()
    for i in range(count):
        labels = "[demo, even]" if i % 2 == 0 else "[demo]"
        text = bot_yaml(f"b{i}", interval="30s", extra=f"labels: {labels}\n")
        (folder / f"b{i}.yaml").write_text(text)
    return folder


def _statuses(engine: Engine) -> dict[str, str]:
    with Session(engine.rt.db) as session:
        return {b.name: b.status for b in session.exec(select(Bot))}


def test_start_a_directory_then_stop_pause_resume_by_label_glob_and_all(
    engine: Engine, tmp_path: Path
) -> None:
    folder = _fleet(tmp_path)
    # When a whole directory is started in one command
    started = _cli(engine.env, "start-bot", str(folder))
    # Then every bot started, each reported, with a count
    assert started.returncode == 0, started.stderr
    assert "6 bots: 6 started" in started.stdout
    assert set(_statuses(engine).values()) == {"running"}
    # And the listing columns are stored from the config
    assert engine.bot("b0").labels == ",demo,even,"
    assert (engine.bot("b1").strategy, engine.bot("b1").symbol) == ("dca", "BTC/USDT")
    # When the bots labelled `even` are stopped
    stopped = _cli(engine.env, "stop-bot", "--label", "even")
    assert stopped.returncode == 0, stopped.stderr
    assert "3 bots: 3 stopped" in stopped.stdout
    statuses = _statuses(engine)
    assert {n for n, s in statuses.items() if s == "stopped"} == {"b0", "b2", "b4"}
    # When a glob of files pauses what it names (quoted: the CLI expands it)
    paused = _cli(engine.env, "pause-bot", str(folder / "b[13].yaml"))
    assert paused.returncode == 0, paused.stderr
    assert {n for n, s in _statuses(engine).items() if s == "paused"} == {"b1", "b3"}
    # When everything is resumed, stopped bots included (errors are per bot), then started
    resumed = _cli(engine.env, "resume-bot", "--all")
    assert "6 bots:" in resumed.stdout
    assert _cli(engine.env, "start-bot", "--all").returncode == 0
    assert set(_statuses(engine).values()) == {"running"}
    # And stop --all stops them all, and a second time changes nothing
    assert "6 bots: 6 stopped" in _cli(engine.env, "stop-bot", "--all").stdout
    assert "6 bots: 6 unchanged" in _cli(engine.env, "stop-bot", "--all").stdout


def test_one_bad_file_starts_nothing_and_every_problem_is_named(
    engine: Engine, tmp_path: Path
) -> None:
    folder = _fleet(tmp_path, 3)
    (folder / "bad.yaml").write_text(bot_yaml("bad", interval="0s", extra="labels: [Bad!]\n"))
    (folder / "twin.yaml").write_text(bot_yaml("b1"))
    (folder / "ghost.yaml").write_text(bot_yaml("ghost", symbol="NOPE/USDT"))
    # When the directory is validated
    checked = _cli(engine.env, "validate", str(folder))
    # Then each problem names its file, line and field, and the good files are ok
    assert checked.returncode == 1
    assert f"{folder}/bad.yaml:4: check_interval: must be between 1s and 24h" in checked.stderr
    assert f"{folder}/bad.yaml:10: labels.0:" in checked.stderr
    assert f"{folder}/twin.yaml:1: name: 'b1' is also the name in {folder}/b1.yaml" in (
        checked.stderr
    )
    assert f"{folder}/ghost.yaml:3: symbol: NOPE/USDT is not listed on simulator" in (
        checked.stderr
    )
    assert f"{folder}/b0.yaml: ok (b0, dca, BTC/USDT)" in checked.stdout
    # When it is started: nothing starts
    started = _cli(engine.env, "start-bot", str(folder))
    assert started.returncode == 1
    assert _statuses(engine) == {}
    # And a target that names no file is an error that starts nothing either
    missing = _cli(engine.env, "start-bot", str(folder / "b0.yaml"), str(tmp_path / "nope"))
    assert missing.returncode == 1
    assert f"{tmp_path / 'nope'}:1: (file): no such bot file or directory" in missing.stderr
    assert _statuses(engine) == {}
    # And files with a selector, or nothing at all, are usage errors
    assert _cli(engine.env, "start-bot", str(folder), "--all").returncode == 2
    assert _cli(engine.env, "stop-bot").returncode == 2


def test_the_readmes_commands_on_the_shipped_bots_directory() -> None:
    # When the example folder is validated as the README shows (its JSON schema beside it)
    for target in ("bots/", "bots/*"):
        checked = subprocess.run(
            [bin_path("botengine"), "validate", target, "--offline"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        # Then every example bot is ok and the schema is not taken for a bot
        assert checked.returncode == 0, checked.stderr
        assert checked.stdout.count(": ok (") == len(list((ROOT / "bots").glob("*.yaml")))
        assert "schema" not in checked.stdout + checked.stderr


def test_an_unreachable_exchange_is_one_warning_not_one_per_bot(
    engine: Engine, tmp_path: Path
) -> None:
    # Given ten bots on an exchange that does not answer
    folder = _fleet(tmp_path, 10)
    env = dict(engine.env, SIMULATOR_URL="http://127.0.0.1:1")
    # When they are validated
    checked = _cli(env, "validate", str(folder))
    # Then one warning says so and covers the others; the files are valid
    assert checked.returncode == 0, checked.stderr
    warnings = [line for line in checked.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, checked.stderr
    assert "9 more bots" in warnings[0]


@pytest.fixture
def api(redis_url: str, db_url: str) -> Iterator[Api]:
    """The API on a real Redis and a migrated database (tests/test_api.py)."""
    with make_api(redis_url, db_url) as made:
        yield made


def test_batch_routes_select_by_name_label_or_all(api: Api) -> None:
    for i in range(4):
        labels = "[even]" if i % 2 == 0 else "[odd]"
        assert api.put(f"q{i}", bot_yaml(f"q{i}", extra=f"labels: {labels}\n")).status_code == 201
    # When a batch start names all, and a batch stop one label
    started = api.post("/batch/start", json={"all": True})
    assert started.status_code == 200, started.text
    assert started.json()["counts"] == {"started": 4}
    stopped = api.post("/batch/stop", json={"labels": ["even"]}).json()
    # Then each outcome is listed, and only the labelled bots stopped
    assert [r["bot"] for r in stopped["results"]] == ["q0", "q2"]
    assert all(r["change"] == "stopped" and r["error"] is None for r in stopped["results"])
    listed: list[dict[str, Any]] = api.get("/bots").json()
    assert {b["name"]: b["status"] for b in listed} == {
        "q0": "stopped",
        "q1": "running",
        "q2": "stopped",
        "q3": "running",
    }
    # When a batch names an unknown bot: 404 and nothing done
    missing = api.post("/batch/pause", json={"bots": ["q1", "nobody"]})
    assert missing.status_code == 404
    assert "nobody" in json.dumps(missing.json())
    assert {b["name"]: b["status"] for b in api.get("/bots").json()}["q1"] == "running"
    # And malformed selections are 422 naming the field
    for body in ({}, {"all": True, "bots": ["q1"]}, {"labels": ["Bad!"]}, {"colour": 1}):
        assert api.post("/batch/stop", json=body).status_code == 422, body
    assert api.post("/batch/explode", json={"all": True}).status_code == 422
