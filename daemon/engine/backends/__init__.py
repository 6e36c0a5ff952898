"""Backends: what computes a loaded pipeline's denoiser and decoder, chosen per model at load.

``torch`` is diffusers as it is, on whatever device the engine picked; it serves every family.
``openvino`` (:mod:`.openvino_backend`, needs ``pip install 'pennello[cpu]'``) runs the UNet and
the VAE decoder of SD and SDXL models as OpenVINO models when there is no CUDA or Apple GPU. The
choice is automatic; whenever OpenVINO cannot serve a model the torch pipeline serves it and the
reason is logged and shown in ``/api/ps`` (``placement.backend_reason``):

    >>> from pennello.daemon.engine.profiles import Plan
    >>> choose(Plan("16gb", "cuda"), "sd", unet_params=865_910_724)
    ('torch', 'cuda: diffusers on torch')
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..profiles import Plan, read_weights
from .decoders import check_tiny_decoder, decoder_applied, preview_decoder

__all__ = ["attach", "check_tiny_decoder", "choose", "decoder_applied", "preview_decoder"]

log = logging.getLogger(__name__)

# Families whose pipelines call the UNet as the OpenVINO backend converts it (sample, timestep,
# text embeddings, and SDXL's added conditioning); FLUX's transformer is not converted yet.
OPENVINO_FAMILIES = frozenset({"sd", "sdxl"})
# Below this many UNet parameters torch is as fast and converting (seconds to minutes at first
# load) does not pay: the embedded 64x64 model (2.6M) stays on torch.
MIN_OPENVINO_PARAMS = 50_000_000


def choose(plan: Plan, family: str, unet_params: int) -> tuple[str, str]:
    """``(backend, why)`` for a model of ``family`` placed as ``plan``."""
    if plan.device != "cpu":
        return "torch", f"{plan.device}: diffusers on torch"
    if importlib.util.find_spec("openvino") is None:
        return "torch", "OpenVINO is not installed (pip install 'pennello[cpu]')"
    if family not in OPENVINO_FAMILIES:
        return "torch", f"OpenVINO serves {', '.join(sorted(OPENVINO_FAMILIES))} models; {family} runs on torch"
    if plan.compile:
        return "torch", "torch.compile was asked for (engine.compile)"
    if unet_params < MIN_OPENVINO_PARAMS:
        return "torch", f"small model ({unet_params / 1e6:.1f}M UNet parameters): torch is as fast"
    return "openvino", "CPU without a CUDA GPU: OpenVINO"


def attach(pipe: Any, plan: Plan, installed: Any, family: str, cache: Path, weights: str = "fp32") -> Plan:
    """Serve ``pipe`` with the backend :func:`choose` picks, converting it when that is OpenVINO
    with ``weights`` (``engine.openvino_weights``; int8 without NNCF installed converts fp32 and
    says so in the reason).

    A model OpenVINO cannot convert stays on torch, with the converter's error as the reason
    (logged as a warning): the model still serves, only slower.

    Returns:
        ``plan`` with ``backend``, ``backend_device`` and ``backend_reason`` filled in.
    """
    backend, why = choose(plan, family, read_weights(installed.path).params.get("unet", 0))
    if backend == "openvino":
        from . import openvino_backend

        if weights == "int8" and importlib.util.find_spec("nncf") is None:
            weights, why = "fp32", f"{why}; fp32 weights: engine.openvino_weights = int8 needs NNCF (pip install nncf)"
            log.warning("%s", why)
        try:
            devices = openvino_backend.convert(pipe, installed.name, installed.digest, cache, weights=weights)
            return replace(plan, backend="openvino", backend_device=devices, backend_reason=why,
                           openvino_weights=weights)
        except Exception as e:  # noqa: BLE001 — any converter failure: the torch pipeline serves
            why = f"OpenVINO could not convert {installed.name}, torch serves it: {type(e).__name__}: {e}"
            log.warning("%s", why)
    return replace(plan, backend="torch", backend_device=plan.device, backend_reason=why)
