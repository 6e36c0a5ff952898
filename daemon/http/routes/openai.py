"""An OpenAI-compatible image API under ``/v1``, so existing OpenAI clients work unchanged.

    >>> from openai import OpenAI  # doctest: +SKIP
    >>> client = OpenAI(base_url="http://127.0.0.1:8420/v1", api_key=TOKEN)  # a paired or issued token
    >>> result = client.images.generate(model="pennello-tiny", prompt="a red kite", size="64x64",
    ...                                 n=2, response_format="b64_json")  # doctest: +SKIP
    >>> len(result.data)  # doctest: +SKIP
    2

``POST /v1/images/generations`` takes the OpenAI request fields: ``prompt``, ``model`` (an
installed pennello model; the default one when absent or empty, and for OpenAI's own model names
``dall-e-2``, ``dall-e-3`` and ``gpt-image-1``, which clients such as Open WebUI send when their
model setting is left empty), ``n``, ``size`` (``WxH`` or ``auto``),
``response_format`` (``b64_json``, the default here as for GPT image models, or ``url``: an
absolute address of the picture in pennello's own API) and ``output_format`` (png, jpeg, webp).
Fields that steer OpenAI's hosted models only (``quality``, ``style``, ``user``, ``background``,
``moderation``…) are accepted and ignored, as OpenAI itself does for models that lack them.
Errors have OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``. A model that is
neither installed nor an OpenAI name is a 404 whose advice lists the installed models and the
ones ``pennello install NAME`` can add (read from the catalog, which the daemon reads but never
fetches from).
"""

from __future__ import annotations

import base64
import re
import time
from typing import Any

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from pennello.errors import ModelNotFoundError, PennelloError, RequestError

from ...engine.jobs import GenerateRequest
from ...engine.params import dialect_names, dialect_types
from ..context import current_engine, current_owner, current_paths
from ..request import json_body
from ..waiting import hold_while_waiting

bp = Blueprint("openai", __name__, url_prefix="/v1")

RESPONSE_FORMATS = ("b64_json", "url")
# OpenAI request fields with no meaning for a local diffusion model: accepted, ignored.
IGNORED_FIELDS: dict[str, Any] = {
    "quality": str, "style": str, "user": str, "background": str, "moderation": str,
    "output_compression": int, "partial_images": int, "safety_identifier": str}
# OpenAI's names for the parameters it has, plus ``size`` (our width and height in one).
GENERATION_FIELDS: dict[str, Any] = {
    **dialect_types("openai"), "size": str, "response_format": str, "stream": bool, **IGNORED_FIELDS}
_SIZE_RE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
# Our request fields as OpenAI names them, for the error's ``param``.
_PARAM_NAMES = {**dialect_names("openai"), "width": "size", "height": "size"}
# OpenAI's hosted models, which clients name by default: they mean "the usual model", here ours.
OPENAI_MODEL_NAMES = frozenset({"dall-e-2", "dall-e-3", "gpt-image-1"})


@bp.post("/images/generations")
def generate_images() -> Any:
    body = json_body(GENERATION_FIELDS, required=("prompt",))
    response_format = body.get("response_format", "b64_json")
    if response_format not in RESPONSE_FORMATS:
        raise RequestError(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}",
                           field="response_format")
    if body.get("stream"):
        raise RequestError("streaming image generation is not supported; leave stream unset",
                           field="stream")
    width, height = parse_size(body.get("size", "auto"))
    hold_while_waiting()
    job = current_engine().submit(GenerateRequest(
        **openai_params(body), width=width, height=height, owner=current_owner()))
    job.wait()
    if job.status != "done":
        raise PennelloError(f"image generation {job.status}: {job.error or 'no pictures were made'}")
    return jsonify({"created": int(job.finished or time.time()), "data": [
        _image_data(image, response_format) for image in job.images],
        "output_format": job.request.format, "size": f"{job.request.width}x{job.request.height}"})


def openai_params(body: dict[str, Any]) -> dict[str, Any]:
    """The generation parameters a body names, in pennello's names (absent ones left out); an
    empty ``model`` or one of OpenAI's own model names is left out too, so the default is used."""
    params = {name: body[alias] for name, alias in dialect_names("openai").items() if alias in body}
    if params.get("model") in OPENAI_MODEL_NAMES or params.get("model") == "":
        del params["model"]
    return params


# /v1/images/edits: multipart; the text fields arrive as strings and are converted to these types.
EDIT_FIELDS: dict[str, Any] = {**GENERATION_FIELDS, "input_fidelity": str, "complexity": str}
EDIT_FILES = ("image", "image[]", "mask")


