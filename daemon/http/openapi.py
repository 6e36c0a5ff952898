"""The OpenAPI 3.1 description of every route, served at ``GET /api/openapi.json``.

Request schemas are built from the field tables the routes themselves validate with, so the
description cannot drift from what is accepted; a test fails on any route left undocumented.
The bounds the engine enforces (prompt length, ``n``, ``steps``…) come from the daemon's own
config, so a daemon with ``engine.max_n = 2`` describes ``n`` as at most 2; tests/test_fuzz.py
fuzzes every operation from this description (docs/fuzz.md).

    $ curl -s localhost:8420/api/openapi.json | python -m json.tool | less
    >>> spec = build_spec()
    >>> spec["openapi"], "/v1/images/generations" in spec["paths"]
    ('3.1.0', True)
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, get_args

from flask import Blueprint, jsonify

from pennello import __version__
from pennello.config import CompileMode, Config, EngineConfig

from .routes import a1111 as routes_a1111
from .routes import openai as routes_openai
from .context import current_config
from ..engine.engine import MAX_GUIDANCE
from ..engine.jobs import IMAGE_FORMATS, MAX_SEED
from ..engine.families import families, get_family
from ..engine.profiles import Offload
from .routes.native import GENERATE_FIELDS

bp = Blueprint("openapi", __name__, url_prefix="/api")

Schema = dict[str, Any]
_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: Mapping[str, Schema], required: tuple[str, ...] = (), extra: bool = False,
         description: str | None = None) -> Schema:
    schema: Schema = {"type": "object", "properties": dict(properties), "additionalProperties": extra}
    if required:
        schema["required"] = list(required)
    if description:
        schema["description"] = description
    return schema


def _fields(table: Mapping[str, Any], notes: Mapping[str, Schema]) -> dict[str, Schema]:
    """A route's field table (name -> Python type) as JSON Schema properties; null means absent."""
    return {name: {"type": [_JSON_TYPES[kind], "null"], **notes.get(name, {})} for name, kind in table.items()}


def _nullable(kind: str, **more: Any) -> Schema:
    return {"type": [kind, "null"], **more}


_STR, _INT, _NUM, _BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
_SIZE_NOTE = "Must suit the model's family (for pennello-tiny: a multiple of 8 from 64 to 1024)."
# A1111 fields accepted only at their "off" value (null counts as absent, as everywhere).
_OFF_ONLY: dict[str, Schema] = {
    "enable_hr": {"enum": [False, None], "description": "Only false (off) is accepted."},
    "script_name": {"type": "null", "description": "Only null (no script) is accepted."},
    "alwayson_scripts": {"maxProperties": 0, "description": "Only {} (no scripts) is accepted."}}

