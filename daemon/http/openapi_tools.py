"""The OpenAPI description of the picture tools (:mod:`.routes.tools` and the edit routes of the
OpenAI and A1111 APIs), merged into :func:`.openapi.build_spec`. Field tables come from the
routes themselves, as in :mod:`.openapi`."""

from __future__ import annotations

from typing import Any, Mapping

from .routes import a1111 as routes_a1111
from .routes import openai as routes_openai
from .routes import tools as routes_tools
from ..tools.uploads import UPLOAD_FORMATS
from ..engine.jobs import IMAGE_FORMATS, MAX_SEED
from .openapi import _OFF_ONLY, _fields, _json, _obj, _op, _ref
from ..tools.upscale import SCALES, upscalers

Schema = dict[str, Any]
_STR, _INT, _NUM, _BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
_FILE = {"type": "string", "contentMediaType": "application/octet-stream",
         "description": f"A {', '.join(f.upper() for f in UPLOAD_FORMATS)} file (recognised by its "
                        "first bytes), within [images] max_upload_bytes and max_upload_pixels."}
_METRICS = _obj({"contrast_spread": _NUM, "sharpness": _NUM, "brightness": _NUM},
                ("contrast_spread", "sharpness", "brightness"))


def _form(table: Mapping[str, Any], files: Mapping[str, Schema], notes: Mapping[str, Schema],
          required: tuple[str, ...] = ()) -> Schema:
    """A multipart/form-data schema: files plus the route's text fields (sent as strings; a form
    has no null, so a field is either sent or left out)."""
    fields = {name: _not_null(schema) for name, schema in _fields(table, notes).items()}
    schema = _obj({**files, **fields}, required)
    if "image_id" in fields:  # the picture is an upload or a gallery picture, never both
        uploads = [{"required": [name]} for name in ("image", "image[]") if name in files]
        schema["oneOf"] = [{"required": ["image_id"]}, {"anyOf": uploads}]
    return schema


def _not_null(schema: Schema) -> Schema:
    schema = {**schema, "type": next(t for t in schema["type"] if t != "null")}
    if "enum" in schema:
        schema["enum"] = [value for value in schema["enum"] if value is not None]
    return schema


def _multipart_op(summary: str, tag: str, ok: Schema, schema: str, errors: tuple[str, ...],
                  error_schema: str = "Error") -> Schema:
    op = _op(summary, tag, ok, errors=errors, error_schema=error_schema)
    op["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": _ref(schema)}}}
    return op


