"""The OpenAPI schemas of the requests that carry generation parameters, for one daemon's limits.

Each is built from the route's own field table (so it documents exactly what is accepted) and,
for the generation parameters in it, from their one definition in :mod:`...engine.params`
through pydantic's JSON Schema: types, fixed bounds and descriptions, plus the bounds of the
daemon's config (``engine.max_n``…), under the names of the route's dialect. Sizes are bounded
by the model families that draw (each family checks its own range).

    >>> from pennello.config import EngineConfig
    >>> request_schemas(EngineConfig(max_n=2))["GenerateRequest"]["properties"]["n"]["maximum"]
    2
"""

from __future__ import annotations

from typing import Any, Mapping

from pennello.config import EngineConfig

from ..routes import a1111 as routes_a1111
from ..routes import openai as routes_openai
from ..routes import tools as routes_tools
from ..routes.native import GENERATE_FIELDS
from ...engine.families import families, get_family
from ...engine.params import SIZE_NOTE, DialectName, dialect_names, property_schemas
from ...pictures.uploads import UPLOAD_FORMATS
from .common import IGNORED, KEEP_ALIVE, Schema, fields, obj, or_null

FILE = {"type": "string", "contentMediaType": "application/octet-stream",
        "description": f"A {', '.join(f.upper() for f in UPLOAD_FORMATS)} file (recognised by its "
                       "first bytes), within [images] max_upload_bytes and max_upload_pixels."}
_IMAGE_ID = {"description": "A gallery picture to use instead of an upload."}
# A1111 fields accepted only at their "off" value (null counts as absent, as everywhere).
_OFF_ONLY: dict[str, Schema] = {
    "enable_hr": {"enum": [False, 0, None], "description": "Only false (off) is accepted."},
    "script_name": {"type": "null", "description": "Only null (no script) is accepted."}}
_STRENGTH = {"exclusiveMinimum": 0, "maximum": 1, "default": 0.75}
_SAVE_IMAGES = {"default": False, "description": "Keep the pictures in the gallery too (as A1111, "
                                                 "they are only answered by default)."}
# A1111's hires fix (daemon/tools/hires.py), txt2img only.
_HIRES: dict[str, Schema] = {
    "enable_hr": {"default": False, "description": "Hires fix: draw, enlarge, then redraw image-to-image."},
    "hr_scale": {"minimum": 1, "default": 2, "description": "Enlarge by this (without hr_resize_x/y)."},
    "hr_resize_x": {"minimum": 0, "description": "Second pass width (0: from hr_resize_y or hr_scale)."},
    "hr_resize_y": {"minimum": 0, "description": "Second pass height (0: from hr_resize_x or hr_scale)."},
    "hr_upscaler": {"default": "Latent", "description": "None, a Latent mode (a plain resize here) or an "
                                                        "upscaler from /sdapi/v1/upscalers."},
    "hr_second_pass_steps": {"minimum": 0, "default": 0, "description": "0: the first pass's steps."},
    "denoising_strength": {**_STRENGTH, "description": "How far the second pass may move from the "
                                                       "enlarged picture."},
    "hr_prompt": {"description": "The second pass's prompt; empty: the first's."},
    "hr_negative_prompt": {"description": "The second pass's negative prompt; empty: the first's."},
    "hr_sampler_name": {"description": "The second pass's sampler; absent: the first's."},
    "hr_scheduler": {"description": "The second pass's schedule; absent: the first's."}}
_CHECKPOINT = {"properties": {"sd_model_checkpoint": {"type": ["string", "null"]}},
               "description": "Only sd_model_checkpoint is used (a title from sd-models)."}


def param_properties(engine: EngineConfig, dialect: DialectName | None = None) -> dict[str, Schema]:
    """The generation parameters as request properties (null: absent), named as ``dialect`` names
    them (pennello's own names when None)."""
    properties = property_schemas(engine)
    drawing = [get_family(name) for name in families() if get_family(name).purpose in ("generate", "edit")]
    size = {"minimum": min(f.min_size for f in drawing), "maximum": max(f.max_size for f in drawing),
            "multipleOf": min(f.multiple for f in drawing)}
    for side in ("width", "height"):
        properties[side] = {**properties[side], **size}
    names = dialect_names(dialect) if dialect else {name: name for name in properties}
    return {alias: or_null(properties[name]) for name, alias in names.items()}


