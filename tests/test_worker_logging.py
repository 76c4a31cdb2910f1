"""A real worker subprocess answers `botengine ping`, and every line it prints is JSON."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from engine.embedded import EmbeddedRedis
from engine.supervise import ProcessGroup
from tests.support import bin_path, python_env

SECRET = "s3cret-redis-pass-4242"
TOKEN = "api-token-0123456789"


@pytest.fixture
def private_redis() -> EmbeddedRedis:
    with EmbeddedRedis(password=SECRET) as server:
        yield server


def test_ping_through_real_worker_logs_only_json_without_secrets(
    private_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    # Given a worker whose broker URL carries a password and whose env holds an API token
    env = python_env(
        CELERY_BROKER_URL=private_redis.url,
        CELERY_RESULT_BACKEND=private_redis.url,
        REDIS_URL=private_redis.url,
        API_TOKEN=TOKEN,
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite'}",
    )
    procs = ProcessGroup(env, tmp_path)
    procs.spawn(
        "worker",
        [
            bin_path("celery"),
            "-A",
            "engine.celery_app",
            "worker",
            "-l",
            "debug",
            "-Q",
            "ticks,maintenance",
            "--pool",
            "threads",
            "-c",
            "2",
            "-n",
            "test@%h",
        ],
    )
    log = procs.log_path("worker")
    try:
        # When the CLI sends ping
        answer = None
        deadline = time.monotonic() + 60
        while answer is None and time.monotonic() < deadline:
            result = subprocess.run(
                [bin_path("botengine"), "ping", "--timeout", "5"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if result.returncode == 0:
                answer = json.loads(result.stdout)
        # Then the worker answers with its node name and time
        assert answer is not None, result.stderr
        assert answer["hostname"].startswith("test@")
        assert answer["time"].endswith("+00:00")
    finally:
        procs.stop_all()
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert len(lines) > 5
    # And every line parses as a JSON object with the log schema's fields
    records = []
    for line in lines:
        record = json.loads(line)
        assert {"timestamp", "level", "event", "logger"} <= record.keys(), line
        records.append(record)
    events = {r["event"] for r in records}
    assert "worker.ready" in events
    assert any("succeeded" in e for e in events)
    # And no secret appears anywhere, not even at debug level
    text = log.read_text()
    assert SECRET not in text
    assert TOKEN not in text
    # And the task's own lines carry its id and name
    task_lines = [r for r in records if r.get("task_name") == "engine.ping"]
    assert task_lines
    assert all(r.get("task_id") for r in task_lines)


def test_ping_without_broker_says_so_in_one_line(tmp_path: Path) -> None:
    # Given no Redis at the configured URL
    env = python_env(CELERY_BROKER_URL="redis://127.0.0.1:1/0", REDIS_URL="redis://127.0.0.1:1/0")
    # When ping is sent
    result = subprocess.run(
        [bin_path("botengine"), "ping"], env=env, capture_output=True, text=True, timeout=60
    )
    # Then it fails with one line naming the alternatives
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "make demo" in result.stderr
