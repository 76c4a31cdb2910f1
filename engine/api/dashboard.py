"""`/ui`: the fleet dashboard, three static files (engine/api/ui) served by the API.

The files hold no data, so they are served without the token; the page asks for the
token and sends it as the bearer header on every API call it makes (kept in the tab's
session storage, never in a cookie, so no other site can make the browser send it).
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

router = APIRouter(include_in_schema=False)

PREFIX = "/ui"
_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
# The page runs only its own script and style, and talks only to this origin.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _file(name: str) -> Response:
    body = files("engine.api").joinpath("ui", name).read_bytes()
    return Response(body, media_type=_TYPES[name], headers=_HEADERS)


@router.get(PREFIX)
def index() -> Response:
    """The dashboard's page."""
    return _file("index.html")


@router.get(PREFIX + "/")
def index_slash() -> RedirectResponse:
    """`/ui/` → `/ui`."""
    return RedirectResponse(PREFIX)


@router.get(PREFIX + "/app.js")
def script() -> Response:
    """The dashboard's script."""
    return _file("app.js")


@router.get(PREFIX + "/app.css")
def style() -> Response:
    """The dashboard's style sheet."""
    return _file("app.css")
