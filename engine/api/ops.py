"""Operations endpoints: `/healthz` (no auth), `/metrics`, the OpenAPI document.

Health asks no worker anything: worker processes announce themselves (and the queues
they consume) in Redis with their heartbeats, so a check costs two Redis round trips
and two SQL statements instead of a broadcast that waits for answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from engine import metrics
from engine.api.deps import RtDep, app_runtime, require_token
from engine.api.errors import ApiError
from engine.api.gate import token_ok
from engine.health import FleetHealth, fleet_health, watch
from engine.logging import redactor
from engine.runtime import Runtime

health_router = APIRouter(tags=["operations"])
router = APIRouter(tags=["operations"], dependencies=[Depends(require_token)])
HEALTH_TTL_S = 2.0
"""How long one health report serves every /healthz request."""


def _check(probe: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        detail = probe() or {}
        ok, error = True, None
    except Exception as exc:  # noqa: BLE001 - a failing dependency is the answer, not an error
        # Unauthenticated endpoint: no URL passwords or known secrets, and short.
        detail, ok, error = {}, False, redactor.redact_text(f"{type(exc).__name__}: {exc}")[:300]
    return {
        "ok": ok,
        "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        "error": error,
        **detail,
    }


def _redis(rt: Runtime) -> dict[str, Any] | None:
    if rt.redis is None:
        raise ConnectionError("this runtime has no Redis")
    rt.redis.ping()
    return None


def _database(rt: Runtime) -> dict[str, Any] | None:
    with rt.db.connect() as conn:
        conn.execute(text("SELECT 1"))
    return None


def _workers(health: FleetHealth) -> dict[str, Any]:
    if not health.workers:
        raise ConnectionError("no worker process has a live heartbeat")
    return {"processes": health.workers, "consumers": health.consumers}


def _fleet(health: FleetHealth) -> dict[str, Any]:
    if health.reasons:
        raise RuntimeError("; ".join(health.reasons.values()))
    return {"running": health.running, "stalled": health.stalled}


def report(rt: Runtime) -> dict[str, Any]:
    """Every check, in full: what an operator with the token sees (runs in a thread)."""
    checks = {
        "redis": _check(lambda: _redis(rt)),
        "database": _check(lambda: _database(rt)),
    }
    fleet: FleetHealth | None = None
    try:
        fleet = fleet_health(rt)
        watch(rt.redis, fleet)
    except Exception as exc:  # noqa: BLE001 - the stores' own checks say which failed
        error = redactor.redact_text(f"{type(exc).__name__}: {exc}")[:300]
        checks["worker"] = checks["fleet"] = {"ok": False, "latency_ms": 0.0, "error": error}
    if fleet is not None:
        checks["worker"] = _check(lambda: _workers(fleet))
        checks["fleet"] = _check(lambda: _fleet(fleet))
    status = "ok"
    if not all(checks[name]["ok"] for name in ("redis", "database", "worker")):
        status = "fail"
    elif not checks["fleet"]["ok"]:
        status = "degraded"
    return {
        "status": status,
        "checks": checks,
        "reasons": sorted(fleet.reasons) if fleet is not None else [],
    }


def public(full: dict[str, Any]) -> dict[str, Any]:
    """What anyone may see: the verdict and which checks failed, no names, counts or
    error texts."""
    return {
        "status": full["status"],
        "checks": {name: {"ok": c["ok"]} for name, c in full["checks"].items()},
        "reasons": full["reasons"],
    }


class HealthCache:
    """The last report, recomputed at most once per `ttl_s` by one caller at a time
    whatever the request rate: healthz is unauthenticated, and a flood of it must cost
    Redis, the database and the API's thread pool nothing more."""

    def __init__(self, ttl_s: float = HEALTH_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._lock = asyncio.Lock()
        self._at = -1e9
        self._value: dict[str, Any] | None = None

    async def get(self, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The cached report, or a fresh one (one computation at a time)."""
        if self._value is not None and time.monotonic() - self._at < self.ttl_s:
            return self._value
        async with self._lock:
            if self._value is None or time.monotonic() - self._at >= self.ttl_s:
                self._value = await run_in_threadpool(compute)
                self._at = time.monotonic()
            return self._value


@health_router.get(
    "/healthz", summary="Redis, database, workers and fleet; 200 only when all are ok"
)
async def healthz(request: Request) -> JSONResponse:
    """No authentication: load balancers and orchestrators call it. `degraded` (503):
    the stores answer but the fleet is not ticking (`reasons` says why). Details
    (latencies, errors, counts) only with the bearer token."""
    app = request.app
    rt = app_runtime(app)
    cache: HealthCache = app.state.health_cache
    full = await cache.get(lambda: report(rt))
    client = request.client.host if request.client else None
    authorized = rt.settings.api_token is not None and token_ok(
        rt.settings, request.headers.get("authorization"), client
    )
    body = full if authorized else public(full)
    return JSONResponse(body, status_code=200 if full["status"] == "ok" else 503)


@router.get("/metrics", summary="Prometheus metrics of the whole engine")
def prometheus(rt: RtDep) -> Response:
    """Worker metrics aggregated in Redis, gauges from the database, this process's own."""
    if rt.redis is None:
        raise ApiError(503, "unavailable", "this runtime has no Redis to read metrics from")
    body = metrics.render(rt.redis, rt.db, fleet=lambda: fleet_health(rt))
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/api/v1/openapi.json", summary="This API's OpenAPI document")
def openapi(request: Request) -> dict[str, Any]:
    """The OpenAPI 3 document (behind the token like everything but /healthz)."""
    schema: dict[str, Any] = request.app.openapi()
    return schema
