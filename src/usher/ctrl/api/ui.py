"""``/ui``: the web dashboard, static files shipped in the package (``usher/ui/static``).

The page itself is public; everything it shows comes from the ``/v1`` API with the token the
user logs in with, so the API's authentication and authorization apply unchanged.

The VM view's interactive console is xterm.js 6.0.0 (``xterm.js``, ``xterm.css``, its licence
``xterm.LICENSE``; MIT), from the npm package ``@xterm/xterm`` unchanged, loaded from here
only when a console is attached. Its renderer styles the terminal with ``<style>`` elements it
makes, which the policy allows only with the nonce that each answer for the page carries
(``usher-style-nonce``); scripts stay ``'self'`` only.
"""

from __future__ import annotations

import secrets
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from usher.ctrl.engine import RequestError

router = APIRouter(include_in_schema=False)
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "xterm.js": "text/javascript; charset=utf-8",
    "xterm.css": "text/css; charset=utf-8",
    "xterm.LICENSE": "text/plain; charset=utf-8",
}
NONCE_MARK = b"@STYLE_NONCE@"
"""Where ``index.html`` takes the nonce of its answer."""
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _asset(name: str) -> Response:
    if name not in ASSETS:
        raise RequestError(404, f"no such dashboard file {name!r}")
    body = files("usher.ui").joinpath("static", name).read_bytes()
    return Response(body, media_type=ASSETS[name], headers=HEADERS)


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    """A browser pointed at the controller gets the dashboard."""
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui")
async def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=308)


@router.get("/ui/")
async def ui_index() -> Response:
    """The page, with a fresh nonce for the styles xterm.js makes (module doc)."""
    nonce = secrets.token_urlsafe(18)
    page = files("usher.ui").joinpath("static", "index.html").read_bytes()
    policy = (
        f"default-src 'self'; style-src 'self' 'nonce-{nonce}'; img-src 'self' data:; "
        "frame-ancestors 'none'"
    )
    return Response(
        page.replace(NONCE_MARK, nonce.encode()),
        media_type=ASSETS["index.html"],
        headers={**HEADERS, "Content-Security-Policy": policy},
    )


@router.get("/ui/{name}")
async def ui_asset(name: str) -> Response:
    return _asset(name)
