"""FastAPI dependencies: the runtime, the task dispatcher and bearer-token auth.

Tests replace `get_rt` and `get_dispatcher` through `app.dependency_overrides`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from engine.api.dispatch import BrokerProbe, Dispatcher
from engine.api.errors import ApiError
from engine.api.gate import refusal, token_ok
from engine.runtime import Runtime, get_runtime


def get_rt() -> Runtime:
    """The process's runtime (Redis, database, coordinator, enqueue)."""
    return get_runtime()


def app_runtime(app: FastAPI) -> Runtime:
    """The runtime `app`'s routes get (tests override `get_rt`), for code outside routes:
    middleware, and async endpoints that must not wait for a thread of the pool."""
    provider = app.dependency_overrides.get(get_rt, get_rt)
    rt: Runtime = provider()
    return rt


@lru_cache(maxsize=1)
def get_dispatcher() -> Dispatcher:
    """Sends tasks through the Celery app, or runs them inline when its broker is down."""
    from engine.celery_app import app  # lazy: the Celery app reads settings at import

    return Dispatcher(app, BrokerProbe(str(app.conf.broker_url)))


_bearer = HTTPBearer(auto_error=False, description="API_TOKEN")


def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    rt: Annotated[Runtime, Depends(get_rt)],
) -> None:
    """Accept `Authorization: Bearer <API_TOKEN>` (constant-time comparison).

    Without a configured token only loopback clients are served: `serve` refuses any
    other bind address then, and this guards an app started by plain uvicorn too.
    """
    given = f"Bearer {credentials.credentials}" if credentials is not None else None
    if not token_ok(rt.settings, given, request.client.host if request.client else None):
        raise ApiError(
            401, "unauthorized", refusal(rt.settings), headers={"WWW-Authenticate": "Bearer"}
        )


RtDep = Annotated[Runtime, Depends(get_rt)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
