"""Assemble the FastAPI app: routers, auth, error handlers, start-up migration."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.concurrency import run_in_threadpool

from engine.api import batch, bots, dashboard, errors, fleet, ops, tasks
from engine.api.deps import app_runtime, require_token
from engine.api.gate import Gate

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
    app.state.health_cache = ops.HealthCache()
    auth = [Depends(require_token)]
    app.include_router(bots.router, prefix=API_PREFIX, dependencies=auth)
    app.include_router(tasks.router, prefix=API_PREFIX, dependencies=auth)
    app.include_router(batch.router, prefix=API_PREFIX, dependencies=auth)
    app.include_router(fleet.router, prefix=API_PREFIX, dependencies=auth)
    app.include_router(ops.health_router)
    app.include_router(dashboard.router)
    app.include_router(ops.router)
    errors.install(app)
    # Outermost: bodies bounded and tokens checked before anything reads a request.
    app.add_middleware(Gate, settings=lambda: app_runtime(app).settings)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the BotConfig schema, which the PUT body refers to (the
    body is read raw, to accept YAML, so FastAPI cannot derive it)."""
    if app.openapi_schema is None:
        from engine.config import BotConfig

        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        config = BotConfig.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(config.pop("$defs", {}))
        components["BotConfig"] = config
        app.openapi_schema = schema
    return app.openapi_schema
