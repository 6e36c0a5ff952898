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
"""

from __future__ import annotations

import json
import logging
import math
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pennello.config import MemoryProfile

log = logging.getLogger(__name__)

GIB = 1024**3
Offload = Literal["none", "model", "sequential"]
# Free VRAM at or above which a tier applies, largest first.
GPU_TIERS: tuple[tuple[str, float], ...] = (("large", 20 * GIB), ("16gb", 14 * GIB), ("12gb", 10 * GIB),
                                            ("8gb", 0.0))
USABLE_FRACTION = 0.9  # of free VRAM: the CUDA context, allocator slack and the other process on the card
# Activation memory of one image while denoising and decoding with VAE tiling, estimated as
# BASE + PER_MEGAPIXEL x megapixels x batch; to be calibrated against bench_pipelines' peak rows.
ACTIVATION_BASE = 0.5 * GIB
ACTIVATION_PER_MEGAPIXEL = 1.0 * GIB
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

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, False, "")}


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
             profile: MemoryProfile = "auto", cpu_threads: int = 0, batch: int = 1) -> Plan:
    """Choose the placement of one model.

    Args:
        device: ``cuda``, ``mps`` or ``cpu``.
        weights: parameter counts per component (:func:`read_weights`).
        dtype_bytes: bytes per parameter on the device (2 for fp16/bf16, 4 for fp32).
        pixels: width x height the model will mostly draw at (its manifest default).
        free_bytes: free VRAM now (CUDA only).
        profile: ``engine.memory_profile``; ``auto`` picks the tier from ``free_bytes``.
        cpu_threads: ``engine.cpu_threads``; 0 means all cores but one.
        batch: images per pipeline call the activations must hold.
    """
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
    log.info("placement of %s: %s", type(pipe).__name__, plan.describe())
    return pipe


def free_vram(device: str) -> float:
    """Free bytes on the current CUDA device; 0 elsewhere."""
    if device != "cuda":
        return 0.0
    import torch

    free, _total = torch.cuda.mem_get_info()
    return float(free)
