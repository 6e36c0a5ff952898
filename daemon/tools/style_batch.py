"""Style batches: one subject drawn in several styles over the same seeds, plus a contact sheet.

Each style becomes one ordinary job (so the engine batches them on the device like any others,
and each can be followed at ``/api/jobs/<id>``); every style starts at the same seed, so the
sheet's columns compare styles at equal seeds.

    >>> chosen = choose_styles(load_styles(dir), 4)  # doctest: +SKIP
    >>> style_batch = submit_style_batch(engine, "Albert Einstein", chosen, n=20)  # doctest: +SKIP
    >>> finish_style_batch(engine, style_batch).contact_sheet.id  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from pennello import __version__
from pennello.errors import PennelloError, RequestError

from ..pictures.contact_sheet import contact_sheet
from ..engine.jobs import GenerateRequest, Job, OutputImage
from ..engine.params import random_seed
from .styles import Style, plan_style_batch


@dataclass
class StyleBatch:
    """One subject across styles: a job per style, all from the same first seed, and the
    contact sheet once :func:`finish_style_batch` made it."""

    subject: str
    seed: int
    styles: list[Style]
    jobs: list[Job]
    owner: str
    contact_sheet: OutputImage | None = None
    created: float = field(default_factory=time.time)

    @property
    def status(self) -> str:
        statuses = {job.status for job in self.jobs}
        if statuses <= {"done"}:
            return "done"
        for status in ("failed", "cancelled", "running", "queued"):
            if status in statuses:
                return status
        return "running"

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "seed": self.seed, "status": self.status,
                "styles": [{"name": style.name, "prompt": job.request.prompt,
                            "negative_prompt": job.request.negative_prompt, "job": job.to_dict()}
                           for style, job in zip(self.styles, self.jobs)],
                "contact_sheet": self.contact_sheet.to_dict() if self.contact_sheet else None}


def submit_style_batch(engine: Any, subject: str, styles: list[Style], n: int | None = None,
                 seed: int | None = None, negative_prompt: str = "", owner: str = "local",
                 **params: Any) -> StyleBatch:
    """Queue one job per style. ``n`` pictures in all (default one per style), spread evenly.

    Raises:
        RequestError: empty subject, or fewer pictures than styles; the engine's own errors
            (queue full, bad size…) after cancelling the jobs already queued.
    """
    if not isinstance(subject, str) or not subject.strip():
        raise RequestError("subject must not be empty", field="subject")
    n = len(styles) if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or n < len(styles):
        raise RequestError(f"n must be at least the number of styles ({len(styles)}): one picture each",
                           field="n")
    most = engine.config.engine.max_n * len(styles)
    if n > most:
        raise RequestError(f"n must be at most {most} for {len(styles)} style(s) "
                           f"({engine.config.engine.max_n} per style)", field="n")
    if seed is None:
        seed = random_seed()
    jobs: list[Job] = []
    try:
        for style, count in zip(styles, plan_style_batch(styles, n)):
            negative = ", ".join(part for part in (style.negative, negative_prompt) if part)
            jobs.append(engine.submit(GenerateRequest(prompt=style.render(subject), negative_prompt=negative,
                                                      n=count, seed=seed, owner=owner, **params)))
    except PennelloError:
        for job in jobs:
            engine.cancel(job.id)
        raise
    return StyleBatch(subject.strip(), seed, styles, jobs, owner)


def finish_style_batch(engine: Any, style_batch: StyleBatch, timeout: float | None = None) -> StyleBatch:
    """Wait for every job, then save a contact sheet of the pictures made (rows: styles,
    columns: seeds). A failed or cancelled style leaves its row empty."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for job in style_batch.jobs:
        job.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
    rows = []
    for style, job in zip(style_batch.styles, style_batch.jobs):
        pictures = []
        for image in job.images:
            with Image.open(image.path) as picture:
                pictures.append(picture.convert("RGB"))
        rows.append((style.name, pictures))
    columns = max(job.request.n for job in style_batch.jobs)
    sheet = contact_sheet(rows, [f"seed {style_batch.seed + i}" for i in range(columns)],
                          title=style_batch.subject)
    record = {"tool": "contact-sheet", "prompt": style_batch.subject, "subject": style_batch.subject,
              "seed": style_batch.seed, "styles": [style.name for style in style_batch.styles],
              "images": [[image.id for image in job.images] for job in style_batch.jobs],
              "width": sheet.width, "height": sheet.height, "size": f"{sheet.width}x{sheet.height}",
              "owner": style_batch.owner, "generator": f"pennello {__version__}"}
    style_batch.contact_sheet = engine.outputs.save(sheet, record, "png")
    return style_batch
