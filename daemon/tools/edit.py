"""Editing pictures with a prompt: image-to-image, inpainting, and multi-picture instruction edits.

Every edit is a job in the engine's queue (:meth:`.engine.Engine.submit_task`): it waits its
turn behind text-to-image batches, reports progress per denoising step over the same events as
any job (``GET /api/jobs/<id>/events``), can be cancelled, and a full queue refuses it with 429.

How a model edits depends on its family (:mod:`.pipelines`):

* SD-class families (``sd``, ``sdxl``, ``flux``) redraw *one* picture with pipelines built from
  the loaded pipeline's components by diffusers' ``from_pipe`` (the family names the classes:
  :attr:`.pipelines.ModelFamily.img2img` and ``inpaint``), so no weights are read again; they
  are cached on the loaded model and dropped with it.
* ``edit`` families (Qwen-Image-Edit) are edit pipelines themselves: they take the prompt as an
  instruction and one picture, or, for classes that take references (QwenImageEditPlusPipeline),
  up to :meth:`.pipelines.ModelFamily.images_allowed` pictures ("put the cat of picture 1 on the
  sofa of picture 2"). Strength and masks do not apply to them.

    >>> from PIL import Image
    >>> request = EditRequest(prompt="as a watercolour", image=Image.new("RGB", (64, 64)), seed=1)
    >>> job = submit_edit(engine, request)  # doctest: +SKIP
    >>> job.wait() and [image.seed for image in job.images]  # doctest: +SKIP
    [1]
    >>> run_edit(engine, request).mode  # submit and wait  # doctest: +SKIP
    'img2img'

A mask marks what to repaint: where it is transparent (OpenAI's convention: the mask is the
picture with a hole) or, for a mask without transparency, where it is white (A1111's and
diffusers' convention). Without a mask the whole picture is redrawn, ``strength`` deciding how
far from it the result may go (0: unchanged, 1: only its composition is kept, barely).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal

import numpy as np
import torch
from PIL import Image

from pennello.errors import PennelloError, RequestError

from ..pictures.uploads import COMPOSITE_WITH_TRAINED_MEDIA
from ..engine.jobs import GenerateRequest, Job, OutputImage
from ..engine.journal import add_restorer
from ..engine.params import GenerationParams, seeds_for, values
from ..engine.families import PURPOSE_ROUTES, ModelFamily, get_family
from ..engine.saver import picture_record

log = logging.getLogger(__name__)

EditMode = Literal["img2img", "inpaint", "instruct"]
DEFAULT_STRENGTH = 0.75


class EditEndedError(PennelloError):
    """An edit waited on by a synchronous route was cancelled (409) or failed (500)."""

    kind = "edit_ended"


@dataclass(frozen=True, kw_only=True)
class EditRequest(GenerationParams):
    """An edit of one picture (plus ``references`` for families that take several): the
    generation parameters (:mod:`..engine.params`) and the pictures. ``None`` fields take the
    model's defaults; the size defaults to the picture's own, fitted to the model family's limits."""

    image: Image.Image
    mask: Image.Image | None = None
    strength: float = DEFAULT_STRENGTH
    owner: str = "local"
    origin: dict[str, Any] = field(default_factory=dict)  # where the picture came from, for the record
    references: tuple[Image.Image, ...] = ()  # more input pictures, after ``image``

    @property
    def pictures(self) -> list[Image.Image]:
        return [self.image, *self.references]


@dataclass
class EditResult:
    images: list[OutputImage]
    request: GenerateRequest  # the resolved parameters
    mode: EditMode
    strength: float | None
    seeds: list[int]
    job: Job | None = None

    def to_dict(self) -> dict[str, Any]:
        # As a job's dictionary: "seeds" lists the seeds each picture used.
        return {"mode": self.mode, **values(self.request, leave_out=("seed",)), "strength": self.strength, "seeds": self.seeds,
                "images": [image.to_dict() for image in self.images]}


def fit_size(size: tuple[int, int], family: ModelFamily, area: int | None = None) -> tuple[int, int]:
    """The picture's size scaled into the family's limits (or to about ``area`` pixels, keeping
    its aspect ratio), rounded to its multiple."""
    width, height = size
    scale = min(1.0, family.max_size / max(width, height)) if area is None else math.sqrt(area / (width * height))
    scale = min(scale, family.max_size / max(width, height))
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


