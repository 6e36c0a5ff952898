"""The runner: what the device thread does with a batch the queue hands it — the pipeline call itself.

A text-to-image batch is one diffusers call for every image in it, each with its own seeded CPU
generator (so a seed gives the same picture on every device and whatever its batch mates). The
call's stages are timed (text encoding, denoising, decoding) for the debug log. Edits and AI
upscales bring their own :class:`Task` and run alone. Either way, each denoising step advances
the jobs' progress, and a step after which every job of the call was cancelled stops the call.
When a call shared by several jobs fails, each job is made again in a call of its own, so only
the job at fault fails (one device's bad prompt never fails another device's pictures).
The pictures then go to the :class:`.saver.Saver`, on its own thread, so the next batch can start.

    >>> runner = Runner(cond, residency, saver)  # doctest: +SKIP
    >>> runner.run(slots)  # on the device thread  # doctest: +SKIP
    >>> runner.progress(queue)["state"]  # doctest: +SKIP
    'idle'
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sized

import torch

from pennello.errors import PennelloError

from .jobs import Job, OutputImage, Slot
from .backends import decoder_applied, preview_decoder
from .preview import Preview
from .residency import Loaded, Residency
from .profiles import cpu_autocast
from .resolve import native_size
from .samplers import counts_as_step, sampler_applied
from .saver import Saver

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Raised from the step callback when every job of the running batch was cancelled."""


class Task(Protocol):
    """Work that is not text-to-image (an edit, an AI upscale), run on the device thread as one job.

    ``run`` is called on the device thread with the job's model loaded; it calls ``on_step(images)``
    after each denoising step of a pipeline call making ``images`` pictures (``step_callback``
    adapts it to diffusers), which raises to stop the work when the job was cancelled. ``save``
    runs on the saver thread, once per picture ``run`` returned, with the engine as ``engine``.
    """

    def run(self, loaded: Any, on_step: Callable[[int], None]) -> list[Any]: ...

    # None: the picture was handed back on the task itself (the AI upscaler's 4x pass, which
    # its caller scales and saves), so the job ends "done" with no gallery images of its own.
    def save(self, engine: Any, loaded: Any, image: Any, index: int) -> OutputImage | None: ...

    def describe(self) -> dict[str, Any]: ...  # extra fields for the job's JSON


