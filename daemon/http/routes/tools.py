"""Picture tools under ``/api``: auto-enhance, upscaling and editing uploaded pictures.

Each takes a multipart upload (``image``, and for edits an optional ``mask``) or the id of a
picture already in the gallery (``image_id``), saves the result in the gallery with its record,
and answers with it:

    $ curl -s localhost:8420/api/enhance -F image=@photo.png
    {"image": {"id": "…", "url": "/api/images/…", …}, "before": {…}, "after": {…}, "applied": […]}
    $ curl -s localhost:8420/api/upscale -F image=@photo.png -F scale=4
    $ curl -s localhost:8420/api/edit -F image=@photo.png -F prompt="in watercolour" -F strength=0.6
    $ curl -s localhost:8420/api/edit -F image=@cat.png -F image=@sofa.png \
        -F prompt="the cat of picture 1 on the sofa of picture 2" -F model=qwen-image-edit

An edit is a job like text-to-image: by default the request answers when it ended (200 done,
500 failed, 409 cancelled); ``wait=false`` answers 202 at once (follow ``/api/jobs/<id>``),
``stream=true`` with server-sent events; a full queue is 429 with Retry-After.

Uploads are checked by :mod:`.imaging` (bytes, format by magic bytes, pixels before decoding):
400 for a bad file or field, 413 for one over a limit; every error names the field.
"""

from __future__ import annotations

from typing import Any, Mapping

from flask import Blueprint, jsonify, request

from pennello.errors import RequestError

from ..request import FieldType, check_type, json_body, json_object
from ..context import call_image_id, current_engine, current_owner, owner_filter
from ..waiting import hold_while_waiting
from ...pictures.uploads import ALGORITHMICALLY_ENHANCED, decode_upload, digest
from ...engine.params import IMAGE_FORMATS, field_types, fixed_bounds
from ...engine.outputs import TRAINED_ALGORITHMIC_MEDIA, parse_xmp

bp = Blueprint("tools", __name__, url_prefix="/api")

ENHANCE_FIELDS: dict[str, Any] = {"image_id": str, "format": str}
UPSCALE_FIELDS: dict[str, Any] = {"image_id": str, "format": str, "scale": int, "method": str,
                                  "enhance": bool}
EDIT_FIELDS: dict[str, Any] = {**field_types(), "strength": float, "image_id": str, "wait": bool,
                               "stream": bool}
