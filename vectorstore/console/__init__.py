"""The console (`server.console: true`): one static page at /console that looks inside the stores and tries
searches, through the public API only.

The page is three files in `static/`, shipped in the wheel (package data), with no build step and nothing from
another origin. It holds the API key the user types in a JavaScript variable only (no cookie, no storage), and
sends it as the Bearer key of every call, so the key's scope and store limits apply exactly as for any client.
The files themselves need no key: they contain no data. Every answer carries a strict Content-Security-Policy:
scripts, styles and fetches from this origin only, no inline script or style, no frames, no forms.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache
from pathlib import Path
from typing import Final

from aiohttp import web

from config.names import CONSOLE_ASSETS, CONSOLE_PATH
from vectorstore.state import SPEC

STATIC: Final = Path(__file__).parent / "static"
CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # The page changes with the server version; a stale cached script against a newer API helps nobody.
    "Cache-Control": "no-cache",
}

routes = web.RouteTableDef()
"""Empty on purpose: the console lives at /console only, not under /v1 (see `setup`)."""


@cache
def _asset(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def _handler(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    content_type = CONTENT_TYPES[Path(name).suffix]

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=_asset(name), headers={**HEADERS, "Content-Type": content_type})

    return serve


async def _redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound(CONSOLE_PATH + "/")


def setup(app: web.Application) -> None:
    if not app[SPEC].server.console:
        return
    app.router.add_get(CONSOLE_PATH, _redirect, allow_head=False)
    for path, name in CONSOLE_ASSETS.items():
        app.router.add_get(path, _handler(name), allow_head=False)
