"""The generation parameters, defined once: every other description of them is derived from here.

:class:`GenerationParams` lists what a picture is made from (prompt, size, steps, guidance,
seed…). Each field's annotation carries all there is to know about it: its type, its fixed
bounds and its description (pydantic's ``Field``), the engine config limit that bounds it from
above (:class:`Limit`), where its default comes from (:class:`Default`) and its names in the
OpenAI and AUTOMATIC1111 dialects (:class:`Dialect`). From that one definition come

* the request dataclasses, which inherit the fields (:class:`.jobs.GenerateRequest`, edits);
* the routes' field tables (:func:`field_types`, :func:`dialect_types`);
* the engine's checks (:func:`check`, :func:`check_given`), with the same wording everywhere,
  and which parameters a model's manifest fills in (:func:`defaults_from`);
* the OpenAPI request schemas (:func:`property_schemas`, through pydantic's JSON Schema);
* the parameters of job dictionaries and of requests made from others (:func:`values`), and
  those each saved picture records (:func:`recorded`);
* the one place a random seed is drawn (:func:`random_seed`).

    >>> field_types()["guidance"], dialect_types("a1111")["cfg_scale"]
    (<class 'float'>, <class 'float'>)
    >>> from pennello.config import EngineConfig
    >>> check("n", 3, EngineConfig(max_n=2))
    Traceback (most recent call last):
    ...
    pennello.errors.RequestError: n must be from 1 to 2

Adding a parameter is adding one field here (and using it where a pipeline is called).
The classes are plain frozen dataclasses: pydantic reads their annotations for the JSON Schema
only, so building a request validates nothing by itself and every refusal keeps pennello's
wording and ``field``. The module needs no Flask, so the engine and the tools use it too.
"""

from __future__ import annotations

import dataclasses
import functools
import secrets
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter
from pydantic.fields import FieldInfo

from pennello.errors import RequestError

from .samplers import SamplerName, ScheduleName

ImageFormat = Literal["png", "jpeg", "webp"]
IMAGE_FORMATS: tuple[str, ...] = typing.get_args(ImageFormat)
MAX_SEED = 2**32 - 1
MAX_GUIDANCE = 30.0
DialectName = Literal["openai", "a1111"]
Decoder = Literal["full", "tiny"]
DefaultSource = Literal["fixed", "manifest", "config", "random"]


@dataclass(frozen=True)
class Limit:
    """The ``EngineConfig`` attribute that bounds a field from above (a length for strings)."""

    config: str


@dataclass(frozen=True)
class Default:
    """Where an absent field's value comes from: ``fixed`` (the field's default), ``manifest``
    (the model's manifest, else its family), ``config`` (the daemon's config) or ``random``."""

    source: DefaultSource


@dataclass(frozen=True)
class Dialect:
    """The field's name in the OpenAI and A1111 APIs; None where that API has no such field."""

    openai: str | None = None
    a1111: str | None = None


@dataclass(frozen=True)
class Recorded:
    """Marks a parameter kept in every saved picture's record, its provenance (:func:`recorded`)."""


SIZE_NOTE = "Must suit the model's family (for pennello-tiny: a multiple of 8 from 64 to 1024)."
_FROM_MANIFEST = Default("manifest")
_KEPT = Recorded()


