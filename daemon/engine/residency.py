"""Model residency: which models sit in memory, on which device, and for how long.

Loading a model means reading its weights, planning where they go (memory tier, offload,
threads, speed-ups; see :mod:`.profiles`), placing them, and — when compiled — generating once so
that compiling happens before the first request. A loaded model stays warm while used: the
default model always, any other until it has been idle ``engine.keep_alive_s`` seconds. A request
may choose otherwise for the model it uses, as Ollama's ``keep_alive`` does (:func:`parse_keep_alive`:
``"10m"``, seconds, ``0`` = unload once idle, ``-1`` = keep); that choice holds until the next one
or until the model is unloaded.

Loading and unloading run on the engine's device thread (it owns the device); the lookups
(``models``, ``ps``, ``installed``) are safe from any thread. Every change is told to the
listeners (LAN advertising re-announces the model list):

    >>> residency = Residency(threading.Condition(), config, paths, store, "cpu")  # doctest: +SKIP
    >>> residency.ensure_loaded("pennello-tiny").pipe  # on the device thread  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, get_args

import torch

from pennello.config import Config
from pennello.errors import RequestError
from pennello.paths import Paths

from .backends import attach as attach_backend
from .devices import pick_dtype
from .families import ModelFamily, get_family
from .profiles import (COMPILE_CACHE, Plan, SpeedUp, apply_plan, apply_speed_ups, free_vram, plan_for,
                       read_weights, undo_compile)
from .resolve import model_defaults

log = logging.getLogger(__name__)

# Go's duration syntax, as Ollama takes it: "1h30m", "10m", "45s", "500ms"; a bare number is seconds.
_DURATION = re.compile(r"(-?)((?:\d+(?:\.\d*)?|\.\d+)(?:h|ms|m|s))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_keep_alive(value: str | int | float) -> float | None:
    """Seconds a model stays loaded after its last use, from a duration (``"10m"``, ``"1h30m"``)
    or a number of seconds; ``None`` for a negative value: keep it loaded.

    >>> parse_keep_alive("1h30m"), parse_keep_alive(0), parse_keep_alive("-1")
    (5400.0, 0.0, None)

    Raises:
        RequestError: anything else (``field`` is ``keep_alive``).
    """
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        match = _DURATION.fullmatch(text)
        if match is None:
            raise RequestError(f"keep_alive must be a duration such as '10m', '1h30m' or '45s', or a "
                               f"number of seconds (0: unload once idle, -1: keep loaded); got {text!r}",
                               field="keep_alive") from None
        seconds = sum(float(n) * _UNIT_S[unit] for n, unit in _DURATION_PART.findall(text))
        seconds = -seconds if match.group(1) else seconds
    if not math.isfinite(seconds):
        raise RequestError(f"keep_alive must be a finite number of seconds; got {text!r}", field="keep_alive")
    return None if seconds < 0 else seconds


@dataclass
class Loaded:
    """A model in memory, ready for pipeline calls."""

    installed: Any  # pennello.installer.InstalledModel
    family: ModelFamily
    pipe: Any
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    param_bytes: int = 0
    derived: dict[str, Any] = field(default_factory=dict)  # img2img/inpaint pipes sharing `pipe`'s weights
    plan: Plan | None = None  # placement and memory savers (daemon/engine/profiles.py)

    def touch(self) -> None:
        """Just used: the keep-alive counts from now."""
        self.last_used = time.monotonic()


class Residency:
    """The loaded models. ``loaded`` is guarded by ``cond``, the lock the engine's parts share."""

    def __init__(self, cond: threading.Condition, config: Config, paths: Paths, store: Any,
                 device: str) -> None:
        self.cond, self.config, self.paths, self.store, self.device = cond, config, paths, store, device
        self.loaded: dict[str, Loaded] = {}
        self.keep_alive: dict[str, float | None] = {}  # per-model choices of requests (seconds; None: keep)
        self._listeners: list[Callable[[], None]] = []

    # --- lookups, from any thread ----------------------------------------------------------------

    def installed(self, name: str) -> Any:
        """The installed model of ``name``, from memory when it is loaded, else from the store.

        Raises:
            ModelNotFoundError: not installed.
        """
        with self.cond:
            loaded = self.loaded.get(name)
        return loaded.installed if loaded else self.store.get(name)

    def models(self) -> list[dict[str, Any]]:
        """Installed models, with whether each is loaded and which is the default."""
        with self.cond:
            loaded = set(self.loaded)
        return [{"name": m.name, "version": m.version, "family": m.manifest.pipeline.family,
                 "pipeline": m.manifest.pipeline.cls, "defaults": dict(m.manifest.pipeline.defaults),
                 "description": m.manifest.description, "license": m.manifest.license,
                 "digest": m.digest, "loaded": m.name in loaded,
                 "default": m.name == self.config.engine.default_model}
                for m in self.store.installed()]

    def ps(self) -> list[dict[str, Any]]:
        """Loaded models with their memory use and when they will be unloaded."""
        with self.cond:
            return [self.describe(loaded) for loaded in self.loaded.values()]

    def describe(self, loaded: Loaded) -> dict[str, Any]:
        """One loaded model as ``ps`` lists it (call with ``cond`` held)."""
        name = loaded.installed.name
        keep = self._keep(name)
        return {"name": name, "version": loaded.installed.version, "family": loaded.family.name,
                "device": self.device, "dtype": str(loaded.pipe.dtype).removeprefix("torch."),
                "param_bytes": loaded.param_bytes, "loaded_at": loaded.loaded_at,
                "idle_s": round(time.monotonic() - loaded.last_used, 3),
                "expires_in_s": None if keep is None else
                max(0.0, round(keep - (time.monotonic() - loaded.last_used), 3)),
                "cuda_memory_allocated": torch.cuda.memory_allocated() if self.device == "cuda" else None,
                "placement": loaded.plan.describe() if loaded.plan else None}

    def set_keep_alive(self, name: str, seconds: float | None) -> None:
        """Keep ``name`` loaded ``seconds`` after its last use from now on (None: always); safe
        from any thread: the device thread wakes up to reconsider its next unload."""
        with self.cond:
            self.keep_alive[name] = seconds
            self.cond.notify_all()

    def _keep(self, name: str) -> float | None:
        """Seconds ``name`` stays loaded once idle; None: until asked (call with ``cond`` held)."""
        if name in self.keep_alive:
            return self.keep_alive[name]
        return None if name == self.config.engine.default_model else self.config.engine.keep_alive_s

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after a model is loaded or unloaded (on the device thread: it must return
        at once; errors are logged and ignored)."""
        self._listeners.append(listener)

    # --- changes, on the device thread ------------------------------------------------------------------

    def ensure_loaded(self, name: str) -> Loaded:
        """The model of ``name``, loaded now unless it is already; counts as a use.

        Raises:
            ModelNotFoundError: not installed.  StoreError: its files do not load.
        """
        with self.cond:
            loaded = self.loaded.get(name)
        if loaded is None:
            loaded = self._load(name)
            with self.cond:
                self.loaded[name] = loaded
            self._changed()
        loaded.touch()
        return loaded

    def drop(self, name: str) -> bool:
        """Unload a model; returns whether it was loaded."""
        with self.cond:
            loaded = self.loaded.pop(name, None)
            self.keep_alive.pop(name, None)  # a model loaded again starts from the defaults
        if loaded is None:
            return False
        del loaded
        if self.device == "cuda":
            torch.cuda.empty_cache()
        log.info("unloaded %s", name)
        self._changed()
        return True

    def clear(self) -> None:
        """Forget every model at shutdown (no listeners told: nobody is advertising any more)."""
        with self.cond:
            self.loaded.clear()

    def next_expiry(self) -> float | None:
        """When (``time.monotonic``) the next model's keep-alive runs out (``cond`` held)."""
        keeps = {name: self._keep(name) for name in self.loaded}
        due = [m.last_used + keep for name, m in self.loaded.items() if (keep := keeps[name]) is not None]
        return min(due, default=None)

    def evict_idle(self) -> None:
        """Unload every model idle for its keep-alive or longer (the default model: only when a
        request chose a keep-alive for it)."""
        now = time.monotonic()
        with self.cond:
            keeps = {name: self._keep(name) for name in self.loaded}
            expired = [name for name, m in self.loaded.items()
                       if (keep := keeps[name]) is not None and now - m.last_used >= keep]
        for name in expired:
            log.info("%s idle for %gs: unloading", name, keeps[name])
            self.drop(name)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                log.exception("models listener %r failed", listener)

    def _load(self, name: str) -> Loaded:
        """Load, tune and place a model, then warm it up when it was compiled."""
        started = time.perf_counter()
        installed = self.store.get(name)
        family = get_family(installed.manifest.pipeline.family)
        dtype = pick_dtype(self.device, family)
        plan = self._plan(installed, family, dtype)
        # Loaded and tuned on the CPU, then placed: offloading wants the weights on the CPU first.
        pipe = family.load(installed.manifest.pipeline.cls, installed.path, "cpu", dtype)
        plan = apply_speed_ups(pipe, plan, family.denoiser, self.paths.cache_dir / COMPILE_CACHE)
        pipe = apply_plan(pipe, plan)
        plan = attach_backend(pipe, plan, installed, family.name, self.paths.cache_dir,
                              self.config.engine.openvino_weights)
        loaded = Loaded(installed, family, pipe)
        loaded.plan = plan = _warm_up(loaded, plan) if plan.compile else plan
        loaded.param_bytes = _param_bytes(loaded.pipe)
        log.info("loaded %s v%d on %s in %.2fs (%.1f MB of weights); placement %s", name, installed.version,
                 self.device, time.perf_counter() - started, loaded.param_bytes / 1e6, plan.describe())
        return loaded

    def _plan(self, installed: Any, family: ModelFamily, dtype: torch.dtype) -> Plan:
        """Where and how this model runs here: memory tier and offload on a GPU, threads on a CPU,
        and the speed-ups the engine settings and the profile ask for."""
        defaults = model_defaults(installed, family)
        engine = self.config.engine
        return plan_for(self.device, read_weights(installed.path), dtype.itemsize,
                        pixels=defaults["width"] * defaults["height"], free_bytes=free_vram(self.device),
                        profile=engine.memory_profile, cpu_threads=engine.cpu_threads,
                        speed={name: getattr(engine, name) for name in get_args(SpeedUp)},
                        compile_mode=engine.compile_mode, purpose=family.purpose)


def _warm_up(loaded: Loaded, plan: Plan) -> Plan:
    """Generate once at the model's default size, batch 1, so that compiling happens now rather
    than in the first request (another size or batch size still compiles once, when first asked).

    Returns:
        The plan with the warm-up's seconds, or without compile when it failed (e.g. no C++
        compiler for Inductor): the model then runs uncompiled rather than not at all.
    """
    defaults = model_defaults(loaded.installed, loaded.family)
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


def _param_bytes(pipe: Any) -> int:
    return sum(p.numel() * p.element_size() for component in pipe.components.values()
               if isinstance(component, torch.nn.Module) for p in component.parameters())