SCHEMAS: dict[str, Schema] = {
    "Error": _obj({"error": _obj({"type": _STR, "message": _STR, "field": _nullable("string")},
                                ("type", "message", "field"))}, ("error",),
                  description="Every pennello error. `field` names the offending input when there is one."),
    "GenerateRequest": _obj(_fields(GENERATE_FIELDS, {
        "prompt": {"description": "What to draw."},
        "model": {"description": "An installed model; the configured default when absent."},
        "width": {"description": _SIZE_NOTE}, "height": {"description": _SIZE_NOTE},
        "seed": {"minimum": 0, "maximum": 2**32 - 1, "description": "Random when absent; image i uses seed+i."},
        "n": {"minimum": 1, "description": "Number of pictures (up to engine.max_n)."},
        "format": {"enum": [*IMAGE_FORMATS, None]},
        "stream": {"description": "Answer with server-sent events instead of JSON."},
        "wait": {"description": "Answer when the job ended instead of at once with 202."},
        "enhance": {"description": "Auto-enhance each picture (contrast, sharpness) before saving it."},
    }), ("prompt",)),
    "Image": _obj({"id": _STR, "url": _STR, "seed": _INT, "width": _INT, "height": _INT,
                   "format": {"enum": list(IMAGE_FORMATS)}, "enhance": _ref("EnhanceMetrics"),
                   "copyright": _ref("CopyrightCheck")}, ("id", "url", "seed", "width", "height", "format")),
    "Job": _obj({
        "id": _STR, "status": {"enum": ["queued", "running", "done", "failed", "cancelled"]},
        "model": _nullable("string"), "prompt": _STR, "negative_prompt": _STR, "width": _nullable("integer"),
        "height": _nullable("integer"), "steps": _nullable("integer"), "guidance": _nullable("number"),
        "n": _INT, "format": _STR, "seeds": {"type": "array", "items": _INT}, "step": _INT,
        "total_steps": _INT, "progress": _NUM, "batch_size": _INT,
        "images": {"type": "array", "items": _ref("Image")}, "error": _nullable("string"),
        "created": _NUM, "started": _nullable("number"), "finished": _nullable("number")},
        ("id", "status", "images"), extra=True),
    "JobList": _obj({"jobs": {"type": "array", "items": _ref("Job")}}, ("jobs",)),
    "OutputRecord": _obj({"id": _STR, "prompt": _STR, "seed": _INT, "model": _STR, "format": _STR,
                          "created": _NUM, "size": _STR}, ("id",), extra=True,
                         description="A saved picture's embedded record (as in its XMP metadata)."),
    "Outputs": _obj({"images": {"type": "array", "items": _ref("OutputRecord")}, "limit": _INT,
                     "offset": _INT, "next_offset": _nullable("integer")}, ("images",)),
    "Model": _obj({"name": _STR, "version": _INT, "family": _STR, "pipeline": _STR,
                   "defaults": {"type": "object"}, "description": _nullable("string"),
                   "license": _nullable("string"), "digest": _STR, "loaded": _BOOL, "default": _BOOL},
                  ("name", "loaded"), extra=True),
    "ModelList": _obj({"models": {"type": "array", "items": _ref("Model")}}, ("models",)),
    "LoadedModel": _obj({"name": _STR, "version": _INT, "family": _STR, "device": _STR, "dtype": _STR,
                         "param_bytes": _INT, "loaded_at": _NUM, "idle_s": _NUM,
                         "expires_in_s": _nullable("number"), "cuda_memory_allocated": _nullable("integer"),
                         "placement": {"anyOf": [_ref("Placement"), {"type": "null"}]}},
                        ("name",), extra=True),
    "Placement": _obj({
        "profile": _STR, "device": _STR, "offload": {"enum": list(get_args(Offload))}, "vae_tiling": _BOOL,
        "vae_slicing": _BOOL, "attention_slicing": _BOOL, "cpu_threads": _INT, "reason": _STR,
        "compile": {"enum": list(get_args(CompileMode)),
                    "description": "torch.compile mode of the denoiser; absent: not compiled."},
        "channels_last": _BOOL, "fuse_qkv": _BOOL,
        "warmup_s": {**_NUM, "description": "Seconds of the warm-up generation at load (compile)."},
        "not_applied": {"type": "array", "items": _STR,
                        "description": "Speed-ups asked for that this model or placement cannot take, "
                                       "each with why."}},
        ("profile", "device"), extra=True,
        description="How the model was placed and tuned on load (docs/performance.md); switches that "
                    "are off are left out."),
    "LoadedList": _obj({"models": {"type": "array", "items": _ref("LoadedModel")}}, ("models",)),
    "Unloaded": _obj({"name": _STR, "unloaded": _BOOL}, ("name", "unloaded")),
    "Progress": _obj({"state": {"enum": ["idle", "running"]}, "jobs": {"type": "array", "items": _STR},
                      "step": _INT, "total": _INT, "fraction": _NUM, "eta_s": _NUM, "queue_depth": _INT},
                     ("state", "fraction"), extra=True),
    "Health": _obj({"version": _STR, "ready": _BOOL, "default_model": _STR, "default_loaded": _BOOL,
                    "device": _STR, "queue_depth": _INT, "running": _INT,
                    "loaded": {"type": "array", "items": _STR}, "offline": _ref("OfflineSummary")},
                   ("ready",), extra=True),
    "OfflineSummary": _obj({"mode": {"enum": ["on", "off"]}, "lan": _nullable("boolean"),
                            "allowed": {"type": "array", "items": _STR}, "refused": _INT},
                           ("mode", "allowed", "refused"), extra=True,
                           description="No-network mode: whether it is enforced, what the daemon may "
                                       "reach, and how many attempts to reach anything else it refused."),
    "OfflineAttempt": _obj({"event": _STR, "destination": _STR, "time": _NUM, "thread": _STR,
                            "where": _STR, "stack": _STR},
                           ("event", "destination", "time", "where", "stack")),
    "OfflineStatus": {"allOf": [_ref("OfflineSummary"), _obj({
        "since": _nullable("number"), "env": {"type": "object"},
        "refused_by_destination": {"type": "object", "additionalProperties": _INT},
        "attempts": {"type": "array", "items": _ref("OfflineAttempt")}}, extra=True)]},
    "PairCode": _obj({"code": {"type": "string", "pattern": "^[2-9A-HJ-NP-Z]{8}$"}, "expires_in_s": _NUM,
                      "pair_url": _STR, "qr_png_url": _STR, "lan": _BOOL},
                     ("code", "expires_in_s", "pair_url")),
    "PairRequest": _obj({"code": {"type": "string", "description": "As shown; case and dashes ignored."},
                         "name": {"type": "string", "maxLength": 64, "description": "The device's name."},
                         "cookie": {"type": "boolean", "description": "Also set the token as an "
                                    "HttpOnly cookie (for the web page)."}}, ("code", "name")),
    "Token": _obj({"id": _STR, "name": _STR, "created": _NUM, "last_used": _nullable("number"),
                   "scope": {"enum": ["device", "owner"]}}, ("id", "name", "created")),
    "PairResponse": _obj({"token": {"type": "string", "description": "Shown once; send as Bearer."},
                          "id": _STR, "name": _STR, "created": _NUM, "last_used": _nullable("number"),
                          "scope": {"enum": ["device", "owner"]}},
                         ("token", "id", "name")),
    "TokenRequest": _obj({"name": {"type": "string", "maxLength": 64, "description": "Who will use it."},
                          "scope": {"enum": ["device", "owner", None], "default": "device",
                                    "description": "owner: an admin token that may do everything."}},
                         ("name",)),
    "PairStatus": _obj({"owner": _BOOL, "paired": _BOOL, "device": {"oneOf": [_ref("Token"), {"type": "null"}]},
                        "lan": _BOOL, "scope": {"enum": ["owner", "device", "anonymous"]},
                        "code_expires_in_s": _nullable("number")}, ("owner", "paired")),
    "TokenList": _obj({"tokens": {"type": "array", "items": _ref("Token")}}, ("tokens",)),
    "Revoked": _obj({"revoked": _ref("Token")}, ("revoked",)),
    "OpenAIImageRequest": _obj(_fields(routes_openai.GENERATION_FIELDS, {
        "size": {"description": "WIDTHxHEIGHT or auto (the model's default). " + _SIZE_NOTE},
        "response_format": {"enum": [*routes_openai.RESPONSE_FORMATS, None], "default": "b64_json"},
        "output_format": {"enum": [*IMAGE_FORMATS, None]},
        "stream": {"enum": [False, None], "description": "Must be false or absent."},
        **{name: {"description": "Accepted for compatibility; ignored."} for name in routes_openai.IGNORED_FIELDS},
    }), ("prompt",)),
    "OpenAIImage": _obj({"b64_json": _STR, "url": _STR, "revised_prompt": _STR}),
    "OpenAIImagesResponse": _obj({"created": _INT, "data": {"type": "array", "items": _ref("OpenAIImage")},
                                  "output_format": _STR, "size": _STR}, ("created", "data")),
    "OpenAIModel": _obj({"id": _STR, "object": {"const": "model"}, "created": _INT, "owned_by": _STR},
                        ("id", "object", "created", "owned_by")),
    "OpenAIModelList": _obj({"object": {"const": "list"}, "data": {"type": "array", "items": _ref("OpenAIModel")}},
                            ("object", "data")),
    "OpenAIError": _obj({"error": _obj({"message": _STR, "type": _STR, "param": _nullable("string"),
                                        "code": _nullable("string")}, ("message", "type", "param", "code"))},
                        ("error",)),
    "A1111Txt2ImgRequest": _obj(_fields(
        {**routes_a1111.TXT2IMG_FIELDS, **routes_a1111.IGNORED_FIELDS,
         **{k: t for k, (t, _) in routes_a1111.OFF_ONLY_FIELDS.items()}},
        {"seed": {"minimum": -1, "maximum": MAX_SEED, "description": "-1 or absent: random. Image i uses seed+i."},
         "cfg_scale": {"description": "Classifier-free guidance."},
         "override_settings": {"properties": {"sd_model_checkpoint": _nullable("string")},
                               "description": "Only sd_model_checkpoint is used (a title from sd-models)."},
         **{name: {"description": "Accepted for compatibility; ignored."} for name in routes_a1111.IGNORED_FIELDS},
         **_OFF_ONLY}), ("prompt",)),
    "A1111Txt2ImgResponse": _obj({"images": {"type": "array", "items": {"type": "string", "contentEncoding": "base64"}},
                                  "parameters": {"type": "object"},
                                  "info": {"type": "string", "description": "JSON: seed, all_seeds, infotexts…"}},
                                 ("images", "parameters", "info")),
    "A1111SDModel": _obj({"title": _STR, "model_name": _STR, "hash": _nullable("string"),
                          "sha256": _nullable("string"), "filename": _STR, "config": _nullable("string")},
                         ("title", "model_name", "filename")),
    "A1111Progress": _obj({"progress": _NUM, "eta_relative": _NUM, "state": {"type": "object"},
                           "current_image": _nullable("string"), "textinfo": _nullable("string")},
                          ("progress", "eta_relative", "state")),
}


