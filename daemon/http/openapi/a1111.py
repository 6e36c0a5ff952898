"""The OpenAPI description of A1111's settings, catalogue, control and Extras routes
(:mod:`..routes.a1111.settings`, :mod:`..routes.a1111.lists`, :mod:`..routes.a1111.extras`); txt2img, img2img, sd-models and
progress are described with the other dialects in :mod:`.core` and :mod:`.tools`.

    >>> sorted(paths())[:2]
    ['/sdapi/v1/cmd-flags', '/sdapi/v1/embeddings']
"""

from __future__ import annotations

from ..routes.a1111.extras import EXTRAS_FIELDS, EXTRAS_IGNORED_FIELDS, MAX_BATCH_IMAGES, MAX_RESIZE
from .common import BOOL, IGNORED, NUM, STR, Schema, fields, nullable, obj, op, ref, reply

_LIST = {"type": "array", "items": {"type": "object"}}
_NULL = reply({"type": "null"})
_B64 = {"type": "string", "contentEncoding": "base64"}
_PICTURE = {**_B64, "description": "A PNG, JPEG or WebP picture (or data: URL)."}
_EXTRAS = fields({**EXTRAS_FIELDS, **EXTRAS_IGNORED_FIELDS}, {
    **{name: IGNORED for name in EXTRAS_IGNORED_FIELDS},
    "resize_mode": {"enum": [0, 1, None], "default": 0,
                    "description": "0: by upscaling_resize; 1: to upscaling_resize_w x upscaling_resize_h."},
    "upscaling_resize": {"exclusiveMinimum": 0, "maximum": MAX_RESIZE, "default": 2},
    "upscaling_resize_w": {"minimum": 1, "default": 512}, "upscaling_resize_h": {"minimum": 1, "default": 512},
    "upscaling_crop": {"default": True, "description": "Keep the aspect ratio, cropping to fit (resize_mode 1)."},
    "upscaler_1": {"default": "None", "description": "A name from /sdapi/v1/upscalers, any case; None: a "
                                                     "plain Lanczos resize. Others are a 400 listing them."},
    "show_extras_results": {"default": True, "description": "false: answer no pictures."}})

SCHEMAS: dict[str, Schema] = {
    "A1111Options": obj({"sd_model_checkpoint": {**STR, "description": "The caller's model, as a title "
                                                                        "from sd-models."},
                         "sd_checkpoint_hash": nullable("string")}, ("sd_model_checkpoint",), extra=True,
                        description="Per caller. Keys pennello has no equivalent of are answered with "
                                    "A1111's values, and any the caller set are echoed back."),
    "A1111OptionsUpdate": obj({"sd_model_checkpoint": {**STR, "description": "A title from sd-models, "
                                                                              "or a model name: loaded now and "
                                                                              "used by the caller's txt2img."}},
                              extra=True, description="Other options are kept and echoed; they change nothing."),
    "A1111Sampler": obj({"name": STR, "aliases": {"type": "array", "items": STR},
                         "options": {"type": "object"}}, ("name", "aliases", "options")),
    "A1111Scheduler": obj({"name": STR, "label": STR, "aliases": nullable("array"), "default_rho": NUM,
                           "need_inner_model": BOOL}, ("name", "label")),
    "A1111Upscaler": obj({"name": STR, "model_name": nullable("string"), "model_path": nullable("string"),
                          "model_url": nullable("string"), "scale": NUM}, ("name",)),
    "A1111PromptStyle": obj({"name": STR, "prompt": STR, "negative_prompt": STR},
                            ("name", "prompt", "negative_prompt")),
    "A1111PngInfoRequest": obj({"image": {"type": "string", "contentEncoding": "base64",
                                          "description": "A PNG, JPEG or WebP picture (or data: URL)."}},
                               ("image",), extra=True),
    "A1111PngInfo": obj({"info": STR, "items": {"type": "object"}, "parameters": {"type": "object"}},
                        ("info", "items", "parameters")),
    "A1111ExtrasSingleRequest": obj({**_EXTRAS, "image": _PICTURE}, ("image",), extra=True),
    "A1111ExtrasBatchRequest": obj({**_EXTRAS, "imageList": {
        "type": "array", "minItems": 1, "maxItems": MAX_BATCH_IMAGES,
        "items": obj({"data": _PICTURE, "name": STR}, ("data",), extra=True)}}, ("imageList",), extra=True),
    "A1111ExtrasSingle": obj({"html_info": STR, "image": nullable("string", contentEncoding="base64")},
                             ("html_info", "image")),
    "A1111ExtrasBatch": obj({"html_info": STR, "images": {"type": "array", "items": _B64}},
                            ("html_info", "images")),
    "A1111Memory": obj({"ram": {"type": "object"}, "cuda": {"type": "object"}}, ("ram", "cuda")),
}


