"""The OpenAPI description of pennello's own API, pairing, and the OpenAI and A1111 APIs: their
response schemas and their operations. The request schemas are :mod:`.requests`'."""

from __future__ import annotations

from typing import get_args

from pennello.config import CompileMode
from pennello.installer.store import VERIFICATIONS

from ...engine.params import IMAGE_FORMATS
from ...engine.profiles import Offload
from .common import (BOOL, ERROR_TEXT, INT, KEEP_ALIVE, NUM, SSE_EVENT, STR, Schema, nullable, obj, op, path_param, ref,
                     reply)

SCHEMAS: dict[str, Schema] = {
    "Error": obj({"error": obj({"type": STR, "message": STR, "field": nullable("string")},
                               ("type", "message", "field"))}, ("error",),
                 description="Every pennello error. `field` names the offending input when there is one."),
    "Image": obj({"id": STR, "url": STR, "seed": INT, "width": INT, "height": INT,
                  "format": {"enum": list(IMAGE_FORMATS)}, "enhance": ref("EnhanceMetrics"),
                  "copyright": ref("CopyrightCheck")}, ("id", "url", "seed", "width", "height", "format")),
    "Job": obj({
        "id": STR, "status": {"enum": ["queued", "running", "done", "failed", "cancelled"]},
        "model": nullable("string"), "prompt": STR, "negative_prompt": STR, "width": nullable("integer"),
        "height": nullable("integer"), "steps": nullable("integer"), "guidance": nullable("number"),
        "n": INT, "format": STR, "seeds": {"type": "array", "items": INT}, "step": INT,
        "total_steps": INT, "progress": NUM, "batch_size": INT,
        "images": {"type": "array", "items": ref("Image")}, "error": nullable("string"),
        "created": NUM, "started": nullable("number"), "finished": nullable("number")},
        ("id", "status", "images"), extra=True),
    "JobList": obj({"jobs": {"type": "array", "items": ref("Job")}}, ("jobs",)),
    "OutputRecord": obj({"id": STR, "prompt": STR, "seed": INT, "model": STR, "format": STR,
                         "created": NUM, "size": STR}, ("id",), extra=True,
                        description="A saved picture's embedded record (as in its XMP metadata)."),
    "Deleted": obj({"id": STR, "deleted": BOOL}, ("id", "deleted")),
    "Outputs": obj({"images": {"type": "array", "items": ref("OutputRecord")}, "limit": INT,
                    "offset": INT, "next_offset": nullable("integer")}, ("images",)),
    "Model": obj({"name": STR, "version": INT, "family": STR, "pipeline": STR,
                  "defaults": {"type": "object"}, "description": nullable("string"),
                  "license": nullable("string"), "digest": STR, "loaded": BOOL, "default": BOOL,
                  "verification": {"enum": list(VERIFICATIONS), "description": (
                      "How the files' hashes are known: listed in the signed manifest, derived from the "
                      "git objects of the commit it signs, or recorded on first fetch (trust on first use).")}},
                 ("name", "loaded", "verification"), extra=True),
    "ModelList": obj({"models": {"type": "array", "items": ref("Model")}}, ("models",)),
    "LoadedModel": obj({"name": STR, "version": INT, "family": STR, "device": STR, "dtype": STR,
                        "param_bytes": INT, "loaded_at": NUM, "idle_s": NUM,
                        "expires_in_s": nullable("number"), "cuda_memory_allocated": nullable("integer"),
                        "placement": {"anyOf": [ref("Placement"), {"type": "null"}]}},
                       ("name",), extra=True),
    "Placement": obj({
        "profile": STR, "device": STR, "offload": {"enum": list(get_args(Offload))}, "vae_tiling": BOOL,
        "vae_slicing": BOOL, "attention_slicing": BOOL, "cpu_threads": INT, "reason": STR,
        "compile": {"enum": list(get_args(CompileMode)),
                    "description": "torch.compile mode of the denoiser; absent: not compiled."},
        "channels_last": BOOL, "fuse_qkv": BOOL, "cpu_bf16": BOOL,
        "warmup_s": {**NUM, "description": "Seconds of the warm-up generation at load (compile)."},
        "not_applied": {"type": "array", "items": STR,
                        "description": "Speed-ups asked for that this model or placement cannot take, "
                                       "each with why."}},
        ("profile", "device"), extra=True,
        description="How the model was placed and tuned on load (docs/performance.md); switches that "
                    "are off are left out."),
    "LoadedList": obj({
        "models": {"type": "array", "items": ref("LoadedModel")}, "device": STR,
        "backend": obj({"torch": STR, "cuda": nullable("string")}, ("torch",)),
        "memory": obj({"weights_bytes": INT, "cuda_allocated_bytes": nullable("integer"),
                       "cuda_reserved_bytes": nullable("integer")}, ("weights_bytes",)),
        "queue_depth": INT, "running": INT}, ("models",),
        description="`expires_in_s` of a model: seconds of keep-alive left (null: kept until unloaded)."),
    "Stopping": obj({"stopping": BOOL, "pid": INT}, ("stopping", "pid")),
    "LoadRequest": obj({"keep_alive": KEEP_ALIVE}),
    "Unloaded": obj({"name": STR, "unloaded": BOOL}, ("name", "unloaded")),
    "Progress": obj({"state": {"enum": ["idle", "running"]}, "jobs": {"type": "array", "items": STR},
                     "step": INT, "total": INT, "fraction": NUM, "eta_s": NUM, "queue_depth": INT},
                    ("state", "fraction"), extra=True),
    "Health": obj({"version": STR, "ready": BOOL, "default_model": STR, "default_loaded": BOOL,
                   "device": STR, "queue_depth": INT, "running": INT,
                   "loaded": {"type": "array", "items": STR}, "offline": ref("OfflineSummary")},
                  ("ready",), extra=True),
    "OfflineSummary": obj({"mode": {"enum": ["on", "off"]}, "lan": nullable("boolean"),
                           "allowed": {"type": "array", "items": STR}, "refused": INT},
                          ("mode", "allowed", "refused"), extra=True,
                          description="No-network mode: whether it is enforced, what the daemon may "
                                      "reach, and how many attempts to reach anything else it refused."),
    "OfflineAttempt": obj({"event": STR, "destination": STR, "time": NUM, "thread": STR,
                           "where": STR, "stack": STR},
                          ("event", "destination", "time", "where", "stack")),
    "OfflineStatus": {"allOf": [ref("OfflineSummary"), obj({
        "since": nullable("number"), "env": {"type": "object"},
        "refused_by_destination": {"type": "object", "additionalProperties": INT},
        "attempts": {"type": "array", "items": ref("OfflineAttempt")}}, extra=True)]},
    "PairCode": obj({"code": {"type": "string", "pattern": "^[2-9A-HJ-NP-Z]{8}$"}, "expires_in_s": NUM,
                     "pair_url": STR, "qr_png_url": STR, "lan": BOOL,
                     "scope": {"enum": ["device", "node"]}},
                    ("code", "expires_in_s", "pair_url")),
    "PairCodeRequest": obj({"scope": {"enum": ["device", "node"], "default": "device",
                                      "description": "node: a code for a cluster node (`pennello pair --node`)."}}),
    "ClusterJoinRequest": obj({"code": {"type": "string", "description": "The first time: the code "
                                        "`pennello pair --node` shows; later, send the node token instead."},
                               "name": {"type": "string", "maxLength": 64, "description": "The node's name."},
                               "version": {"type": "string", "description": "The node's pennello version."},
                               "models": {"type": "array", "items": STR, "description": "Its installed "
                                          "models, as pennello:NAME@VERSION:DIGEST."}},
                              ("name", "version", "models")),
    "ClusterJoin": obj({"cluster_token": {"type": "string", "description": "Ray's token; keep it 0600."},
                        "node_token": {"type": ["string", "null"], "description": "Shown once, when "
                                       "paired with a code; send it as Bearer on later joins."},
                        "id": nullable("string"), "name": STR}, ("cluster_token", "node_token", "id", "name")),
    "PairRequest": obj({"code": {"type": "string", "description": "As shown; case and dashes ignored."},
                        "name": {"type": "string", "maxLength": 64, "description": "The device's name."},
                        "cookie": {"type": "boolean", "description": "Also set the token as an "
                                    "HttpOnly cookie (for the web page)."}}, ("code", "name")),
    "Token": obj({"id": STR, "name": STR, "created": NUM, "last_used": nullable("number"),
                  "scope": {"enum": ["device", "owner", "node"]}}, ("id", "name", "created")),
    "PairResponse": obj({"token": {"type": "string", "description": "Shown once; send as Bearer."},
                         "id": STR, "name": STR, "created": NUM, "last_used": nullable("number"),
                         "scope": {"enum": ["device", "owner", "node"]}},
                        ("token", "id", "name")),
    "TokenRequest": obj({"name": {"type": "string", "maxLength": 64, "description": "Who will use it."},
                         "scope": {"enum": ["device", "owner", None], "default": "device",
                                   "description": "owner: an admin token that may do everything."}},
                        ("name",)),
    "LoginLink": obj({"url": {"type": "string", "description": "Open it in a browser on this machine; "
                                     "it works once."}, "expires_in_s": NUM}, ("url", "expires_in_s")),
    "PairStatus": obj({"owner": BOOL, "paired": BOOL, "device": {"oneOf": [ref("Token"), {"type": "null"}]},
                       "lan": BOOL, "scope": {"enum": ["owner", "device", "anonymous"]},
                       "code_expires_in_s": nullable("number")}, ("owner", "paired")),
    "TokenList": obj({"tokens": {"type": "array", "items": ref("Token")}}, ("tokens",)),
    "Revoked": obj({"revoked": ref("Token")}, ("revoked",)),
    "OpenAIImage": obj({"b64_json": STR, "url": STR, "revised_prompt": STR}),
    "OpenAIImagesResponse": obj({"created": INT, "data": {"type": "array", "items": ref("OpenAIImage")},
                                 "output_format": STR, "size": STR}, ("created", "data")),
    "OpenAIModel": obj({"id": STR, "object": {"const": "model"}, "created": INT, "owned_by": STR},
                       ("id", "object", "created", "owned_by")),
    "OpenAIModelList": obj({"object": {"const": "list"}, "data": {"type": "array", "items": ref("OpenAIModel")}},
                           ("object", "data")),
    "OpenAIError": obj({"error": obj({"message": STR, "type": STR, "param": nullable("string"),
                                      "code": nullable("string")}, ("message", "type", "param", "code"))},
                       ("error",)),
    "A1111Txt2ImgResponse": obj({"images": {"type": "array", "items": {"type": "string", "contentEncoding": "base64"}},
                                 "parameters": {"type": "object"},
                                 "info": {"type": "string", "description": "JSON: seed, all_seeds, infotexts…"}},
                                ("images", "parameters", "info")),
    "A1111SDModel": obj({"title": STR, "model_name": STR, "hash": nullable("string"),
                         "sha256": nullable("string"), "filename": STR, "config": nullable("string")},
                        ("title", "model_name", "filename")),
    "A1111Progress": obj({"progress": NUM, "eta_relative": NUM, "state": {"type": "object"},
                          "current_image": nullable("string", contentEncoding="base64", description=(
                              "A PNG of the caller's picture so far (the first of its batch); null when "
                              "nothing of the caller's runs, or with skip_current_image.")),
                          "textinfo": nullable("string")},
                         ("progress", "eta_relative", "state")),
}


