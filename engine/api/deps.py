"""FastAPI dependencies: the runtime, the task dispatcher and bearer-token auth.

Tests replace `get_rt` and `get_dispatcher` through `app.dependency_overrides`.
"""

from __future__ import annotations

import hmac
import ipaddress
from functools import lru_cache
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from engine.api.dispatch import BrokerProbe, Dispatcher
from engine.api.errors import ApiError
from engine.runtime import Runtime, get_runtime


def get_rt() -> Runtime:
    """The process's runtime (Redis, database, coordinator, enqueue)."""
    return get_runtime()


@lru_cache(maxsize=1)
def get_dispatcher() -> Dispatcher:
    """Sends tasks through the Celery app, or runs them inline when its broker is down."""
    from engine.celery_app import app  # lazy: the Celery app reads settings at import

    return Dispatcher(app, BrokerProbe(str(app.conf.broker_url)))


_bearer = HTTPBearer(auto_error=False, description="API_TOKEN")


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`."""
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    rt: Annotated[Runtime, Depends(get_rt)],
) -> None:
    """Accept `Authorization: Bearer <API_TOKEN>` (constant-time comparison).

    Without a configured token only loopback clients are served: `serve` refuses any
    other bind address then, and this guards an app started by plain uvicorn too.
    """
    token = rt.settings.api_token
    unauthorized = {"WWW-Authenticate": "Bearer"}
    if token is None:
        if is_loopback(request.client.host if request.client else None):
            return
        raise ApiError(
            401,
            "unauthorized",
            "API_TOKEN is not set: only loopback clients are served",
            headers=unauthorized,
        )
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise ApiError(401, "unauthorized", "missing or wrong bearer token", headers=unauthorized)


RtDep = Annotated[Runtime, Depends(get_rt)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
