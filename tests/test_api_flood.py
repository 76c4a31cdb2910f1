"""The API survives unauthenticated floods, as a real uvicorn process.

With no worker answering, 400 concurrent `/healthz` calls once hung the API for good
(each broadcast a ping and waited a second in the thread pool), and six unauthenticated
50 MB bodies grew it by 800 MB (read before the token was checked). Here the same
floods run while an operator keeps calling with the token: every one of their calls
must answer within a second, the API's memory must stay put, and it must be healthy
(and stop on SIGTERM) afterwards.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from engine.embedded import free_port
from tests.support import python_env, wait_for

TOKEN = "flood-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BIG = 50 * 1024 * 1024


@pytest.fixture
def api_proc(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, psutil.Process, Path]]:
    """`serve` in its own process on a loopback port, with a token and no worker."""
    port = free_port()
    env = python_env(
        API_TOKEN=TOKEN,
        DATABASE_URL=f"sqlite:///{tmp_path / 'api.db'}",
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
        CELERY_RESULT_BACKEND=redis_url,
    )
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from engine.api import serve; serve('127.0.0.1', {port})"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/api/v1/bots", headers=AUTH, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        assert wait_for(up, 30), (tmp_path / "api.log").read_text()
        yield base, psutil.Process(proc.pid), tmp_path / "api.log"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def _big_body() -> AsyncIterator[bytes]:
    chunk = b"x" * (1024 * 1024)
    for _ in range(BIG // len(chunk)):
        await asyncio.sleep(0)
        yield chunk


async def _flood(base: str) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
    statuses: dict[str, list[int | str]] = {"healthz": [], "bodies": [], "bad_token": []}
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as flood:
        gate = asyncio.Semaphore(80)

        async def call(kind: str, method: str, path: str, **kwargs: Any) -> None:
            async with gate:
                try:
                    response = await flood.request(method, path, **kwargs)
                    statuses[kind].append(response.status_code)
                except httpx.HTTPError as exc:  # the server cut a body it would not read
                    statuses[kind].append(type(exc).__name__)

        jobs = [call("healthz", "GET", "/healthz") for _ in range(400)]
        jobs += [
            call(
                "bodies",
                "POST",
                "/api/v1/tasks/price-check",
                content=_big_body(),
                headers={"Content-Type": "application/json", "Content-Length": str(BIG)},
            )
            for _ in range(6)
        ]
        jobs += [
            call(
                "bodies",
                "POST",
                "/api/v1/tasks/price-check",
                content=_big_body(),
                headers={"Content-Type": "application/json"},  # chunked, no length
            )
            for _ in range(2)
        ]
        jobs += [
            call("bad_token", "GET", "/api/v1/bots", headers={"Authorization": "Bearer nope"})
            for _ in range(200)
        ]
        started = time.monotonic()
        await asyncio.gather(*jobs)
        return {"statuses": statuses, "flood_s": time.monotonic() - started}


async def _operator(base: str, stop: asyncio.Event) -> list[float]:
    latencies = []
    async with httpx.AsyncClient(base_url=base, timeout=10, headers=AUTH) as client:
        while not stop.is_set():
            t = time.monotonic()
            response = await client.get("/api/v1/bots")
            latencies.append(time.monotonic() - t)
            assert response.status_code == 200
            await asyncio.sleep(0.05)
    return latencies


async def _scenario(base: str) -> dict[str, Any]:
    stop = asyncio.Event()
    operator = asyncio.create_task(_operator(base, stop))
    flood = await _flood(base)
    stop.set()
    return {**flood, "operator": await operator}


def test_unauthenticated_floods_leave_authenticated_calls_fast(
    api_proc: tuple[str, psutil.Process, Path],
) -> None:
    base, proc, log = api_proc
    rss_before = proc.memory_info().rss
    # When healthz, 50 MB bodies and bad tokens flood it, while an operator calls it
    result = asyncio.run(_scenario(base))
    rss_after = proc.memory_info().rss
    latencies = result["operator"]
    statuses = result["statuses"]
    # Then every authenticated call answered, each within a second
    assert latencies, "the operator got no call through"
    assert max(latencies) < 1.0, f"slowest authenticated call {max(latencies):.2f} s"
    # And every flood request was refused or answered cheaply, never read
    assert set(statuses["healthz"]) == {503}  # no worker here: the cached answer
    assert set(statuses["bad_token"]) == {401}
    # (the client mostly sees the connection cut while it still sends: its access log
    # says what the server answered, before reading a byte of it)
    assert all(s in (413, 411) or isinstance(s, str) for s in statuses["bodies"])
    refused = [
        line for line in log.read_text().splitlines() if "POST /api/v1/tasks/price-check" in line
    ]
    assert sum('" 413' in line for line in refused) == 6
    assert sum('" 411' in line for line in refused) == 2
    # And the API's memory stayed put (the bodies were never buffered)
    grew_mb = (rss_after - rss_before) / 1e6
    assert grew_mb < 50, f"the API grew by {grew_mb:.0f} MB"
    # And afterwards it is healthy and answers at once
    assert httpx.get(f"{base}/healthz", timeout=2).json()["status"] in ("fail", "degraded")
    assert httpx.get(f"{base}/api/v1/bots", headers=AUTH, timeout=2).status_code == 200
    # And SIGTERM stops it
    proc.terminate()
    proc.wait(timeout=20)
    print(
        f"flood of {sum(len(v) for v in statuses.values())} requests in "
        f"{result['flood_s']:.1f} s: {len(latencies)} authenticated calls, p50 "
        f"{statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms; "
        f"API RSS {rss_before / 1e6:.0f} -> {rss_after / 1e6:.0f} MB"
    )
