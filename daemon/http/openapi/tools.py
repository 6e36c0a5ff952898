"""The OpenAPI description of the picture tools (:mod:`..routes.tools` and the edit routes of the
OpenAI and A1111 APIs): their response schemas and operations, and the upload forms that carry
no generation parameters (those with parameters are :mod:`.requests`')."""

from __future__ import annotations

from ..routes import tools as routes_tools
from ...engine.params import IMAGE_FORMATS, property_schemas
from ...tools.upscale import SCALES, upscalers
from .common import BOOL, INT, NUM, SSE_EVENT, STR, Schema, obj, op, or_null, ref, reply
from .requests import FILE, form

_METRICS = obj({"contrast_spread": NUM, "sharpness": NUM, "brightness": NUM},
               ("contrast_spread", "sharpness", "brightness"))
_IMAGE_ID = {"description": "A gallery picture to use instead of an upload."}


def _multipart_op(summary: str, tag: str, ok: Schema, schema: str, errors: tuple[str, ...],
                  error_schema: str = "Error") -> Schema:
    operation = op(summary, tag, ok, errors=errors, error_schema=error_schema)
    operation["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": ref(schema)}}}
    return operation


SCHEMAS: dict[str, Schema] = {
    "EnhanceMetrics": obj({"before": _METRICS, "after": _METRICS,
                           "applied": {"type": "array", "items": {"enum": ["contrast", "sharpness"]}}},
                          ("before", "after", "applied"),
                          description="Contrast spread (1st-99th luminance percentile, 0-1) and "
                                      "sharpness (variance of the Laplacian) before and after."),
    "CopyrightCheck": obj({
        "flagged": BOOL, "references": INT, "max_distance": INT,
        "error": {"type": "string", "description": "Present when the check itself failed."},
        "matches": {"type": "array", "items": obj({"reference": STR, "phash_distance": INT,
                                                   "dhash_distance": INT, "mirrored": BOOL},
                                                  ("reference",))}},
        ("flagged", "matches"), description="Perceptual-hash comparison with [copyright] reference_dir; "
                                            "a flagged picture is kept, never dropped."),
    "CopyrightStatus": obj({"reference_dir": STR, "exists": BOOL, "references": INT,
                            "skipped": {"type": "array", "items": STR}, "max_distance": INT},
                           ("reference_dir", "exists", "references", "max_distance")),
    "CopyrightForm": form({"image_id": str}, {"image": FILE},
                          {"image_id": {"description": "A gallery picture to check instead of an upload."}}),
    "Style": obj({"name": STR, "prompt": STR, "negative": STR, "description": STR, "builtin": BOOL},
                 ("name", "prompt")),
    "StyleList": obj({"styles": {"type": "array", "items": ref("Style")}}, ("styles",)),
    "BatchStyle": obj({"name": STR, "prompt": STR, "negative_prompt": STR, "job": ref("Job")},
                      ("name", "prompt", "job")),
    "Batch": obj({"subject": STR, "seed": INT,
                  "status": {"enum": ["queued", "running", "done", "failed", "cancelled"]},
                  "styles": {"type": "array", "items": ref("BatchStyle")},
                  "contact_sheet": {"oneOf": [ref("Image"), {"type": "null"}]}},
                 ("subject", "seed", "status", "styles", "contact_sheet")),
    "PipelineList": obj({"pipelines": {"type": "array", "items": ref("Pipeline")}}, ("pipelines",)),
    "PipelineResult": obj({
        "pipeline": STR, "status": {"const": "done"}, "job": ref("Job"),
        "images": {"type": "array", "items": ref("Image")},
        "copyright": obj({"checked": BOOL, "flagged": {"type": "array", "items": STR}},
                         ("checked", "flagged"))}, ("pipeline", "status", "job", "images", "copyright")),
    "UpscaleNote": obj({"method": {"enum": upscalers()}, "scale": {"enum": list(SCALES)}, "from": STR,
                        "to": STR, "tile": INT, "model": {"type": ["string", "null"]}},
                       ("method", "scale", "from", "to")),
    "EnhanceForm": form(routes_tools.ENHANCE_FIELDS, {"image": FILE}, {
        "image_id": _IMAGE_ID,
        "format": {"enum": [*IMAGE_FORMATS, None]}}),
    "EnhanceResponse": obj({"image": ref("Image"), "before": _METRICS, "after": _METRICS,
                            "applied": {"type": "array", "items": {"enum": ["contrast", "sharpness"]}}},
                           ("image", "before", "after", "applied")),
    "UpscaleForm": form(routes_tools.UPSCALE_FIELDS, {"image": FILE}, {
        "image_id": _IMAGE_ID,
        "format": {"enum": [*IMAGE_FORMATS, None]},
        "scale": {"enum": [*SCALES, None]},
        "method": {"enum": [*upscalers(), None], "default": "lanczos",
                   "description": "lanczos (always there) or ai (the catalog's upscaler; 404 when "
                                  "not installed)."},
        "enhance": {"description": "Auto-enhance the result too."}}, ("scale",)),
    "EditResponse": obj({
        "id": STR, "kind": {"enum": ["edit"]},
        "status": {"enum": ["queued", "running", "done", "failed", "cancelled"]},
        "mode": {"enum": ["img2img", "inpaint", "instruct"]}, "model": STR, "prompt": STR,
        "negative_prompt": STR, "width": INT, "height": INT, "steps": INT, "guidance": NUM,
        "strength": {"type": ["number", "null"], "description": "null for instruction edits."},
        "references": {"type": "integer", "description": "Pictures the edit was given."},
        "n": INT, "format": STR, "seeds": {"type": "array", "items": INT},
        "images": {"type": "array", "items": ref("Image")}}, ("id", "status", "mode", "images", "seeds"),
        extra=True, description="The edit job (as GET /api/jobs/<id> shows it)."),
    "UpscaleResponse": obj({"image": ref("Image"), "upscale": ref("UpscaleNote")}, ("image", "upscale")),
}


