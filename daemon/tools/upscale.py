"""Upscaling 2x, 4x or 8x, tile by tile so the largest results fit in memory.

Upscalers are entries in a registry, like model families. Two are built in:

* ``lanczos``: classical Lanczos resampling, always available, CPU only. Each tile is resized
  with a margin of source pixels around it (wider than the Lanczos kernel) and the margin is
  cropped off, so the tiled result equals a whole-picture resize while only one tile's
  intermediate buffers exist at a time.
* ``ai``: a diffusion upscaler (diffusers ``StableDiffusionUpscalePipeline``, family
  ``sd-upscale``) installed from the signed catalog as ``[images] upscale_model``; it runs as a
  job (``kind`` "upscale") in the engine's queue, tile by tile, 4x per pass (2x is a 4x pass
  scaled down, 8x a 4x pass then Lanczos 2x): a progress event per denoising step of each tile,
  cancellable, 429 when the queue is full. When it is not installed, asking for it is a 404
  that names the model.

    >>> from PIL import Image
    >>> upscale_lanczos(Image.new("RGB", (40, 30)), 4, tile=16).size
    (160, 120)
"""

from __future__ import annotations

import logging
import time
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal

from PIL import Image

from pennello.config import ImagesConfig
from pennello.errors import ModelNotFoundError, PennelloError, RequestError, TooLargeError

from ..engine.families import get_family
from ..engine.jobs import GenerateRequest
from ..engine.resolve import model_defaults


log = logging.getLogger(__name__)

Scale = Literal[2, 4, 8]
SCALES: tuple[int, ...] = typing.get_args(Scale)
UPSCALE_FAMILY = "sd-upscale"
_MARGIN = 4  # source pixels around a tile: Lanczos (a=3) reads 3 on each side when enlarging
_AI_TILE = 128  # source pixels per tile for the diffusion upscaler (its output tile is 512)
_AI_OVERLAP = 16
_AI_STEPS = 20  # denoising steps per tile


@dataclass(frozen=True)
class Upscaler:
    """One way of upscaling. ``run(engine, image, scale, tile, owner)`` returns the bigger picture."""

    name: str
    description: str
    run: Callable[[Any, Image.Image, int, int, str], Image.Image]
    model: Callable[[ImagesConfig], str | None] = lambda _: None  # the catalog model it needs


_UPSCALERS: dict[str, Upscaler] = {}


def register_upscaler(upscaler: Upscaler) -> Upscaler:
    _UPSCALERS[upscaler.name] = upscaler
    return upscaler


def upscalers() -> list[str]:
    return sorted(_UPSCALERS)


def tiles(width: int, height: int, tile: int) -> list[tuple[int, int, int, int]]:
    """Boxes (left, top, right, bottom) covering a width x height picture, row by row."""
    return [(x, y, min(x + tile, width), min(y + tile, height))
            for y in range(0, height, tile) for x in range(0, width, tile)]


def upscale_lanczos(image: Image.Image, scale: int, tile: int = 256) -> Image.Image:
    """Lanczos-resize ``image`` by ``scale``, one tile (plus margin) at a time."""
    width, height = image.size
    out = Image.new(image.mode, (width * scale, height * scale))
    for left, top, right, bottom in tiles(width, height, tile):
        box = (max(0, left - _MARGIN), max(0, top - _MARGIN), min(width, right + _MARGIN),
               min(height, bottom + _MARGIN))
        piece = image.crop(box).resize(((box[2] - box[0]) * scale, (box[3] - box[1]) * scale),
                                       Image.Resampling.LANCZOS)
        inner = ((left - box[0]) * scale, (top - box[1]) * scale,
                 (right - box[0]) * scale, (bottom - box[1]) * scale)
        out.paste(piece.crop(inner), (left * scale, top * scale))
    return out


def _lanczos(engine: Any, image: Image.Image, scale: int, tile: int, owner: str) -> Image.Image:
    return upscale_lanczos(image, scale, tile)


class UpscaleEndedError(PennelloError):
    """An AI upscale job was cancelled (409) or failed (500) while the request waited for it."""

    kind = "upscale_ended"


def _ai(engine: Any, image: Image.Image, scale: int, tile: int, owner: str) -> Image.Image:
    name = engine.config.images.upscale_model
    installed = engine.store.get(name)
    family = installed.manifest.pipeline.family
    if family != UPSCALE_FAMILY:
        raise RequestError(f"{name} is a {family!r} model, not an upscaler; set [images] upscale_model "
                           f"to an installed {UPSCALE_FAMILY} model", field="method")
    guidance = model_defaults(installed, get_family(family))["guidance"]
    task = AiUpscaleTask(image, guidance)
    job = engine.submit_task(
        GenerateRequest(prompt="", model=name, width=image.width, height=image.height, steps=_AI_STEPS,
                        guidance=guidance, owner=owner), [0], task, "upscale", len(ai_tiles(*image.size)) * _AI_STEPS)
    job.wait()
    if job.status != "done" or task.result is None:
        error = UpscaleEndedError(f"the AI upscale {job.status}{': ' + job.error if job.error else ''} "
                                  f"(job {job.id})")
        error.http_status = 409 if job.status == "cancelled" else 500  # type: ignore[misc]
        raise error
    four = task.result
    if scale == 2:
        return four.resize((image.width * 2, image.height * 2), Image.Resampling.LANCZOS)
    if scale == 8:
        return upscale_lanczos(four, 2, tile)
    return four


