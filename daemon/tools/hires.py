"""A1111's "hires fix" as two passes of pennello's own tools, and resizing to an exact size with
one of pennello's upscalers.

A1111 draws a picture at the size asked, enlarges it (``hr_scale``, or to ``hr_resize_x`` x
``hr_resize_y``) and redraws the enlarged picture image-to-image at ``denoising_strength``, so
the details fit the larger size. Here the first pass is an ordinary text-to-image job, the
enlargement is :func:`upscale_to` (pennello's upscalers of :mod:`.upscale`), and the second pass
is an edit (:mod:`.edit`) per picture with the seed that picture was drawn with; no pipeline of
its own. A1111's latent upscalers ("Latent", "Latent (bicubic)"…) enlarge the latents; pennello
has no latent pass, so they become a plain Lanczos resize of the picture, and the record says so.

    >>> hires_size(64, 48, 2.0, 0, 0, multiple=8), hires_size(64, 48, 2.0, 256, 0, multiple=8)
    ((128, 96), (256, 192))
    >>> upscaler_method("Latent (bicubic)", "hr_upscaler", latent=True), upscaler_method("Lanczos", "x")
    (None, 'lanczos')
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image

from pennello.errors import PennelloError, RequestError, TooLargeError

from ..engine.families import get_family
from ..engine.jobs import GenerateRequest, Job, OutputImage
from ..engine.params import values
from .edit import DEFAULT_STRENGTH, EditRequest, EditEndedError, submit_edit
from .upscale import SCALES, check_request, upscale, upscalers

NO_UPSCALER = "None"  # A1111's name for a plain resize
# A1111's latent-space upscalers; a latent pass is not something pennello has (see above).
LATENT_UPSCALERS = ("Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                    "Latent (nearest)", "Latent (nearest-exact)")


def upscaler_names(latent: bool = False) -> list[str]:
    """The upscaler names a request may use: A1111's "None", its latent ones where ``latent``, then pennello's."""
    return [NO_UPSCALER, *(LATENT_UPSCALERS if latent else ()), *upscalers()]


def upscaler_method(name: Any, field: str, latent: bool = False) -> str | None:
    """The pennello upscaler an A1111 upscaler name means (any case); None for a plain resize.

    Raises:
        RequestError: naming ``field`` and listing the names that are known.
    """
    wanted = name.strip().lower() if isinstance(name, str) else None
    for known in upscaler_names(latent):
        if known.lower() == wanted:
            return known if known in upscalers() else None
    raise RequestError(f"{field} {name!r} is not an upscaler here; use one of "
                       f"{', '.join(upscaler_names(latent))}", field=field)


def hires_size(width: int, height: int, scale: float, resize_x: int, resize_y: int,
               multiple: int) -> tuple[int, int]:
    """The second pass's size, as A1111 computes it: ``resize_x`` x ``resize_y`` where given (one
    of them 0: that side follows the aspect ratio), else ``scale`` times the first pass; rounded
    down to the model family's ``multiple``."""
    if resize_x <= 0 and resize_y <= 0:
        target = (width * scale, height * scale)
    elif resize_y <= 0:
        target = (resize_x, resize_x * height / width)
    elif resize_x <= 0:
        target = (resize_y * width / height, resize_y)
    else:
        target = (resize_x, resize_y)
    return int(target[0]) // multiple * multiple, int(target[1]) // multiple * multiple


def upscale_to(engine: Any, image: Image.Image, size: tuple[int, int], method: str | None,
               owner: str = "local", crop: bool = True) -> Image.Image:
    """``image`` at exactly ``size``: enlarged by ``method`` at the smallest of its scales that
    reaches it, then resized; with ``crop`` the picture keeps its aspect ratio, centred and cut to
    fit (A1111's "crop and resize"), else it is stretched. ``method`` None is a plain resize.

    Raises:
        RequestError, TooLargeError, ModelNotFoundError: as :func:`.upscale.check_request`.
    """
    limit = engine.config.images.max_output_pixels
    if size[0] < 1 or size[1] < 1:
        raise RequestError(f"{size[0]}x{size[1]} is not a size to upscale to", field="size")
    if size[0] * size[1] > limit:
        raise TooLargeError(f"{size[0]}x{size[1]} is over {limit} pixels (images.max_output_pixels)",
                            field="size")
    factor = max(size[0] / image.width, size[1] / image.height) if crop else \
        min(size[0] / image.width, size[1] / image.height)
    if method is not None and factor > 1:
        scale = next((s for s in SCALES if s >= factor), SCALES[-1])
        image, _ = upscale(engine, image, scale, method, owner)
    if not crop:
        return image.resize(size, Image.Resampling.LANCZOS)
    cover = (max(size[0], math.ceil(image.width * size[1] / image.height)),
             max(size[1], math.ceil(image.height * size[0] / image.width)))
    image = image.resize(cover, Image.Resampling.LANCZOS)
    left, top = (cover[0] - size[0]) // 2, (cover[1] - size[1]) // 2
    return image.crop((left, top, left + size[0], top + size[1]))


