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


def test_run_ticks_in_the_foreground_without_redis_and_stops_on_ctrl_c(
    tmp_path: Path, simulator: Any
) -> None:
    # Given no Redis or broker at all, and a bot file
    bot = tmp_path / "solo.yaml"
    bot.write_text(bot_yaml("solo", interval="1s", params="quote_amount: 20"))
    db_url = f"sqlite:///{tmp_path / 'solo.db'}"
    env = python_env(
        REDIS_URL="redis://127.0.0.1:1/0",
        CELERY_BROKER_URL="redis://127.0.0.1:1/0",
        DATABASE_URL=db_url,
        SIMULATOR_URL=simulator.url,
    )
    # When it runs for a few seconds and gets Ctrl-C
    proc = subprocess.Popen(
        [bin_path("botengine"), "run", str(bot)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    # Then it stopped cleanly, having ticked every second with the same tick function
    assert proc.returncode == 0, stderr
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
