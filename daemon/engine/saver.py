"""The saver: pictures leave the pipeline, go through the post-steps and land on disk.

Saving runs on a thread of its own, so that encoding and writing one batch's pictures overlaps
the next batch's denoising on the device thread. Each picture carries its provenance (:func:`record`)
and whatever the post-steps noted (:mod:`.poststeps`); its job is done once all its pictures are
saved. Tools that make pictures outside a job call :meth:`Saver.save_output` directly.

    >>> saver = Saver(outputs, host=engine)  # doctest: +SKIP
    >>> saver.submit_batch(loaded, slots, images, timing)  # from the device thread  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pennello import __version__
from pennello.files import make_durable

from .jobs import Job, OutputImage, Slot
from .outputs import TRAINED_ALGORITHMIC_MEDIA, Outputs
from .params import GenerationParams, recorded
from .poststeps import run_post_steps
from .families import get_family
from .residency import Loaded
from .resolve import native_size

log = logging.getLogger(__name__)


class Saver:
    """Saves pictures on one thread, in the order the device thread handed them over."""

    def __init__(self, outputs: Outputs, host: Any) -> None:
        """``host``: the engine, handed to post-steps and tasks (they read its config and state)."""
        self.outputs, self.host = outputs, host
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pennello-save")

    def save_output(self, image: Any, record: dict[str, Any], fmt: str, enhance: bool = False,
                    source: str | None = None, durable: bool = True,
                    image_id: str | None = None) -> OutputImage:
        """Run the post-steps (auto-enhance when asked, the copyright check when configured) and
        save the picture (under ``image_id`` when given); what they found is in its record and its ``notes``."""
        image, notes = run_post_steps(self.host, image, {"enhance": enhance})
        saved = self.outputs.save(image, {**record, **notes}, fmt,  # type: ignore[arg-type]
                                  source or TRAINED_ALGORITHMIC_MEDIA, durable=durable, image_id=image_id)
        saved.notes.update(notes)
        return saved

    def submit_batch(self, loaded: Loaded, slots: list[Slot], images: list[Any],
                     timing: dict[str, float]) -> None:
        """Queue a text-to-image batch's pictures for saving (``timing``: its stage seconds so far)."""
        self._pool.submit(self._save_batch, loaded, slots, images, timing)

    def submit_task(self, job: Job, loaded: Loaded, images: list[Any]) -> None:
        """Queue a task's pictures for saving by the task itself."""
        self._pool.submit(self._save_task, job, loaded, images)

    def shutdown(self) -> None:
        """Wait for every queued picture to be saved."""
        self._pool.shutdown(wait=True)

    def _save_batch(self, loaded: Loaded, slots: list[Slot], images: list[Any],
                    timing: dict[str, float]) -> None:
        """Encode and write each picture, then finish jobs that are complete.

        The fsyncs come after the answers: a picture is readable, whole, as soon as it is renamed
        into place, and syncing it (about 8 ms on an SSD) would otherwise be most of the HTTP
        overhead. A power cut in those milliseconds can cost that one file, never a half one
        shown as whole while the daemon runs (an unreadable one is skipped by the gallery).
        """
        started = time.perf_counter()
        written: list[Path] = []
        for (job, index), image in zip(slots, images):
            if job.done:  # cancelled while its batch ran
                continue
            try:
                saved_record = record(job, index, loaded)
                saved = self.save_output(image, saved_record, job.request.format,
                                         enhance=job.request.enhance, durable=False)
            except Exception as e:  # e.g. a full disk: fail this job, keep serving
                log.exception("saving an image of job %s failed", job.id)
                job.fail(f"could not save the image: {e}")
                continue
            if "native_size" in saved_record:  # said in the job's answer too, not only in the file
                saved.notes["native_size"] = saved_record["native_size"]
            written.append(saved.path)
            job.add_image(saved)
        timing["save"] = time.perf_counter() - started
        try:
            make_durable(written)
        except OSError:
            log.exception("could not sync %d saved picture(s) to disk", len(written))
        timing["sync"] = time.perf_counter() - started - timing["save"]
        log.debug("batch of %d %dx%d x%d steps: %s", len(slots), slots[0][0].request.width,
                  slots[0][0].request.height, slots[0][0].request.steps,
                  " ".join(f"{stage}={seconds * 1000:.1f}ms" for stage, seconds in timing.items()))

    def _save_task(self, job: Job, loaded: Loaded, images: list[Any]) -> None:
        """Save a task's pictures (the task runs the post-steps) and finish its job."""
        for index, image in enumerate(images):
            if job.done:  # cancelled meanwhile
                return
            try:
                saved = job.task.save(self.host, loaded, image, index)
            except Exception as e:  # e.g. a full disk: fail this job, keep serving
                log.exception("saving an image of job %s failed", job.id)
                job.fail(f"could not save the image: {e}")
                return
            if saved is not None:
                job.add_image(saved)
        if not job.done and images and not job.images:  # every picture handed back on the task
            job.complete()
        elif not job.done:  # the task made fewer pictures than asked: say so rather than hang
            job.fail(f"{len(images)} of {job.request.n} picture(s) were made")


def picture_record(request: GenerationParams, owner: str, seed: int, installed: Any) -> dict[str, Any]:
    """The provenance every saved picture carries: its parameters (those :mod:`.params` marks as
    recorded), the size its model drew it at where that was smaller (``native_size``), the model
    version and manifest that made it, and who asked."""
    pipeline = installed.manifest.pipeline
    native = native_size(pipeline, get_family(pipeline.family), request.width or 0, request.height or 0)
    drawn = {} if native == (request.width, request.height) else {"native_size": f"{native[0]}x{native[1]}"}
    return {**recorded(request, seed), "size": f"{request.width}x{request.height}", **drawn,
            "model_version": installed.version, "manifest_digest": installed.digest, "owner": owner,
            "generator": f"pennello {__version__}"}


def record(job: Job, index: int, loaded: Loaded) -> dict[str, Any]:
    """A generated picture's record (also what the gallery lists)."""
    return {**picture_record(job.request, job.request.owner, job.seeds[index], loaded.installed), "job_id": job.id}