EDIT_FILES = ("image", "image[]", "mask")  # several pictures: repeat image (or image[])
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def form_fields(fields: Mapping[str, FieldType], files: tuple[str, ...] = ("image",),
                required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The multipart form's text fields, converted to ``fields``' types; unknown ones refused.

    Raises:
        RequestError: not multipart, an unknown field, a missing one, or one of the wrong type.
    """
    if not request.mimetype.startswith("multipart/form-data"):
        raise RequestError("send multipart/form-data (e.g. curl -F image=@picture.png)")
    unknown = sorted((set(request.form) - set(fields)) | (set(request.files) - set(files)))
    if unknown:
        raise RequestError(f"unknown field(s): {', '.join(unknown)}; accepted: "
                           f"{', '.join([*files, *fields])}", field=unknown[0])
    body: dict[str, Any] = {}
    for name, raw in request.form.items():
        kind = fields[name]
        types = kind if isinstance(kind, tuple) else (kind,)
        try:
            if bool in types:
                if raw.lower() not in _TRUE + _FALSE:
                    raise ValueError
                body[name] = raw.lower() in _TRUE
            elif int in types:
                body[name] = int(raw)
            elif float in types:
                body[name] = float(raw)
            else:
                body[name] = raw
        except ValueError:
            check_type(name, raw, kind)  # raises with the usual "must be an integer" message
            raise
    for name in required:
        if name not in body:
            raise RequestError(f"{name} is required", field=name)
    return body


def read_upload(body: dict[str, Any], name: str = "image", required: bool = True,
                mode: str = "RGB", upload: Any = None) -> tuple[Any, dict[str, Any]] | None:
    """The uploaded picture ``name`` (or ``upload``, a file part; or for ``image`` the gallery
    picture ``image_id``) and a record of where it came from.

    Raises:
        RequestError: neither or both given, or the file is not a usable picture.
        NotFoundError: no such gallery picture for this caller.
    """
    engine = current_engine()
    limits = engine.config.images
    upload = upload if upload is not None else request.files.get(name)
    image_id = body.get("image_id") if name == "image" else None
    if upload is not None and image_id is not None:
        raise RequestError("send either image or image_id, not both", field="image_id")
    if image_id is not None:
        path = engine.outputs.find(image_id, owner_filter())
        data, origin = path.read_bytes(), {"from_image": image_id}
    elif upload is not None:
        data = upload.read(limits.max_upload_bytes + 1)
        origin = {"from_upload": digest(data)}
    elif required:
        raise RequestError(f"{name} is required: a PNG, JPEG or WebP file"
                           + (" (or image_id)" if name == "image" else ""), field=name)
    else:
        return None
    image = decode_upload(data, limits, name, mode)
    return image, origin


def source_of(image: Any) -> str:
    """Keep an AI picture marked as AI-made; anything else was only enhanced by pennello."""
    xmp = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
    source = parse_xmp(xmp)[0] if xmp else None
    return TRAINED_ALGORITHMIC_MEDIA if source == TRAINED_ALGORITHMIC_MEDIA else ALGORITHMICALLY_ENHANCED


def output_format(body: dict[str, Any]) -> str:
    fmt = body.get("format", "png")
    if fmt not in IMAGE_FORMATS:
        raise RequestError(f"format must be one of {', '.join(IMAGE_FORMATS)}", field="format")
    return fmt


def base_record(kind: str, image: Any, origin: dict[str, Any]) -> dict[str, Any]:
    """What every tool's result records: the tool, the caller, the size and what it was made from."""
    return {"tool": kind, "owner": current_owner(), "width": image.width, "height": image.height,
            "size": f"{image.width}x{image.height}", **origin}


@bp.post("/enhance")
def enhance() -> Any:
    body = form_fields(ENHANCE_FIELDS)
    fmt = output_format(body)
    image, origin = read_upload(body)  # type: ignore[misc]
    saved = current_engine().save_output(image, base_record("enhance", image, origin), fmt,
                                         enhance=True, source=source_of(image), image_id=call_image_id())
    return jsonify({"image": saved.to_dict(), **saved.notes["enhance"]})


@bp.post("/upscale")
def upscale() -> Any:
    from ...tools.upscale import upscale as run_upscale

    body = form_fields(UPSCALE_FIELDS, required=("scale",))
    fmt = output_format(body)
    image, origin = read_upload(body)  # type: ignore[misc]
    engine = current_engine()
    hold_while_waiting()
    bigger, note = run_upscale(engine, image, body["scale"], body.get("method", "lanczos"), current_owner())
    record = {**base_record("upscale", bigger, origin), "upscale": note}
    saved = engine.save_output(bigger, record, fmt, enhance=body.get("enhance", False),
                               source=source_of(image), image_id=call_image_id())
    return jsonify({"image": saved.to_dict(), "upscale": note})


def read_uploads(body: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """Every uploaded ``image`` / ``image[]`` (or the gallery picture ``image_id``), in order,
    and the record of where they came from.

    Raises:
        RequestError: none given, both an upload and image_id, or a file is not a usable picture.
    """
    uploads = request.files.getlist("image") + request.files.getlist("image[]")
    if len(uploads) <= 1:
        image, origin = read_upload(body, upload=uploads[0] if uploads else None)  # type: ignore[misc]
        return [image], origin
    if body.get("image_id") is not None:
        raise RequestError("send either image or image_id, not both", field="image_id")
    pictures = [read_upload(body, upload=upload) for upload in uploads]
    origin = {"from_upload": pictures[0][1]["from_upload"],  # type: ignore[index]
              "references_from_upload": [p[1]["from_upload"] for p in pictures[1:]]}  # type: ignore[index]
    return [p[0] for p in pictures], origin  # type: ignore[index]


@bp.post("/edit")
def edit() -> Any:
    from ..request import job_event_stream
    from ...tools.edit import DEFAULT_STRENGTH, EditRequest, submit_edit
    from .native import _STATUS_HTTP, abandon_queued

    body = form_fields(EDIT_FIELDS, files=EDIT_FILES, required=("prompt",))
    stream, wait = body.pop("stream", False), body.pop("wait", True)
    images, origin = read_uploads(body)
    mask = read_upload(body, "mask", required=False, mode="RGBA")
    if mask is not None:
        origin["mask"] = mask[1]["from_upload"]
    body.pop("image_id", None)
    engine = current_engine()
    if stream or wait:
        hold_while_waiting()
    job = submit_edit(engine, EditRequest(
        image=images[0], references=tuple(images[1:]), mask=mask[0] if mask else None,
        strength=body.pop("strength", DEFAULT_STRENGTH), owner=current_owner(), origin=origin, **body))
    if stream:
        return job_event_stream(job, abandon_queued(engine))
    if not wait:
        return jsonify(job.to_dict()), 202, {"Location": f"/api/jobs/{job.id}"}
    job.wait()
    return jsonify(job.to_dict()), _STATUS_HTTP[job.status]


@bp.get("/copyright")
def copyright_status() -> Any:
    """The copyright check's settings and reference folder (404 when it is off)."""
    from ...pictures.copyright import index_for

    engine = current_engine()
    index = index_for(engine)
    references = index.references()
    return jsonify({"reference_dir": str(index.folder), "exists": index.folder.is_dir(),
                    "references": len(references), "skipped": list(index.skipped),
                    "max_distance": engine.config.copyright.max_distance})


@bp.post("/copyright/check")
def copyright_check() -> Any:
    """Compare one picture (upload or ``image_id``) with the references; nothing is saved."""
    from ...pictures.copyright import check_image, index_for

    body = form_fields({"image_id": str})
    engine = current_engine()
    index_for(engine)  # 404 when the check is off, before reading the upload
    image, _ = read_upload(body)  # type: ignore[misc]
    return jsonify(check_image(engine, image))


# Each style's prompt wraps the subject, so the batch takes every parameter but the prompt.
BATCH_FIELDS: dict[str, Any] = {
    "subject": str, "styles": (int, list),
    **{name: kind for name, kind in field_types().items() if name != "prompt"}, "wait": bool}


@bp.get("/styles")
def styles() -> Any:
    """Style presets: the built-ins and those of ``<config dir>/styles.toml``."""
    from ...tools.styles import load_styles

    presets = load_styles(current_engine().paths.config_dir)
    return jsonify({"styles": [style.to_dict() for style in presets.values()]})


@bp.post("/batch")
def batch() -> Any:
    """One subject across styles and seeds; with ``wait`` (the default) also a contact sheet."""
    from ...tools.style_batch import finish_style_batch, submit_style_batch
    from ...tools.styles import choose_styles, load_styles

    body = json_body(BATCH_FIELDS, required=("subject",))
    wait = body.pop("wait", True)
    engine = current_engine()
    chosen = choose_styles(load_styles(engine.paths.config_dir), body.pop("styles", 4))
    if wait:
        hold_while_waiting()
    result = submit_style_batch(engine, body.pop("subject"), chosen, owner=current_owner(), **body)
    if not wait:
        return jsonify(result.to_dict()), 202
    finish_style_batch(engine, result)
    return jsonify(result.to_dict()), 200 if result.status == "done" else 500


# --- saved pipelines (daemon/tools/pipelines.py) ------------------------------------------------------------

RUN_FIELDS: dict[str, Any] = {"subject": str, "seed": int}


@bp.get("/pipelines")
def list_pipelines() -> Any:
    from ...tools.pipelines import PipelineBook

    book = PipelineBook(current_engine().paths.config_dir)
    return jsonify({"pipelines": [pipeline.to_dict() for pipeline in book.all().values()]})


# Bounds a saved pipeline keeps whatever the config says; the engine's configurable limits
# (engine.max_n, max_steps, a model's sizes) are checked when it runs, as they may change.
SAVED_BOUNDS: dict[str, tuple[float, float | None]] = fixed_bounds()


def check_saved_bounds(data: dict[str, Any]) -> None:
    """Raises RequestError naming the first field of a pipeline that no daemon could run."""
    for key, (low, high) in SAVED_BOUNDS.items():
        value = data.get(key)
        # Written so that NaN (which Python's JSON parser accepts) is refused too.
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and not (low <= value and (high is None or value <= high)):
            raise RequestError(f"{key} must be at least {low}" if high is None
                               else f"{key} must be from {low} to {high:g}", field=key)


@bp.put("/pipelines/<name>")
def save_pipeline(name: str) -> Any:
    """Save (or replace) a pipeline; the body holds its fields (owner only: it writes the config)."""
    from ...tools.pipelines import PipelineBook, SavedPipeline

    data = json_object()
    pipeline = SavedPipeline.from_dict(name, data)
    check_saved_bounds(data)
    PipelineBook(current_engine().paths.config_dir).save(pipeline)
    return jsonify(pipeline.to_dict())


@bp.delete("/pipelines/<name>")
def delete_pipeline(name: str) -> Any:
    from ...tools.pipelines import PipelineBook

    PipelineBook(current_engine().paths.config_dir).delete(name)
    return jsonify({"name": name, "deleted": True})


@bp.post("/pipelines/<name>/run")
def run_pipeline(name: str) -> Any:
    """Run a saved pipeline and answer when its last stage is done."""
    from ...tools.pipelines import PipelineBook, run_saved_pipeline

    body = json_body(RUN_FIELDS) if request.content_length else {}
    engine = current_engine()
    pipeline = PipelineBook(engine.paths.config_dir).get(name)
    hold_while_waiting()
    return jsonify(run_saved_pipeline(engine, pipeline, body.get("subject"), body.get("seed"), current_owner()))
