"""The OpenAPI description of installing a model from the web page (:mod:`..routes.installs`):
the plan the owner agrees to, the install's progress, and the 409 answers (one install at a
time; none while no-network mode is on)."""

from __future__ import annotations

from .common import BOOL, INT, NUM, STR, Schema, nullable, obj, op, path_param, ref, reply

_LIST = {"type": "array"}

SCHEMAS: dict[str, Schema] = {
    "InstallPlan": obj({
        "files": nullable("integer", description="Files to download (those already on this machine left out); "
                                                 "null: known only by downloading (first_fetch)."),
        "bytes": nullable("integer", description="Bytes to download; null as files."),
        "sources": {**_LIST, "items": STR, "description": "Where the files come from."},
        "models": {**_LIST, "items": obj({"name": STR, "version": INT, "license": STR},
                                         ("name", "version", "license"))},
        "first_fetch": nullable("string", description="Why the files' hashes can only be recorded as they first "
                                                      "arrive (trust on first use); null: they are signed.")},
        ("files", "bytes", "sources", "models", "first_fetch"),
        description="What `pennello install NAME --plan --json` says installing would download."),
    "InstallPlanned": obj({"name": STR, "state": {"const": "planned"}, "plan": ref("InstallPlan"),
                           "consent": {**STR, "description": "How to agree: POST again with consent."}},
                          ("name", "state", "plan", "consent")),
    "Install": obj({
        "name": STR, "state": {"enum": ["running", "done", "failed", "cancelled"]},
        "bytes": {**INT, "description": "Arrived so far."}, "total": {**INT, "description": "To arrive."},
        "plan": {"anyOf": [ref("InstallPlan"), {"type": "null"}]},
        "models": {**_LIST, "items": obj({"name": STR, "version": INT, "size_bytes": INT}, ("name", "version")),
                   "description": "Installed (verified), once done."},
        "error": {"anyOf": [obj({"error": STR, "code": INT, "type": STR, "field": nullable("string")},
                                ("error", "type")), {"type": "null"}],
                  "description": "The installer's error, once failed or cancelled."},
        "started": NUM, "ended": nullable("number")},
        ("name", "state", "bytes", "total", "error")),
    "InstallRequest": obj({"consent": {**BOOL, "description": "true: download and install (after reading "
                                                              "the plan); absent or false: only the plan."},
                           "first_fetch": {**BOOL, "description": "With consent, where the plan has first_fetch: "
                                                                  "agree to record the hashes as the files arrive."}}),
}


def _conflict(operation: Schema, why: str) -> Schema:
    operation["responses"]["409"] = reply(ref("Error"), why)
    return operation


def paths() -> dict[str, dict[str, Schema]]:
    native = "native"
    name = (path_param("name", "A model of the catalog (`pennello models`)."),)
    post = op("Install a catalog model (owner only): without consent, the plan (files, bytes, licence); "
              "with {\"consent\": true}, start installing it", native, errors=("400", "403", "404", "413"),
              params=name, responses={"200": reply(ref("InstallPlanned"), "The plan; nothing was changed"),
                                      "202": reply(ref("Install"), "Started; follow it with GET")})
    post["requestBody"] = {"required": False, "content": {"application/json": {"schema": ref("InstallRequest")}}}
    post["responses"]["502"] = reply(ref("Error"), "The model's source could not be reached or failed")
    return {"/api/models/{name}/install": {
        "post": _conflict(post, "Another install is running, or no-network mode is on (install with "
                                "`pennello install` or an air-gapped bundle)"),
        "get": op("The latest install of a model started here: progress, then done or failed (owner only)",
                  native, reply(ref("Install")), errors=("403", "404"), params=name),
        "delete": op("Stop a running install; the store stays as it was (owner only)", native,
                     reply(ref("Install")), errors=("403", "404"), params=name)}}
