"""Device profiles: how a model is placed and tuned for the machine it runs on.

A profile is chosen once per model load, from the device class and, on a GPU, from the VRAM that
is free at that moment. The GPU tiers follow the cards people own:

    ========  ============  =============================================================
    profile   free VRAM     what it turns on
    ========  ============  =============================================================
    large     >= 20 GB      everything on the GPU, nothing traded for memory
    16gb      >= 14 GB      VAE tiling (the 1024² decode is the peak), VAE slicing
    12gb      >= 10 GB      as 16gb
    8gb       <  10 GB      as 12gb, plus attention slicing
    ========  ============  =============================================================

In every tier a model that does not fit whole is offloaded: model offload (one component on
the GPU at a time) when its largest component fits, else sequential offload (layer by layer,
slow but it runs). So a 16 GB card (an RTX 4060 Ti) keeps an SDXL-class model whole, an 8 GB card
runs it with model offload, and FLUX.1 runs on either. Sizes come from the safetensors headers of
the verified files, before anything is loaded:

    >>> sdxl = ModelWeights({"unet": 2_567_463_684, "text_encoder": 123_060_480,
    ...                      "text_encoder_2": 694_659_841, "vae": 83_653_863})
    >>> plan = plan_for("cuda", sdxl, dtype_bytes=2, pixels=1024 * 1024, free_bytes=15 * GIB)
    >>> plan.profile, plan.offload, plan.vae_tiling
    ('16gb', 'none', True)
    >>> plan_for("cuda", sdxl, dtype_bytes=2, pixels=1024 * 1024, free_bytes=7.5 * GIB).offload
    'model'

On the CPU the profile sets the thread count: all cores but one, because torch's OpenMP workers
spin while waiting and a desktop's other busy program then stalls every step (measured in
``bench/bench_threads.py``: on 2 cores, 2 threads next to one busy process ran 3.1x slower
than 1 thread, while on an idle machine they were 16% faster).

Speed-ups (``torch.compile`` of the denoiser, channels-last memory format, fused QKV projections)
are part of the plan too. Each engine setting is ``on``, ``off`` or ``auto``; ``auto`` takes what
:data:`PROFILE_SPEED_UPS` lists for the chosen profile, which is nothing anywhere until
``bench/run_gpu.sh`` has measured a win on a real card:

    >>> plan_for("cuda", sdxl, 2, 1024 * 1024, free_bytes=78 * GIB, speed={"compile": "on"}).compile
    'default'
    >>> plan_for("cuda", sdxl, 2, 1024 * 1024, free_bytes=78 * GIB).compile is None
    True
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import struct
import typing
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, Mapping

from pennello.config import CompileMode, MemoryProfile, Toggle

log = logging.getLogger(__name__)

GIB = 1024**3
Offload = Literal["none", "model", "sequential"]
# Free VRAM at or above which a tier applies, largest first.
GPU_TIERS: tuple[tuple[str, float], ...] = (("large", 20 * GIB), ("16gb", 14 * GIB), ("12gb", 10 * GIB),
                                            ("8gb", 0.0))
COMPILE_CACHE = "torch-compile"  # Inductor's cache, under Paths.cache_dir (PENNELLO_HOME relocates it)
USABLE_FRACTION = 0.9  # of free VRAM: the CUDA context, allocator slack and the other process on the card
# Activation memory of one image while denoising and decoding with VAE tiling, estimated as
# BASE + PER_MEGAPIXEL x megapixels x batch; to be calibrated against bench_pipelines' peak rows.
ACTIVATION_BASE = 0.5 * GIB
ACTIVATION_PER_MEGAPIXEL = 1.0 * GIB
SpeedUp = Literal["compile", "channels_last", "fuse_qkv", "cpu_bf16"]
# What each profile turns on where the engine setting is "auto". Nothing yet: no GPU has been lent
# to measure these, and each costs something (compile: minutes of warm-up per model and shape).
# Once bench/run_gpu.sh shows a win, turning one on is one line, e.g.
#     "large": frozenset({"compile", "channels_last"}),
PROFILE_SPEED_UPS: dict[str, frozenset[SpeedUp]] = {
    "cpu": frozenset(),
    "mps": frozenset(),
    "large": frozenset(),
    "16gb": frozenset(),
    "12gb": frozenset(),
    "8gb": frozenset(),
}
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass(frozen=True)
class ModelWeights:
    """Parameter counts of a pipeline's components (``unet``, ``text_encoder``, ...)."""

    params: dict[str, int]

    def total_bytes(self, dtype_bytes: int) -> int:
        return sum(self.params.values()) * dtype_bytes

    def largest_bytes(self, dtype_bytes: int) -> int:
        return max(self.params.values(), default=0) * dtype_bytes