@bp.post("/images/edits")
def edit_images() -> Any:
    """OpenAI's image edit: the picture(s) (``image``, repeated, or ``image[]``), an optional
    ``mask`` (transparent where to repaint) and a prompt; pennello redraws it image-to-image
    (no mask) or inpaints (mask) with an SD-class model, which takes one picture; a model of a
    family that takes references (qwen-image-edit) gets all of them, as GPT image models do."""
    from ...tools.edit import EditRequest, run_edit
    from .tools import form_fields, read_upload

    body = form_fields(EDIT_FIELDS, files=EDIT_FILES, required=("prompt",))
    response_format = body.get("response_format", "b64_json")
    if response_format not in RESPONSE_FORMATS:
        raise RequestError(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}",
                           field="response_format")
    if body.get("stream"):
        raise RequestError("streaming image edits are not supported; leave stream unset", field="stream")
    uploads = request.files.getlist("image") + request.files.getlist("image[]")
    if not uploads:
        raise RequestError("image is required: a PNG, JPEG or WebP file", field="image")
    pictures = [read_upload({}, upload=upload) for upload in uploads]
    origin = dict(pictures[0][1])  # type: ignore[index]
    if len(pictures) > 1:
        origin["references_from_upload"] = [p[1]["from_upload"] for p in pictures[1:]]  # type: ignore[index]
    mask = read_upload({}, "mask", required=False, mode="RGBA")
    if mask is not None:
        origin["mask"] = mask[1]["from_upload"]
    width, height = parse_size(body.get("size", "auto"))
    hold_while_waiting()
    result = run_edit(current_engine(), EditRequest(
        image=pictures[0][0], references=tuple(p[0] for p in pictures[1:]),  # type: ignore[index]
        mask=mask[0] if mask else None, **openai_params(body), width=width, height=height,
        owner=current_owner(), origin=origin))
    return jsonify({"created": int(time.time()), "data": [
        _image_data(image, response_format) for image in result.images],
        "output_format": result.request.format, "size": f"{result.request.width}x{result.request.height}"})


def parse_size(size: str) -> tuple[int | None, int | None]:
    """``"WxH"`` as integers; ``"auto"`` as (None, None), the model's default size.

    Raises:
        RequestError: naming ``size`` when it is neither.
    """
    if size == "auto":
        return None, None
    match = _SIZE_RE.match(size)
    if not match:
        raise RequestError(f"size must be WIDTHxHEIGHT (e.g. 512x512) or auto, not {size!r}", field="size")
    return int(match.group(1)), int(match.group(2))


def _image_data(image: Any, response_format: str) -> dict[str, str]:
    if response_format == "url":
        return {"url": f"{request.host_url}api/images/{image.id}"}
    return {"b64_json": base64.b64encode(image.path.read_bytes()).decode("ascii")}


@bp.get("/models")
def list_models() -> Any:
    return jsonify({"object": "list", "data": [_model(m) for m in current_engine().models()]})


@bp.get("/models/<path:name>")
def get_model(name: str) -> Any:
    for model in current_engine().models():
        if model["name"] == name:
            return jsonify(_model(model))
    raise ModelNotFoundError(f"the model {name!r} does not exist; GET /v1/models lists the installed ones")


def _model(model: dict[str, Any]) -> dict[str, Any]:
    # The store records no install time; 0 keeps OpenAI's integer field honest ("unknown").
    return {"id": model["name"], "object": "model", "created": 0, "owned_by": "pennello"}


@bp.errorhandler(PennelloError)
def _pennello_error(e: PennelloError) -> Response:
    field = getattr(e, "field", None)
    param = _PARAM_NAMES.get(field, field) or ("model" if isinstance(e, ModelNotFoundError) else None)
    # ``field`` is "model" only for a name the store lacks (not, say, an unsupported family).
    message = _unknown_model_advice() if isinstance(e, ModelNotFoundError) and field == "model" else str(e)
    return openai_error(e.http_status, message, e.kind, param, getattr(e, "retry_after", None))


def _unknown_model_advice() -> str:
    """What to send or install instead of a model that is not installed. The store's own message
    suggests installing the name that was sent, which for a made-up name cannot work; this lists
    the names that do (the catalog is read, never fetched: no download code is imported)."""
    from pennello.installer import Catalog

    body = request.get_json(silent=True) if request.is_json else request.form
    sent = body.get("model") if isinstance(body, dict) else None  # form fields are a dict too
    if not sent or sent in OPENAI_MODEL_NAMES:  # it was the default model that is missing
        sent = current_engine().config.engine.default_model
    installed = sorted(m["name"] for m in current_engine().models())
    installable = sorted(set(Catalog(current_paths()).entries()) - set(installed))
    return (f"the model {sent!r} is not installed; send one of: {', '.join(installed) or 'none'} "
            f"(GET /v1/models), or leave model empty for the default"
            + (f"; `pennello install NAME` adds one of: {', '.join(installable)}" if installable else ""))


@bp.errorhandler(HTTPException)
def _http_error(e: HTTPException) -> Response:
    return openai_error(e.code or 500, e.description or e.name, (e.name or "error").lower().replace(" ", "_"))


def openai_error(status: int, message: str, code: str, param: str | None = None,
                 retry_after: int | None = None) -> Response:
    """OpenAI's error body: ``type`` is its broad class, ``code`` pennello's specific kind."""
    kind = "server_error" if status >= 500 else "rate_limit_error" if status == 429 else "invalid_request_error"
    response = jsonify({"error": {"message": message, "type": kind, "param": param, "code": code}})
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response
