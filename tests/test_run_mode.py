"""`botengine run FILE`: one bot in the foreground, no broker and no Redis."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from engine.db import engine_for
from engine.models import Bot, Tick
from tests.chain_support import bot_yaml
from tests.support import bin_path, python_env


def _run(
    tmp_path: Path, simulator: Any, interval: str, seconds: float, **env: str
) -> tuple[str, str, str]:
    """`botengine run` a DCA bot for `seconds`, then Ctrl-C; (db url, stdout, stderr)."""
    bot = tmp_path / "solo.yaml"
    bot.write_text(bot_yaml("solo", interval=interval, params="quote_amount: 20"))
    db_url = f"sqlite:///{tmp_path / 'solo.db'}"
    proc = subprocess.Popen(
        [bin_path("botengine"), "run", str(bot)],
        env=python_env(
            REDIS_URL="redis://127.0.0.1:1/0",
            CELERY_BROKER_URL="redis://127.0.0.1:1/0",
            DATABASE_URL=db_url,
            SIMULATOR_URL=simulator.url,
            **env,
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(seconds)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    return db_url, stdout, stderr


def test_run_ticks_in_the_foreground_without_redis_and_stops_on_ctrl_c(
    tmp_path: Path, simulator: Any
) -> None:
    # Given no Redis or broker at all, and a bot file
    # When it runs for a few seconds and gets Ctrl-C
    db_url, stdout, stderr = _run(tmp_path, simulator, "1s", 5)
    # Then it stopped cleanly, having ticked every second with the same tick function
    assert "solo: stopped after" in stderr
    with Session(engine_for(db_url)) as session:
        ticks = list(session.exec(select(Tick).where(Tick.bot == "solo")))
        row = session.get(Bot, "solo")
    assert len(ticks) >= 3
    assert {t.outcome for t in ticks} == {"ok"}
    assert [t.slot for t in ticks] == list(range(len(ticks)))
    assert row is not None
    assert row.status == "stopped"
    assert row.orders_sent >= 3
    assert '"event": "tick.finished"' in stdout


def test_run_keeps_ticking_a_bot_whose_interval_is_beyond_the_eta_horizon(
    tmp_path: Path, simulator: Any
) -> None:
    # Given a bot whose next slot is always further away than the ETA horizon, so each
    # tick parks its successor (no dispatcher runs in this mode)
    db_url, _, stderr = _run(tmp_path, simulator, "3s", 9, ETA_HORIZON_S="2")
    # Then the loop still ran the parked slots, one after the other
    with Session(engine_for(db_url)) as session:
        slots = [t.slot for t in session.exec(select(Tick).where(Tick.bot == "solo"))]
    assert len(slots) >= 2, stderr
    assert slots == list(range(len(slots)))