@dataclass(frozen=True)
class Plan:
    """How one model is placed and tuned; ``describe()`` is what ``/api/ps`` shows."""

    profile: str
    device: str
    offload: Offload = "none"
    vae_tiling: bool = False
    vae_slicing: bool = False
    attention_slicing: bool = False
    cpu_threads: int | None = None
    reason: str = ""
    compile: CompileMode | None = None  # torch.compile mode of the denoiser; None: not compiled
    channels_last: bool = False
    fuse_qkv: bool = False
    cpu_bf16: bool = False  # generate calls under torch.autocast("cpu", bfloat16)
    warmup_s: float | None = None  # the load-time warm-up generation (compile), measured
    not_applied: tuple[str, ...] = ()  # speed-ups asked for that this model or placement cannot take
    backend: str | None = None  # what computes it: torch, openvino (daemon/engine/backends/)
    backend_device: str | None = None  # where that backend runs it, e.g. "AUTO: CPU" for OpenVINO
    backend_reason: str = ""  # why that backend, e.g. why OpenVINO could not serve this model
    openvino_weights: str | None = None  # the converted weights' precision (fp32, int8) on OpenVINO

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, False, "", ())}

    def without(self, speed_up: SpeedUp, why: str) -> "Plan":
        """This plan with one speed-up turned off, saying why (reported in ``/api/ps``)."""
        off = None if speed_up == "compile" else False
        return replace(self, **{speed_up: off}, not_applied=(*self.not_applied, f"{speed_up}: {why}"))


def read_weights(model_dir: Path) -> ModelWeights:
    """Parameter counts per component, from safetensors headers only (no tensor is read).

    A component stored in two precisions (``model.safetensors`` and ``model.fp16.safetensors``)
    is counted once.
    """
    params: dict[str, int] = {}
    for component in sorted(p for p in model_dir.iterdir() if p.is_dir()):
        seen: dict[str, int] = {}
        for file in sorted(component.glob("*.safetensors")):
            stem = file.name.replace(".fp16.", ".").replace(".bf16.", ".")
            seen.setdefault(stem, _safetensors_numel(file))
        if seen:
            params[component.name] = sum(seen.values())
    return ModelWeights(params)


def _safetensors_numel(path: Path) -> int:
    """Elements in a safetensors file, from its JSON header (8-byte little-endian length first).

    A malformed file counts as empty: loading it fails next, with the message that says so.
    """
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > path.stat().st_size - 8:
                return 0
            header = json.loads(f.read(length))
        return sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
    except (struct.error, ValueError, TypeError, KeyError, AttributeError):
        return 0


def gpu_tier(free_bytes: float) -> str:
    """The tier name for this much free VRAM."""
    return next(name for name, floor in GPU_TIERS if free_bytes >= floor)


