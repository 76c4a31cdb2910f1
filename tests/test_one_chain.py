"""One chain per bot, whatever the operator types: `run` beside the fleet, stale mirrors,
stop of a chain the database no longer knows as running."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import col

from engine import lifecycle
from engine.coordination import Mirror
from engine.db import session_scope
from engine.lifecycle import Change
from engine.models import Bot
from tests.chain_support import Engine, bot_config, bot_yaml
from tests.support import bin_path, wait_for

pytestmark = pytest.mark.sqlite_only


def _cli(engine: Engine, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [bin_path("botengine"), *args],
        env=engine.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _fleet_worker_generations(engine: Engine, worker: str, bot: str) -> set[int]:
    return {
        int(r["generation"])
        for r in engine.procs.log_records(worker)
        if r.get("event") == "tick.started" and r.get("bot") == bot
    }


def test_run_beside_the_fleet_refuses_then_takes_over_leaving_one_chain(
    engine: Engine, tmp_path: Path
) -> None:
    # Given the fleet (a worker and beat) running bot "twin" every second
    engine.procs.worker("w1")
    engine.procs.beat()
    bot_file = tmp_path / "twin.yaml"
    bot_file.write_text(bot_yaml("twin", interval="1s"))
    started = _cli(engine, "start-bot", str(bot_file))
    assert started.returncode == 0, started.stderr
    assert wait_for(lambda: engine.bot("twin").ticks_ok >= 2, 30)
    fleet_gen = engine.bot("twin").generation

    # When the operator types `botengine run` on it
    refused = _cli(engine, "run", str(bot_file), timeout=30)
    # Then it refuses, says why and how, and the fleet's chain is untouched
    assert refused.returncode == 1
    assert "running on the fleet's workers" in refused.stderr
    assert "--takeover" in refused.stderr
    assert engine.bot("twin").generation == fleet_gen
    assert engine.bot("twin").status == "running"

    # When they take it over explicitly, run it for a while, then Ctrl-C
    run = subprocess.Popen(
        [bin_path("botengine"), "run", "--takeover", str(bot_file)],
        env=engine.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert wait_for(lambda: (engine.bot("twin").runner or "").startswith("foreground:"), 30)
    fg_gen = engine.bot("twin").generation
    # (longer than the reconciler's grace: a restored mirror would have shown by now)
    assert wait_for(lambda: sum(t.generation == fg_gen for t in engine.ticks("twin")) >= 8, 30)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=30)
    assert run.returncode == 0, stderr

    # Then the fleet never ticked the foreground's generation, and no slot ran twice
    assert _fleet_worker_generations(engine, "w1", "twin") <= {fleet_gen}
    records = [r.get("event") for r in engine.procs.log_records("w1")]
    assert "tick.duplicate_record" not in records
    slots = [(t.generation, t.slot) for t in engine.ticks("twin")]
    assert len(slots) == len(set(slots))
    # And once `run` ended, nothing ticks or trades any more: no leftover chain
    assert engine.bot("twin").status == "stopped"
    ticks, orders = len(engine.ticks("twin")), len(engine.orders("twin"))
    time.sleep(5)  # several reconciler passes and a grace period (FAST settings)
    assert len(engine.ticks("twin")) == ticks
    assert len(engine.orders("twin")) == orders
    # And stop-bot has nothing left to stop, and start-bot hands it back to the fleet
    stopped = _cli(engine, "stop-bot", "twin")
    assert stopped.returncode == 0
    assert "unchanged" in stopped.stdout
    again = _cli(engine, "start-bot", str(bot_file))
    assert again.returncode == 0, again.stderr
    gen = engine.bot("twin").generation
    assert wait_for(lambda: any(t.generation == gen for t in engine.ticks("twin")), 20)
    lifecycle.stop(engine.rt, "twin")


def test_stop_bot_ends_a_foreground_run_from_another_process(
    engine: Engine, tmp_path: Path
) -> None:
    # Given a bot run in the foreground (no fleet involved)
    bot_file = tmp_path / "solo.yaml"
    bot_file.write_text(bot_yaml("solo", interval="1s"))
    run = subprocess.Popen(
        [bin_path("botengine"), "run", str(bot_file)],
        env=engine.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert wait_for(lambda: len(engine.ticks("solo")) >= 2, 30)
    # When start-bot is tried on it, it refuses: the foreground process runs it
    refused = _cli(engine, "start-bot", str(bot_file))
    assert refused.returncode == 1
    assert "in the foreground" in refused.stderr
    # When stop-bot is run from another terminal
    stopped = _cli(engine, "stop-bot", "solo")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped" in stopped.stdout
    orders = len(engine.orders("solo"))
    # Then the foreground run ends by itself, and sends nothing more
    _, stderr = run.communicate(timeout=30)
    assert run.returncode == 0, stderr
    assert len(engine.orders("solo")) == orders
    assert engine.bot("solo").status == "stopped"


def test_a_chain_the_database_no_longer_runs_is_dropped_and_fenced(engine: Engine) -> None:
    # Given the fleet running a bot
    engine.procs.worker("w1")
    engine.procs.beat()
    lifecycle.start(engine.rt, bot_config("ghost", interval="1s"))
    assert wait_for(lambda: engine.bot("ghost").ticks_ok >= 2, 30)
    gen = engine.bot("ghost").generation
    # When the database stops it behind Redis's back (a stop written while Redis was
    # unreachable, a restored snapshot: Redis still mirrors it as running)
    with session_scope(engine.rt.db) as session:
        session.execute(
            update(Bot).where(col(Bot.name) == "ghost").values(status="stopped", generation=gen + 1)
        )
    # Then its chain ends at the next tick's database guard, and Redis is told
    assert wait_for(lambda: engine.rt.coordinator.generation("ghost") is None, 15)
    ticks, orders = len(engine.ticks("ghost")), len(engine.orders("ghost"))
    time.sleep(6)
    assert len(engine.ticks("ghost")) == ticks
    assert len(engine.orders("ghost")) == orders
    events = [r for r in engine.procs.log_records("w1") if r.get("event") == "tick.dropped"]
    assert any(r.get("reason") == "superseded" for r in events)


def test_stop_stops_a_leftover_chain_that_redis_still_runs(engine: Engine) -> None:
    # Given a bot the database holds as stopped, but whose mirror Redis still runs
    engine.procs.worker("w1")
    lifecycle.start(engine.rt, bot_config("left", interval="1s"))
    assert wait_for(lambda: engine.bot("left").ticks_ok >= 1, 30)
    lifecycle.stop(engine.rt, "left")
    row = engine.bot("left")
    engine.rt.coordinator.publish(
        Mirror("running", row.generation, time.time(), 1.0, 0), "left", time.time(), False
    )
    # When stop is asked again
    result = lifecycle.stop(engine.rt, "left")
    # Then it does not answer "unchanged": it stopped that chain too
    assert result.change is Change.STOPPED
    assert engine.rt.coordinator.generation("left") is None


def test_run_refuses_a_bot_the_fleet_holds_without_redis_for_a_takeover(
    engine: Engine, tmp_path: Path, simulator: Any
) -> None:
    # Given a bot the fleet runs, and a `run --takeover` that cannot reach Redis
    lifecycle.start(engine.rt, bot_config("nored", interval="5s"))
    bot_file = tmp_path / "nored.yaml"
    bot_file.write_text(bot_yaml("nored", interval="5s"))
    env = {**engine.env, "REDIS_URL": "redis://127.0.0.1:1/0"}
    env["CELERY_BROKER_URL"] = env["REDIS_URL"]
    done = subprocess.run(
        [bin_path("botengine"), "run", "--takeover", str(bot_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Then it refuses (it cannot fence the fleet's chain), and changed nothing
    assert done.returncode == 1
    assert "nothing was changed" in done.stderr
    assert engine.bot("nored").status == "running"
    assert engine.bot("nored").runner is None
    lifecycle.stop(engine.rt, "nored")