def edit_mode(model: str, family: ModelFamily, cls_name: str, request: EditRequest) -> EditMode:
    """How ``model`` edits this request.

    Raises:
        RequestError: the model cannot edit, takes fewer pictures than sent (``field`` image),
            or cannot use a mask.
    """
    count = len(request.pictures)
    if family.purpose == "edit":
        allowed = family.images_allowed(cls_name)
        if count > allowed:
            raise RequestError(f"{model} ({cls_name}) takes at most {allowed} picture(s) per edit; "
                               f"got {count}", field="image")
        if request.mask is not None:
            raise RequestError(f"{model} ({family.name} family) edits by instruction and takes no "
                               f"mask; say in the prompt what to change", field="mask")
        return "instruct"
    mode: EditMode = "inpaint" if request.mask is not None else "img2img"
    if family.purpose != "generate" or getattr(family, mode) is None:
        route = f" (use it with {PURPOSE_ROUTES[family.purpose]})" if family.purpose != "generate" else ""
        raise RequestError(f"{model} ({family.name} family) cannot {mode}{route}; use a model whose "
                           f"family supports it", field="model")
    if count > 1:
        raise RequestError(f"{model} ({family.name} family) edits one picture at a time; got {count}. "
                           f"Several reference pictures need a model that takes them, e.g. "
                           f"qwen-image-edit (QwenImageEditPlusPipeline, up to 3)", field="image")
    return mode


def submit_edit(engine: Any, request: EditRequest) -> Job:
    """Validate an edit and queue it as a job; its pictures go to the gallery with the post-steps.

    Raises:
        RequestError: a field is out of range (``field`` names it), or the model cannot edit so.
        ModelNotFoundError: the model is not installed.  BusyError: the queue is full.
    """
    resolved = engine.resolve(GenerateRequest(**values(request), owner=request.owner))
    manifest = engine.store.get(resolved.model).manifest
    family = get_family(manifest.pipeline.family)
    mode = edit_mode(resolved.model, family, manifest.pipeline.cls, request)
    if request.width is None and request.height is None:
        # Instruction models work at about their default area; SD-class ones at the picture's size.
        area = family_default_area(family, manifest) if mode == "instruct" else None
        width, height = fit_size(request.pictures[-1].size, family, area)
        resolved = replace(resolved, width=width, height=height)
    strength: float | None = None
    total_steps = resolved.steps
    if mode != "instruct":
        strength = request.strength
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise RequestError("strength must be a number above 0 and at most 1", field="strength")
        strength = float(strength)
        # diffusers runs int(steps x strength) of the schedule's steps, starting part-way.
        total_steps = min(int(resolved.steps * strength), resolved.steps)
        if total_steps < 1:
            raise RequestError(f"strength {strength:g} x {resolved.steps} steps leaves no denoising step; "
                               f"raise strength or steps", field="strength")
    seeds = seeds_for(resolved.seed, resolved.n)
    size = (resolved.width, resolved.height)
    if mode == "instruct":
        pictures = [picture.convert("RGB") for picture in request.pictures]  # the pipeline sizes them
    else:
        pictures = [request.image.convert("RGB").resize(size, Image.Resampling.LANCZOS)]
    mask = mask_to_l(request.mask).resize(size, Image.Resampling.LANCZOS) if request.mask is not None else None
    task = EditTask(resolved, mode, strength, pictures, mask, seeds, request.origin, request.enhance)
    return engine.submit_task(resolved, seeds, task, "edit", total_steps)


def family_default_area(family: ModelFamily, manifest: Any) -> int:
    defaults = {**dict(family.defaults), **manifest.pipeline.defaults}
    return int(defaults["width"]) * int(defaults["height"])


def run_edit(engine: Any, request: EditRequest, timeout: float | None = None) -> EditResult:
    """Submit an edit and wait for it (for routes that answer with the pictures).

    Raises:
        the errors of :func:`submit_edit`; EditEndedError: the job failed or was cancelled.
    """
    job = submit_edit(engine, request)
    job.wait(timeout)
    task: EditTask = job.task
    if job.status != "done":
        error = EditEndedError(f"the edit {job.status if job.done else 'timed out'}"
                               f"{': ' + job.error if job.error else ''} (job {job.id})")
        error.http_status = 409 if job.status == "cancelled" else 500  # type: ignore[misc]
        raise error
    return EditResult(list(job.images), job.request, task.mode, task.strength, list(job.seeds), job)