def _json(schema: Schema, description: str = "OK") -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(summary: str, tag: str, ok: Schema | None = None, status: str = "200", body: str | None = None,
        errors: tuple[str, ...] = (), public: bool = False, error_schema: str = "Error",
        params: tuple[Schema, ...] = (), responses: Mapping[str, Schema] | None = None) -> Schema:
    op: Schema = {"summary": summary, "tags": [tag],
                  "responses": dict(responses or {status: ok or _json({"type": "object"})})}
    # A body over server.max_body_bytes is refused before any route sees it.
    for code in (*(errors if public else ("401", *errors)), *(("413",) if body else ())):
        op["responses"][code] = _json(_ref(error_schema), _ERROR_TEXT[code])
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    if params:
        op["parameters"] = list(params)
    if public:
        op["security"] = []
    return op


_ERROR_TEXT = {"400": "Invalid request; `field`/`param` names the input", "401": "A token is needed "
               "(non-loopback caller) or it is not valid", "403": "Only the owner may do this",
               "404": "Not found", "409": "The job was cancelled", "413": "Over a size limit (server.max_body_bytes "
               "or [images] in the config)", "429": "Busy or rate limited; "
               "see Retry-After", "500": "The job failed"}


def _unroutable_404(op: Schema) -> Schema:
    """A name no route matches (one with a line break) is answered by the app, in pennello's shape."""
    op["responses"]["404"] = _json({"anyOf": [_ref("OpenAIError"), _ref("Error")]},
                                   _ERROR_TEXT["404"] + " (pennello's shape when the name holds a line break)")
    return op