def ai_tiles(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """The overlapping source boxes the diffusion upscaler runs on, row by row."""
    step = _AI_TILE - _AI_OVERLAP
    return [(left, top, min(left + _AI_TILE, width), min(top + _AI_TILE, height))
            for top in range(0, max(1, height - _AI_OVERLAP), step)
            for left in range(0, max(1, width - _AI_OVERLAP), step)]


def _ai_x4(pipe: Any, image: Image.Image, guidance: float,
           on_step: Callable[[int], None] = lambda _: None) -> Image.Image:
    """The diffusion upscaler over overlapping tiles; later tiles overwrite the overlap.

    ``guidance`` is the model's (0 for the catalog's x4 upscaler): the prompt is empty, so
    classifier-free guidance (the pipeline's default is 9) would compare two identical
    conditionings and only double the UNet's work.
    """
    out = Image.new("RGB", (image.width * 4, image.height * 4))
    for box in ai_tiles(image.width, image.height):
        # This pipeline still has diffusers' older per-step callback (step, timestep, latents).
        piece = pipe(prompt="", image=image.crop(box), num_inference_steps=_AI_STEPS, guidance_scale=guidance,
                     output_type="pil", callback=lambda *_: on_step(1), callback_steps=1).images[0]
        out.paste(piece.resize(((box[2] - box[0]) * 4, (box[3] - box[1]) * 4)), (box[0] * 4, box[1] * 4))
    return out


class AiUpscaleTask:
    """The AI upscaler's 4x pass as an engine task. Its picture is handed back to the waiting
    request (``result``), which scales it to 2x or 8x and saves it with the upscale record."""

    def __init__(self, image: Image.Image, guidance: float) -> None:
        self.image, self.guidance, self.result = image, guidance, None

    def describe(self) -> dict[str, Any]:
        return {"tiles": len(ai_tiles(*self.image.size)), "from": f"{self.image.width}x{self.image.height}"}

    def run(self, loaded: Any, on_step: Callable[[int], None]) -> list[Image.Image]:
        return [_ai_x4(loaded.pipe, self.image.convert("RGB"), self.guidance, on_step)]

    def save(self, engine: Any, loaded: Any, image: Image.Image, index: int) -> None:
        self.result = image  # saved by the caller, once scaled; nothing goes to the gallery here


register_upscaler(Upscaler("lanczos", "Lanczos resampling (classical, always available)", _lanczos))
register_upscaler(Upscaler("ai", "A diffusion upscaler from the signed catalog ([images] upscale_model)",
                           _ai, model=lambda images: images.upscale_model))


def check_request(engine: Any, image_size: tuple[int, int], scale: Any, method: Any) -> Upscaler:
    """Validate scale and method before any work.

    Raises:
        RequestError: unknown scale or method.  TooLargeError: the result would be too big.
        ModelNotFoundError: the AI upscaler's model is not installed (names it).
    """
    if scale not in SCALES or isinstance(scale, bool):
        raise RequestError(f"scale must be one of {', '.join(map(str, SCALES))}", field="scale")
    upscaler = _UPSCALERS.get(method) if isinstance(method, str) else None
    if upscaler is None:
        raise RequestError(f"method must be one of {', '.join(upscalers())}", field="method")
    limits = engine.config.images
    pixels = image_size[0] * scale * image_size[1] * scale
    if pixels > limits.max_output_pixels:
        raise TooLargeError(f"{image_size[0]}x{image_size[1]} upscaled {scale}x would be "
                            f"{image_size[0] * scale}x{image_size[1] * scale} pixels; the limit is "
                            f"{limits.max_output_pixels} (images.max_output_pixels)", field="scale")
    model = upscaler.model(limits)
    if model is not None:
        try:
            engine.store.get(model)
        except ModelNotFoundError as e:
            error = ModelNotFoundError(
                f"the AI upscaler {model!r} is not installed; install it with `pennello install "
                f"{model}` (from the signed catalog) or use method=lanczos")
            error.field = "method"  # type: ignore[attr-defined]
            raise error from e
    return upscaler


def upscale(engine: Any, image: Image.Image, scale: int, method: str = "lanczos",
            owner: str = "local") -> tuple[Image.Image, dict[str, Any]]:
    """Upscale with a registered upscaler; returns the picture and a note for its record.

    Args:
        owner: who may see the upscale's job (the AI upscaler runs as one).
    """
    upscaler = check_request(engine, image.size, scale, method)
    started = time.perf_counter()
    tile = engine.config.images.upscale_tile
    out = upscaler.run(engine, image, scale, tile, owner)
    seconds = time.perf_counter() - started
    log.debug("upscale %s %dx %dx%d: %.1fms", method, scale, image.width, image.height, seconds * 1000)
    return out, {"method": method, "scale": scale, "from": f"{image.width}x{image.height}",
                 "to": f"{out.width}x{out.height}", "tile": tile,
                 "model": upscaler.model(engine.config.images)}
