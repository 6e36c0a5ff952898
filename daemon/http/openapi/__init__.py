"""The OpenAPI 3.1 description of every route, served at ``GET /api/openapi.json`` and, for tools
that look for it at the root (and READMEs that once pointed there), at ``GET /openapi.json``.

Request schemas are built from the field tables the routes themselves validate with and from
the one definition of the generation parameters (:mod:`...engine.params`), so the description
cannot drift from what is accepted; a test fails on any route left undocumented. The bounds the
engine enforces (prompt length, ``n``, ``steps``…) come from the daemon's own config, so a
daemon with ``engine.max_n = 2`` describes ``n`` as at most 2; tests/test_fuzz.py fuzzes every
operation from this description (docs/fuzz.md).

The parts: :mod:`.common` (schema shorthands), :mod:`.requests` (the request schemas that carry
generation parameters), :mod:`.core` (pennello's own API, pairing, OpenAI and A1111's generation), :mod:`.a1111`
(A1111's settings and catalogues), :mod:`.tools` (the picture tools) and :mod:`.installs` (installing
a model from the web page).

    $ curl -s localhost:8420/api/openapi.json | python -m json.tool | less
    >>> spec = build_spec()
    >>> spec["openapi"], "/v1/images/generations" in spec["paths"]
    ('3.1.0', True)
"""

from __future__ import annotations

import functools
from typing import Any

from flask import Blueprint, jsonify

from pennello import __version__
from pennello.config import Config

from ..context import current_config
from . import a1111, core, installs, tools
from .requests import request_schemas

bp = Blueprint("openapi", __name__)


@functools.lru_cache(maxsize=4)
def build_spec(config: Config | None = None) -> dict[str, Any]:
    """The whole OpenAPI document for a daemon with ``config`` (the defaults when None; built
    once per config)."""
    config = config or Config()
    return {
        "openapi": "3.1.0",
        "info": {"title": "pennello", "version": __version__,
                 "description": "Private, offline image generation. Loopback callers need no credentials; "
                                "other devices pair (`pennello pair`) and send `Authorization: Bearer <token>` (or "
                                "HTTP Basic with the token as password, for front-ends that send only that). "
                                "A Host that does not name this machine is refused (421 host_not_allowed; "
                                "`server.allowed_hosts`), and so are state-changing requests from another "
                                "origin's page (403 origin_not_allowed). Scopes: docs/security-scopes.md."},
        "servers": [{"url": "/"}],
        "tags": [{"name": "native", "description": "pennello's own API"},
                 {"name": "pairing", "description": "Pairing devices and managing their tokens"},
                 {"name": "openai", "description": "OpenAI-compatible images API"},
                 {"name": "a1111", "description": "AUTOMATIC1111-compatible API"},
                 {"name": "web", "description": "The browser page"},
                 {"name": "tools", "description": "Enhance, upscale, edit, styles and batches"}],
        "security": [{}, {"bearer": []}, {"basic": []}],
        "paths": {**core.paths(), **installs.paths(), **a1111.paths(), **tools.paths()},
        "components": {"schemas": {**core.SCHEMAS, **installs.SCHEMAS, **a1111.SCHEMAS, **tools.SCHEMAS,
                                   **request_schemas(config.engine)},
                       "securitySchemes": {
                           "bearer": {"type": "http", "scheme": "bearer", "description": "A token from POST /api/pair."},
                           "basic": {"type": "http", "scheme": "basic",
                                     "description": "Any user name, a token from POST /api/pair as password."}}},
    }


@bp.get("/api/openapi.json")
@bp.get("/openapi.json")  # the same endpoint, so the same (public) scope
def spec() -> Any:
    return jsonify(build_spec(current_config()))
