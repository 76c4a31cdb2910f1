"""Operations endpoints: `/healthz` (no auth), `/metrics`, the OpenAPI document."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from engine import metrics
from engine.api.deps import DispatcherDep, RtDep, require_token
from engine.api.dispatch import Dispatcher
from engine.api.errors import ApiError
from engine.logging import redactor
from engine.runtime import Runtime

health_router = APIRouter(tags=["operations"])
router = APIRouter(tags=["operations"], dependencies=[Depends(require_token)])
WORKER_PING_TIMEOUT_S = 1.0


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


def _workers(dispatcher: Dispatcher) -> dict[str, Any]:
    if not dispatcher.probe.up():
        raise ConnectionError("broker unreachable")
    # limit=1: answer as soon as one worker replies instead of waiting out the timeout.
    replies = dispatcher.celery.control.ping(timeout=WORKER_PING_TIMEOUT_S, limit=1)
    if not replies:
        raise TimeoutError(f"no worker answered within {WORKER_PING_TIMEOUT_S:g}s")
    return {"workers": sorted(name for reply in replies for name in reply)}


@health_router.get("/healthz", summary="Redis, database and workers; 200 only when all are ok")
def healthz(rt: RtDep, dispatcher: DispatcherDep) -> JSONResponse:
    """No authentication: load balancers and orchestrators call it."""
    checks = {
        "redis": _check(lambda: _redis(rt)),
        "database": _check(lambda: _database(rt)),
        "worker": _check(lambda: _workers(dispatcher)),
    }
    ok = all(c["ok"] for c in checks.values())
    body = {"status": "ok" if ok else "fail", "checks": checks}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics of the whole engine")
def prometheus(rt: RtDep) -> Response:
    """Worker metrics aggregated in Redis, gauges from the database, this process's own."""
    if rt.redis is None:
        raise ApiError(503, "unavailable", "this runtime has no Redis to read metrics from")
    return Response(metrics.render(rt.redis, rt.db), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/v1/openapi.json", summary="This API's OpenAPI document")
def openapi(request: Request) -> dict[str, Any]:
    """The OpenAPI 3 document (behind the token like everything but /healthz)."""
    schema: dict[str, Any] = request.app.openapi()
    return schema
