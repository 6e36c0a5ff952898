"""Upscaling 2x, 4x or 8x, tile by tile so the largest results fit in memory.

Upscalers are entries in a registry, like model families. Two are built in:

* ``lanczos``: classical Lanczos resampling, always available, CPU only. Each tile is resized
  with a margin of source pixels around it (wider than the Lanczos kernel) and the margin is
  cropped off, so the tiled result equals a whole-picture resize while only one tile's
  intermediate buffers exist at a time.
* ``ai``: a diffusion upscaler (diffusers ``StableDiffusionUpscalePipeline``, family
  ``sd-upscale``) installed from the signed catalog as ``[images] upscale_model``; it runs on the
  engine's worker, tile by tile, 4x per pass (2x is a 4x pass scaled down, 8x a 4x pass then
  Lanczos 2x). When it is not installed, asking for it is a 404 that names the model.

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
from pennello.errors import ModelNotFoundError, RequestError, TooLargeError


log = logging.getLogger(__name__)

Scale = Literal[2, 4, 8]
SCALES: tuple[int, ...] = typing.get_args(Scale)
UPSCALE_FAMILY = "sd-upscale"
_MARGIN = 4  # source pixels around a tile: Lanczos (a=3) reads 3 on each side when enlarging
_AI_TILE = 128  # source pixels per tile for the diffusion upscaler (its output tile is 512)
_AI_OVERLAP = 16


@dataclass(frozen=True)
class Upscaler:
    """One way of upscaling. ``run(engine, image, scale, tile)`` returns the bigger picture."""

    name: str
    description: str
    run: Callable[[Any, Image.Image, int, int], Image.Image]
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


def _lanczos(engine: Any, image: Image.Image, scale: int, tile: int) -> Image.Image:
    return upscale_lanczos(image, scale, tile)


def _ai(engine: Any, image: Image.Image, scale: int, tile: int) -> Image.Image:
    name = engine.config.images.upscale_model

    def run(loaded: Any) -> Image.Image:
        if loaded.family.name != UPSCALE_FAMILY:
            raise RequestError(f"{name} is a {loaded.family.name!r} model, not an upscaler; set "
                               f"[images] upscale_model to an installed {UPSCALE_FAMILY} model",
                               field="method")
        return _ai_x4(loaded.pipe, image)

    four = engine.run_with_model(name, run)
    if scale == 2:
        return four.resize((image.width * 2, image.height * 2), Image.Resampling.LANCZOS)
    if scale == 8:
        return upscale_lanczos(four, 2, tile)
    return four


def _ai_x4(pipe: Any, image: Image.Image) -> Image.Image:
    """The diffusion upscaler over overlapping tiles; later tiles overwrite the overlap."""
    out = Image.new("RGB", (image.width * 4, image.height * 4))
    step = _AI_TILE - _AI_OVERLAP
    for top in range(0, max(1, image.height - _AI_OVERLAP), step):
        for left in range(0, max(1, image.width - _AI_OVERLAP), step):
            box = (left, top, min(left + _AI_TILE, image.width), min(top + _AI_TILE, image.height))
            piece = pipe(prompt="", image=image.crop(box), num_inference_steps=20,
                         output_type="pil").images[0]
            out.paste(piece.resize(((box[2] - box[0]) * 4, (box[3] - box[1]) * 4)), (left * 4, top * 4))
    return out


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


def upscale(engine: Any, image: Image.Image, scale: int,
            method: str = "lanczos") -> tuple[Image.Image, dict[str, Any]]:
    """Upscale with a registered upscaler; returns the picture and a note for its record."""
    upscaler = check_request(engine, image.size, scale, method)
    started = time.perf_counter()
    tile = engine.config.images.upscale_tile
    out = upscaler.run(engine, image, scale, tile)
    seconds = time.perf_counter() - started
    log.debug("upscale %s %dx %dx%d: %.1fms", method, scale, image.width, image.height, seconds * 1000)
    return out, {"method": method, "scale": scale, "from": f"{image.width}x{image.height}",
                 "to": f"{out.width}x{out.height}", "tile": tile,
                 "model": upscaler.model(engine.config.images)}
