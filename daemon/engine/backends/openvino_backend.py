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
import threading
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
    """The UNet's forward with the tensors SD-class pipelines pass, for tracing: sample, timestep and
    text embeddings, and for SDXL its added conditioning (pooled text embeddings, size and crop ids)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                text_embeds: torch.Tensor | None = None, time_ids: torch.Tensor | None = None) -> torch.Tensor:
        added = None if text_embeds is None else {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added,
                         return_dict=False)[0]


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
        # A compiled model's call uses one infer request: a progress preview decoding on a request
        # thread must not run it while the device thread does.
        self._lock = threading.Lock()
        self.config = getattr(original, "config", None)
        if getattr(original, "add_embedding", None) is not None:
            self.add_embedding = original.add_embedding  # SDXL pipelines read its input width
        self.compiled_shapes = 0  # how many times a shape was compiled (reported, and tested)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32  # what it takes and returns; OpenVINO picks its own inside

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        inputs = [t.detach().to("cpu", torch.float32).numpy() for t in self._to_inputs(*args, **kwargs)]
        with self._lock:
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
                 added_cond_kwargs: dict[str, torch.Tensor] | None = None, **_: Any) -> list[torch.Tensor]:
    """The UNet's call as SD-class pipelines make it, as the converted model's inputs (three, five
    with SDXL's added conditioning)."""
    steps = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1).expand(sample.shape[0])
    added = [added_cond_kwargs["text_embeds"], added_cond_kwargs["time_ids"]] if added_cond_kwargs else []
    return [sample, steps, encoder_hidden_states, *added]


def _unet_example(pipe: Any) -> tuple[torch.Tensor, ...]:
    """Inputs of the shapes ``pipe`` gives its UNet (batch 2, a small latent), for tracing."""
    unet, batch, latent = pipe.unet, 2, 8
    example = (torch.randn(batch, unet.config.in_channels, latent, latent), torch.full((batch,), 999.0),
               torch.randn(batch, pipe.tokenizer.model_max_length, unet.config.cross_attention_dim))
    if unet.config.addition_embed_type != "text_time":
        return example
    # SDXL: the second text encoder's pooled output, then the size and crop ids, each id embedded
    # to addition_time_embed_dim; together they fill projection_class_embeddings_input_dim.
    pooled = pipe.text_encoder_2.config.projection_dim
    ids = (unet.config.projection_class_embeddings_input_dim - pooled) // unet.config.addition_time_embed_dim
    return (*example, torch.randn(batch, pooled), torch.randn(batch, ids))


def _unet_output(out: torch.Tensor) -> tuple[torch.Tensor]:
    return (out,)  # diffusers calls with return_dict=False and takes [0]


def _decoder_inputs(z: torch.Tensor, *_: Any, **__: Any) -> list[torch.Tensor]:
    return [z]


def cache_key(digest: str, weights: str) -> dict[str, str]:
    """What a converted model was made from: the verified files, the weights' precision and the
    libraries that converted it."""
    import diffusers

    openvino = import_openvino()
    return {"files": digest, "weights": weights, "openvino": openvino.__version__, "torch": torch.__version__,
            "diffusers": diffusers.__version__}


def compressed(model: Any, weights: str) -> Any:
    """``model`` with its weights as ``weights`` says: ``fp32`` as converted, or ``int8`` (NNCF's
    per-channel 8-bit weight compression, decompressed on the fly inside OpenVINO; NNCF is not in
    ``pennello[cpu]``, see ``engine.openvino_weights``)."""
    if weights == "fp32":
        return model
    import nncf  # after import_openvino(): NNCF's telemetry then takes the same no-op stub

    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)


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


def _decoder_model(openvino: Any, vae: Any) -> Any:
    """``vae.decoder`` (a full VAE's or a tiny decoder's) as an OpenVINO model."""
    with torch.no_grad():
        return openvino.convert_model(vae.decoder.eval(), example_input=(
            torch.randn(1, vae.config.latent_channels, 8, 8),))


def _core(cache: Path) -> Any:
    """An OpenVINO core keeping its compiled blobs in the cache, so the next start compiles faster."""
    core = import_openvino().Core()
    core.set_property({"CACHE_DIR": str(cache / CACHE_DIR / "compiled")})
    return core


def convert_decoder(vae: Any, name: str, digest: str, cache: Path, weights: str = "fp32") -> None:
    """Swap ``vae.decoder`` for an OpenVINO model, converted or from ``<cache>/openvino/<name>/``.

    For the tiny decoder of a model on this backend: in torch fp32 it took 2.9 s at 512² on this
    project's 2-core machine against 0.69 s on OpenVINO (docs/performance.md).
    """
    openvino = import_openvino()
    models = _cached_or_converted(cache / CACHE_DIR / name, cache_key(digest, weights),
                                  lambda: {"decoder": compressed(_decoder_model(openvino, vae), weights)})
    vae.decoder = OVModule(_core(cache), models["decoder"], vae.decoder, _decoder_inputs, lambda out: out)


def convert(pipe: Any, name: str, digest: str, cache: Path, weights: str = "fp32") -> str:
    """Swap ``pipe.unet`` and ``pipe.vae.decoder`` of an SD or SDXL pipeline for OpenVINO models
    (converted or from the cache), with ``weights`` as :func:`compressed` makes them.

    Returns:
        The OpenVINO device and what it may use here, e.g. ``AUTO: CPU, GPU``.

    Raises:
        Exception: whatever OpenVINO's converter raises for a module it cannot convert; the caller
        keeps the torch pipeline, which this leaves untouched until both parts are converted.
    """
    openvino = import_openvino()
    unet, vae = pipe.unet, pipe.vae

    def build() -> dict[str, Any]:
        with torch.no_grad():
            unet_model = openvino.convert_model(_UNetCall(unet).eval(), example_input=_unet_example(pipe))
        return {"unet": compressed(unet_model, weights), "decoder": compressed(_decoder_model(openvino, vae), weights)}

    models = _cached_or_converted(cache / CACHE_DIR / name, cache_key(digest, weights), build)
    core = _core(cache)
    pipe.unet = OVModule(core, models["unet"], unet, _unet_inputs, _unet_output)
    vae.decoder = OVModule(core, models["decoder"], vae.decoder, _decoder_inputs, lambda out: out)
    return f"{DEVICE}: {', '.join(core.available_devices)}"
