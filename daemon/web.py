"""The browser page at ``/``: prompt, size and steps, live progress, the gallery, and pairing.

The page is plain HTML, CSS and JavaScript from ``daemon/static`` (no CDN, no build step), so it
works on a machine that has never been online. It talks only to this daemon's own API:
``POST /api/generate``, ``/api/jobs/<id>/events`` (server-sent events) and ``/api/outputs``.
On another device the page first asks for the pairing code; pairing sets an HttpOnly cookie so
the page's requests, images and event streams carry the token.

    $ pennello serve   # then open http://127.0.0.1:8420/
"""

from __future__ import annotations

from flask import Blueprint, Response, send_from_directory

bp = Blueprint("web", __name__, static_folder="static", static_url_path="/assets")

# The page loads nothing from elsewhere and runs no inline script: a strict policy costs nothing.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                           "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'")


@bp.get("/")
def index() -> Response:
    response = send_from_directory(bp.static_folder, "index.html", max_age=0)  # type: ignore[arg-type]
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