@dataclass(frozen=True, kw_only=True)
class GenerationParams:
    """What a picture is made from. ``None`` takes the default its :class:`Default` names."""

    # Declaration order is the order of job dictionaries and error listings.
    model: Annotated[str | None, Field(description="An installed model; the configured default when absent."),
                     Default("config"), Dialect(openai="model"), _KEPT] = None
    prompt: Annotated[str, Field(pattern=r"\S", description="What to draw."), Limit("max_prompt_chars"),
                      Dialect(openai="prompt", a1111="prompt"), _KEPT]
    negative_prompt: Annotated[str, Field(description="What to keep out of the picture."),
                               Limit("max_prompt_chars"), Dialect(a1111="negative_prompt"), _KEPT] = ""
    width: Annotated[int | None, Field(ge=1, description=SIZE_NOTE), _FROM_MANIFEST,
                     Dialect(a1111="width"), _KEPT] = None
    height: Annotated[int | None, Field(ge=1, description=SIZE_NOTE), _FROM_MANIFEST,
                      Dialect(a1111="height"), _KEPT] = None
    steps: Annotated[int | None, Field(ge=1, description="Denoising steps."), Limit("max_steps"),
                     _FROM_MANIFEST, Dialect(a1111="steps"), _KEPT] = None
    guidance: Annotated[float | None, Field(ge=0, le=MAX_GUIDANCE, description="Classifier-free guidance."),
                        _FROM_MANIFEST, Dialect(a1111="cfg_scale"), _KEPT] = None
    n: Annotated[int, Field(ge=1, description="Number of pictures (up to engine.max_n)."), Limit("max_n"),
                 Dialect(openai="n", a1111="batch_size")] = 1
    seed: Annotated[int | None, Field(ge=0, le=MAX_SEED, description="Random when absent; image i uses seed+i."),
                    Default("random"), Dialect(a1111="seed"), _KEPT] = None
    format: Annotated[ImageFormat, Field(description="The pictures' file format."),
                      Dialect(openai="output_format")] = "png"
    sampler: Annotated[SamplerName | None, Field(description="The sampler (a diffusers scheduler, by its "
                                                             "A1111 name); the model's own when absent."),
                       Dialect(a1111="sampler_name"), _KEPT] = None
    scheduler: Annotated[ScheduleName | None, Field(description="The noise schedule the sampler follows "
                                                                "(A1111's Karras, Exponential…); the "
                                                                "sampler's own when absent."),
                         Dialect(a1111="scheduler"), _KEPT] = None
    decoder: Annotated[Decoder | None, Field(description="The VAE decoder: full, or tiny (TAESD-class: several "
                                                         "times faster on a CPU, a little less fine detail; "
                                                         "needs the family's tiny decoder installed). When "
                                                         "absent: tiny on a CPU for 1-4 steps where installed, "
                                                         "else full.")] = None
    enhance: Annotated[bool, Field(description="Auto-enhance each picture (contrast, sharpness) before "
                                               "saving it.")] = False