@dataclass(frozen=True)
class HiresFix:
    """The second pass of a hires fix, in pennello's names (``upscaler`` as the client named it)."""

    upscaler: str = "Latent"
    scale: float = 2.0
    resize_x: int = 0  # 0 (both): ``scale`` times the first pass
    resize_y: int = 0
    steps: int = 0  # 0: as many as the first pass
    strength: float = DEFAULT_STRENGTH
    prompt: str = ""  # "": the first pass's
    negative_prompt: str = ""
    sampler: str | None = None  # None: the first pass's
    scheduler: str | None = None

    def second_request(self, engine: Any, first: GenerateRequest) -> GenerateRequest:
        """The second pass's parameters for a (resolved) first pass, checked as any request is.

        Raises:
            RequestError: naming the A1111 field that is out of range.
            ModelNotFoundError: the upscaler's model is not installed (``hr_upscaler``).
        """
        method = upscaler_method(self.upscaler, "hr_upscaler", latent=True)
        for name, value in (("hr_scale", self.scale), ("hr_resize_x", self.resize_x),
                            ("hr_resize_y", self.resize_y), ("hr_second_pass_steps", self.steps)):
            if isinstance(value, bool) or not 0 <= value <= 100_000 or (name == "hr_scale" and value < 1):
                raise RequestError(f"{name} must be {'at least 1' if name == 'hr_scale' else '0 or more'}",
                                   field=name)
        if isinstance(self.strength, bool) or not 0 <= self.strength <= 1:
            raise RequestError("denoising_strength must be a number from 0 to 1",
                               field="denoising_strength")
        family = get_family(engine.store.get(first.model).manifest.pipeline.family)
        size = hires_size(first.width or 0, first.height or 0, self.scale, self.resize_x, self.resize_y,
                          family.multiple)
        second = replace(first, n=1, prompt=self.prompt or first.prompt, width=size[0], height=size[1],
                         negative_prompt=self.negative_prompt or first.negative_prompt,
                         steps=self.steps or first.steps, sampler=self.sampler or first.sampler,
                         scheduler=self.scheduler or first.scheduler)
        try:
            if method is not None:  # e.g. the AI upscaler not installed: a 404 before the first pass
                check_request(engine, (first.width or 0, first.height or 0), SCALES[0], method)
            return engine.resolve(second)
        except PennelloError as e:  # the size, steps and upscaler came from these fields
            given = [name for name, value in (("hr_resize_x", self.resize_x), ("hr_resize_y", self.resize_y))
                     if value] or ["hr_scale"]
            field = getattr(e, "field", None)
            e.field = {"width": given[0], "height": given[-1], "scale": given[0],  # type: ignore[attr-defined]
                       "steps": "hr_second_pass_steps", "prompt": "hr_prompt", "sampler": "hr_sampler_name",
                       "scheduler": "hr_scheduler", "method": "hr_upscaler"}.get(field or "", field)
            raise

    def record(self, first: GenerateRequest, second: GenerateRequest) -> dict[str, Any]:
        """What the pictures' records say about the fix (A1111's infotext keys come from it)."""
        return {"upscale": round((second.width or 0) / (first.width or 1), 4), "upscaler": self.upscaler,
                "steps": self.steps, "first_pass_size": f"{first.width}x{first.height}",
                "plain_resize": upscaler_method(self.upscaler, "hr_upscaler", latent=True) is None}


def run_hires(engine: Any, first: Job, fix: HiresFix) -> list[OutputImage]:
    """The second pass of every picture of the finished ``first`` job, in order: enlarged to the
    fix's size, then redrawn with the seed it was drawn with (strength 0, as A1111's own API test
    sends: only enlarged, and saved so).

    Raises:
        the errors of :func:`upscale_to` and :func:`.edit.submit_edit` (fields in pennello's names);
        EditEndedError: a second pass was cancelled (409) or failed (500); the others are cancelled.
    """
    r = first.request
    second = fix.second_request(engine, r)
    method = upscaler_method(fix.upscaler, "hr_upscaler", latent=True)
    size = (second.width or 0, second.height or 0)
    hires = fix.record(r, second)
    base = EditRequest(**values(second), image=Image.new("RGB", (1, 1)), strength=fix.strength or 1.0,
                       owner=r.owner, origin={"hires": hires})
    jobs, enlarged = [], []
    for picture in first.images:
        with Image.open(picture.path) as drawn:
            big = upscale_to(engine, drawn.convert("RGB"), size, method, r.owner)
        if fix.strength:
            jobs.append(submit_edit(engine, replace(base, image=big, seed=picture.seed)))
        else:
            record = {key: value for key, value in engine.outputs.read_record(picture.id).items()
                      if key not in ("id", "url")}  # the new picture's are its own
            record.update(hires=hires, size=f"{size[0]}x{size[1]}", strength=fix.strength)
            enlarged.append(engine.save_output(big, record, r.format))
    _wait_all(jobs)
    return enlarged or [picture for job in jobs for picture in job.images]


def _wait_all(jobs: list[Job]) -> None:
    for job in jobs:
        job.wait()
        if job.status != "done":
            for other in jobs:
                other.cancel()
            error = EditEndedError(f"the hires fix's second pass {job.status}"
                                   f"{': ' + job.error if job.error else ''} (job {job.id})")
            error.http_status = 409 if job.status == "cancelled" else 500  # type: ignore[misc]
            raise error