def _unroutable_404(operation: Schema) -> Schema:
    """A name no route matches (one with a line break) is answered by the app, in pennello's shape."""
    operation["responses"]["404"] = reply({"anyOf": [ref("OpenAIError"), ref("Error")]},
                                          ERROR_TEXT["404"] + " (pennello's shape when the name holds a line break)")
    return operation


def _query_int(name: str, default: int, low: int, high: int) -> Schema:
    return {"name": name, "in": "query", "required": False,
            "schema": {"type": "integer", "default": default, "minimum": low, "maximum": high}}


_JOB_ID = path_param("job_id", "A job id from POST /api/generate.")
_IMAGE_ID = path_param("image_id", "An image id from a job or the gallery.")
_SSE = {"description": "Server-sent events: `job`, `progress`…, then `done`, `failed` or `cancelled`; "
                       "each `data` is JSON. If the model worker dies meanwhile, `restarting` (`id`, "
                       "`message`) comes next, and once a new worker serves the stream starts over "
                       "from `job`.", "content": {"text/event-stream": {"schema": SSE_EVENT}}}
_PNG = {"description": "A PNG image", "content": {"image/png": {"schema": {"type": "string",
                                                                           "contentMediaType": "image/png"}}}}


def paths() -> dict[str, dict[str, Schema]]:
    """Every route but the picture tools' (:mod:`.tools`), one dialect at a time."""
    return {**_native_paths(), **_pairing_paths(), **_openai_paths(), **_a1111_paths()}


