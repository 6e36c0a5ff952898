"""The engine: warm models, a bounded job queue, and one thread that owns the device.

:class:`Engine` is the façade that routes, tools and tests call; it wires parts with one job each,
sharing one lock (the condition the device loop sleeps on) so that their state changes together:

- :mod:`.resolve` checks a request and fills in the model's defaults;
- :mod:`.queue` holds waiting jobs (a full queue is a 429) and takes compatible batches;
- :mod:`.device_loop` is the device's thread: control actions, batches, housekeeping;
- :mod:`.runner` makes a batch in one pipeline call, or runs an edit's or upscale's :class:`Task`;
- :mod:`.saver` writes pictures on a second thread, so the next batch can start meanwhile;
- :mod:`.residency` loads models, keeps them warm and unloads idle ones;
- :mod:`.journal` keeps queued jobs on disk (edits with their pictures), so those a crash
  interrupted run again.

    >>> from pennello.config import Config
from pennello.errors import PennelloError
    >>> from pennello.paths import get_paths
    >>> engine = Engine(Config(), get_paths())  # doctest: +SKIP
    >>> engine.start()  # doctest: +SKIP
    >>> job = engine.submit(GenerateRequest(prompt="a red kite", seed=1))  # doctest: +SKIP
    >>> job.wait(60) and [image.path for image in job.images]  # doctest: +SKIP

The engine has no HTTP in it; :mod:`pennello.daemon.http.app` puts it behind Flask.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from pennello import __version__
from pennello.config import Config
from pennello.errors import PennelloError
from pennello.paths import Paths

from .devices import pick_device, pick_dtype
from .jobs import GenerateRequest, Job, OutputImage
from .journal import Journal
from .outputs import Outputs
from .queue import JobQueue
from .residency import Residency
from .params import seeds_for
from .resolve import resolve_request
from .runner import Runner, Task, step_callback
from .saver import Saver
from .device_loop import DeviceLoop

# What callers import from here, wherever it lives now.
__all__ = ["Engine", "Task", "pick_device", "pick_dtype", "step_callback"]

log = logging.getLogger(__name__)


class Engine:
    """Owns the models and the device. Thread-safe: HTTP threads submit, one device thread runs."""

    # Where models live and what draws a batch: the cluster's front (daemon/cluster/front.py)
    # puts its own here, so the queue, progress, cancel and gallery stay these same parts.
    residency_class: type[Residency] = Residency
    runner_class: type[Runner] = Runner

    def __init__(self, config: Config, paths: Paths, store: Any = None) -> None:
        if store is None:
            from pennello.installer import Store

            store = Store(paths)
        self.config, self.paths, self.store = config, paths, store
        self.device = pick_device(config.engine.device)
        self.outputs = Outputs(paths.outputs_dir, config.outputs.png_compress_level)
        self.extensions: dict[str, Any] = {}  # per-engine state of optional tools (copyright index…)
        self._cond = threading.Condition()
        self.residency = self.residency_class(self._cond, config, paths, store, self.device)
        self.saver = Saver(self.outputs, host=self)
        self.runner = self.runner_class(self._cond, self.residency, self.saver)
        self.queue = JobQueue(self._cond, config, self.runner.seconds_per_call)
        self.loop = DeviceLoop(self._cond, self.queue, self.runner, self.residency, self.outputs, config)
        self.journal = Journal(paths.state_dir / "jobs")
        self.stats = self.runner.stats

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the device thread and load the default model warm.

        Raises:
            ModelNotFoundError: the default model is not installed.
            StoreError: its files do not load.
        """
        if self.loop.started:
            return
        self.loop.start()
        self.load(self.config.engine.default_model)
        self._requeue(self.journal.recover())
        log.info("engine ready on %s with %s warm", self.device, self.config.engine.default_model)

    def _requeue(self, jobs: list[Job]) -> None:
        """Queue again, under their own ids, the jobs a process that died had not finished."""
        for job in jobs:
            try:
                # its model may be gone since (edits were checked against their family when queued)
                self._resolve(job.request, purpose="generate" if job.kind == "generate" else None)
                self.queue.submit(job)
            except PennelloError as e:  # e.g. its model was removed meanwhile
                log.warning("job %s, left unfinished by a crash, is dropped: %s", job.id, e)
                continue
            self.journal.add(job)
            log.info("job %s, left unfinished by a crash, is queued again", job.id)

    def stop(self, cancel_running: bool = False, timeout: float = 30.0) -> None:
        """Stop taking jobs, cancel those not begun, let the running ones finish, the rest of
        their images included (or cancel them after ``timeout`` seconds), wait for pictures to
        be saved, and unload every model. Idempotent."""
        if not self.queue.close():
            return
        if cancel_running:
            self._cancel_begun()
        if self.loop.join(timeout):
            log.warning("running jobs still busy after %.0fs; cancelling them", timeout)
            self._cancel_begun()
            self.loop.join()
        self.saver.shutdown()
        self.residency.clear()
        log.info("engine stopped")

    def _cancel_begun(self) -> None:
        """Cancel the jobs still queued for more images, then those of the call on the device."""
        self.queue.cancel_all()
        self.runner.cancel_running()

    # --- jobs ------------------------------------------------------------------------------------

    def submit(self, request: GenerateRequest) -> Job:
        """Validate, fill in defaults, and queue a request.

        Raises:
            RequestError: a field is out of range (``field`` names it).
            ModelNotFoundError: the model is not installed, or its family is unknown.
            BusyError: the queue is full.
            DaemonError: the engine is stopping or was never started.
        """
        request = self._resolve(request, purpose="generate")
        seeds = seeds_for(request.seed, request.n)
        job = self.queue.submit(Job(request, seeds))
        self.journal.add(job)
        log.info("job %s queued: %s, %d image(s) %dx%d, %d steps", job.id, self._loggable(request),
                 request.n, request.width, request.height, request.steps)
        return job

    def submit_task(self, request: GenerateRequest, seeds: list[int], task: Task, kind: str,
                    total_steps: int) -> Job:
        """Queue non-batchable work (``request`` already resolved, e.g. by :meth:`resolve`).

        Args:
            total_steps: denoising steps per picture, for progress (img2img runs fewer than
                ``request.steps``).

        Raises:
            BusyError: the queue is full.  DaemonError: the engine is not running.
        """
        job = self.queue.submit(Job(request, seeds, total_steps=total_steps, kind=kind,  # type: ignore[arg-type]
                                    task=task))
        self.journal.add(job)
        log.info("job %s queued: %s with %s, %s, %d image(s)", job.id, kind, request.model,
                 self._loggable(request), request.n)
        return job

    def get_job(self, job_id: str, owner: str | None = None) -> Job:
        """Raises:
            NotFoundError: no such job, or it belongs to another owner (not told apart on purpose).
        """
        return self.queue.get_job(job_id, owner)

    def cancel(self, job_id: str, owner: str | None = None) -> Job:
        """Remove a queued job, or stop a running one at its next denoising step."""
        return self.queue.cancel(job_id, owner)

    def jobs(self, owner: str | None = None) -> list[Job]:
        return self.queue.jobs(owner)

    def resolve(self, request: GenerateRequest) -> GenerateRequest:
        """Validate a request and fill in the model's defaults without queueing it, whatever the
        model is for (edits use this, then check the family themselves)."""
        return self._resolve(request)

    def save_output(self, image: Any, record: dict[str, Any], fmt: str, enhance: bool = False,
                    source: str | None = None, durable: bool = True,
                    image_id: str | None = None) -> OutputImage:
        """Run the post-steps (auto-enhance when asked, the copyright check when configured) and
        save the picture (under ``image_id`` when given: a call that may come twice); what they
        found is in its record and its ``notes``."""
        return self.saver.save_output(image, record, fmt, enhance=enhance, source=source, durable=durable,
                                      image_id=image_id)

    def _resolve(self, request: GenerateRequest, purpose: str | None = None) -> GenerateRequest:
        return resolve_request(request, self.config.engine, self.residency.installed, purpose)

    def _loggable(self, request: GenerateRequest) -> str:
        """The prompts for a log line only when ``engine.log_prompts`` is on, else their length."""
        if self.config.engine.log_prompts:
            return f"{request.prompt!r} (negative {request.negative_prompt!r})"
        return f"{len(request.prompt)}-char prompt"

    # --- models ----------------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        """Installed models, with whether each is loaded and which is the default."""
        return self.residency.models()

    def ps(self) -> list[dict[str, Any]]:
        """Loaded models with their memory use and when they will be unloaded."""
        return self.residency.ps()

    def load(self, name: str) -> dict[str, Any]:
        """Load a model now (on the device thread) and keep it warm.

        Raises:
            ModelNotFoundError: not installed.  StoreError: its files do not load.
        """
        self.store.get(name)  # a clear 404 now rather than from the device thread
        loaded = self.on_device(lambda: self.residency.ensure_loaded(name))
        with self._cond:
            return self.residency.describe(loaded)

    def unload(self, name: str) -> dict[str, Any]:
        """Free a model's memory; the next job that needs it loads it again."""
        self.store.get(name)
        was_loaded = self.on_device(lambda: self.residency.drop(name))
        return {"name": name, "unloaded": was_loaded}

    def set_keep_alive(self, name: str, seconds: float | None) -> None:
        """Keep ``name`` loaded ``seconds`` after its last use, as a request chose (None: until
        unloaded; 0: unload once idle); see :func:`.residency.parse_keep_alive`."""
        self.residency.set_keep_alive(name, seconds)

    def add_models_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after a model is loaded or unloaded (LAN advertising re-announces).

        It runs on the device thread, so it must return at once; errors are logged and ignored.
        """
        self.residency.add_listener(listener)

    def on_device(self, action: Callable[[], Any]) -> Any:
        """Run ``action`` on the device thread (it owns the device) and wait for its result.

        Raises:
            DaemonError: the engine is stopping or was never started.
        """
        return self.loop.call(action)

    # --- status ----------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        with self._cond:
            return {"version": __version__, "ready": self.queue.accepting,
                    "default_model": self.config.engine.default_model,
                    "default_loaded": self.config.engine.default_model in self.residency.loaded,
                    "device": self.device, "queue_depth": len(self.queue), "running": self.runner.running(),
                    "loaded": sorted(self.residency.loaded)}

    def progress(self) -> dict[str, Any]:
        """The batch on the device now: fraction done, step, and an ETA in seconds."""
        return self.runner.progress(self.queue)