SCHEMAS: dict[str, Schema] = {
    "EnhanceMetrics": _obj({"before": _METRICS, "after": _METRICS,
                            "applied": {"type": "array", "items": {"enum": ["contrast", "sharpness"]}}},
                           ("before", "after", "applied"),
                           description="Contrast spread (1st-99th luminance percentile, 0-1) and "
                                       "sharpness (variance of the Laplacian) before and after."),
    "CopyrightCheck": _obj({
        "flagged": _BOOL, "references": _INT, "max_distance": _INT,
        "error": {"type": "string", "description": "Present when the check itself failed."},
        "matches": {"type": "array", "items": _obj({"reference": _STR, "phash_distance": _INT,
                                                    "dhash_distance": _INT, "mirrored": _BOOL},
                                                   ("reference",))}},
        ("flagged", "matches"), description="Perceptual-hash comparison with [copyright] reference_dir; "
                                            "a flagged picture is kept, never dropped."),
    "CopyrightStatus": _obj({"reference_dir": _STR, "exists": _BOOL, "references": _INT,
                             "skipped": {"type": "array", "items": _STR}, "max_distance": _INT},
                            ("reference_dir", "exists", "references", "max_distance")),
    "CopyrightForm": _form({"image_id": str}, {"image": _FILE},
                           {"image_id": {"description": "A gallery picture to check instead of an upload."}}),
    "Style": _obj({"name": _STR, "prompt": _STR, "negative": _STR, "description": _STR, "builtin": _BOOL},
                  ("name", "prompt")),
    "StyleList": _obj({"styles": {"type": "array", "items": _ref("Style")}}, ("styles",)),
    "BatchRequest": _obj({
        **_fields({k: v for k, v in routes_tools.BATCH_FIELDS.items() if k != "styles"}, {
            "subject": {"description": "What to draw; each style's prompt puts it in its {subject} slot."},
            "n": {"minimum": 1, "description": "Pictures in all, spread evenly over the styles "
                                               "(default: one per style; at least one per style)."},
            "seed": {"description": "Every style starts at this seed (random when absent); picture i "
                                    "of a style uses seed+i."},
            "negative_prompt": {"description": "Added to each style's own negative prompt."},
            "format": {"enum": [*IMAGE_FORMATS, None]},
            "wait": {"default": True, "description": "Wait for every picture and make the contact "
                                                     "sheet; false answers 202 at once (no sheet)."}}),
        "styles": {"oneOf": [{"type": "integer", "minimum": 1}, {"type": "array", "items": _STR, "minItems": 1},
                             {"type": "null"}],
                   "description": "Style names (GET /api/styles), or how many of the presets to use "
                                  "(default 4)."}}, ("subject",)),
    "BatchStyle": _obj({"name": _STR, "prompt": _STR, "negative_prompt": _STR, "job": _ref("Job")},
                       ("name", "prompt", "job")),
    "Batch": _obj({"subject": _STR, "seed": _INT,
                   "status": {"enum": ["queued", "running", "done", "failed", "cancelled"]},
                   "styles": {"type": "array", "items": _ref("BatchStyle")},
                   "contact_sheet": {"oneOf": [_ref("Image"), {"type": "null"}]}},
                  ("subject", "seed", "status", "styles", "contact_sheet")),
    "Pipeline": _obj({
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"},
        "prompt": {"type": "string", "description": "May hold a {subject} slot, filled in at run time."},
        "negative_prompt": _STR, "model": _STR, "width": _INT, "height": _INT, "steps": _INT,
        "guidance": _NUM, "n": {"type": "integer", "minimum": 1}, "seed": _INT,
        "format": {"enum": list(IMAGE_FORMATS)},
        "enhance": {"type": "boolean", "description": "Auto-enhance each picture before it is saved."},
        "upscale": {"enum": list(SCALES), "description": "Upscale each picture; absent: no upscaling."},
        "upscale_method": {"enum": upscalers()},
        "check": {"type": "boolean", "description": "Require the copyright check (404 when it is off)."}},
        ("name", "prompt"), description="A saved pipeline: generate, enhance, upscale, copyright check."),
    "PipelineBody": _obj({}, description="The fields of Pipeline except name (filled in below)."),
    "PipelineList": _obj({"pipelines": {"type": "array", "items": _ref("Pipeline")}}, ("pipelines",)),
    "PipelineRun": _obj({"subject": {"type": ["string", "null"]}, "seed": {"type": ["integer", "null"]}}),
    "PipelineResult": _obj({
        "pipeline": _STR, "status": {"const": "done"}, "job": _ref("Job"),
        "images": {"type": "array", "items": _ref("Image")},
        "copyright": _obj({"checked": _BOOL, "flagged": {"type": "array", "items": _STR}},
                          ("checked", "flagged"))}, ("pipeline", "status", "job", "images", "copyright")),
    "UpscaleNote": _obj({"method": {"enum": upscalers()}, "scale": {"enum": list(SCALES)}, "from": _STR,
                         "to": _STR, "tile": _INT, "model": {"type": ["string", "null"]}},
                        ("method", "scale", "from", "to")),
    "EnhanceForm": _form(routes_tools.ENHANCE_FIELDS, {"image": _FILE}, {
        "image_id": {"description": "A gallery picture to use instead of an upload."},
        "format": {"enum": [*IMAGE_FORMATS, None]}}),
    "EnhanceResponse": _obj({"image": _ref("Image"), "before": _METRICS, "after": _METRICS,
                             "applied": {"type": "array", "items": {"enum": ["contrast", "sharpness"]}}},
                            ("image", "before", "after", "applied")),
    "UpscaleForm": _form(routes_tools.UPSCALE_FIELDS, {"image": _FILE}, {
        "image_id": {"description": "A gallery picture to use instead of an upload."},
        "format": {"enum": [*IMAGE_FORMATS, None]},
        "scale": {"enum": [*SCALES, None]},
        "method": {"enum": [*upscalers(), None], "default": "lanczos",
                   "description": "lanczos (always there) or ai (the catalog's upscaler; 404 when "
                                  "not installed)."},
        "enhance": {"description": "Auto-enhance the result too."}}, ("scale",)),
    "EditForm": _form(routes_tools.EDIT_FIELDS, {"image": {
        **_FILE, "description": _FILE["description"] + " Repeat the field (or use image[]) to send "
        "up to 3 reference pictures to a model that takes them (qwen-image-edit); SD-class models "
        "take one."}, "image[]": {"type": "array", "items": _FILE, "maxItems": 3}, "mask": {
        **_FILE, "description": "Where to repaint: transparent pixels, or (a mask without transparency) "
                                "white ones. Resized to the result's size."}}, {
        "image_id": {"description": "A gallery picture to use instead of an upload."},
        "strength": {"exclusiveMinimum": 0, "maximum": 1, "default": 0.75,
                     "description": "How far the result may move from the picture (0-1]."},
        "width": {"description": "Default: the picture's size fitted to the model's limits."},
        "format": {"enum": [*IMAGE_FORMATS, None]},
        "enhance": {"description": "Auto-enhance each result."},
        "wait": {"default": True, "description": "Answer when the edit job ended (200 done, 500 "
                                                 "failed, 409 cancelled); false: 202 at once."},
        "stream": {"description": "Answer with the job's server-sent events (as /api/generate)."}},
        ("prompt",)),
    "EditResponse": _obj({
        "id": _STR, "kind": {"enum": ["edit"]},
        "status": {"enum": ["queued", "running", "done", "failed", "cancelled"]},
        "mode": {"enum": ["img2img", "inpaint", "instruct"]}, "model": _STR, "prompt": _STR,
        "negative_prompt": _STR, "width": _INT, "height": _INT, "steps": _INT, "guidance": _NUM,
        "strength": {"type": ["number", "null"], "description": "null for instruction edits."},
        "references": {"type": "integer", "description": "Pictures the edit was given."},
        "n": _INT, "format": _STR, "seeds": {"type": "array", "items": _INT},
        "images": {"type": "array", "items": _ref("Image")}}, ("id", "status", "mode", "images", "seeds"),
        extra=True, description="The edit job (as GET /api/jobs/<id> shows it)."),
    "OpenAIImageEditForm": _form(routes_openai.EDIT_FIELDS, {
        "image": _FILE, "image[]": {"type": "array", "items": _FILE, "maxItems": 3},
        "mask": {**_FILE, "description": "Transparent where to repaint (OpenAI's convention)."}}, {
        "size": {"description": "WIDTHxHEIGHT or auto (the picture's size fitted to the model)."},
        "response_format": {"enum": [*routes_openai.RESPONSE_FORMATS, None], "default": "b64_json"},
        "output_format": {"enum": [*IMAGE_FORMATS, None]},
        "stream": {"description": "Must be false or absent."},
        **{name: {"description": "Accepted for compatibility; ignored."}
           for name in (*routes_openai.IGNORED_FIELDS, "input_fidelity", "complexity")}}, ("prompt",)),
    "A1111Img2ImgRequest": _obj(_fields(routes_a1111.IMG2IMG_ALL, {
        "init_images": {"items": {"type": "string", "contentEncoding": "base64"}, "minItems": 1,
                        "maxItems": 3, "description": "One picture; up to 3 for models that take "
                                                      "reference pictures (qwen-image-edit)."},
        "denoising_strength": {"exclusiveMinimum": 0, "maximum": 1, "default": 0.75},
        "mask": {"contentEncoding": "base64", "description": "White where to repaint."},
        "inpainting_mask_invert": {"enum": [0, 1, None]},
        "seed": {"minimum": -1, "maximum": MAX_SEED, "description": "-1 or absent: random."},
        "override_settings": {"properties": {"sd_model_checkpoint": {"type": ["string", "null"]}}},
        **{name: {"description": "Accepted for compatibility; ignored."}
           for name in {**routes_a1111.IGNORED_FIELDS, **routes_a1111.IMG2IMG_IGNORED_FIELDS}
           if name != "denoising_strength"}, **_OFF_ONLY}), ("init_images", "prompt")),
    "UpscaleResponse": _obj({"image": _ref("Image"), "upscale": _ref("UpscaleNote")}, ("image", "upscale")),
}