def body(table: Mapping[str, Any], params: Mapping[str, Schema], notes: Mapping[str, Schema],
         required: tuple[str, ...] = ()) -> Schema:
    """A JSON body: every field of a route's ``table``, the parameters among them from ``params``,
    the rest typed by the table; ``notes`` add to either."""
    typed = fields(table, notes)
    return obj({name: {**params[name], **notes.get(name, {})} if name in params else typed[name]
                for name in table}, required)


def form(table: Mapping[str, Any], files: Mapping[str, Schema], notes: Mapping[str, Schema],
         required: tuple[str, ...] = (), params: Mapping[str, Schema] | None = None) -> Schema:
    """A multipart/form-data schema: files plus the route's text fields (sent as strings; a form
    has no null, so a field is either sent or left out)."""
    text = {name: _not_null(prop) for name, prop in body(table, params or {}, notes)["properties"].items()}
    schema = obj({**files, **text}, required)
    if "image_id" in text:  # the picture is an upload or a gallery picture, never both
        uploads = [{"required": [name]} for name in ("image", "image[]") if name in files]
        schema["oneOf"] = [{"required": ["image_id"]}, {"anyOf": uploads}]
    return schema


def _not_null(schema: Schema) -> Schema:
    schema = {**schema, "type": next(t for t in schema["type"] if t != "null")}
    if "enum" in schema:
        schema["enum"] = [value for value in schema["enum"] if value is not None]
    return schema


def request_schemas(engine: EngineConfig) -> dict[str, Schema]:
    """Every request schema that holds generation parameters, bounded by ``engine``'s limits."""
    return {**_native(engine), **_openai(engine), **_a1111(engine), **_batch(engine)}


def _native(engine: EngineConfig) -> dict[str, Schema]:
    params = param_properties(engine)
    return {
        "GenerateRequest": body(GENERATE_FIELDS, params, {
            "stream": {"description": "Answer with server-sent events instead of JSON."},
            "wait": {"description": "Answer when the job ended instead of at once with 202."},
            "keep_alive": KEEP_ALIVE}, ("prompt",)),
        "EditForm": form(routes_tools.EDIT_FIELDS, {"image": {
            **FILE, "description": FILE["description"] + " Repeat the field (or use image[]) to send "
            "up to 3 reference pictures to a model that takes them (qwen-image-edit); SD-class models "
            "take one."}, "image[]": {"type": "array", "items": FILE, "maxItems": 3}, "mask": {
            **FILE, "description": "Where to repaint: transparent pixels, or (a mask without transparency) "
                                   "white ones. Resized to the result's size."}}, {
            "image_id": _IMAGE_ID,
            "strength": {**_STRENGTH, "description": "How far the result may move from the picture (0-1]."},
            "width": {"description": "Default: the picture's size fitted to the model's limits."},
            "wait": {"default": True, "description": "Answer when the edit job ended (200 done, 500 "
                                                     "failed, 409 cancelled); false: 202 at once."},
            "stream": {"description": "Answer with the job's server-sent events (as /api/generate)."}},
            ("prompt",), params),
    }


def _openai(engine: EngineConfig) -> dict[str, Schema]:
    params = param_properties(engine, "openai")
    notes: dict[str, Schema] = {
        "response_format": {"enum": [*routes_openai.RESPONSE_FORMATS, None], "default": "b64_json"},
        "stream": {"enum": [False, None], "description": "Must be false or absent."},
        "model": {"description": "An installed model; absent, empty or one of OpenAI's own names ("
                                 f"{', '.join(sorted(routes_openai.OPENAI_MODEL_NAMES))}): the configured default."},
        **{name: IGNORED for name in routes_openai.IGNORED_FIELDS}}
    size = "WIDTHxHEIGHT or auto (the model's default). " + SIZE_NOTE
    return {
        "OpenAIImageRequest": body(routes_openai.GENERATION_FIELDS, params, {
            **notes, "size": {"description": size}}, ("prompt",)),
        "OpenAIImageEditForm": form(routes_openai.EDIT_FIELDS, {
            "image": FILE, "image[]": {"type": "array", "items": FILE, "maxItems": 3},
            "mask": {**FILE, "description": "Transparent where to repaint (OpenAI's convention)."}}, {
            **notes, "stream": {"description": "Must be false or absent."},
            "size": {"description": "WIDTHxHEIGHT or auto (the picture's size fitted to the model)."},
            "input_fidelity": IGNORED, "complexity": IGNORED}, ("prompt",), params),
    }


