"""The HTTP control API (`engine.api:app`, served by `botengine api` / `serve`).

Versioned under `/api/v1`: bots (list, inspect, create/update, start/stop/pause/resume,
ticks) and tasks (ping, price-check, state); `/healthz` and `/metrics` at the root.
"""

from __future__ import annotations

from engine.api.factory import create_app
from engine.api.server import serve

app = create_app()

__all__ = ["app", "create_app", "serve"]
