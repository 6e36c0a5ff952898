"""The Flask application factory: one engine behind a set of blueprints and one error handler.

There is no module-level app. Tests and the server build one with an engine of their choice:

    >>> from pennello.config import Config
    >>> app = create_app(Config(), engine=my_engine)  # doctest: +SKIP
    >>> app.test_client().get("/api/health").json["ready"]  # doctest: +SKIP
    True

Route modules reach the engine, config, paths and caller through :mod:`.context`, never through
this module, so the factory and the routes do not import each other.
"""

from __future__ import annotations

import importlib
import logging
import time

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from pennello.config import Config
from pennello.errors import BusyError, PennelloError
from pennello.paths import Paths, get_paths

from ..engine.engine import Engine
from ..net.offline import NetworkGuard
from .context import EXTENSION, MachineNetwork
from .waiting import init_app as init_waiting

log = logging.getLogger(__name__)

# Modules of this package that define a module-level ``bp`` blueprint, registered in this order.
BLUEPRINTS: tuple[str, ...] = ("routes.native", "routes.auth", "routes.openai", "routes.a1111", "openapi",
                               "routes.web", "routes.offline", "routes.tools",
                               "routes.manage", "routes.installs", "routes.cluster")



def create_app(config: Config, engine: Engine | None = None, paths: Paths | None = None,
               guard: NetworkGuard | None = None, network: MachineNetwork | None = None) -> Flask:
    """Build the WSGI app.

    Args:
        config: the daemon's configuration.
        engine: a started engine; when None one is created for ``paths`` and started (loads the
            default model, so this can take a few seconds).
        paths: where state lives; defaults to :func:`pennello.paths.get_paths`.
        guard: the no-network guard ``serve`` installed, reported by ``/api/offline`` and
            ``/api/health``; None when no-network mode is off.
        network: this machine's addresses when this process cannot see them (the isolated
            model worker); None reads the interfaces.
    """
    paths = paths or (engine.paths if engine is not None else get_paths())
    if engine is None:
        engine = Engine(config, paths)
        engine.start()
    app = Flask("pennello.daemon")
    app.config["MAX_CONTENT_LENGTH"] = config.server.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION] = {"engine": engine, "config": config, "paths": paths, "guard": guard,
                                 "network": network}
    app.register_error_handler(PennelloError, _pennello_error)
    app.register_error_handler(HTTPException, _http_error)
    app.before_request(_start_timer)
    app.after_request(_log_timing)
    for name in BLUEPRINTS:
        app.register_blueprint(importlib.import_module(f"{__package__}.{name}").bp)
    # --- auth: daemon/http/routes/auth.py (pairing, tokens, per-device owners) hooks in here -----------
    from .routes.auth import init_app as init_auth

    init_auth(app)
    init_waiting(app, config.server.max_waiting)
    # ----------------------------------------------------------------------------------------------
    return app


def error_response(status: int, kind: str, message: str, field: str | None = None) -> Response:
    """The one JSON error shape: ``{"error": {"type", "message", "field"}}``."""
    response = jsonify({"error": {"type": kind, "message": message, "field": field}})
    response.status_code = status
    return response


def _pennello_error(e: PennelloError) -> Response:
    if e.http_status >= 500:
        log.error("%s %s failed: %s", request.method, request.path, e)
    response = error_response(e.http_status, e.kind, str(e), getattr(e, "field", None))
    if isinstance(e, BusyError):
        response.headers["Retry-After"] = str(e.retry_after)
    return response


def _http_error(e: HTTPException) -> Response:
    kind = (e.name or "error").lower().replace(" ", "_")
    response = error_response(e.code or 500, kind, e.description or e.name)
    if e.code == 405 and e.valid_methods:  # type: ignore[attr-defined]
        response.headers["Allow"] = ", ".join(e.valid_methods)  # type: ignore[attr-defined]
    return response


def _start_timer() -> None:
    g.pennello_started = time.perf_counter()


def _log_timing(response: Response) -> Response:
    if log.isEnabledFor(logging.DEBUG) and "pennello_started" in g:
        log.debug("http %s %s -> %d in %.1fms", request.method, request.path, response.status_code,
                  (time.perf_counter() - g.pennello_started) * 1000)
    return response
