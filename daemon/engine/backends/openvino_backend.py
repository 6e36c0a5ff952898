"""The OpenVINO backend: a diffusers pipeline whose UNet and VAE decoder run as OpenVINO models.

On a machine without a CUDA GPU the denoiser and the VAE decoder are most of a picture's time,
and OpenVINO runs them two to five times faster than eager torch on the same cores (bf16 where
the CPU has AVX512-BF16/AMX; see docs/performance.md). The rest of the pipeline (tokenizer, text
encoder, scheduler, the image processor) stays diffusers' own, so samplers, callbacks and seeds
work exactly as on the torch path: :class:`OVModule` is a ``torch.nn.Module`` that the pipeline
calls as it would call the UNet or the decoder.

Conversion (``openvino.convert_model`` tracing the torch modules) happens on the first load of a
model and is cached under ``<cache>/openvino/<model>/``, keyed by the digest of the model's
verified files and the library versions: a cache whose key does not match is converted again,
never used. Each converted model is reshaped to static shapes on first use of a size and batch
(static shapes let the CPU plugin pick its fastest kernels); the last few are kept compiled.

OpenVINO's converter reports usage to Intel unless told otherwise (its telemetry package sends
without asking when no consent file exists); :func:`import_openvino` blocks that package first,
so the converter takes its built-in no-op stub and nothing ever leaves the machine.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)

DEVICE = "AUTO"  # the CPU, plus an Intel iGPU or NPU where one is present
KEPT_SHAPES = 4  # compiled static-shape variants per converted module (sizes x batch sizes in use)
CACHE_DIR = "openvino"  # under Paths.cache_dir


def import_openvino() -> Any:
    """``openvino``, with its telemetry package blocked so the converter uses its no-op stub.

    Raises:
        ImportError: OpenVINO is not installed (``pip install 'pennello[cpu]'``).
    """
    if "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # import fails: stub used
    import openvino

    return openvino


class _UNetCall(torch.nn.Module):
    """The UNet's forward with the three tensors SD-class pipelines pass, for tracing."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


class OVModule(torch.nn.Module):
    """A converted module the pipeline calls like the torch one it replaces.

    ``config`` and the other attributes diffusers reads are the original's; the call runs the
    OpenVINO model compiled for the inputs' shapes (compiled on first use of a shape).
    """

    def __init__(self, core: Any, model: Any, original: torch.nn.Module,
                 to_inputs: Callable[..., list[Any]], wrap: Callable[[torch.Tensor], Any]) -> None:
        super().__init__()
        self._core, self._model, self._to_inputs, self._wrap = core, model, to_inputs, wrap
        self._compiled: OrderedDict[tuple[tuple[int, ...], ...], Any] = OrderedDict()
        self.config = getattr(original, "config", None)
        self.compiled_shapes = 0  # how many times a shape was compiled (reported, and tested)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32  # what it takes and returns; OpenVINO picks its own inside

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        inputs = [t.detach().to("cpu", torch.float32).numpy() for t in self._to_inputs(*args, **kwargs)]
        out = self._for_shapes(tuple(tuple(a.shape) for a in inputs))(inputs)[0]
        return self._wrap(torch.from_numpy(out))

    def _for_shapes(self, shapes: tuple[tuple[int, ...], ...]) -> Any:
        compiled = self._compiled.get(shapes)
        if compiled is None:
            self._model.reshape({i: list(shape) for i, shape in enumerate(shapes)})
            compiled = self._core.compile_model(self._model, DEVICE, {"PERFORMANCE_HINT": "LATENCY"})
            self.compiled_shapes += 1
            if len(self._compiled) >= KEPT_SHAPES:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(shapes)
        self._compiled[shapes] = compiled
        return compiled


def _unet_inputs(sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor | None = None,
                 **_: Any) -> list[torch.Tensor]:
    """The UNet's call as SD-class pipelines make it, as the converted model's three inputs."""
    steps = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1).expand(sample.shape[0])
    return [sample, steps, encoder_hidden_states]


def _unet_output(out: torch.Tensor) -> tuple[torch.Tensor]:
    return (out,)  # diffusers calls with return_dict=False and takes [0]


def _decoder_inputs(z: torch.Tensor, *_: Any, **__: Any) -> list[torch.Tensor]:
    return [z]


def cache_key(digest: str) -> dict[str, str]:
    """What a converted model was made from: the verified files and the libraries that converted it."""
    import diffusers

    openvino = import_openvino()
    return {"files": digest, "openvino": openvino.__version__, "torch": torch.__version__,
            "diffusers": diffusers.__version__}


def _cached_or_converted(folder: Path, key: dict[str, str], build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The converted models in ``folder`` when its key matches, else freshly converted and saved
    there (temp folder first, renamed into place, so a crash never leaves half a cache)."""
    openvino = import_openvino()
    core = openvino.Core()
    try:
        if json.loads((folder / "key.json").read_text(encoding="utf-8")) == key:
            return {xml.stem: core.read_model(xml) for xml in sorted(folder.glob("*.xml"))}
        log.warning("OpenVINO cache %s was made from other files or libraries: converting again", folder)
    except (OSError, ValueError, RuntimeError):
        pass  # missing or unreadable: convert
    models = build()
    folder.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=".converting-", dir=folder.parent))
    try:
        for part, model in models.items():
            openvino.save_model(model, temp / f"{part}.xml", compress_to_fp16=False)
        (temp / "key.json").write_text(json.dumps(key, indent=1), encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(temp, folder)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return {part: core.read_model(folder / f"{part}.xml") for part in models}


def convert(pipe: Any, name: str, digest: str, cache: Path) -> str:
    """Swap ``pipe.unet`` and ``pipe.vae.decoder`` for OpenVINO models (converted or from the cache).

    Returns:
        The OpenVINO device and what it may use here, e.g. ``AUTO: CPU, GPU``.

    Raises:
        Exception: whatever OpenVINO's converter raises for a module it cannot convert; the caller
        keeps the torch pipeline, which this leaves untouched until both parts are converted.
    """
    openvino = import_openvino()
    unet, vae = pipe.unet, pipe.vae
    channels, latent = unet.config.in_channels, 8
    text = (2, pipe.tokenizer.model_max_length, unet.config.cross_attention_dim)

    def build() -> dict[str, Any]:
        with torch.no_grad():
            return {"unet": openvino.convert_model(_UNetCall(unet).eval(), example_input=(
                        torch.randn(2, channels, latent, latent), torch.tensor([999.0, 999.0]), torch.randn(*text))),
                    "decoder": openvino.convert_model(vae.decoder.eval(), example_input=(
                        torch.randn(1, vae.config.latent_channels, latent, latent),))}

    models = _cached_or_converted(cache / CACHE_DIR / name, cache_key(digest), build)
    core = openvino.Core()
    core.set_property({"CACHE_DIR": str(cache / CACHE_DIR / "compiled")})  # compiled blobs: faster next start
    pipe.unet = OVModule(core, models["unet"], unet, _unet_inputs, _unet_output)
    vae.decoder = OVModule(core, models["decoder"], vae.decoder, _decoder_inputs, lambda out: out)
    return f"{DEVICE}: {', '.join(core.available_devices)}"
