"""A1111's "Extras" upscaling under ``/sdapi/v1``: ``extra-single-image`` and ``extra-batch-images``,
done by pennello's upscalers (:mod:`....tools.upscale`, through :func:`....tools.hires.upscale_to`).

``upscaler_1`` is a name from ``/sdapi/v1/upscalers`` (any case; "None" is a plain Lanczos
resize); ``resize_mode`` 0 enlarges by ``upscaling_resize``, 1 to ``upscaling_resize_w`` x
``upscaling_resize_h``, cropped to keep the aspect ratio when ``upscaling_crop`` (the default).
A1111's face restorers and second upscaler have no equivalent here: they are ignored (and logged
once per client). As in A1111's API, the results are answered and not kept in the gallery.

    $ curl -s localhost:8420/sdapi/v1/extra-single-image -H 'Content-Type: application/json' \\
        -d '{"image": "iVBORw0KGgo…", "upscaler_1": "Lanczos", "upscaling_resize": 2}'
    {"html_info": "64x64 to 128x128 with lanczos", "image": "iVBORw0KGgo…"}
"""

from __future__ import annotations

import base64
import io
from typing import Any

from flask import Blueprint, jsonify
from PIL import Image

from pennello.errors import PennelloError, RequestError

from ...context import current_engine, current_owner
from ...waiting import hold_while_waiting
from .lenient import a1111_body, note_once

bp = Blueprint("extras", __name__)

MAX_BATCH_IMAGES = 16  # pictures per extra-batch-images call: each may be as large as an upload
MAX_RESIZE = 8.0  # as A1111's slider
EXTRAS_FIELDS: dict[str, Any] = {
    "resize_mode": int, "show_extras_results": bool, "upscaling_resize": float, "upscaling_resize_w": int,
    "upscaling_resize_h": int, "upscaling_crop": bool, "upscaler_1": str}
# A1111's face restorers and second upscaler: nothing here does them.
EXTRAS_IGNORED_FIELDS: dict[str, Any] = {
    "gfpgan_visibility": float, "codeformer_visibility": float, "codeformer_weight": float,
    "upscaler_2": str, "extras_upscaler_2_visibility": float, "upscale_first": bool}


@bp.post("/extra-single-image")
def extra_single_image() -> Any:
    """One picture upscaled: ``{"html_info", "image"}``."""
    body = _body({"image": str}, "image")
    picture = _decoded(body["image"], "image")
    hold_while_waiting()  # an AI upscaler waits for the device
    result, note = _upscaled(picture, body)
    return jsonify({"html_info": note, "image": _png(result) if body.get("show_extras_results", True) else None})


@bp.post("/extra-batch-images")
def extra_batch_images() -> Any:
    """Several pictures (``imageList`` of ``{data, name}``) upscaled alike: ``{"html_info", "images"}``."""
    body = _body({"imageList": list}, "imageList")
    entries = body["imageList"]
    if not entries or len(entries) > MAX_BATCH_IMAGES:
        raise RequestError(f"imageList must hold 1 to {MAX_BATCH_IMAGES} pictures", field="imageList")
    if not all(isinstance(entry, dict) and isinstance(entry.get("data"), str) for entry in entries):
        raise RequestError("each imageList entry must be an object with a base64 'data' string "
                           "(and a 'name')", field="imageList")
    pictures = [_decoded(entry["data"], "imageList") for entry in entries]
    hold_while_waiting()
    results = [_upscaled(picture, body) for picture in pictures]
    images = [_png(image) for image, _ in results] if body.get("show_extras_results", True) else []
    return jsonify({"html_info": "; ".join(note for _, note in results), "images": images})


def _body(pictures: dict[str, Any], required: str) -> dict[str, Any]:
    body = a1111_body({**EXTRAS_FIELDS, **EXTRAS_IGNORED_FIELDS, **pictures}, (required,))
    for name in ("gfpgan_visibility", "codeformer_visibility", "extras_upscaler_2_visibility"):
        if body.get(name):
            note_once(name, "face restoration and a second upscaler are not done by pennello; ignored")
    return body


def _decoded(text: str, field: str) -> Image.Image:
    from ....pictures.uploads import decode_base64_upload

    return decode_base64_upload(text, current_engine().config.images, field)


def _upscaled(picture: Image.Image, body: dict[str, Any]) -> tuple[Image.Image, str]:
    """The picture at the size the body asks for, and a line saying how it was made."""
    from ....tools.hires import upscale_to, upscaler_method

    method = upscaler_method(body.get("upscaler_1", "None"), "upscaler_1")
    mode = body.get("resize_mode", 0)
    if mode == 0:
        factor = body.get("upscaling_resize", 2)
        if not 0 < factor <= MAX_RESIZE:
            raise RequestError(f"upscaling_resize must be above 0 and at most {MAX_RESIZE:g}",
                               field="upscaling_resize")
        size, crop, field = (round(picture.width * factor), round(picture.height * factor)), False, "upscaling_resize"
    elif mode == 1:
        size = (body.get("upscaling_resize_w", 512), body.get("upscaling_resize_h", 512))
        crop, field = body.get("upscaling_crop", True), "upscaling_resize_w"
    else:
        raise RequestError("resize_mode must be 0 (by upscaling_resize) or 1 (to upscaling_resize_w x "
                           "upscaling_resize_h)", field="resize_mode")
    try:
        result = upscale_to(current_engine(), picture, size, method, current_owner(), crop=crop)
    except PennelloError as e:  # name the field as A1111 clients know it
        if getattr(e, "field", None) in ("size", "scale"):
            e.field = field  # type: ignore[attr-defined]
        elif getattr(e, "field", None) == "method":
            e.field = "upscaler_1"  # type: ignore[attr-defined]
        raise
    return result, f"{picture.width}x{picture.height} to {result.width}x{result.height} with {method or 'a resize'}"


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
