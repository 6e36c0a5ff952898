"""The engine: warm models, a bounded job queue, and one worker thread that owns the device.

Requests are validated and resolved against the model's manifest defaults on submit, then
queued. The worker takes the oldest job and fills the rest of a pipeline call with queued jobs
that are *compatible* (same model, size, steps and guidance; prompts, negative prompts and seeds
may differ), up to ``engine.max_batch`` images, each with its own seeded generator. Encoding and
saving pictures happens on a second thread, so the next batch can start denoising meanwhile.

Edits and AI upscales are jobs with a :class:`Task` (``submit_task``): they wait in the same
queue (so a full queue is a 429 for them too), run alone on the worker when they reach its head,
report a progress event per denoising step and stop at the next step when cancelled.

    >>> from pennello.config import Config
    >>> from pennello.paths import get_paths
    >>> engine = Engine(Config(), get_paths())  # doctest: +SKIP
    >>> engine.start()  # doctest: +SKIP
    >>> job = engine.submit(GenerateRequest(prompt="a red kite", seed=1))  # doctest: +SKIP
    >>> job.wait(60) and [image.path for image in job.images]  # doctest: +SKIP

The engine has no HTTP in it; :mod:`pennello.daemon.http.app` puts it behind Flask.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol, get_args

import torch

from pennello import __version__
from pennello.config import Config, Device
from pennello.errors import (BusyError, ConfigError, DaemonError, ModelNotFoundError, NotFoundError,
                             PennelloError, RequestError)
from pennello.files import make_durable
from pennello.paths import Paths

from .jobs import GenerateRequest, Job, OutputImage
from .params import check, check_given, defaults_from, seeds_for
from .outputs import TRAINED_ALGORITHMIC_MEDIA, Outputs
from .families import PURPOSE_ROUTES, ModelFamily, get_family
from .profiles import (COMPILE_CACHE, Plan, SpeedUp, apply_plan, apply_speed_ups, free_vram, plan_for,
                       read_weights, undo_compile)

log = logging.getLogger(__name__)

_KEPT_JOBS = 1000  # finished jobs remembered for GET /api/jobs/<id>
_PRUNE_EVERY_S = 24 * 3600
_Slot = tuple[Job, int]  # a job and the index of one of its images


class _Interrupted(Exception):
    """Raised from the step callback when every job of the running batch was cancelled."""


class Task(Protocol):
    """Work that is not text-to-image (an edit, an AI upscale), run by the worker as one job.

    ``run`` is called on the worker with the job's model loaded; it calls ``on_step(images)``
    after each denoising step of a pipeline call making ``images`` pictures (``step_callback``
    adapts it to diffusers), which raises to stop the work when the job was cancelled. ``save``
    runs on the saver thread, once per picture ``run`` returned.
    """

    def run(self, loaded: Any, on_step: Callable[[int], None]) -> list[Any]: ...

    # None: the picture was handed back on the task itself (the AI upscaler's 4x pass, which
    # its caller scales and saves), so the job ends "done" with no gallery images of its own.
    def save(self, engine: "Engine", loaded: Any, image: Any, index: int) -> OutputImage | None: ...

    def describe(self) -> dict[str, Any]: ...  # extra fields for the job's JSON


def step_callback(on_step: Callable[[int], None], images: int = 1) -> Callable[..., dict[str, Any]]:
    """A diffusers ``callback_on_step_end`` reporting each step of a call making ``images`` pictures."""

    def callback(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        on_step(images)
        return {}

    return callback


@dataclass
class _Loaded:
    installed: Any  # pennello.installer.InstalledModel
    family: ModelFamily
    pipe: Any
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    param_bytes: int = 0
    derived: dict[str, Any] = field(default_factory=dict)  # img2img/inpaint pipes sharing `pipe`'s weights
    plan: Plan | None = None  # placement and memory savers (daemon/engine/profiles.py)


@dataclass
class _Run:
    """The batch on the device right now, for progress and ETA."""

    jobs: list[Job]
    steps: int
    started: float = field(default_factory=time.monotonic)
    step: int = 0


def pick_device(preference: Device) -> str:
    """CUDA, else Apple MPS, else CPU for ``auto``; an explicit choice must be available.

    Raises:
        ConfigError: the configured device is not available on this machine.
    """
    available = {"cuda": torch.cuda.is_available(),
                 "mps": bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available(),
                 "cpu": True}
    if preference == "auto":
        return next(name for name, ok in available.items() if ok)
    if not available.get(preference):
        raise ConfigError(f"engine.device = {preference!r} but no such device is available; use 'auto'")
    return preference


def pick_dtype(device: str, family: ModelFamily) -> torch.dtype:
    """Half precision on accelerators (bf16 where the family wants it and CUDA has it), fp32 on CPU."""
    if device == "cuda":
        if family.gpu_dtype == "bfloat16" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    return torch.float16 if device == "mps" else torch.float32


class Engine:
    """Owns the models and the device. Thread-safe: HTTP threads submit, one worker runs."""

    def __init__(self, config: Config, paths: Paths, store: Any = None) -> None:
        if store is None:
            from pennello.installer import Store

            store = Store(paths)
        self.config, self.paths, self.store = config, paths, store
        self.device = pick_device(config.engine.device)
        self.outputs = Outputs(paths.outputs_dir, config.outputs.png_compress_level)
        self.stats = {"pipeline_calls": 0, "images": 0}
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._control: deque[tuple[Callable[[], Any], Future]] = deque()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._loaded: dict[str, _Loaded] = {}
        self._run: _Run | None = None
        self._batch_seconds = 0.0  # moving average, for Retry-After and ETA
        self._stopping = self._stopped = False
        self._worker: threading.Thread | None = None
        self._saver = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pennello-save")
        self._next_prune = 0.0
        self._models_listeners: list[Callable[[], None]] = []
        self.extensions: dict[str, Any] = {}  # per-engine state of optional tools (copyright index…)

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker and load the default model warm.

        Raises:
            ModelNotFoundError: the default model is not installed.
            StoreError: its files do not load.
        """
        if self._worker is not None:
            return
        self._worker = threading.Thread(target=self._work, name="pennello-engine", daemon=True)
        self._worker.start()
        self.load(self.config.engine.default_model)
        log.info("engine ready on %s with %s warm", self.device, self.config.engine.default_model)

    def stop(self, cancel_running: bool = False, timeout: float = 30.0) -> None:
        """Stop taking jobs, cancel queued ones, let the running batch finish (or cancel it after
        ``timeout`` seconds), wait for pictures to be saved, and unload every model. Idempotent."""
        with self._cond:
            if self._stopped:
                return
            self._stopped = self._stopping = True
            queued = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in queued:
            job.cancel()
        if cancel_running:
            self._cancel_running()
        if self._worker is not None:
            self._worker.join(timeout)
            if self._worker.is_alive():
                log.warning("running batch still busy after %.0fs; cancelling it", timeout)
                self._cancel_running()
                self._worker.join()
        self._saver.shutdown(wait=True)
        with self._cond:
            self._loaded.clear()
        log.info("engine stopped")

    def _cancel_running(self) -> None:
        run = self._run
        for job in run.jobs if run else ():
            job.cancel()

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
        job = self._enqueue(Job(request, seeds))
        log.info("job %s queued: %s, %d image(s) %dx%d, %d steps", job.id, self._loggable(request),
                 request.n, request.width, request.height, request.steps)
        return job

    def _loggable(self, request: GenerateRequest) -> str:
        """The prompts for a log line only when ``engine.log_prompts`` is on, else their length."""
        if self.config.engine.log_prompts:
            return f"{request.prompt!r} (negative {request.negative_prompt!r})"
        return f"{len(request.prompt)}-char prompt"

    def submit_task(self, request: GenerateRequest, seeds: list[int], task: Task, kind: str,
                    total_steps: int) -> Job:
        """Queue non-batchable work (``request`` already resolved, e.g. by :meth:`resolve`).

        Args:
            total_steps: denoising steps per picture, for progress (img2img runs fewer than
                ``request.steps``).

        Raises:
            BusyError: the queue is full.  DaemonError: the engine is not running.
        """
        job = self._enqueue(Job(request, seeds, total_steps=total_steps, kind=kind,  # type: ignore[arg-type]
                                task=task))
        log.info("job %s queued: %s with %s, %s, %d image(s)", job.id, kind, request.model,
                 self._loggable(request), request.n)
        return job

    def _enqueue(self, job: Job) -> Job:
        with self._cond:
            if self._stopping or self._worker is None:
                raise DaemonError("the engine is not running (shutting down or not started)")
            if len(self._queue) >= self.config.engine.queue_size:
                raise BusyError(f"the queue is full ({len(self._queue)} jobs waiting); try again shortly",
                                retry_after=self._retry_after())
            self._queue.append(job)
            self._remember(job)
            self._cond.notify_all()
        return job

    def get_job(self, job_id: str, owner: str | None = None) -> Job:
        """Raises:
            NotFoundError: no such job, or it belongs to another owner (not told apart on purpose).
        """
        with self._cond:
            job = self._jobs.get(job_id)
        if job is None or (owner is not None and job.request.owner != owner):
            raise NotFoundError(f"no job with id {job_id!r}", field="id")
        return job

    def cancel(self, job_id: str, owner: str | None = None) -> Job:
        """Remove a queued job, or stop a running one at its next denoising step."""
        job = self.get_job(job_id, owner)
        with self._cond:
            if job in self._queue:
                self._queue.remove(job)
        if job.cancel():
            log.info("job %s cancelled", job.id)
        return job

    def jobs(self, owner: str | None = None) -> list[Job]:
        with self._cond:
            return [j for j in self._jobs.values() if owner is None or j.request.owner == owner]

    def _remember(self, job: Job) -> None:
        self._jobs[job.id] = job
        while len(self._jobs) > _KEPT_JOBS:
            oldest = next(iter(self._jobs.values()))
            if not oldest.done:
                break
            self._jobs.popitem(last=False)

    def _retry_after(self) -> int:
        batches_ahead = len(self._queue) / max(1, self.config.engine.max_batch) + 1
        return max(1, math.ceil(batches_ahead * self._batch_seconds))

    def _resolve(self, request: GenerateRequest, purpose: str | None = None) -> GenerateRequest:
        """Check every field and fill the model's defaults in; with ``purpose``, also that the
        model's family does that (an upscaler cannot draw from text)."""
        limits = self.config.engine
        check_given(request, limits, leave_out=defaults_from("manifest"))
        if not request.prompt.strip():
            raise RequestError("prompt must not be empty", field="prompt")
        model = request.model or limits.default_model
        try:
            installed = self._installed(model)
        except ModelNotFoundError as e:
            e.field = "model"  # type: ignore[attr-defined]  # so the HTTP error names the input
            raise
        family = get_family(installed.manifest.pipeline.family)
        if purpose is not None and family.purpose != purpose:
            raise RequestError(
                f"{installed.name} is {'an' if family.purpose[0] in 'aeiou' else 'a'} {family.purpose} model "
                f"({family.name} family), not a text-to-image one: use it with "
                f"{PURPOSE_ROUTES[family.purpose]}, or name a text-to-image model", field="model")
        defaults = _model_defaults(installed, family)
        values = {name: getattr(request, name) if getattr(request, name) is not None else defaults[name]
                  for name in defaults_from("manifest")}
        for name in ("width", "height"):
            check(name, values[name], limits)
        family.check_size(values["width"], values["height"])
        check("steps", values["steps"], limits)
        check("guidance", values["guidance"], limits)
        return replace(request, model=installed.name, guidance=float(values["guidance"]),
                       width=values["width"], height=values["height"], steps=values["steps"])

    def resolve(self, request: GenerateRequest) -> GenerateRequest:
        """Validate a request and fill in the model's defaults without queueing it, whatever the
        model is for (edits use this, then check the family themselves)."""
        return self._resolve(request)

    def save_output(self, image: Any, record: dict[str, Any], fmt: str, enhance: bool = False,
                    source: str | None = None, durable: bool = True) -> OutputImage:
        """Run the post-steps (auto-enhance when asked, the copyright check when configured) and
        save the picture; what they found is in its record and its ``notes``."""
        from .poststeps import run_post_steps

        image, notes = run_post_steps(self, image, {"enhance": enhance})
        saved = self.outputs.save(image, {**record, **notes}, fmt,  # type: ignore[arg-type]
                                  source or TRAINED_ALGORITHMIC_MEDIA, durable=durable)
        saved.notes.update(notes)
        return saved

    def _installed(self, name: str) -> Any:
        with self._cond:
            loaded = self._loaded.get(name)
        return loaded.installed if loaded else self.store.get(name)

    # --- models ----------------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        """Installed models, with whether each is loaded and which is the default."""
        with self._cond:
            loaded = set(self._loaded)
        return [{"name": m.name, "version": m.version, "family": m.manifest.pipeline.family,
                 "pipeline": m.manifest.pipeline.cls, "defaults": dict(m.manifest.pipeline.defaults),
                 "description": m.manifest.description, "license": m.manifest.license,
                 "digest": m.digest, "loaded": m.name in loaded,
                 "default": m.name == self.config.engine.default_model}
                for m in self.store.installed()]

    def ps(self) -> list[dict[str, Any]]:
        """Loaded models with their memory use and when they will be unloaded."""
        with self._cond:
            return [self._describe(loaded) for loaded in self._loaded.values()]

    def _describe(self, loaded: _Loaded) -> dict[str, Any]:
        name = loaded.installed.name
        keep = None if name == self.config.engine.default_model else self.config.engine.keep_alive_s
        return {"name": name, "version": loaded.installed.version, "family": loaded.family.name,
                "device": self.device, "dtype": str(loaded.pipe.dtype).removeprefix("torch."),
                "param_bytes": loaded.param_bytes, "loaded_at": loaded.loaded_at,
                "idle_s": round(time.monotonic() - loaded.last_used, 3),
                "expires_in_s": None if keep is None else
                max(0.0, round(keep - (time.monotonic() - loaded.last_used), 3)),
                "cuda_memory_allocated": torch.cuda.memory_allocated() if self.device == "cuda" else None,
                "placement": loaded.plan.describe() if loaded.plan else None}

    def load(self, name: str) -> dict[str, Any]:
        """Load a model now (on the worker) and keep it warm.

        Raises:
            ModelNotFoundError: not installed.  StoreError: its files do not load.
        """
        self.store.get(name)  # a clear 404 now rather than from the worker
        loaded = self._on_worker(lambda: self._ensure_loaded(name))
        with self._cond:
            return self._describe(loaded)

    def unload(self, name: str) -> dict[str, Any]:
        """Free a model's memory; the next job that needs it loads it again."""
        self.store.get(name)
        was_loaded = self._on_worker(lambda: self._drop(name))
        return {"name": name, "unloaded": was_loaded}

    def add_models_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after a model is loaded or unloaded (LAN advertising re-announces).

        It runs on the worker thread, so it must return at once; errors are logged and ignored.
        """
        self._models_listeners.append(listener)

    def _models_changed(self) -> None:
        for listener in list(self._models_listeners):
            try:
                listener()
            except Exception:
                log.exception("models listener %r failed", listener)

    def _on_worker(self, action: Callable[[], Any]) -> Any:
        """Run ``action`` on the worker thread (it owns the device) and wait for its result."""
        future: Future = Future()
        with self._cond:
            if self._stopping or self._worker is None:
                raise DaemonError("the engine is not running (shutting down or not started)")
            self._control.append((action, future))
            self._cond.notify_all()
        return future.result()

    def _ensure_loaded(self, name: str) -> _Loaded:
        with self._cond:
            loaded = self._loaded.get(name)
        if loaded is None:
            loaded = self._load(name)
            with self._cond:
                self._loaded[name] = loaded
            self._models_changed()
        loaded.last_used = time.monotonic()
        return loaded

    def _load(self, name: str) -> _Loaded:
        """Load, tune and place a model, then warm it up when it was compiled (on the worker)."""
        started = time.perf_counter()
        installed = self.store.get(name)
        family = get_family(installed.manifest.pipeline.family)
        dtype = pick_dtype(self.device, family)
        plan = self._plan(installed, family, dtype)
        # Loaded and tuned on the CPU, then placed: offloading wants the weights on the CPU first.
        pipe = family.load(installed.manifest.pipeline.cls, installed.path, "cpu", dtype)
        plan = apply_speed_ups(pipe, plan, family.denoiser, self.paths.cache_dir / COMPILE_CACHE)
        loaded = _Loaded(installed, family, apply_plan(pipe, plan))
        loaded.plan = plan = self._warm_up(loaded, plan) if plan.compile else plan
        loaded.param_bytes = _param_bytes(loaded.pipe)
        log.info("loaded %s v%d on %s in %.2fs (%.1f MB of weights); placement %s", name, installed.version,
                 self.device, time.perf_counter() - started, loaded.param_bytes / 1e6, plan.describe())
        return loaded

    def _warm_up(self, loaded: _Loaded, plan: Plan) -> Plan:
        """Generate once at the model's default size, batch 1, so that compiling happens now rather
        than in the first request (another size or batch size still compiles once, when first asked).

        Returns:
            The plan with the warm-up's seconds, or without compile when it failed (e.g. no C++
            compiler for Inductor): the model then runs uncompiled rather than not at all.
        """
        defaults = _model_defaults(loaded.installed, loaded.family)
        started = time.perf_counter()
        try:
            loaded.pipe(prompt=["warm-up"], width=defaults["width"], height=defaults["height"],
                        num_inference_steps=min(2, defaults["steps"]),  # the second step: no recompile
                        guidance_scale=defaults["guidance"], generator=[torch.Generator("cpu").manual_seed(0)],
                        output_type="latent")  # the VAE is not compiled
        except Exception as e:
            log.exception("compiling %s failed; it runs uncompiled", loaded.installed.name)
            undo_compile(loaded.pipe, loaded.family.denoiser)
            return plan.without("compile", f"warm-up failed: {type(e).__name__}: {e}")
        return replace(plan, warmup_s=round(time.perf_counter() - started, 3))

    def _plan(self, installed: Any, family: ModelFamily, dtype: torch.dtype) -> Plan:
        """Where and how this model runs here: memory tier and offload on a GPU, threads on a CPU,
        and the speed-ups the engine settings and the profile ask for."""
        defaults = _model_defaults(installed, family)
        engine = self.config.engine
        return plan_for(self.device, read_weights(installed.path), dtype.itemsize,
                        pixels=defaults["width"] * defaults["height"], free_bytes=free_vram(self.device),
                        profile=engine.memory_profile, cpu_threads=engine.cpu_threads,
                        speed={name: getattr(engine, name) for name in get_args(SpeedUp)},
                        compile_mode=engine.compile_mode, purpose=family.purpose)

    def _drop(self, name: str) -> bool:
        with self._cond:
            loaded = self._loaded.pop(name, None)
        if loaded is None:
            return False
        del loaded
        if self.device == "cuda":
            torch.cuda.empty_cache()
        log.info("unloaded %s", name)
        self._models_changed()
        return True

    # --- status ----------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        with self._cond:
            running = len(self._run.jobs) if self._run else 0
            return {"version": __version__, "ready": self._worker is not None and not self._stopping,
                    "default_model": self.config.engine.default_model,
                    "default_loaded": self.config.engine.default_model in self._loaded,
                    "device": self.device, "queue_depth": len(self._queue), "running": running,
                    "loaded": sorted(self._loaded)}

    def progress(self) -> dict[str, Any]:
        """The batch on the device now: fraction done, step, and an ETA in seconds."""
        with self._cond:
            run, queue_depth = self._run, len(self._queue)
        if run is None:
            return {"state": "idle", "jobs": [], "step": 0, "total": 0, "fraction": 0.0,
                    "eta_s": 0.0, "queue_depth": queue_depth}
        elapsed = time.monotonic() - run.started
        per_step = elapsed / run.step if run.step else self._batch_seconds / max(run.steps, 1)
        return {"state": "running", "jobs": [job.id for job in run.jobs], "step": run.step,
                "total": run.steps, "fraction": run.step / run.steps,
                "eta_s": round(per_step * (run.steps - run.step), 3), "queue_depth": queue_depth}

    # --- the worker --------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._control or self._stopping,
                                    timeout=self._idle_wait())
                control = self._control.popleft() if self._control else None
                slots = self._take_batch() if control is None and self._queue else None
                if control is None and slots is None and self._stopping:
                    return
            if control is not None:
                _run_control(*control)
            elif slots:
                self._run_batch(slots)
            try:
                self._housekeeping()
            except Exception:  # e.g. outputs on a vanished disk; retried later, never fatal
                log.exception("housekeeping failed")

    def _take_batch(self) -> list[_Slot]:
        """The head job's images plus compatible queued jobs' images, up to max_batch (lock held)."""
        for job in [job for job in self._queue if job.done]:  # cancelled via Job.cancel()
            self._queue.remove(job)
        if not self._queue:
            return []
        if self._queue[0].task is not None:  # edits and upscales run alone
            return [(self._queue.popleft(), 0)]
        key = self._queue[0].request.batch_key()
        slots: list[_Slot] = []
        for job in list(self._queue):
            if job.task is not None or job.request.batch_key() != key:
                continue
            take = min(job.request.n - job._scheduled, self.config.engine.max_batch - len(slots))
            slots += [(job, job._scheduled + i) for i in range(take)]
            job._scheduled += take
            if job._scheduled == job.request.n:
                self._queue.remove(job)
            if len(slots) == self.config.engine.max_batch:
                break
        return slots

    def _run_batch(self, slots: list[_Slot]) -> None:
        if slots[0][0].task is not None:
            self._run_task(slots[0][0])
            return
        jobs = list(dict.fromkeys(job for job, _ in slots))
        request = jobs[0].request
        for job in jobs:
            job._start(len(slots))
        with self._cond:
            self._run = _Run(jobs, request.steps or 0)
        started = time.perf_counter()
        try:
            loaded = self._ensure_loaded(request.model or "")
            images, timing = self._call_pipeline(loaded, slots)
        except _Interrupted:
            log.info("batch of %d image(s) interrupted: every job in it was cancelled", len(slots))
            return
        except Exception as e:  # one failing batch must never take the worker down
            log.exception("batch of %d image(s) for %s failed", len(slots), request.model)
            message = str(e) if isinstance(e, PennelloError) else f"{type(e).__name__}: {e}"
            for job in jobs:
                job._finish("failed", message)
            return
        finally:
            with self._cond:
                self._run = None
        self._count_call(started, len(slots))
        self._saver.submit(self._save_batch, loaded, slots, images, timing)

    def _run_task(self, job: Job) -> None:
        """On the worker: run an edit's or upscale's task, then hand its pictures to the saver."""
        job._start(job.request.n)
        with self._cond:
            self._run = _Run([job], job.total_steps)
        started = time.perf_counter()

        def on_step(images: int = 1) -> None:
            job._advance(images)
            run = self._run
            if run is not None:
                run.step = job.step
            if job.done:
                raise _Interrupted

        try:
            loaded = self._ensure_loaded(job.request.model or "")
            images = job.task.run(loaded, on_step)
            loaded.last_used = time.monotonic()
        except _Interrupted:
            log.info("%s job %s interrupted: cancelled", job.kind, job.id)
            return
        except Exception as e:  # a failing edit must never take the worker down
            log.exception("%s job %s failed", job.kind, job.id)
            job._finish("failed", str(e) if isinstance(e, PennelloError) else f"{type(e).__name__}: {e}")
            return
        finally:
            with self._cond:
                self._run = None
        self._count_call(started, len(images))
        self._saver.submit(self._save_task, job, loaded, images)

    def _count_call(self, started: float, images: int) -> None:
        """Stats, and the moving average of a device call's seconds that Retry-After is based on."""
        seconds = time.perf_counter() - started
        self._batch_seconds = seconds if not self._batch_seconds else 0.8 * self._batch_seconds + 0.2 * seconds
        self.stats["pipeline_calls"] += 1
        self.stats["images"] += images

    def _save_task(self, job: Job, loaded: _Loaded, images: list[Any]) -> None:
        """On the saver thread: save a task's pictures (with the post-steps) and finish its job."""
        for index, image in enumerate(images):
            if job.done:  # cancelled meanwhile
                return
            try:
                saved = job.task.save(self, loaded, image, index)
            except Exception as e:  # e.g. a full disk: fail this job, keep serving
                log.exception("saving an image of job %s failed", job.id)
                job._finish("failed", f"could not save the image: {e}")
                return
            if saved is not None:
                job._add_image(saved)
        if not job.done and images and not job.images:  # every picture handed back on the task
            job.step = job.total_steps
            job._finish("done")
        elif not job.done:  # the task made fewer pictures than asked: say so rather than hang
            job._finish("failed", f"{len(images)} of {job.request.n} picture(s) were made")

    def _call_pipeline(self, loaded: _Loaded, slots: list[_Slot]) -> tuple[list[Any], dict[str, float]]:
        """One diffusers call for the whole batch; returns PIL images and per-stage seconds."""
        request = slots[0][0].request
        jobs = list(dict.fromkeys(job for job, _ in slots))
        per_job = {job: sum(1 for j, _ in slots if j is job) for job in jobs}
        marks: dict[str, float] = {"start": time.perf_counter()}

        def on_denoiser(*_: Any) -> None:
            marks.setdefault("denoise", time.perf_counter())

        def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            marks["decode"] = time.perf_counter()
            if self._run is not None:
                self._run.step = step + 1
            for job, count in per_job.items():
                job._advance(count)
            if all(job.done for job in jobs):
                raise _Interrupted
            return {}

        negatives = [job.request.negative_prompt for job, _ in slots]
        denoiser = getattr(loaded.pipe, loaded.family.denoiser)
        hook = denoiser.register_forward_pre_hook(on_denoiser)
        try:
            # CPU generators: the same seed gives the same picture on every device.
            result = loaded.pipe(
                prompt=[job.request.prompt for job, _ in slots],
                negative_prompt=negatives if any(negatives) else None,
                width=request.width, height=request.height, num_inference_steps=request.steps,
                guidance_scale=request.guidance, num_images_per_prompt=1,
                generator=[torch.Generator("cpu").manual_seed(job.seeds[i]) for job, i in slots],
                callback_on_step_end=on_step_end, output_type="pil")
        finally:
            hook.remove()
        end = time.perf_counter()
        denoise_at = marks.get("denoise", marks["start"])
        decode_at = marks.get("decode", denoise_at)
        timing = {"encode": denoise_at - marks["start"], "denoise": decode_at - denoise_at,
                  "decode": end - decode_at}
        loaded.last_used = time.monotonic()
        return result.images, timing

    def _save_batch(self, loaded: _Loaded, slots: list[_Slot], images: list[Any],
                    timing: dict[str, float]) -> None:
        """On the saver thread: encode and write each picture, then finish jobs that are complete.

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
                saved = self.save_output(image, _record(job, index, loaded), job.request.format,
                                         enhance=job.request.enhance, durable=False)
            except Exception as e:  # e.g. a full disk: fail this job, keep serving
                log.exception("saving an image of job %s failed", job.id)
                job._finish("failed", f"could not save the image: {e}")
                continue
            written.append(saved.path)
            job._add_image(saved)
        timing["save"] = time.perf_counter() - started
        try:
            make_durable(written)
        except OSError:
            log.exception("could not sync %d saved picture(s) to disk", len(written))
        timing["sync"] = time.perf_counter() - started - timing["save"]
        log.debug("batch of %d %dx%d x%d steps: %s", len(slots), slots[0][0].request.width,
                  slots[0][0].request.height, slots[0][0].request.steps,
                  " ".join(f"{stage}={seconds * 1000:.1f}ms" for stage, seconds in timing.items()))

    def _idle_wait(self) -> float:
        """Seconds until the next model expiry or outputs pruning is due."""
        due = [self._next_prune]
        keep = self.config.engine.keep_alive_s
        due += [m.last_used + keep for name, m in self._loaded.items()
                if name != self.config.engine.default_model]
        return max(0.05, min(due) - time.monotonic()) if self._next_prune else 0.05

    def _housekeeping(self) -> None:
        """Unload idle non-default models; prune old outputs once a day."""
        now = time.monotonic()
        keep = self.config.engine.keep_alive_s
        with self._cond:
            expired = [name for name, m in self._loaded.items()
                       if name != self.config.engine.default_model and now - m.last_used >= keep]
        for name in expired:
            log.info("%s idle for %ds: unloading", name, keep)
            self._drop(name)
        if now >= self._next_prune:
            self._next_prune = now + _PRUNE_EVERY_S
            self.outputs.prune(self.config.outputs.retention_days)


def _run_control(action: Callable[[], Any], future: Future) -> None:
    try:
        future.set_result(action())
    except Exception as e:  # handed to the caller, never fatal to the worker
        future.set_exception(e)


def _record(job: Job, index: int, loaded: _Loaded) -> dict[str, Any]:
    """The provenance embedded in each picture (also what the gallery lists)."""
    r = job.request
    return {"prompt": r.prompt, "negative_prompt": r.negative_prompt, "steps": r.steps,
            "guidance": r.guidance, "width": r.width, "height": r.height,
            "size": f"{r.width}x{r.height}", "seed": job.seeds[index], "model": r.model,
            "model_version": loaded.installed.version, "manifest_digest": loaded.installed.digest,
            "owner": r.owner, "job_id": job.id, "generator": f"pennello {__version__}"}


def _model_defaults(installed: Any, family: ModelFamily) -> dict[str, Any]:
    """Size, steps and guidance where a request does not say: the manifest's, else the family's."""
    return {**dict(family.defaults), **installed.manifest.pipeline.defaults}


def _param_bytes(pipe: Any) -> int:
    return sum(p.numel() * p.element_size() for component in pipe.components.values()
               if isinstance(component, torch.nn.Module) for p in component.parameters())
