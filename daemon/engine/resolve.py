"""Request validation: check what a client asked for and fill in the model's defaults.

Every field is checked against the engine's limits (``[engine]`` in the config) and the model's
family (its size rules, what it is for); fields left ``None`` take the model's manifest defaults,
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

from .families import PURPOSE_ROUTES, ModelFamily, get_family
from .jobs import IMAGE_FORMATS, MAX_SEED, GenerateRequest

MAX_GUIDANCE = 30.0


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
    for name in ("prompt", "negative_prompt"):
        value = getattr(request, name)
        if not isinstance(value, str):
            raise RequestError(f"{name} must be a string", field=name)
        if len(value) > limits.max_prompt_chars:
            raise RequestError(f"{name} is {len(value)} characters; the limit is "
                               f"{limits.max_prompt_chars}", field=name)
    if not request.prompt.strip():
        raise RequestError("prompt must not be empty", field="prompt")
    if request.format not in IMAGE_FORMATS:
        raise RequestError(f"format must be one of {', '.join(IMAGE_FORMATS)}", field="format")
    check_int(request.n, "n", 1, limits.max_n)
    if request.seed is not None:
        check_int(request.seed, "seed", 0, MAX_SEED)
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
    defaults = model_defaults(installed, family)
    values = {name: getattr(request, name) if getattr(request, name) is not None else defaults[name]
              for name in ("width", "height", "steps", "guidance")}
    check_int(values["width"], "width", 1, None)
    check_int(values["height"], "height", 1, None)
    family.check_size(values["width"], values["height"])
    check_int(values["steps"], "steps", 1, limits.max_steps)
    guidance = values["guidance"]
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) \
            or not 0 <= guidance <= MAX_GUIDANCE:
        raise RequestError(f"guidance must be a number from 0 to {MAX_GUIDANCE:g}", field="guidance")
    return replace(request, model=installed.name, guidance=float(guidance), width=values["width"],
                   height=values["height"], steps=values["steps"])


def check_int(value: Any, name: str, low: int, high: int | None) -> None:
    """Raises:
        RequestError: ``value`` is not an integer from ``low`` to ``high`` (no upper bound if None).
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be an integer", field=name)
    if value < low or (high is not None and value > high):
        raise RequestError(f"{name} must be from {low} to {high}" if high is not None
                           else f"{name} must be at least {low}", field=name)


def model_defaults(installed: Any, family: ModelFamily) -> dict[str, Any]:
    """Size, steps and guidance where a request does not say: the manifest's, else the family's."""
    return {**dict(family.defaults), **installed.manifest.pipeline.defaults}