def _a1111(engine: EngineConfig) -> dict[str, Schema]:
    params = param_properties(engine, "a1111")
    params["n_iter"] = {**params["batch_size"], "description": "Batches; batch_size * n_iter pictures."}
    params["seed"] = {**params["seed"], "minimum": -1,
                      "description": "-1 or absent: random. Image i uses seed+i."}
    params["sampler_name"]["description"] += " Any case; aliases (k_euler_a) and names with a schedule " \
                                            "(DPM++ 2M Karras) too."
    params["scheduler"]["description"] += " By label or name (karras), any case."
    ignored = {**routes_a1111.IGNORED_FIELDS, **routes_a1111.IMG2IMG_IGNORED_FIELDS}
    notes = {"override_settings": _CHECKPOINT, **{name: IGNORED for name in ignored},
             "script_name": _OFF_ONLY["script_name"], "save_images": _SAVE_IMAGES}
    return {name: _lenient(schema) for name, schema in {
        "A1111Txt2ImgRequest": body(routes_a1111.TXT2IMG_FIELDS | routes_a1111.IGNORED_FIELDS | {
            k: t for k, (t, _) in routes_a1111.OFF_ONLY_FIELDS.items()}, params, {**notes, **_HIRES},
            ("prompt",)),
        "A1111Img2ImgRequest": body(routes_a1111.IMG2IMG_ALL, params, {
            **notes, **_OFF_ONLY, "denoising_strength": _STRENGTH,
            "init_images": {"items": {"type": "string", "contentEncoding": "base64"}, "minItems": 1,
                            "maxItems": 3, "description": "One picture; up to 3 for models that take "
                                                          "reference pictures (qwen-image-edit)."},
            "mask": {"contentEncoding": "base64", "description": "White where to repaint."},
            "inpainting_mask_invert": {"enum": [0, 1, False, True, None]}}, ("init_images", "prompt")),
    }.items()}


def _lenient(schema: Schema) -> Schema:
    """An A1111 body as the /sdapi routes take it: other fields are ignored (so allowed), and a
    flag may also be 0 or 1 (:mod:`..routes.a1111.lenient`)."""
    for prop in schema["properties"].values():
        if prop.get("type") == ["boolean", "null"] and "enum" not in prop:
            del prop["type"]
            prop["enum"] = [False, True, 0, 1, None]
    return {**schema, "additionalProperties": True}


def _batch(engine: EngineConfig) -> dict[str, Schema]:
    params = param_properties(engine)
    # A batch takes engine.max_n pictures per style, so its n has no bound of its own.
    params["n"] = {k: v for k, v in params["n"].items() if k != "maximum"}
    schema = body({k: v for k, v in routes_tools.BATCH_FIELDS.items() if k != "styles"}, params, {
        "subject": {"description": "What to draw; each style's prompt puts it in its {subject} slot."},
        "n": {"description": "Pictures in all, spread evenly over the styles "
                             "(default: one per style; at least one per style)."},
        "seed": {"description": "Every style starts at this seed (random when absent); picture i "
                                "of a style uses seed+i."},
        "negative_prompt": {"description": "Added to each style's own negative prompt."},
        "wait": {"default": True, "description": "Wait for every picture and make the contact "
                                                 "sheet; false answers 202 at once (no sheet)."}},
        ("subject",))
    schema["properties"]["styles"] = {
        "oneOf": [{"type": "integer", "minimum": 1}, {"type": "array", "items": {"type": "string"},
                                                      "minItems": 1}, {"type": "null"}],
        "description": "Style names (GET /api/styles), or how many of the presets to use (default 4)."}
    run = {"subject": {"type": ["string", "null"]}, "seed": param_properties(engine)["seed"]}
    return {"BatchRequest": schema, "PipelineRun": obj(run)}
