"""Assemble the FastAPI app: routers, auth, error handlers, start-up migration."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from starlette.concurrency import run_in_threadpool

from engine.api import bots, errors, ops, tasks
from engine.api.deps import require_token

API_PREFIX = "/api/v1"


def _migrate() -> None:
    from engine.db import migrate
    from engine.settings import get_settings

    migrate(get_settings().database_url)


def create_app(*, migrate: bool = True) -> FastAPI:
    """A fresh app; `migrate` brings DATABASE_URL's schema up to date at start-up."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if migrate:
            await run_in_threadpool(_migrate)
        yield

    app = FastAPI(
        title="botengine control API",
        version="1",
        description=(
            "Start, stop and inspect bots; run maintenance tasks. Every endpoint but "
            "/healthz needs `Authorization: Bearer <API_TOKEN>`. Errors are "
            '`{"error": {"code", "message", "fields"}}`.'
        ),
        lifespan=lifespan,
        # The document is served behind the token by ops.router; no unauthenticated UI.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    auth = [Depends(require_token)]
    app.include_router(bots.router, prefix=API_PREFIX, dependencies=auth)
    app.include_router(tasks.router, prefix=API_PREFIX, dependencies=auth)
    app.include_router(ops.health_router)
    app.include_router(ops.router)
    errors.install(app)
    return app