def _edit_responses(op: Schema) -> Schema:
    """An edit is a job: ``wait`` false answers 202, ``stream`` the job's events; a job that was
    cancelled or failed while waited for answers 409 or 500, as /api/generate does."""
    op["responses"].update({
        "200": {"description": "Done (the default), or the job's events (`stream`)",
                "content": {"application/json": {"schema": _ref("EditResponse")},
                            "text/event-stream": {"schema": _STR}}},
        "202": _json(_ref("EditResponse"), "Queued (`wait` false); Location names the job"),
        "409": _json(_ref("EditResponse"), "Cancelled while waiting"),
        "500": _json(_ref("EditResponse"), "Failed while waiting")})
    return op


def _optional_body(op: Schema) -> Schema:
    op["requestBody"]["required"] = False
    return op


_NAME = {"name": "name", "in": "path", "required": True, "description": "A pipeline's name.",
         "schema": SCHEMAS["Pipeline"]["properties"]["name"]}


def _saved_field(name: str, schema: Schema) -> Schema:
    """A Pipeline field as PUT takes it: null counts as absent; only the bounds of
    routes_tools.SAVED_BOUNDS are checked on saving (the configurable ones when it runs)."""
    if name == "prompt":
        return {**schema, "pattern": r"\S"}
    if "enum" in schema:
        return {**schema, "enum": [*schema["enum"], None]}
    low, high = routes_tools.SAVED_BOUNDS.get(name, (None, None))
    bounds = {key: value for key, value in (("minimum", low), ("maximum", high)) if value is not None}
    return {**{k: v for k, v in schema.items() if k != "minimum"}, "type": [schema["type"], "null"], **bounds}