def step_callback(on_step: Callable[[int], None], images: int = 1) -> Callable[..., dict[str, Any]]:
    """A diffusers ``callback_on_step_end`` reporting each step of a call making ``images`` pictures."""

    keep = getattr(on_step, "keep", None)  # the runner's reporter (_TaskSteps) keeps the preview

    def callback(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if keep is not None:
            keep(pipe, tensors.get("latents"))
        on_step(images)
        return {}

    return callback


@dataclass
class _Run:
    """The batch on the device right now, for progress and ETA."""

    jobs: list[Job]
    steps: int
    started: float = field(default_factory=time.monotonic)
    step: int = 0


class Runner:
    """Runs batches on the device thread; ``progress`` and ``running`` are safe from any thread."""

    def __init__(self, cond: threading.Condition, residency: Residency, saver: Saver) -> None:
        self.cond, self.residency, self.saver = cond, residency, saver
        self.stats = {"pipeline_calls": 0, "images": 0}
        self._batch_seconds = 0.0  # moving average, for Retry-After and ETA
        self._run: _Run | None = None
        self._batch: list[Job] = []  # the jobs of the batch run() is making, retries included
        self.preview = Preview()  # of the call on the device, for A1111's progress

    def seconds_per_call(self) -> float:
        """The moving average of a device call's seconds (0 before the first)."""
        return self._batch_seconds

    def running(self) -> int:
        """How many jobs the call on the device now serves (``cond`` held)."""
        return len(self._run.jobs) if self._run else 0

    def progress(self, queue: Sized) -> dict[str, Any]:
        """The batch on the device now: fraction done, step, and an ETA in seconds."""
        with self.cond:
            run, depth = self._run, len(queue)
        if run is None:
            return {"state": "idle", "jobs": [], "step": 0, "total": 0, "fraction": 0.0,
                    "eta_s": 0.0, "queue_depth": depth}
        elapsed = time.monotonic() - run.started
        per_step = elapsed / run.step if run.step else self._batch_seconds / max(run.steps, 1)
        return {"state": "running", "jobs": [job.id for job in run.jobs], "step": run.step,
                "total": run.steps, "fraction": run.step / run.steps,
                "eta_s": round(per_step * (run.steps - run.step), 3), "queue_depth": depth}

    def cancel_running(self) -> None:
        """Cancel every job of the batch on the device, those of the call running now (it stops
        at its next denoising step) and those waiting in it for a call of their own."""
        run = self._run
        for job in [*self._batch, *(run.jobs if run else ())]:
            job.cancel()

    def drain(self) -> None:
        """Wait for batches still being made once the device thread is done (none here: run()
        makes its batch before returning; the cluster's runner makes several at once)."""

    def run(self, slots: list[Slot]) -> None:
        """Make the pictures of ``slots`` (one task job, or a compatible text-to-image batch)
        and hand them to the saver; a failure fails the jobs, never the device thread."""
        if slots[0][0].task is not None:
            self._run_task(slots[0][0])
            return
        jobs = list(dict.fromkeys(job for job, _ in slots))
        for job in jobs:
            job.start(len(slots))
        try:
            loaded = self.residency.ensure_loaded(jobs[0].request.model or "")
        except Exception as e:  # a model that will not load fails its jobs, never the device thread
            log.exception("loading %s for a batch of %d image(s) failed", jobs[0].request.model, len(slots))
            _fail(jobs, e)
            return
        self._batch = jobs
        try:
            self._make(loaded, slots)
        finally:
            self._batch = []

    def _make(self, loaded: Loaded, slots: list[Slot]) -> None:
        """One pipeline call for ``slots``, its pictures to the saver. When a call shared by
        several jobs fails, each job gets a call of its own before any is failed: one caller's
        bad request (a prompt the tokenizer cannot take) must not fail its batch mates'."""
        jobs = list(dict.fromkeys(job for job, _ in slots))
        counted = {job: job.image_steps for job in jobs}
        with self.cond:
            self._run = _Run(jobs, jobs[0].request.steps or 0)
        started = time.perf_counter()
        failure: Exception | None = None
        try:
            images, timing = self.draw(loaded, slots)
        except Interrupted:
            log.info("batch of %d image(s) interrupted: every job in it was cancelled", len(slots))
            return
        except Exception as e:  # never fatal to the device thread; failed or retried below
            failure = e
        finally:
            with self.cond:
                self._run = None
            self.preview.clear()
        if failure is None:
            self._count_call(started, len(slots))
            self.saver.submit_batch(loaded, slots, images, timing)
        elif len(jobs) == 1:
            log.error("%d image(s) of job %s for %s failed", len(slots), jobs[0].id,
                      loaded.installed.name, exc_info=failure)
            _fail(jobs, failure)
        else:
            log.warning("a batch of %d jobs failed (%s: %s); making each job alone", len(jobs),
                        type(failure).__name__, failure)
            for job in jobs:
                job.rewind(counted[job])  # its steps in the failed call made nothing
                if not job.done:
                    self._make(loaded, [slot for slot in slots if slot[0] is job])

    def _run_task(self, job: Job) -> None:
        """Run an edit's or upscale's task, then hand its pictures to the saver."""
        job.start(job.request.n)
        with self.cond:
            self._run = _Run([job], job.total_steps)
        started = time.perf_counter()
        on_step = _TaskSteps(self, job)
        try:
            loaded = self.residency.ensure_loaded(job.request.model or "")
            images = job.task.run(loaded, on_step)
            loaded.touch()
        except Interrupted:
            log.info("%s job %s interrupted: cancelled", job.kind, job.id)
            return
        except Exception as e:  # a failing edit must never take the device thread down
            log.exception("%s job %s failed", job.kind, job.id)
            _fail([job], e)
            return
        finally:
            with self.cond:
                self._run = None
            self.preview.clear()
        self._count_call(started, len(images))
        self.saver.submit_task(job, loaded, images)

    def _count_call(self, started: float, images: int) -> None:
        """Stats, and the moving average of a device call's seconds that Retry-After is based on."""
        seconds = time.perf_counter() - started
        self._batch_seconds = seconds if not self._batch_seconds else 0.8 * self._batch_seconds + 0.2 * seconds
        self.stats["pipeline_calls"] += 1
        self.stats["images"] += images

    def draw(self, loaded: Loaded, slots: list[Slot]) -> tuple[list[Any], dict[str, float]]:
        """One diffusers call for the whole batch; returns PIL images and per-stage seconds.
        (The cluster's front replaces it by a call to a replica on another box, which runs it.)"""
        request = slots[0][0].request
        jobs = list(dict.fromkeys(job for job, _ in slots))
        per_job = {job: sum(1 for j, _ in slots if j is job) for job in jobs}
        marks: dict[str, float] = {"start": time.perf_counter()}

        def on_denoiser(*_: Any) -> None:
            marks.setdefault("denoise", time.perf_counter())

        def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            marks["decode"] = time.perf_counter()
            if not counts_as_step(pipe, step):  # a second-order sampler's half step
                return {}
            self.preview.keep(slots[0][0].id, pipe.vae if preview_vae is None else preview_vae,
                              tensors.get("latents"))
            if self._run is not None:
                self._run.step = step + 1
            for job, count in per_job.items():
                job.advance(count)
            if all(job.done for job in jobs):
                raise Interrupted
            return {}

        negatives = [job.request.negative_prompt for job, _ in slots]
        width, height = native_size(loaded.installed.manifest.pipeline, loaded.family,
                                    request.width or 0, request.height or 0)
        denoiser = getattr(loaded.pipe, loaded.family.denoiser)
        cache = self.residency.paths.cache_dir
        preview_vae = preview_decoder(loaded, self.residency.store, cache)  # loaded here, on the device thread
        hook = denoiser.register_forward_pre_hook(on_denoiser)
        try:
            with sampler_applied(loaded.pipe, request.sampler, request.scheduler), \
                    decoder_applied(loaded, request, self.residency.store, cache), cpu_autocast(loaded.plan):
                # CPU generators: the same seed gives the same picture on every device.
                result = loaded.pipe(
                    prompt=[job.request.prompt for job, _ in slots],
                    negative_prompt=negatives if any(negatives) else None,
                    width=width, height=height, num_inference_steps=request.steps,
                    guidance_scale=request.guidance, num_images_per_prompt=1,
                    generator=[torch.Generator("cpu").manual_seed(job.seeds[i]) for job, i in slots],
                    callback_on_step_end=on_step_end, output_type="pil",
                    **loaded.family.call_extras_for(loaded.installed.manifest.pipeline.defaults))
        finally:
            hook.remove()
        end = time.perf_counter()
        denoise_at = marks.get("denoise", marks["start"])
        decode_at = marks.get("decode", denoise_at)
        timing = {"encode": denoise_at - marks["start"], "denoise": decode_at - denoise_at,
                  "decode": end - decode_at}
        loaded.touch()
        return [enlarged(image, request) for image in result.images], timing


class _TaskSteps:
    """A task's ``on_step``: advances its job (raising to stop a cancelled one) and, called
    through :func:`step_callback`, keeps the preview of the picture being drawn."""

    def __init__(self, runner: Runner, job: Job) -> None:
        self.runner, self.job = runner, job

    def __call__(self, images: int = 1) -> None:
        self.job.advance(images)
        run = self.runner._run
        if run is not None:
            run.step = self.job.step
        if self.job.done:
            raise Interrupted

    def keep(self, pipe: Any, latents: Any) -> None:
        self.runner.preview.keep(self.job.id, getattr(pipe, "vae", None), latents)


def enlarged(image: Any, request: Any) -> Any:
    """A picture drawn at its model's native size (:func:`.resolve.native_size`) at the size asked."""
    from PIL import Image

    size = (request.width, request.height)
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def _fail(jobs: list[Job], error: Exception) -> None:
    """Fail ``jobs`` with ``error``'s message (pennello's own as it is, others with their type)."""
    message = str(error) if isinstance(error, PennelloError) else f"{type(error).__name__}: {error}"
    for job in jobs:
        job.fail(message)