def _without_none(annotation: Any) -> Any:
    """The type inside ``X | None``; any other annotation as it is."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        return next(arg for arg in args if arg is not type(None))
    return annotation


@functools.cache
def _fields() -> dict[str, tuple[Any, tuple[Any, ...]]]:
    """name -> (its type without None, its annotation's metadata), in declaration order."""
    hints = typing.get_type_hints(GenerationParams, include_extras=True)
    out = {}
    for field in dataclasses.fields(GenerationParams):
        annotated = hints[field.name]
        out[field.name] = (_without_none(typing.get_args(annotated)[0]), annotated.__metadata__)
    return out


def _meta(name: str, cls: type) -> Any:
    return next((m for m in _fields()[name][1] if isinstance(m, cls)), None)


def _json_type(kind: Any) -> type:
    """The JSON type a route checks a field's value against (a Literal of strings is a str)."""
    return type(typing.get_args(kind)[0]) if typing.get_origin(kind) is Literal else kind


def values(params: GenerationParams, leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
    """The parameters of ``params`` (a request, an edit, a saved pipeline) as a dictionary."""
    return {name: getattr(params, name) for name in _fields() if name not in leave_out}


def recorded(params: GenerationParams, seed: int) -> dict[str, Any]:
    """The parameters a saved picture records, with the seed that picture was made with."""
    return {**{name: getattr(params, name) for name in _fields() if _meta(name, Recorded)}, "seed": seed}


def defaults_from(source: DefaultSource) -> tuple[str, ...]:
    """The parameters whose :class:`Default` is ``source`` (e.g. those a model's manifest fills in)."""
    return tuple(name for name in _fields() if _meta(name, Default) == Default(source))


def field_types() -> dict[str, type]:
    """name -> JSON type, the field table of a route that takes pennello's own names."""
    return {name: _json_type(kind) for name, (kind, _) in _fields().items()}


def dialect_names(dialect: DialectName) -> dict[str, str]:
    """pennello's name -> the dialect's, for the fields that dialect has."""
    return {name: getattr(_meta(name, Dialect), dialect) for name in _fields()
            if _meta(name, Dialect) is not None and getattr(_meta(name, Dialect), dialect)}


def dialect_types(dialect: DialectName) -> dict[str, type]:
    """The dialect's name -> JSON type, for the parameters that dialect names."""
    types_ = field_types()
    return {alias: types_[name] for name, alias in dialect_names(dialect).items()}


def bounds(name: str, limits: Any = None) -> tuple[float | None, float | None]:
    """A numeric field's (low, high); with ``limits`` (an ``EngineConfig``) its :class:`Limit`
    is the upper bound, without it only the fixed bounds count."""
    info = _field_info(name)
    low = next((m.ge for m in info.metadata if hasattr(m, "ge")), None)
    high = next((m.le for m in info.metadata if hasattr(m, "le")), None)
    limit = _meta(name, Limit)
    if limit is not None and limits is not None:
        high = getattr(limits, limit.config)
    return low, high


def _field_info(name: str) -> FieldInfo:
    return next(m for m in _fields()[name][1] if isinstance(m, FieldInfo))


def check(name: str, value: Any, limits: Any = None) -> None:
    """Raises RequestError naming ``name`` unless ``value`` is of its type and within its bounds
    (``limits``: see :func:`bounds`). Any value passes for a flag, as Python's truth does."""
    kind = _fields()[name][0]
    if typing.get_origin(kind) is Literal:
        if value not in typing.get_args(kind):
            raise RequestError(f"{name} must be one of {', '.join(typing.get_args(kind))}", field=name)
    elif kind is str:
        _check_text(name, value, limits)
    elif kind is float:
        low, high = bounds(name, limits)
        # Written so that NaN, which compares false with everything, is refused too.
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not low <= value <= high:  # type: ignore[operator]
            raise RequestError(f"{name} must be a number from {low:g} to {high:g}", field=name)
    elif kind is int:
        _check_int(name, value, *bounds(name, limits))


def _check_text(name: str, value: Any, limits: Any) -> None:
    if not isinstance(value, str):
        raise RequestError(f"{name} must be a string", field=name)
    try:
        # JSON's \u escapes can carry half a surrogate pair, which is no text at all: the
        # tokenizer would raise inside the pipeline call, failing every job batched with it.
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RequestError(f"{name} is not valid Unicode text: character {e.start} is a lone "
                           f"surrogate ({value[e.start]!a})", field=name) from None
    limit = _meta(name, Limit)
    if limit is not None and limits is not None and len(value) > getattr(limits, limit.config):
        raise RequestError(f"{name} is {len(value)} characters; the limit is "
                           f"{getattr(limits, limit.config)}", field=name)


def _check_int(name: str, value: Any, low: Any, high: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be an integer", field=name)
    if value < low or (high is not None and value > high):
        raise RequestError(f"{name} must be from {low} to {high}" if high is not None
                           else f"{name} must be at least {low}", field=name)


def check_given(params: GenerationParams, limits: Any, leave_out: tuple[str, ...] = ()) -> None:
    """:func:`check` every parameter ``params`` gives (None, where that is the default: not
    given), in declaration order, but those in ``leave_out`` (e.g. the ones checked once
    defaults are filled in)."""
    optional = {field.name for field in dataclasses.fields(GenerationParams) if field.default is None}
    for name in _fields():
        value = getattr(params, name)
        if name not in leave_out and not (value is None and name in optional):
            check(name, value, limits)


def fixed_bounds() -> dict[str, tuple[float, float | None]]:
    """The bounds that hold whatever the config says, for the numeric fields that have one."""
    return {name: bounds(name) for name, kind in field_types().items()  # type: ignore[misc]
            if kind in (int, float) and bounds(name)[0] is not None}


def random_seed() -> int:
    """A random seed: the only place one is drawn."""
    return secrets.randbelow(MAX_SEED + 1)


def seeds_for(seed: int | None, n: int) -> list[int]:
    """The seeds of ``n`` pictures: ``seed``, ``seed+1``… (wrapping), or random ones without it."""
    if seed is None:
        return [random_seed() for _ in range(n)]
    return [(seed + i) % (MAX_SEED + 1) for i in range(n)]


@functools.cache
def _schema() -> dict[str, Any]:
    return TypeAdapter(GenerationParams).json_schema()


def property_schemas(limits: Any = None) -> dict[str, dict[str, Any]]:
    """Each parameter as a JSON Schema property, null left out; with ``limits`` (an
    ``EngineConfig``) the config's bounds too: ``maxLength`` for strings, ``maximum`` for numbers."""
    out = {}
    for name, prop in _schema()["properties"].items():
        prop = {k: v for k, v in prop.items() if k not in ("title", "default")}
        inner = [s for s in prop.pop("anyOf", []) if s.get("type") != "null"]
        prop = {**(inner[0] if inner else {}), **prop}
        limit = _meta(name, Limit)
        if limit is not None and limits is not None:
            prop["maxLength" if prop["type"] == "string" else "maximum"] = getattr(limits, limit.config)
        out[name] = prop
    return out