def _native_paths() -> dict[str, dict[str, Schema]]:
    """Pennello's own API under /api, and the web page."""
    native = "native"
    return {
        "/api/generate": {"post": op(
            "Queue a generation (202), or wait for it, or stream its events", native, body="GenerateRequest",
            errors=("400", "404", "429"), responses={
                "202": reply(ref("Job"), "Queued; Location names the job"),
                "200": {"description": "Done (`wait`), or an event stream (`stream`)",
                        "content": {"application/json": {"schema": ref("Job")},
                                    "text/event-stream": {"schema": SSE_EVENT}}},
                "409": reply(ref("Job"), "Cancelled while waiting"),
                "500": reply(ref("Job"), "Failed while waiting")})},
        "/api/jobs": {"get": op("Jobs the caller may see, oldest first", native, reply(ref("JobList")),
                                errors=("400",), params=({
                                    "name": "mine", "in": "query", "required": False,
                                    "schema": {"type": "boolean", "default": False},
                                    "description": "Only the caller's own jobs (the owner otherwise sees "
                                                   "every device's)."},))},
        "/api/jobs/{job_id}": {
            "get": op("One job", native, reply(ref("Job")), errors=("404",), params=(_JOB_ID,)),
            "delete": op("Cancel a job", native, reply(ref("Job")), errors=("404",), params=(_JOB_ID,))},
        "/api/jobs/{job_id}/preview": {"get": op(
            "The picture a running job has drawn so far (its own device or the owner only)", native,
            errors=("404",), params=(_JOB_ID,),
            responses={"200": {"description": "The picture so far, decoded once per step",
                               "content": {"image/png": {"schema": {"type": "string",
                                                                    "contentMediaType": "image/png"}}}},
                       "204": {"description": "No picture yet: the job is queued or ended, before its "
                                              "first step, or its model's latents give none"}})},
        "/api/jobs/{job_id}/events": {"get": op("Follow a job as server-sent events", native, _SSE,
                                                errors=("404", "429"), params=(_JOB_ID,))},
        "/api/images/{image_id}": {
            "get": op("A saved picture (PNG, JPEG or WebP)", native, errors=("404",), params=(_IMAGE_ID,),
                      responses={"200": {"description": "The picture", "content": {
                          f"image/{fmt}": {"schema": {"type": "string", "contentMediaType": f"image/{fmt}"}}
                          for fmt in IMAGE_FORMATS}}}),
            "delete": op("Delete a saved picture: the owner any, a device only its own (404 for others')",
                         native, reply(ref("Deleted")), errors=("404",), params=(_IMAGE_ID,))},
        "/api/outputs": {"get": op("The gallery, newest first", native, reply(ref("Outputs")), errors=("400",),
                                   params=(_query_int("limit", 50, 1, 500), _query_int("offset", 0, 0, 10**9)))},
        "/api/models": {"get": op("Installed models", native, reply(ref("ModelList")))},
        "/api/models/{name}/load": {"post": {**op(
            "Load a model now and keep it warm (owner only)", native, reply(ref("LoadedModel")),
            errors=("400", "403", "404"), params=(path_param("name", "An installed model."),)),
            "requestBody": {"required": False, "content": {"application/json": {"schema": ref("LoadRequest")}}}}},
        "/api/models/{name}/unload": {"post": op(
            "Free a model's memory (owner only)", native, reply(ref("Unloaded")), errors=("403", "404"),
            params=(path_param("name", "An installed model."),))},
        "/api/ps": {"get": op("Loaded models, their memory and keep-alive left; the device and the queue",
                              native, reply(ref("LoadedList")))},
        "/api/shutdown": {"post": op(
            "Stop the daemon as SIGTERM does: running jobs finish, queued ones are cancelled (owner only)",
            native, reply(ref("Stopping"), "Stopping; the daemon exits shortly"), status="202",
            errors=("403", "404"))},
        "/api/progress": {"get": op("The batch on the device now", native, reply(ref("Progress")))},
        "/api/health": {"get": op("Liveness and readiness (no token needed)", native, reply(ref("Health")),
                                  public=True)},
        "/api/openapi.json": {"get": op("This description", native, reply({"type": "object"}), public=True)},
        # An alias at the root, where generic OpenAPI tools look first; the same document.
        "/openapi.json": {"get": op("This description (the same as /api/openapi.json)", native,
                                    reply({"type": "object"}), public=True)},
        "/api/offline": {"get": op("No-network mode: what may be reached and the refused attempts, with "
                                   "their stacks (owner only)", native, reply(ref("OfflineStatus")),
                                   errors=("403",))},
        "/": {"get": op("The web page (no token needed; it pairs the browser)", "web",
                        {"description": "HTML", "content": {"text/html": {"schema": STR}}}, public=True)},
    }


