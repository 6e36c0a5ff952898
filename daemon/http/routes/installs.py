"""``/api/models/<name>/install``: the owner installs a catalog model from the web page.

Installing downloads, and a download needs the owner's yes, given after seeing what it is:

    $ curl -s -X POST localhost:8420/api/models/sd-turbo/install        # 1. the plan
    {"name": "sd-turbo", "state": "planned", "plan": {"files": 12, "bytes": 2081000000,
     "sources": ["Hugging Face stabilityai/sd-turbo@…"], "models": [{"license": "…", …}]}, …}
    $ curl -s -X POST localhost:8420/api/models/sd-turbo/install -d '{"consent": true}' \\
        -H 'Content-Type: application/json'                             # 2. yes: 202, it runs
    $ curl -s localhost:8420/api/models/sd-turbo/install                 # 3. progress
    {"name": "sd-turbo", "state": "running", "bytes": 1048576, "total": 2081000000, …}
    $ curl -s -X DELETE localhost:8420/api/models/sd-turbo/install       # or stop it

Where the model's source cannot serve the signed commit's git objects, the plan says why in
``first_fetch``: its hashes can only be recorded as the files first arrive (trust on first use),
which needs ``"first_fetch": true`` beside the consent, as ``pennello install`` needs
``--first-fetch``.

The installer runs as its own process (:mod:`...tools.installs`); this daemon only reads what it
says. Owner only (a paired device gets 403). Refused with 409 ``conflict`` while another install
runs, and whenever no-network mode is on: such a daemon reaches nothing, so its models come from
``pennello install`` in a terminal or from an air-gapped bundle.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request

from pennello.errors import ConflictError
from pennello.installer.catalog import Catalog

from ..context import current_config, current_paths
from ..request import json_body
from ...tools.installs import Installs

bp = Blueprint("installs", __name__, url_prefix="/api")

INSTALL_FIELDS: dict[str, Any] = {"consent": bool, "first_fetch": bool}
_EXT = "pennello.installs"


def _installs() -> Installs:
    """This app's installs (made on first use: most daemons never install from the page)."""
    return current_app.extensions.setdefault(_EXT, Installs(current_paths()))


@bp.route("/models/<name>/install", methods=["GET", "POST", "DELETE"])
def install(name: str) -> Any:
    if request.method == "GET":
        return jsonify(_installs().get(name).to_dict())
    if request.method == "DELETE":
        return jsonify(_installs().cancel(name).to_dict())
    body = json_body(INSTALL_FIELDS) if request.content_length else {}
    if current_config().offline.enabled:
        raise ConflictError(
            "no-network mode is on, so this daemon downloads nothing; install with `pennello install "
            f"{name}` in a terminal, or carry the model in on an air-gapped bundle (`pennello bundle export "
            f"{name} --out DIR` on a machine that has it, then `pennello install --from DIR` here)")
    Catalog(current_paths()).get(name)  # 404 naming the catalog's models, before any process starts
    if not body.get("consent"):
        plan = _installs().plan(name)
        return jsonify({"name": name, "state": "planned", "plan": plan, "consent": (
            'to download and install it, POST again with {"consent": true' +
            (', "first_fetch": true}, agreeing also to record its hashes as they first arrive (trust on first use)'
             if plan.get("first_fetch") else "}"))})
    started = _installs().start(name, first_fetch=body.get("first_fetch", False))
    return jsonify(started.to_dict()), 202, {"Location": request.path}