@dataclass
class EditTask:
    """One edit job's work (an :class:`.runner.Task`): the pipeline call(s) on the device thread, then
    saving each picture with its record."""

    request: GenerateRequest  # resolved
    mode: EditMode
    strength: float | None
    pictures: list[Image.Image]
    mask: Image.Image | None
    seeds: list[int]
    origin: dict[str, Any]
    enhance: bool

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "strength": self.strength, "references": len(self.pictures)}

    def journal_record(self) -> tuple[dict[str, Any], dict[str, Image.Image]]:
        """What the journal keeps so a crash does not lose the edit: fields, and the pictures."""
        pictures = {f"picture{i}": picture for i, picture in enumerate(self.pictures)}
        if self.mask is not None:
            pictures["mask"] = self.mask
        return {"mode": self.mode, "strength": self.strength, "origin": self.origin,
                "enhance": self.enhance, "count": len(self.pictures), "seeds": self.seeds}, pictures

    def run(self, loaded: Any, on_step: Callable[[int], None]) -> list[Image.Image]:
        from ..engine.resolve import native_size
        from ..engine.runner import enlarged, step_callback
        from ..engine.samplers import sampler_applied

        started = time.perf_counter()
        r = self.request
        if self.mode == "instruct":
            images = [self._instruct(loaded, seed, step_callback(on_step)) for seed in self.seeds]
        else:
            # Drawn at the model's native size where that is smaller (see resolve.native_size).
            size = native_size(loaded.installed.manifest.pipeline, loaded.family, r.width, r.height)
            kwargs: dict[str, Any] = {
                "prompt": [r.prompt] * r.n,
                "negative_prompt": [r.negative_prompt] * r.n if r.negative_prompt else None,
                "image": self.pictures[0].resize(size, Image.Resampling.LANCZOS), "strength": self.strength,
                "num_inference_steps": r.steps,
                "guidance_scale": r.guidance, "output_type": "pil",
                "generator": [torch.Generator("cpu").manual_seed(seed) for seed in self.seeds],
                "callback_on_step_end": step_callback(on_step, r.n),
                **loaded.family.call_extras_for(loaded.installed.manifest.pipeline.defaults)}
            if self.mask is not None:
                kwargs.update(mask_image=self.mask.resize(size, Image.Resampling.LANCZOS), width=size[0],
                              height=size[1])
            pipe = derived_pipeline(loaded, self.mode)
            with sampler_applied(pipe, r.sampler, r.scheduler):
                images = [enlarged(image, r) for image in pipe(**kwargs).images]
        log.debug("%s of %d image(s) %dx%d: edit=%.1fms", self.mode, len(images), r.width, r.height,
                  (time.perf_counter() - started) * 1000)
        return images

    def _instruct(self, loaded: Any, seed: int, callback: Any) -> Image.Image:
        """One picture from an instruction pipeline (Qwen's Plus class takes one prompt per call)."""
        r = self.request
        family = loaded.family
        # Qwen's true CFG only runs with a negative prompt; a blank one is its documented neutral.
        return loaded.pipe(
            image=self.pictures if len(self.pictures) > 1 else self.pictures[0], prompt=r.prompt,
            negative_prompt=r.negative_prompt or " ", width=r.width, height=r.height,
            num_inference_steps=r.steps, **{family.call_name("guidance"): r.guidance},
            num_images_per_prompt=1, generator=torch.Generator("cpu").manual_seed(seed),
            callback_on_step_end=callback, output_type="pil",
            **family.call_extras_for(loaded.installed.manifest.pipeline.defaults)).images[0]

    def save(self, engine: Any, loaded: Any, image: Image.Image, index: int) -> OutputImage:
        r, installed = self.request, loaded.installed
        record = {"tool": "edit", "mode": self.mode, "strength": self.strength,
                  **picture_record(r, r.owner, self.seeds[index], installed), "references": len(self.pictures),
                  **self.origin}
        return engine.save_output(image, record, r.format, enhance=self.enhance,
                                  source=COMPOSITE_WITH_TRAINED_MEDIA)


def _restore(request: GenerateRequest, record: dict[str, Any], pictures: dict[str, Image.Image]) -> EditTask:
    """An edit's task again, from what :meth:`EditTask.journal_record` kept."""
    return EditTask(request, record["mode"], record["strength"],
                    [pictures[f"picture{i}"] for i in range(record["count"])], pictures.get("mask"),
                    record["seeds"], record["origin"], record["enhance"])


add_restorer("edit", _restore)


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
