"""Generation requests, jobs and their images: the data that flows between the HTTP layer and the engine.

A :class:`GenerateRequest` is what a client asks for; ``None`` fields take the model's manifest
defaults when the engine accepts it. A :class:`Job` tracks one request through the queue and
publishes events that any number of listeners (SSE streams, waiting requests) can follow:

    >>> job = Job(GenerateRequest(prompt="a lighthouse at dusk", seed=7), seeds=[7])
    >>> job.status
    'queued'
    >>> job.cancel()
    True
    >>> [name for name, _ in job.events()]
    ['cancelled']

Edits and AI upscales are jobs too (``kind`` says which): they carry a ``task``, the work the
engine's device thread runs with the model loaded (see :class:`.runner.Task`), and are never batched
with other jobs; they queue, report progress, cancel and count against the queue the same way.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from .params import GenerationParams, ImageFormat, values

JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]
EventName = Literal["progress", "done", "failed", "cancelled"]
JobKind = Literal["generate", "edit", "upscale"]

TERMINAL: frozenset[str] = frozenset({"done", "failed", "cancelled"})
# Parameters a batched pipeline call takes per picture, or that apply after it (format, enhance).
PER_PICTURE = ("prompt", "negative_prompt", "seed", "n", "format", "enhance")


@dataclass(frozen=True, kw_only=True)
class GenerateRequest(GenerationParams):
    """What a client asks for: the parameters (:mod:`.params`) and who asks."""

    owner: str = "local"  # who may see the job and its images (a paired device, or "local")

    def batch_key(self) -> tuple[Any, ...]:
        """Jobs with equal keys can share one pipeline call: every parameter the pipeline call
        takes once for all its pictures is equal (prompts and seeds may differ)."""
        return tuple(values(self, leave_out=PER_PICTURE).values())


@dataclass
class OutputImage:
    """One saved picture."""

    id: str
    path: Path
    seed: int
    width: int
    height: int
    format: ImageFormat
    # What post-steps found, e.g. {"enhance": {...}, "copyright": {...}}; also in the record.
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["path"]  # a server-side detail; clients fetch by id
        data.update(data.pop("notes"))
        data["url"] = f"/api/images/{self.id}"
        return data


@dataclass(eq=False)  # identity semantics: jobs are hashed and compared as themselves
class Job:
    """One request on its way through the engine. Thread-safe; the engine owns the transitions."""

    request: GenerateRequest
    seeds: list[int]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    status: JobStatus = "queued"
    step: int = 0
    total_steps: int = 0
    batch_size: int = 0  # most images in one pipeline call that served this job (1 = not batched)
    images: list[OutputImage] = field(default_factory=list)
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    kind: JobKind = "generate"
    task: Any = field(default=None, repr=False)  # non-batchable work (edits): see runner.Task

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._events: list[tuple[str, dict[str, Any]]] = []
        self._scheduled = 0  # images handed to a pipeline call so far (engine bookkeeping)
        self._image_steps = 0  # steps summed over images: a job's images may span pipeline calls
        self._on_end: list[Callable[[], None]] = []
        self.total_steps = self.total_steps or (self.request.steps or 0)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        # The requested seed is left out: "seeds" lists the ones each picture used.
        return {
            "id": self.id, "status": self.status, **values(self.request, leave_out=("seed",)),
            "seeds": list(self.seeds), "step": self.step, "total_steps": self.total_steps,
            "progress": self.progress, "batch_size": self.batch_size,
            "images": [image.to_dict() for image in self.images], "error": self.error,
            "created": self.created, "started": self.started, "finished": self.finished,
            "kind": self.kind, **(self.task.describe() if self.task is not None else {}),
        }

    @property
    def progress(self) -> float:
        """Fraction of denoising steps done, over all of the job's images."""
        if self.status == "done":
            return 1.0
        return self.step / self.total_steps if self.total_steps else 0.0

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job is done, failed or cancelled. Returns False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.done, timeout)

    def events(self, timeout: float | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every event of the job from the start, as ``(name, data)``, ending after the terminal one.

        Args:
            timeout: longest wait for the next event; on expiry the iterator yields
                ``("ping", {})`` so a streaming response can notice a gone client.
        """
        index = 0
        while True:
            with self._cond:
                if not self._cond.wait_for(lambda: index < len(self._events), timeout):
                    pending: list[tuple[str, dict[str, Any]]] = [("ping", {})]
                else:
                    pending = self._events[index:]
                    index = len(self._events)
            for name, data in pending:
                yield name, data
                if name in TERMINAL:
                    return

    def cancel(self) -> bool:
        """Mark the job cancelled unless it already ended. Returns whether it changed."""
        return self._finish("cancelled")

    def on_end(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once the job ends, however it ends (now, if it already has)."""
        with self._cond:
            if not self.done:
                self._on_end.append(callback)
                return
        callback()

    # --- transitions, called by the engine's queue, runner and saver -----------------------------

    def schedule(self, most: int) -> range:
        """Hand up to ``most`` more of this job's images to a pipeline call; returns their indices.

        Only the device thread calls this (with the queue's lock held), so it needs no lock of its own.
        """
        first = self._scheduled
        self._scheduled = min(self.request.n, first + most)
        return range(first, self._scheduled)

    @property
    def begun(self) -> bool:
        """Some of its images were handed to a pipeline call (read with the queue's lock held)."""
        return self._scheduled > 0

    @property
    def fully_scheduled(self) -> bool:
        """Every image was handed to a pipeline call: the job leaves the queue."""
        return self._scheduled == self.request.n

    def start(self, batch_size: int) -> None:
        """A pipeline call serving ``batch_size`` images, some of them this job's, begins."""
        with self._cond:
            if self.status == "queued":
                self.status, self.started = "running", time.time()
            self.batch_size = max(self.batch_size, batch_size)

    def advance(self, images: int) -> None:
        """One denoising step finished for ``images`` of this job's images."""
        with self._cond:
            self._image_steps += images
            step = self._image_steps // self.request.n
            if self.done or step <= self.step:
                return
            self.step = step
            self._publish("progress", {"step": step, "total_steps": self.total_steps,
                                       "progress": self.progress})

    @property
    def image_steps(self) -> int:
        """Denoising steps counted so far, summed over the job's images."""
        return self._image_steps

    def rewind(self, image_steps: int) -> None:
        """Forget the steps counted since :attr:`image_steps` was ``image_steps``: the pipeline
        call that made them failed and its images are being made again. The published step
        stays, so progress never goes backwards."""
        with self._cond:
            self._image_steps = image_steps

    def add_image(self, image: OutputImage) -> None:
        """One picture saved; the job is done once all ``n`` are."""
        with self._cond:
            if self.done:
                return
            self.images.append(image)
            if len(self.images) == self.request.n:
                self.complete()

    def complete(self) -> bool:
        """Mark the job done with every step counted (its pictures are saved, or handed back)."""
        with self._cond:
            if self.done:
                return False
            self.step = self.total_steps
            return self._finish("done")

    def fail(self, error: str) -> bool:
        """Mark the job failed with ``error`` unless it already ended. Returns whether it changed."""
        return self._finish("failed", error)

    def _finish(self, status: JobStatus, error: str | None = None) -> bool:
        with self._cond:
            if self.done:
                return False
            self.status, self.error, self.finished = status, error, time.time()
            self._publish(status, self.to_dict())
            callbacks, self._on_end = self._on_end, []
        for callback in callbacks:
            callback()
        return True

    def _publish(self, name: str, data: dict[str, Any]) -> None:
        self._events.append((name, data))
        self._cond.notify_all()


Slot = tuple[Job, int]  # a job and the index of one of its images, as a pipeline call serves them
