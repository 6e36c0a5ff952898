"""Request validation: check what a client asked for and fill in the model's defaults.

Every field is checked against its bounds in :mod:`.params` and the engine's limits (``[engine]``
in the config) and against the model's family (its size rules, what it is for); fields left ``None`` take the model's manifest defaults,
else the family's. The first bad field raises a :class:`RequestError` naming it, so the HTTP
layer can point at the input:

    >>> from pennello.config import Config
    >>> resolve_request(GenerateRequest(prompt=" "), Config().engine, lookup=None)
    Traceback (most recent call last):
        ...
    pennello.errors.RequestError: prompt must not be empty
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from pennello.config import EngineConfig
from pennello.errors import ModelNotFoundError, RequestError

from .backends import check_tiny_decoder
from .families import PURPOSE_ROUTES, ModelFamily, get_family
from .jobs import GenerateRequest
from .params import check, check_given, defaults_from


def resolve_request(request: GenerateRequest, limits: EngineConfig, lookup: Callable[[str], Any],
                    purpose: str | None = None) -> GenerateRequest:
    """Check every field and fill the model's defaults in; with ``purpose``, also that the
    model's family does that (an upscaler cannot draw from text).

    Args:
        lookup: the installed model of a name (raises :class:`ModelNotFoundError`).

    Raises:
        RequestError: a field is out of range (``field`` names it).
        ModelNotFoundError: the model is not installed (``field`` is ``"model"``).
    """
    check_given(request, limits, leave_out=defaults_from("manifest"))
    if not request.prompt.strip():
        raise RequestError("prompt must not be empty", field="prompt")
    try:
        installed = lookup(request.model or limits.default_model)
    except ModelNotFoundError as e:
        e.field = "model"  # type: ignore[attr-defined]  # so the HTTP error names the input
        raise
    family = get_family(installed.manifest.pipeline.family)
    if purpose is not None and family.purpose != purpose:
        raise RequestError(
            f"{installed.name} is {'an' if family.purpose[0] in 'aeiou' else 'a'} {family.purpose} model "
            f"({family.name} family), not a text-to-image one: use it with "
            f"{PURPOSE_ROUTES[family.purpose]}, or name a text-to-image model", field="model")
    if request.decoder == "tiny":
        check_tiny_decoder(family.name, lookup)
    defaults = model_defaults(installed, family)
    values = {name: getattr(request, name) if getattr(request, name) is not None else defaults[name]
              for name in defaults_from("manifest")}
    for name in ("width", "height"):
        check(name, values[name], limits)
    family.check_size(values["width"], values["height"])
    check("steps", values["steps"], limits)
    check("guidance", values["guidance"], limits)
    return replace(request, model=installed.name, guidance=float(values["guidance"]),
                   width=values["width"], height=values["height"], steps=values["steps"])


def model_defaults(installed: Any, family: ModelFamily) -> dict[str, Any]:
    """Size, steps and guidance where a request does not say: the manifest's, else the family's."""
    return {**dict(family.defaults), **installed.manifest.pipeline.defaults}


def native_size(pipeline: Any, family: ModelFamily, width: int, height: int) -> tuple[int, int]:
    """The size a model draws a ``width`` x ``height`` request at: the same, unless its manifest's
    ``max_native_size`` is smaller (pennello-tiny knows only 64x64 scenes; at 512 it draws noise).
    Then the longer side is that size, the other follows the aspect ratio within the family's
    limits, and the picture is enlarged to the size asked afterwards.

        >>> from pennello.installer.manifest import PipelineSpec
        >>> from .families import get_family
        >>> native_size(PipelineSpec("StableDiffusionPipeline", "sd", {}, 64), get_family("sd"), 512, 512)
        (64, 64)
    """
    largest = getattr(pipeline, "max_native_size", None)
    if largest is None or max(width, height) <= largest:
        return width, height
    scale = largest / max(width, height)
    sides = [max(family.min_size, int(side * scale) // family.multiple * family.multiple) for side in (width, height)]
    return sides[0], sides[1]
