"""Which device and number format the engine computes in.

``auto`` takes the best accelerator there is; an explicit choice that this machine lacks is a
configuration error rather than a silent fall-back to the CPU:

    >>> pick_device("cpu")
    'cpu'
    >>> from pennello.daemon.engine.families import get_family
    >>> pick_dtype("cpu", get_family("sd"))
    torch.float32
"""

from __future__ import annotations

import torch

from pennello.config import Device
from pennello.errors import ConfigError

from .families import ModelFamily


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