def _path_param(name: str, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": _STR, "description": description}


def _query_int(name: str, default: int, low: int, high: int) -> Schema:
    return {"name": name, "in": "query", "required": False,
            "schema": {"type": "integer", "default": default, "minimum": low, "maximum": high}}


_JOB_ID = _path_param("job_id", "A job id from POST /api/generate.")
_SSE = {"description": "Server-sent events: `job`, `progress`…, then `done`, `failed` or `cancelled`; "
                       "each `data` is JSON.", "content": {"text/event-stream": {"schema": _STR}}}
_PNG = {"description": "A PNG image", "content": {"image/png": {"schema": {"type": "string",
                                                                           "contentMediaType": "image/png"}}}}


def _paths() -> dict[str, dict[str, Schema]]:
    native, auth, oa, a1 = "native", "pairing", "openai", "a1111"
    return {
        "/api/generate": {"post": _op(
            "Queue a generation (202), or wait for it, or stream its events", native, body="GenerateRequest",
            errors=("400", "404", "429"), responses={
                "202": _json(_ref("Job"), "Queued; Location names the job"),
                "200": {"description": "Done (`wait`), or an event stream (`stream`)",
                        "content": {"application/json": {"schema": _ref("Job")},
                                    "text/event-stream": {"schema": _STR}}},
                "409": _json(_ref("Job"), "Cancelled while waiting"),
                "500": _json(_ref("Job"), "Failed while waiting")})},
        "/api/jobs": {"get": _op("Jobs the caller may see, oldest first", native, _json(_ref("JobList")))},
        "/api/jobs/{job_id}": {
            "get": _op("One job", native, _json(_ref("Job")), errors=("404",), params=(_JOB_ID,)),
            "delete": _op("Cancel a job", native, _json(_ref("Job")), errors=("404",), params=(_JOB_ID,))},
        "/api/jobs/{job_id}/events": {"get": _op("Follow a job as server-sent events", native, _SSE,
                                                 errors=("404",), params=(_JOB_ID,))},
        "/api/images/{image_id}": {"get": _op(
            "A saved picture (PNG, JPEG or WebP)", native, errors=("404",),
            params=(_path_param("image_id", "An image id from a job or the gallery."),),
            responses={"200": {"description": "The picture", "content": {
                f"image/{fmt}": {"schema": {"type": "string", "contentMediaType": f"image/{fmt}"}}
                for fmt in IMAGE_FORMATS}}})},
        "/api/outputs": {"get": _op("The gallery, newest first", native, _json(_ref("Outputs")), errors=("400",),
                                    params=(_query_int("limit", 50, 1, 500), _query_int("offset", 0, 0, 10**9)))},
        "/api/models": {"get": _op("Installed models", native, _json(_ref("ModelList")))},
        "/api/models/{name}/load": {"post": _op(
            "Load a model now and keep it warm (owner only)", native, _json(_ref("LoadedModel")),
            errors=("403", "404"), params=(_path_param("name", "An installed model."),))},
        "/api/models/{name}/unload": {"post": _op(
            "Free a model's memory (owner only)", native, _json(_ref("Unloaded")), errors=("403", "404"),
            params=(_path_param("name", "An installed model."),))},
        "/api/ps": {"get": _op("Loaded models and their memory", native, _json(_ref("LoadedList")))},
        "/api/progress": {"get": _op("The batch on the device now", native, _json(_ref("Progress")))},
        "/api/health": {"get": _op("Liveness and readiness (no token needed)", native, _json(_ref("Health")),
                                   public=True)},
        "/api/openapi.json": {"get": _op("This description", native, _json({"type": "object"}), public=True)},
        "/api/offline": {"get": _op("No-network mode: what may be reached and the refused attempts, with "
                                    "their stacks (owner only)", native, _json(_ref("OfflineStatus")),
                                    errors=("403",))},
        "/api/pair/code": {"post": _op("A new one-time pairing code (owner only)", auth,
                                       _json(_ref("PairCode"), "Created"), status="201", errors=("403",))},
        "/api/pair/qr.png": {"get": _op("The current code's pairing address as a QR code (owner only)",
                                        auth, _PNG, errors=("403", "404"))},
        "/api/pair": {"post": _op("Exchange a pairing code for a token (no token needed)", auth,
                                  _json(_ref("PairResponse"), "Paired"), status="201", body="PairRequest",
                                  errors=("400", "401", "429"), public=True)},
        "/api/pair/status": {"get": _op("Whether the caller is the owner, a paired device, or neither",
                                        auth, _json(_ref("PairStatus")), public=True)},
        "/api/tokens": {"get": _op("Paired devices (owner only)", auth, _json(_ref("TokenList")),
                                   errors=("403",)),
                        "post": _op("Issue a token without pairing, e.g. an owner (admin) token (owner only)",
                                    auth, _json(_ref("PairResponse"), "Issued"), status="201",
                                    body="TokenRequest", errors=("400", "403"))},
        "/api/tokens/{token_id}": {"delete": _op(
            "Revoke a device's token (owner only)", auth, _json(_ref("Revoked")), errors=("403", "404"),
            params=(_path_param("token_id", "A token id from GET /api/tokens."),))},
        "/v1/images/generations": {"post": _op(
            "OpenAI-compatible image generation", oa, _json(_ref("OpenAIImagesResponse")),
            body="OpenAIImageRequest", errors=("400", "404", "429", "500"), error_schema="OpenAIError")},
        "/v1/models": {"get": _op("OpenAI-compatible model list", oa, _json(_ref("OpenAIModelList")),
                                  error_schema="OpenAIError")},
        "/v1/models/{name}": {"get": _unroutable_404(_op(
            "One model, OpenAI-style", oa, _json(_ref("OpenAIModel")), errors=("404",),
            error_schema="OpenAIError", params=(_path_param("name", "An installed model."),)))},
        "/sdapi/v1/txt2img": {"post": _op(
            "AUTOMATIC1111-compatible txt2img", a1, _json(_ref("A1111Txt2ImgResponse")),
            body="A1111Txt2ImgRequest", errors=("400", "404", "429", "500"))},
        "/sdapi/v1/sd-models": {"get": _op("AUTOMATIC1111-compatible model list", a1,
                                           _json({"type": "array", "items": _ref("A1111SDModel")}))},
        "/sdapi/v1/progress": {"get": _op(
            "AUTOMATIC1111-compatible progress", a1, _json(_ref("A1111Progress")),
            params=({"name": "skip_current_image", "in": "query", "required": False,
                     "schema": _STR, "description": "Accepted (any value) and ignored; no preview "
                                                    "image is ever sent."},))},
        "/": {"get": _op("The web page (no token needed; it pairs the browser)", "web",
                         {"description": "HTML", "content": {"text/html": {"schema": _STR}}}, public=True)},
    }


# Request fields the engine checks, by schema: property -> the engine limit it is checked against.
_ENGINE_CHECKED: dict[str, dict[str, str]] = {
    "GenerateRequest": {f: f for f in ("prompt", "negative_prompt", "n", "steps", "seed", "guidance",
                                       "width", "height")},
    "OpenAIImageRequest": {"prompt": "prompt", "n": "n"},
    "A1111Txt2ImgRequest": {"prompt": "prompt", "negative_prompt": "negative_prompt", "steps": "steps",
                            "cfg_scale": "guidance", "width": "width", "height": "height",
                            "batch_size": "n", "n_iter": "n"},
    "EditForm": {f: f for f in ("prompt", "negative_prompt", "n", "steps", "seed", "guidance",
                                "width", "height")},
    "OpenAIImageEditForm": {"prompt": "prompt", "n": "n"},
    "A1111Img2ImgRequest": {"prompt": "prompt", "negative_prompt": "negative_prompt", "steps": "steps",
                            "cfg_scale": "guidance", "width": "width", "height": "height",
                            "batch_size": "n", "n_iter": "n"},
    "BatchRequest": {f: f for f in ("negative_prompt", "steps", "seed", "guidance", "width", "height")},
    "PipelineRun": {"seed": "seed"},
}


def engine_limits(engine: EngineConfig) -> dict[str, Schema]:
    """JSON Schema bounds of what :meth:`.engine.Engine.submit` accepts, under ``engine``'s limits.

    Sizes are the union over the model families that draw (each family checks its own range).
    """
    drawing = [get_family(name) for name in families() if get_family(name).purpose in ("generate", "edit")]
    size = {"minimum": min(f.min_size for f in drawing), "maximum": max(f.max_size for f in drawing),
            "multipleOf": min(f.multiple for f in drawing)}
    return {"prompt": {"maxLength": engine.max_prompt_chars, "pattern": r"\S"},
            "negative_prompt": {"maxLength": engine.max_prompt_chars},
            "n": {"minimum": 1, "maximum": engine.max_n}, "steps": {"minimum": 1, "maximum": engine.max_steps},
            "seed": {"minimum": 0, "maximum": MAX_SEED}, "guidance": {"minimum": 0, "maximum": MAX_GUIDANCE},
            "width": size, "height": size}


def _with_limits(schemas: dict[str, Schema], engine: EngineConfig) -> dict[str, Schema]:
    """``schemas`` with the engine's bounds on the request fields of :data:`_ENGINE_CHECKED`
    (copies; the module-level schemas stay as they are)."""
    limits = engine_limits(engine)
    schemas = {name: {**schema, "properties": dict(schema["properties"])} if name in _ENGINE_CHECKED else schema
               for name, schema in schemas.items()}
    for name, checked in _ENGINE_CHECKED.items():
        properties = schemas[name]["properties"]
        for prop, limit in checked.items():
            properties[prop] = {**properties[prop], **limits[limit]}
    return schemas


@functools.lru_cache(maxsize=4)
def build_spec(config: Config | None = None) -> dict[str, Any]:
    """The whole OpenAPI document for a daemon with ``config`` (the defaults when None; built
    once per config)."""
    from . import openapi_tools  # the picture tools' part; it uses this module's helpers

    config = config or Config()
    return {
        "openapi": "3.1.0",
        "info": {"title": "pennello", "version": __version__,
                 "description": "Private, offline image generation. Loopback callers need no credentials; "
                                "other devices pair (`pennello pair`) and send `Authorization: Bearer <token>`. "
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
        "security": [{}, {"bearer": []}],
        "paths": {**_paths(), **openapi_tools.paths()},
        "components": {"schemas": _with_limits({**SCHEMAS, **openapi_tools.SCHEMAS}, config.engine),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "A token from POST /api/pair."}}},
    }


@bp.get("/openapi.json")
def spec() -> Any:
    return jsonify(build_spec(current_config()))