def _get(summary: str, schema: Schema) -> dict[str, Schema]:
    return {"get": op(summary, "a1111", reply(schema))}


def paths() -> dict[str, dict[str, Schema]]:
    """A1111's settings, catalogues and controls under /sdapi/v1."""
    a1 = "a1111"
    empty = {name: _get(f"A1111's {name}: none (each model brings its own; no add-ons are loaded)", _LIST)
             for name in ("sd-vae", "sd-modules", "loras", "hypernetworks", "face-restorers",
                          "realesrgan-models", "latent-upscale-modes")}
    return {**{f"/sdapi/v1/{name}": item for name, item in empty.items()},
            "/sdapi/v1/options": {
                "get": op("The caller's A1111 options", a1, reply(ref("A1111Options"))),
                "post": op("Set the caller's options; sd_model_checkpoint loads that model", a1, _NULL,
                           body="A1111OptionsUpdate", errors=("400", "404"))},
            "/sdapi/v1/samplers": _get("Samplers (diffusers schedulers)",
                                       {"type": "array", "items": ref("A1111Sampler")}),
            "/sdapi/v1/schedulers": _get("Noise schedules", {"type": "array", "items": ref("A1111Scheduler")}),
            "/sdapi/v1/upscalers": _get("Upscalers: None, then pennello's",
                                        {"type": "array", "items": ref("A1111Upscaler")}),
            "/sdapi/v1/prompt-styles": _get("pennello's styles",
                                            {"type": "array", "items": ref("A1111PromptStyle")}),
            "/sdapi/v1/embeddings": _get("Textual-inversion embeddings: none",
                                         obj({"loaded": {"type": "object"}, "skipped": {"type": "object"}},
                                             ("loaded", "skipped"))),
            "/sdapi/v1/scripts": _get("Scripts: none is run", obj({
                "txt2img": {"type": "array", "items": STR}, "img2img": {"type": "array", "items": STR}},
                ("txt2img", "img2img"))),
            "/sdapi/v1/cmd-flags": _get("The A1111 command-line flags that mean something here",
                                        {"type": "object"}),
            "/sdapi/v1/memory": _get("System and CUDA memory (bytes)", ref("A1111Memory")),
            "/sdapi/v1/refresh-checkpoints": {"post": op("Nothing to refresh: sd-models reads the store "
                                                         "each time", a1, _NULL)},
            "/sdapi/v1/interrupt": {"post": op("Stop the caller's running job", a1, reply(obj({})))},
            "/sdapi/v1/skip": {"post": op("Stop the caller's running job (a batch is one call)", a1, _NULL)},
            "/sdapi/v1/extra-single-image": {"post": op(
                "Upscale a picture with pennello's upscalers (not kept in the gallery)", a1,
                reply(ref("A1111ExtrasSingle")), body="A1111ExtrasSingleRequest",
                errors=("400", "404", "409", "429"))},
            "/sdapi/v1/extra-batch-images": {"post": op(
                "Upscale several pictures alike (not kept in the gallery)", a1, reply(ref("A1111ExtrasBatch")),
                body="A1111ExtrasBatchRequest", errors=("400", "404", "409", "429"))},
            "/sdapi/v1/png-info": {"post": op("The generation parameters a picture carries", a1,
                                              reply(ref("A1111PngInfo")), body="A1111PngInfoRequest",
                                              errors=("400",))}}

