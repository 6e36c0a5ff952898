"""The browser page at ``/``: a small app to generate, follow the queue, browse and act on the
gallery, edit, run style batches, and (for the owner) pair and revoke devices.

The page is plain HTML, CSS and ES modules from ``daemon/http/static`` (no library, no CDN, no
build step), so it works on a machine that has never been online; docs/web.md lists its parts and
the API routes each uses. It talks only to this daemon's own API, with same-origin requests. On
another device the page first asks for the pairing code; pairing sets an HttpOnly cookie so the
page's requests, images and event streams carry the token.

On this machine the page is served with the daemon's per-run *page secret* in
``<meta name="pennello-page">``; the page sends it as ``X-Pennello-Page`` on its requests, which
is how a browser proves it is this page and not another site's (see
:mod:`pennello.daemon.http.routes.auth`). Another origin cannot read it: the Host check stops
rebinding pages, and the page is never served with CORS headers.

The owner's page also carries the catalog (``<meta name="pennello-catalog">``: the models
``pennello install NAME`` can add, read from the shipped and user catalogs, never fetched), so it
can show what is available beside what is installed without an API that would tempt a client to
install through the serving daemon, which never loads the code that downloads.

    $ pennello serve   # then `pennello open`: the page, logged in as the owner (a one-time link)
"""

from __future__ import annotations

import json
from pathlib import Path

from flask import Blueprint, Response
from markupsafe import escape

from ..context import current_paths, owner_filter
from .auth import page_token_for_request

# The assets live beside the HTTP layer (daemon/http/static), not beside this module.
bp = Blueprint("web", __name__, static_folder=str(Path(__file__).resolve().parents[1] / "static"),
               static_url_path="/assets")

# The page loads nothing from elsewhere and runs no inline script: a strict policy costs nothing.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                           "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'")


PAGE_META = '<meta name="pennello-page" content="">'  # filled in for callers on this machine
CATALOG_META = '<meta name="pennello-catalog" content="[]">'  # filled in for the owner


def catalog_summary() -> list[dict[str, object]]:
    """The catalog as the page lists it: name, description, licence, download size (0: not
    known until ``pennello manifest lock``), and whether its files are pinned."""
    from pennello.installer import Catalog

    return [{"name": name, "description": entry.manifest.description, "license": entry.manifest.license,
             "bytes": entry.manifest.total_size, "family": entry.manifest.pipeline.family}
            for name, entry in Catalog(current_paths()).entries().items()]


@bp.get("/")
def index() -> Response:
    html = (Path(bp.static_folder) / "index.html").read_text(encoding="utf-8")  # type: ignore[arg-type]
    token = page_token_for_request()
    if token:
        html = html.replace(PAGE_META, f'<meta name="pennello-page" content="{escape(token)}">', 1)
    if owner_filter() is None:  # the owner: a paired device cannot install anything
        catalog = escape(json.dumps(catalog_summary()))
        html = html.replace(CATALOG_META, f'<meta name="pennello-catalog" content="{catalog}">', 1)
    response = Response(html, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"  # it may carry this run's page secret
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