def plan_for(device: str, weights: ModelWeights, dtype_bytes: int, pixels: int, free_bytes: float = 0.0,
             profile: MemoryProfile = "auto", cpu_threads: int = 0, batch: int = 1,
             speed: Mapping[str, Toggle] | None = None, compile_mode: CompileMode = "default",
             purpose: str = "generate") -> Plan:
    """Choose the placement and speed-ups of one model.

    Args:
        device: ``cuda``, ``mps`` or ``cpu``.
        weights: parameter counts per component (:func:`read_weights`).
        dtype_bytes: bytes per parameter on the device (2 for fp16/bf16, 4 for fp32).
        pixels: width x height the model will mostly draw at (its manifest default; an upscaler's
            input tile).
        free_bytes: free VRAM now (CUDA only).
        profile: ``engine.memory_profile``; ``auto`` picks the tier from ``free_bytes``.
        cpu_threads: ``engine.cpu_threads``; 0 means all cores but one.
        batch: images per pipeline call the activations must hold.
        speed: ``engine.compile``, ``engine.channels_last``, ``engine.fuse_qkv``,
            ``engine.cpu_bf16`` by name; a missing one is ``auto``.
        compile_mode: ``engine.compile_mode``.
        purpose: the model family's (``generate``, ``edit``, ``upscale``).
    """
    if purpose == "upscale":  # the (x4) upscaler denoises and decodes at 4x its input's sides
        pixels *= 16
    plan = _placement(device, weights, dtype_bytes, pixels, free_bytes, profile, cpu_threads, batch)
    chosen = choose_speed_ups(plan.profile, speed or {})
    plan = replace(plan, compile=compile_mode if "compile" in chosen else None,
                   channels_last="channels_last" in chosen, fuse_qkv="fuse_qkv" in chosen,
                   cpu_bf16="cpu_bf16" in chosen)
    if plan.cpu_bf16 and device != "cpu":
        plan = plan.without("cpu_bf16", "for CPUs only (GPUs draw in half precision already)")
    if plan.cpu_bf16 and not cpu_has_bf16():  # emulated bf16 would be slower than fp32
        plan = plan.without("cpu_bf16", "this CPU has no bf16 instructions (AVX512-BF16 or AMX)")
    if plan.cpu_bf16 and purpose != "generate":
        plan = plan.without("cpu_bf16", f"applied to generate calls only, not to {purpose} models")
    if plan.compile and purpose != "generate":  # the load-time warm-up would need input pictures
        plan = plan.without("compile", f"not for {purpose} models")
    if plan.compile and plan.offload != "none":  # offload hooks move weights under the compiled graph
        plan = plan.without("compile", f"not with {plan.offload} offload")
    if plan.fuse_qkv and plan.attention_slicing:  # sliced attention replaces the fused processors
        plan = plan.without("fuse_qkv", "not with attention slicing")
    return plan


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX), as torch sees it."""
    import torch

    return any(getattr(torch.cpu, probe, lambda: False)() for probe in
               ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def cpu_autocast(plan: Plan | None) -> contextlib.AbstractContextManager[Any]:
    """The context a generate call runs in: bf16 autocast where ``plan.cpu_bf16``, else nothing."""
    if plan is None or not plan.cpu_bf16:
        return contextlib.nullcontext()
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16)


def choose_speed_ups(profile: str, settings: Mapping[str, Toggle]) -> frozenset[SpeedUp]:
    """The speed-ups set ``on``, plus those the profile turns on that are left ``auto``."""
    by_profile = PROFILE_SPEED_UPS.get(profile, frozenset())
    return frozenset(name for name in typing.get_args(SpeedUp)
                     if (setting := settings.get(name, "auto")) == "on" or (setting == "auto" and name in by_profile))


def _placement(device: str, weights: ModelWeights, dtype_bytes: int, pixels: int, free_bytes: float,
               profile: MemoryProfile, cpu_threads: int, batch: int) -> Plan:
    """The memory side of :func:`plan_for`: tier, offload, savers, threads."""
    if device == "cpu":
        return Plan("cpu", device, cpu_threads=cpu_threads or default_cpu_threads(),
                    reason="CPU: threads leave one core to the rest of the machine")
    if device == "mps":  # unified memory; Apple recommends attention slicing below 64 GB
        return Plan("mps", device, attention_slicing=True, reason="Apple GPU: attention slicing")
    tier = gpu_tier(free_bytes) if profile == "auto" else profile
    usable = USABLE_FRACTION * free_bytes
    activations = ACTIVATION_BASE + ACTIVATION_PER_MEGAPIXEL * batch * pixels / 1e6
    total, largest = weights.total_bytes(dtype_bytes), weights.largest_bytes(dtype_bytes)
    if total + activations <= usable:
        offload: Offload = "none"
    elif largest + activations <= usable:
        offload = "model"
    else:
        offload = "sequential"
    reason = (f"{free_bytes / GIB:.1f} GiB free; model {total / GIB:.1f} GiB (largest part "
              f"{largest / GIB:.1f} GiB) + ~{activations / GIB:.1f} GiB working memory")
    small = tier != "large"
    return Plan(tier, device, offload=offload, vae_tiling=small, vae_slicing=small,
                attention_slicing=tier == "8gb", reason=reason)


def default_cpu_threads() -> int:
    """All of torch's threads (one per physical core) but one, never fewer than one."""
    import torch

    return max(1, torch.get_num_threads() - 1)


