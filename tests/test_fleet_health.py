"""Workers started as users start them, and a fleet that stops ticking is reported.

`celery -A engine.celery_app worker -l info` (Celery's docs, the app's docstring) must
run ticks; a worker on the wrong queue must make healthz, metrics, logs, the webhook and
`botengine status` say that the fleet is not ticking, within three intervals.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from engine import lifecycle, notify
from engine.api import create_app
from engine.api.deps import get_rt
from engine.settings import Settings
from engine.supervise import console_script
from tests.chain_support import Engine, bot_config
from tests.support import bin_path, wait_for
from tests.test_notify import Hook

pytestmark = pytest.mark.sqlite_only
TOKEN = "fleet-health-token-0123456789"


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A webhook receiver on a free loopback port, which this process (the API under
    test) notifies too: whichever process sees a change first reports it."""
    h = Hook()
    monkeypatch.setattr(notify, "get_settings", lambda: Settings(webhook_url=h.url))
    yield h
    h.server.shutdown()
    h.server.server_close()


def _api(engine: Engine) -> TestClient:
    settings = engine.rt.settings.model_copy(update={"api_token": SecretStr(TOKEN)})
    rt = dataclasses.replace(engine.rt, settings=settings)
    app = create_app(migrate=False)
    app.dependency_overrides[get_rt] = lambda: rt
    return TestClient(app)


def test_the_plain_celery_worker_command_runs_ticks(engine: Engine, tmp_path: Path) -> None:
    # Given a bot, and a worker started exactly as Celery's docs say: no -Q, no --pool
    lifecycle.start(engine.rt, bot_config("plain", interval="1s"))
    worker = engine.procs.spawn(
        "plain-worker",
        [console_script("celery"), "-A", "engine.celery_app", "worker", "-l", "info"],
        role="worker",
    )
    engine.procs.wait_ready([worker], "worker.ready")
    # Then the bot ticks, and the worker says it consumes both queues with its real pool
    assert wait_for(lambda: engine.bot("plain").ticks_ok >= 2, 30)
    ready = next(
        r for r in engine.procs.log_records("plain-worker") if r.get("event") == "worker.ready"
    )
    assert ready["queues"] == ["maintenance", "ticks"]
    assert ready["pool"] == "prefork"
    lifecycle.stop(engine.rt, "plain")


def test_a_worker_on_the_wrong_queue_is_reported_within_three_intervals(
    engine: Engine, hook: Hook
) -> None:
    # Given a worker (and beat) that consume only the maintenance queue
    env = {"WEBHOOK_URL": hook.url}
    wrong = engine.procs.worker("wrong", queues="maintenance", extra_env=env)
    engine.procs.beat()
    engine.procs.wait_ready([wrong], "worker.ready")
    api = _api(engine)
    assert wait_for(lambda: api.get("/healthz").status_code == 200, 10)
    # When bots are started with a 2 s interval
    interval = 2.0
    names = [f"wq{i}" for i in range(3)]
    for name in names:
        lifecycle.start(engine.rt, bot_config(name, interval="2s"))
    started = time.monotonic()
    # Then healthz turns degraded, naming the reason, within three intervals
    assert wait_for(lambda: api.get("/healthz").status_code == 503, 3 * interval)
    reported_after = time.monotonic() - started
    public = api.get("/healthz").json()
    assert public["status"] == "degraded"
    assert public["reasons"] == ["no_tick_consumer"]
    assert "consumers" not in str(public)  # no detail without the token
    full = api.get("/healthz", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert "no live worker consumes the 'ticks' queue" in full["checks"]["fleet"]["error"]
    assert full["checks"]["worker"]["consumers"] == {"maintenance": 1}
    # And the metrics say it
    scrape = api.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert "botengine_fleet_ok 0.0" in scrape
    assert 'botengine_queue_consumers{queue="ticks"} 0.0' in scrape
    # And `botengine status` warns
    status = subprocess.run(
        [bin_path("botengine"), "status"],
        env=engine.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert status.returncode == 0
    assert "no live worker consumes the 'ticks' queue" in status.stderr
    # And one fleet.stalled line was logged and one notification sent, not one per pass
    assert hook.wait(1, timeout=10)
    time.sleep(3)  # several more reconciler passes (every 1 s here)
    stalled = [r for r in engine.procs.log_records("wrong") if r.get("event") == "fleet.stalled"]
    assert len(stalled) == 1
    assert [e["event"] for e in hook.received] == ["fleet.stalled"]
    assert hook.received[0]["running"] == 3
    # When a worker that reads the ticks starts
    engine.procs.worker("right", queues="ticks", extra_env=env)
    # Then the bots tick, healthz recovers, and the recovery is reported once
    assert wait_for(lambda: all(engine.bot(n).ticks_ok >= 1 for n in names), 30)
    assert wait_for(lambda: api.get("/healthz").status_code == 200, 15)
    assert hook.wait(2, timeout=10)
    assert [e["event"] for e in hook.received] == ["fleet.stalled", "fleet.recovered"]
    for name in names:
        lifecycle.stop(engine.rt, name)
    print(f"wrong-queue fleet reported {reported_after:.1f} s after start (interval 2 s)")


def test_start_bot_says_when_no_worker_reads_the_ticks(engine: Engine, tmp_path: Path) -> None:
    # Given no worker at all
    bot_file = tmp_path / "lonely.yaml"
    bot_file.write_text(bot_config("lonely").model_dump_json())
    # When a bot is started
    done = subprocess.run(
        [bin_path("botengine"), "start-bot", str(bot_file)],
        env=engine.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Then it starts, and says it will not tick until a worker consumes the ticks
    assert done.returncode == 0, done.stderr
    assert "lonely: started" in done.stdout
    assert "no live worker consumes the 'ticks' queue" in done.stderr
    lifecycle.stop(engine.rt, "lonely")