def _edit_responses(operation: Schema) -> Schema:
    """An edit is a job: ``wait`` false answers 202, ``stream`` the job's events; a job that was
    cancelled or failed while waited for answers 409 or 500, as /api/generate does."""
    operation["responses"].update({
        "200": {"description": "Done (the default), or the job's events (`stream`)",
                "content": {"application/json": {"schema": ref("EditResponse")},
                            "text/event-stream": {"schema": SSE_EVENT}}},
        "202": reply(ref("EditResponse"), "Queued (`wait` false); Location names the job"),
        "409": reply(ref("EditResponse"), "Cancelled while waiting"),
        "500": reply(ref("EditResponse"), "Failed while waiting")})
    return operation


def _optional_body(operation: Schema) -> Schema:
    operation["requestBody"]["required"] = False
    return operation


_NAME = {"name": "name", "in": "path", "required": True, "description": "A pipeline's name.",
         "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"}}


def _pipeline_schemas() -> dict[str, Schema]:
    """A saved pipeline as GET shows it, and as PUT takes it (null: absent). Only the bounds that
    hold whatever the config says are checked on saving (routes_tools.check_saved_bounds); the
    configurable ones when it runs."""
    params = property_schemas()
    params["prompt"] = {**params["prompt"], "description": "May hold a {subject} slot, filled in at run time."}
    stored = {**params,
              "upscale": {"enum": list(SCALES), "description": "Upscale each picture; absent: no upscaling."},
              "upscale_method": {"enum": upscalers()},
              "check": {"type": "boolean", "description": "Require the copyright check (404 when it is off)."}}
    return {"Pipeline": obj({"name": _NAME["schema"], **stored}, ("name", "prompt"),
                            description="A saved pipeline: generate, enhance, upscale, copyright check."),
            "PipelineBody": obj({key: value if key == "prompt" else or_null(value)  # prompt: required
                                 for key, value in stored.items()}, ("prompt",),
                                description="The fields of Pipeline except name.")}


SCHEMAS.update(_pipeline_schemas())


def paths() -> dict[str, dict[str, Schema]]:
    tools = "tools"
    errors = ("400", "404", "413")
    return {
        "/api/enhance": {"post": _multipart_op(
            "Auto-enhance a picture (contrast and sharpness) and save the result", tools,
            reply(ref("EnhanceResponse")), "EnhanceForm", errors)},
        "/api/upscale": {"post": _multipart_op(
            "Upscale a picture 2x, 4x or 8x (tiled) and save the result", tools,
            reply(ref("UpscaleResponse")), "UpscaleForm", (*errors, "429"))},
        "/api/copyright": {"get": op(
            "The copyright check's reference folder and threshold (owner only; 404 when it is off)", tools,
            reply(ref("CopyrightStatus")), errors=("403", "404"))},
        "/api/pipelines": {"get": op("Saved pipelines (<config dir>/pipelines.toml)", tools,
                                     reply(ref("PipelineList")), errors=("500",))},
        "/api/pipelines/{name}": {
            "put": op("Save or replace a pipeline (owner only)", tools, reply(ref("Pipeline")),
                      body="PipelineBody", errors=("400", "403"), params=(_NAME,)),
            "delete": op("Delete a saved pipeline (owner only)", tools,
                         reply(obj({"name": STR, "deleted": BOOL}, ("name", "deleted"))),
                         errors=("403", "404"), params=(_NAME,))},
        "/api/pipelines/{name}/run": {"post": _optional_body(op(
            "Run a saved pipeline: generate, enhance, upscale, check; answers when done", tools,
            reply(ref("PipelineResult")), body="PipelineRun", errors=("400", "404", "429", "500"),
            params=(_NAME,)))},
        "/api/copyright/check": {"post": _multipart_op(
            "Compare one picture with the protected works (nothing is saved)", tools,
            reply(ref("CopyrightCheck")), "CopyrightForm", errors)},
        "/api/styles": {"get": op("Style presets: built-ins and <config dir>/styles.toml", tools,
                                  reply(ref("StyleList")))},
        "/api/batch": {"post": op(
            "One subject across styles and seeds, with a contact sheet", tools, body="BatchRequest",
            errors=("400", "404", "429"), responses={
                "200": reply(ref("Batch"), "Done, with the contact sheet"),
                "202": reply(ref("Batch"), "Queued (wait: false)"),
                "500": reply(ref("Batch"), "A style's job failed or was cancelled")})},
        "/api/edit": {"post": _edit_responses(_multipart_op(
            "Redraw a picture from a prompt (image-to-image), or only its masked part (inpainting)",
            tools, reply(ref("EditResponse")), "EditForm", (*errors, "429")))},
        "/v1/images/edits": {"post": _multipart_op(
            "OpenAI-compatible image edit (image-to-image or inpainting)", "openai",
            reply(ref("OpenAIImagesResponse")), "OpenAIImageEditForm", (*errors, "429"),
            error_schema="OpenAIError")},
        "/sdapi/v1/img2img": {"post": op(
            "AUTOMATIC1111-compatible img2img and inpainting", "a1111", reply(ref("A1111Txt2ImgResponse")),
            body="A1111Img2ImgRequest", errors=(*errors, "429"))},
    }