def _pairing_paths() -> dict[str, dict[str, Schema]]:
    """Pairing and tokens."""
    auth = "pairing"
    return {
        "/api/pair/code": {"post": _optional_body(op(
            "A new one-time pairing code, for a device or a cluster node (owner only)", auth,
            reply(ref("PairCode"), "Created"), status="201", body="PairCodeRequest", errors=("400", "403")))},
        "/api/cluster/join": {"post": _cluster_join()},
        "/api/pair/qr.png": {"get": op("The current code's pairing address as a QR code (owner only)",
                                       auth, _PNG, errors=("403", "404"))},
        "/api/pair": {"post": op("Exchange a pairing code for a token (no token needed)", auth,
                                 reply(ref("PairResponse"), "Paired"), status="201", body="PairRequest",
                                 errors=("400", "401", "429"), public=True)},
        "/api/login-link": {"post": op("A one-time link that logs this machine's browser in as the owner "
                                       "(owner only; `pennello open`)", auth, reply(ref("LoginLink"), "Created"),
                                       status="201", errors=("403",))},
        "/login": {"get": op("Use up a login link: sets the owner's session cookie (HttpOnly, SameSite=Strict) "
                             "and redirects to the page", auth,
                             responses={"303": {"description": "Logged in; to the page at /"}},
                             errors=("400", "401", "403"), public=True,
                             params=({"name": "token", "in": "query", "required": True, "schema": STR,
                                      "description": "The one-time token of POST /api/login-link."},))},
        "/api/pair/status": {"get": op("Whether the caller is the owner, a paired device, or neither",
                                       auth, reply(ref("PairStatus")), public=True)},
        "/api/tokens": {"get": op("Paired devices (owner only)", auth, reply(ref("TokenList")),
                                  errors=("403",)),
                        "post": op("Issue a token without pairing, e.g. an owner (admin) token (owner only)",
                                   auth, reply(ref("PairResponse"), "Issued"), status="201",
                                   body="TokenRequest", errors=("400", "403"))},
        "/api/tokens/{token_id}": {"delete": op(
            "Revoke a device's token (owner only)", auth, reply(ref("Revoked")), errors=("403", "404"),
            params=(path_param("token_id", "A token id from GET /api/tokens."),))},
    }