SCHEMAS["PipelineBody"].update(required=["prompt"], properties={
    key: _saved_field(key, value) for key, value in SCHEMAS["Pipeline"]["properties"].items() if key != "name"})


def paths() -> dict[str, dict[str, Schema]]:
    tools = "tools"
    errors = ("400", "404", "413")
    return {
        "/api/enhance": {"post": _multipart_op(
            "Auto-enhance a picture (contrast and sharpness) and save the result", tools,
            _json(_ref("EnhanceResponse")), "EnhanceForm", errors)},
        "/api/upscale": {"post": _multipart_op(
            "Upscale a picture 2x, 4x or 8x (tiled) and save the result", tools,
            _json(_ref("UpscaleResponse")), "UpscaleForm", errors)},
        "/api/copyright": {"get": _op(
            "The copyright check's reference folder and threshold (owner only; 404 when it is off)", tools,
            _json(_ref("CopyrightStatus")), errors=("403", "404"))},
        "/api/pipelines": {"get": _op("Saved pipelines (<config dir>/pipelines.toml)", tools,
                                      _json(_ref("PipelineList")), errors=("500",))},
        "/api/pipelines/{name}": {
            "put": _op("Save or replace a pipeline (owner only)", tools, _json(_ref("Pipeline")),
                       body="PipelineBody", errors=("400", "403"), params=(_NAME,)),
            "delete": _op("Delete a saved pipeline (owner only)", tools,
                          _json(_obj({"name": _STR, "deleted": _BOOL}, ("name", "deleted"))),
                          errors=("403", "404"), params=(_NAME,))},
        "/api/pipelines/{name}/run": {"post": _optional_body(_op(
            "Run a saved pipeline: generate, enhance, upscale, check; answers when done", tools,
            _json(_ref("PipelineResult")), body="PipelineRun", errors=("400", "404", "429", "500"),
            params=(_NAME,)))},
        "/api/copyright/check": {"post": _multipart_op(
            "Compare one picture with the protected works (nothing is saved)", tools,
            _json(_ref("CopyrightCheck")), "CopyrightForm", errors)},
        "/api/styles": {"get": _op("Style presets: built-ins and <config dir>/styles.toml", tools,
                                   _json(_ref("StyleList")))},
        "/api/batch": {"post": _op(
            "One subject across styles and seeds, with a contact sheet", tools, body="BatchRequest",
            errors=("400", "404", "429"), responses={
                "200": _json(_ref("Batch"), "Done, with the contact sheet"),
                "202": _json(_ref("Batch"), "Queued (wait: false)"),
                "500": _json(_ref("Batch"), "A style's job failed or was cancelled")})},
        "/api/edit": {"post": _edit_responses(_multipart_op(
            "Redraw a picture from a prompt (image-to-image), or only its masked part (inpainting)",
            tools, _json(_ref("EditResponse")), "EditForm", (*errors, "429")))},
        "/v1/images/edits": {"post": _multipart_op(
            "OpenAI-compatible image edit (image-to-image or inpainting)", "openai",
            _json(_ref("OpenAIImagesResponse")), "OpenAIImageEditForm", (*errors, "429"),
            error_schema="OpenAIError")},
        "/sdapi/v1/img2img": {"post": _op(
            "AUTOMATIC1111-compatible img2img and inpainting", "a1111", _json(_ref("A1111Txt2ImgResponse")),
            body="A1111Img2ImgRequest", errors=(*errors, "429"))},
    }
