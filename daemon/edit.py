"""Image-to-image and inpainting with the loaded text-to-image model, on the engine's worker.

The edit pipelines are built from the loaded pipeline's components with diffusers'
``from_pipe`` (the family names the classes: :attr:`.pipelines.ModelFamily.img2img` and
``inpaint``), so no weights are read again and no memory is doubled; they are cached on the
loaded model and dropped with it. The work runs on the worker thread, which owns the device,
between text-to-image batches.

    >>> from PIL import Image
    >>> request = EditRequest(prompt="as a watercolour", image=Image.new("RGB", (64, 64)), seed=1)
    >>> result = run_edit(engine, request)  # doctest: +SKIP
    >>> [image.seed for image in result.images]  # doctest: +SKIP
    [1]

A mask marks what to repaint: where it is transparent (OpenAI's convention: the mask is the
picture with a hole) or, for a mask without transparency, where it is white (A1111's and
diffusers' convention). Without a mask the whole picture is redrawn, ``strength`` deciding how
far from it the result may go (0: unchanged, 1: only its composition is kept, barely).
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from pennello import __version__
from pennello.errors import RequestError

from .imaging import COMPOSITE_WITH_TRAINED_MEDIA
from .jobs import MAX_SEED, GenerateRequest, OutputImage
from .pipelines import ModelFamily, get_family

log = logging.getLogger(__name__)

EditMode = Literal["img2img", "inpaint"]
DEFAULT_STRENGTH = 0.75


@dataclass(frozen=True)
class EditRequest:
    """An edit of one picture. ``None`` fields take the model's defaults; the size defaults to the
    picture's own, fitted to the model family's limits."""

    prompt: str
    image: Image.Image
    mask: Image.Image | None = None
    strength: float = DEFAULT_STRENGTH
    negative_prompt: str = ""
    model: str | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    n: int = 1
    format: str = "png"
    owner: str = "local"
    enhance: bool = False
    origin: dict[str, Any] = field(default_factory=dict)  # where the picture came from, for the record


@dataclass
class EditResult:
    images: list[OutputImage]
    request: GenerateRequest  # the resolved parameters
    mode: EditMode
    strength: float
    seeds: list[int]

    def to_dict(self) -> dict[str, Any]:
        r = self.request
        return {"mode": self.mode, "model": r.model, "prompt": r.prompt, "negative_prompt": r.negative_prompt,
                "width": r.width, "height": r.height, "steps": r.steps, "guidance": r.guidance,
                "strength": self.strength, "n": r.n, "format": r.format, "seeds": self.seeds,
                "images": [image.to_dict() for image in self.images]}


def fit_size(size: tuple[int, int], family: ModelFamily) -> tuple[int, int]:
    """The picture's size scaled into the family's limits, rounded to its multiple."""
    width, height = size
    scale = min(1.0, family.max_size / max(width, height))
    scale = max(scale, family.min_size / min(width, height))
    step = family.multiple
    fitted = [min(family.max_size, max(family.min_size, int(side * scale) // step * step)) for side in size]
    return fitted[0], fitted[1]


def mask_to_l(mask: Image.Image) -> Image.Image:
    """White (255) where to repaint: transparent pixels if the mask has any, else white ones."""
    rgba = mask.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"))
    if alpha.min() < 255:
        return Image.fromarray(255 - alpha, "L")
    return rgba.convert("L")


def run_edit(engine: Any, request: EditRequest) -> EditResult:
    """Validate, run on the worker, and save every picture (with the post-steps) in the gallery.

    Raises:
        RequestError: a field is out of range (``field`` names it), or the model cannot edit.
        ModelNotFoundError: the model is not installed.
    """
    resolved = engine.resolve(GenerateRequest(
        prompt=request.prompt, negative_prompt=request.negative_prompt, model=request.model,
        width=request.width, height=request.height, steps=request.steps, guidance=request.guidance,
        seed=request.seed, n=request.n, format=request.format, owner=request.owner))  # type: ignore[arg-type]
    family = get_family(engine.store.get(resolved.model).manifest.pipeline.family)
    mode: EditMode = "inpaint" if request.mask is not None else "img2img"
    if getattr(family, mode) is None:
        raise RequestError(f"{resolved.model} ({family.name} family) cannot {mode}; use a model whose "
                           f"family supports it", field="model")
    if request.width is None and request.height is None:
        width, height = fit_size(request.image.size, family)
        resolved = replace(resolved, width=width, height=height)
    strength = request.strength
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise RequestError("strength must be a number above 0 and at most 1", field="strength")
    if int(resolved.steps * strength) < 1:
        raise RequestError(f"strength {strength:g} x {resolved.steps} steps leaves no denoising step; "
                           f"raise strength or steps", field="strength")
    seeds = ([secrets.randbelow(MAX_SEED + 1) for _ in range(resolved.n)] if resolved.seed is None
             else [(resolved.seed + i) % (MAX_SEED + 1) for i in range(resolved.n)])
    size = (resolved.width, resolved.height)
    init = request.image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    mask = mask_to_l(request.mask).resize(size, Image.Resampling.LANCZOS) if request.mask is not None else None

    def on_worker(loaded: Any) -> tuple[list[Image.Image], Any, dict[str, float]]:
        started = time.perf_counter()
        pipe = derived_pipeline(loaded, mode)
        kwargs: dict[str, Any] = {
            "prompt": [resolved.prompt] * resolved.n,
            "negative_prompt": [resolved.negative_prompt] * resolved.n if resolved.negative_prompt else None,
            "image": init, "strength": float(strength), "num_inference_steps": resolved.steps,
            "guidance_scale": resolved.guidance, "output_type": "pil",
            "generator": [torch.Generator("cpu").manual_seed(seed) for seed in seeds]}
        if mask is not None:
            kwargs.update(mask_image=mask, width=resolved.width, height=resolved.height)
        images = pipe(**kwargs).images
        loaded.last_used = time.monotonic()
        return images, loaded.installed, {"edit": time.perf_counter() - started}

    images, installed, timing = engine.run_with_model(resolved.model, on_worker)
    started = time.perf_counter()
    saved = []
    for seed, image in zip(seeds, images):
        record = {"tool": "edit", "mode": mode, "strength": float(strength), "prompt": resolved.prompt,
                  "negative_prompt": resolved.negative_prompt, "steps": resolved.steps,
                  "guidance": resolved.guidance, "width": resolved.width, "height": resolved.height,
                  "size": f"{resolved.width}x{resolved.height}", "seed": seed, "model": resolved.model,
                  "model_version": installed.version, "manifest_digest": installed.digest,
                  "owner": resolved.owner, "generator": f"pennello {__version__}", **request.origin}
        saved.append(engine.save_output(image, record, resolved.format, enhance=request.enhance,
                                        source=COMPOSITE_WITH_TRAINED_MEDIA))
    timing["save"] = time.perf_counter() - started
    log.debug("%s of %d image(s) %dx%d: %s", mode, len(saved), resolved.width, resolved.height,
              " ".join(f"{stage}={seconds * 1000:.1f}ms" for stage, seconds in timing.items()))
    return EditResult(saved, resolved, mode, float(strength), seeds)


def derived_pipeline(loaded: Any, mode: EditMode) -> Any:
    """The family's img2img or inpaint pipeline sharing ``loaded.pipe``'s components (cached)."""
    pipe = loaded.derived.get(mode)
    if pipe is None:
        import diffusers

        cls_name = getattr(loaded.family, mode)
        cls = getattr(diffusers, cls_name, None)
        if cls is None:
            raise RequestError(f"this diffusers ({diffusers.__version__}) has no {cls_name}; upgrade it",
                               field="model")
        pipe = cls.from_pipe(loaded.pipe)
        pipe.set_progress_bar_config(disable=True)
        loaded.derived[mode] = pipe
    return pipe