def _optional_body(operation: Schema) -> Schema:
    operation["requestBody"]["required"] = False
    return operation


def _cluster_join() -> Schema:
    """POST /api/cluster/join (docs/cluster.md): 201 when a code paired the node, else 200."""
    operation = op("A cluster node gets the cluster token: with a `pennello pair --node` code, then with its "
                   "node token; another pennello or model version is refused", "pairing",
                   responses={"200": reply(ref("ClusterJoin"), "The cluster token"),
                              "201": reply(ref("ClusterJoin"), "Paired; the node token and the cluster token")},
                   body="ClusterJoinRequest", errors=("400", "401", "403", "404", "409", "429"), public=True)
    operation["responses"]["409"]["description"] = "Another pennello or model version than the front's"
    return operation


def _openai_paths() -> dict[str, dict[str, Schema]]:
    """The OpenAI-compatible API under /v1."""
    oa = "openai"
    return {
        "/v1/images/generations": {"post": op(
            "OpenAI-compatible image generation", oa, reply(ref("OpenAIImagesResponse")),
            body="OpenAIImageRequest", errors=("400", "404", "429", "500"), error_schema="OpenAIError")},
        "/v1/models": {"get": op("OpenAI-compatible model list", oa, reply(ref("OpenAIModelList")),
                                 error_schema="OpenAIError")},
        "/v1/models/{name}": {"get": _unroutable_404(op(
            "One model, OpenAI-style", oa, reply(ref("OpenAIModel")), errors=("404",),
            error_schema="OpenAIError", params=(path_param("name", "An installed model."),)))},
    }


def _a1111_paths() -> dict[str, dict[str, Schema]]:
    """The AUTOMATIC1111-compatible API under /sdapi/v1."""
    a1 = "a1111"
    return {
        "/sdapi/v1/txt2img": {"post": op(
            "AUTOMATIC1111-compatible txt2img", a1, reply(ref("A1111Txt2ImgResponse")),
            body="A1111Txt2ImgRequest", errors=("400", "404", "409", "429", "500"))},
        "/sdapi/v1/sd-models": {"get": op("AUTOMATIC1111-compatible model list", a1,
                                          reply({"type": "array", "items": ref("A1111SDModel")}))},
        "/sdapi/v1/progress": {"get": op(
            "AUTOMATIC1111-compatible progress", a1, reply(ref("A1111Progress")),
            params=({"name": "skip_current_image", "in": "query", "required": False,
                     "schema": STR, "description": "true (or 1, yes, on): no preview in "
                                                   "current_image; any other value: false."},))},
    }

