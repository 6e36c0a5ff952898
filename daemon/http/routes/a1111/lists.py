"""A1111's catalogue routes under ``/sdapi/v1``, answered with what pennello really has, and ``png-info``.

Front-ends fill their menus from these before they generate anything (SillyTavern refuses to
connect when one is missing), so each answers in A1111's shape:

* ``samplers`` and ``schedulers``: the diffusers schedulers a ``sampler_name`` and ``scheduler``
  map onto (:mod:`...engine.samplers`);
* ``upscalers``: ``None`` first, as A1111 lists it, then pennello's upscalers (:mod:`...tools.upscale`);
* ``prompt-styles``: pennello's styles (:mod:`...tools.styles`), ``{subject}`` shown as A1111's ``{prompt}``;
* ``sd-vae``, ``sd-modules``, ``loras``, ``hypernetworks``, ``embeddings``, ``face-restorers``,
  ``realesrgan-models``, ``latent-upscale-modes``: empty, because each model brings its own VAE
  and pennello loads no add-on networks, face restorers or latent hires passes;
* ``scripts``: none, for either mode;
* ``png-info``: the generation parameters in a picture, from the ``parameters`` text that A1111
  and pennello both write, else from pennello's XMP record.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, jsonify

from ...context import current_engine
from .lenient import a1111_body

bp = Blueprint("lists", __name__)

# A1111's own infotext syntax: "Key: value" pairs, a value possibly a quoted string with commas.
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_EMPTY = ("sd-vae", "sd-modules", "loras", "hypernetworks", "face-restorers", "realesrgan-models",
          "latent-upscale-modes")


@bp.get("/samplers")
def samplers() -> Any:
    from ....engine.samplers import a1111_samplers

    return jsonify(a1111_samplers())


@bp.get("/schedulers")
def schedulers() -> Any:
    from ....engine.samplers import a1111_schedules

    return jsonify(a1111_schedules())


@bp.get("/upscalers")
def upscalers() -> Any:
    from ....tools.upscale import upscalers as names

    none = {"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 4}
    return jsonify([none, *({**none, "name": name} for name in names())])


@bp.get("/prompt-styles")
def prompt_styles() -> Any:
    from ....tools.styles import SUBJECT, load_styles

    presets = load_styles(current_engine().paths.config_dir)
    return jsonify([{"name": s.name, "prompt": s.prompt.replace(SUBJECT, "{prompt}"),
                     "negative_prompt": s.negative} for s in presets.values()])


@bp.get("/scripts")
def scripts() -> Any:
    """pennello runs no A1111 scripts (webuiapi reads this to find ControlNet and ADetailer)."""
    return jsonify({"txt2img": [], "img2img": []})


@bp.get("/embeddings")
def embeddings() -> Any:
    return jsonify({"loaded": {}, "skipped": {}})


def _empty() -> Any:
    return jsonify([])


for _name in _EMPTY:
    bp.add_url_rule(f"/{_name}", _name.replace("-", "_"), _empty, methods=["GET"])


@bp.post("/png-info")
def png_info() -> Any:
    """The parameters a picture carries: ``info`` (the text), ``items`` (its other text chunks)
    and ``parameters`` (the text parsed the way A1111 parses it)."""
    from ....pictures.uploads import decode_base64_upload

    body = a1111_body({"image": str}, required=("image",))
    image = decode_base64_upload(body["image"], current_engine().config.images, "image")
    chunks = {k: v for k, v in image.info.items() if isinstance(v, str)}
    text = chunks.pop("parameters", None)
    xmp = chunks.pop("XML:com.adobe.xmp", None) or image.info.get("xmp")  # PNG iTXt; WebP and JPEG
    if text is None and xmp:
        text = _xmp_infotext(xmp)
    return jsonify({"info": text or "", "items": chunks, "parameters": parse_infotext(text or "")})


def _xmp_infotext(xmp: str | bytes) -> str | None:
    """The ``parameters`` text of pennello's record in an XMP packet; None without a readable one."""
    from xml.etree.ElementTree import ParseError

    from ....engine.outputs import a1111_parameters, parse_xmp

    try:
        record = parse_xmp(xmp)[1]
    except (ParseError, ValueError, UnicodeDecodeError):  # someone else's or a broken packet
        return None
    return a1111_parameters(record) if isinstance(record, dict) and record else None


def parse_infotext(text: str) -> dict[str, Any]:
    """A1111's ``parameters`` text as a dictionary (``Prompt``, ``Negative prompt``, then each
    ``Key: value`` of its last line; ``Size`` also as ``Size-1`` and ``Size-2``, as A1111 does).

        >>> parse_infotext("a kite\\nNegative prompt: rain\\nSteps: 3, Size: 64x48")["Size-2"]
        '48'
    """
    *lines, last = text.strip().split("\n") if text.strip() else [""]
    if not _PARAM.findall(last):  # no parameter line: all of it is the prompt
        lines, last = [*lines, last], ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    out: dict[str, Any] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _PARAM.findall(last):
        out[key] = value.strip('"') if value.startswith('"') else value
    if "x" in out.get("Size", ""):
        out["Size-1"], out["Size-2"] = out["Size"].split("x", 1)
    return out