def apply_plan(pipe: Any, plan: Plan) -> Any:
    """Place a pipeline loaded on the CPU onto ``plan.device`` with the plan's memory savers."""
    import torch

    if plan.cpu_threads:
        torch.set_num_threads(plan.cpu_threads)
    if plan.offload == "model":
        pipe.enable_model_cpu_offload(device=plan.device)
    elif plan.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=plan.device)
    else:
        pipe = pipe.to(plan.device)
    vae = getattr(pipe, "vae", None)
    if plan.vae_tiling and hasattr(vae, "enable_tiling"):
        vae.enable_tiling()
    if plan.vae_slicing and hasattr(vae, "enable_slicing"):
        vae.enable_slicing()
    if plan.attention_slicing and hasattr(pipe, "enable_attention_slicing"):
        pipe.enable_attention_slicing()
    return pipe


def apply_speed_ups(pipe: Any, plan: Plan, denoiser: str, compile_cache: Path) -> Plan:
    """Fuse QKV, switch to channels-last and compile the denoiser, as ``plan`` says.

    Done on the CPU before :func:`apply_plan` places the pipeline (moving keeps the memory format),
    and in this order because compiling traces the modules as they will run. Compiling is lazy:
    the caller's first generation (the engine's warm-up at load) pays for it.

    Args:
        denoiser: the pipeline attribute of the denoising network (``unet``, ``transformer``).
        compile_cache: where Inductor keeps compiled graphs, so the next start reuses them.

    Returns:
        The plan as applied: a speed-up this pipeline cannot take is off, with a note.
    """
    import torch

    if plan.fuse_qkv:
        plan = _fuse_qkv(pipe, plan, denoiser)
    if plan.channels_last:
        for name in (denoiser, "vae"):
            module = getattr(pipe, name, None)
            if isinstance(module, torch.nn.Module):
                module.to(memory_format=torch.channels_last)
    if plan.compile:
        use_compile_cache(compile_cache)
        module = getattr(pipe, denoiser)
        # The forward, not the module: forward hooks (the engine's per-stage timing) stay outside
        # the compiled graph and can come and go without a recompile.
        module.forward = torch.compile(module.forward, mode=plan.compile)
    return plan


def undo_compile(pipe: Any, denoiser: str) -> None:
    """The denoiser's own, uncompiled forward again (after a failed warm-up)."""
    del getattr(pipe, denoiser).forward  # the instance attribute apply_speed_ups set


def _fuse_qkv(pipe: Any, plan: Plan, denoiser: str) -> Plan:
    """The pipeline's own ``fuse_qkv_projections`` (denoiser and VAE), else the denoiser's."""
    target = pipe if hasattr(pipe, "fuse_qkv_projections") else getattr(pipe, denoiser)
    if not hasattr(target, "fuse_qkv_projections"):
        return plan.without("fuse_qkv", f"{type(pipe).__name__} has no fused projections")
    try:
        target.fuse_qkv_projections()
    except (ValueError, NotImplementedError) as e:  # e.g. added-KV attention, a non-KL VAE
        return plan.without("fuse_qkv", str(e))
    return plan


def use_compile_cache(directory: Path) -> None:
    """Point Inductor's on-disk caches (FX graphs, AOT autograd, Triton kernels) at ``directory``.

    Inductor reads the variable each time it looks something up, so this takes effect for the
    next compile; by default it would use a per-user folder in /tmp, lost at reboot.
    """
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory)


def free_vram(device: str) -> float:
    """Free bytes on the current CUDA device; 0 elsewhere."""
    if device != "cuda":
        return 0.0
    import torch

    free, _total = torch.cuda.mem_get_info()
    return float(free)
