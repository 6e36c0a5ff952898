"""Real model architectures with random weights, built from their published diffusers configs.

A denoiser with random weights costs exactly what the trained one costs: the same layers, the
same shapes, the same kernels. So the configs of SD-Turbo, SDXL-Turbo and FLUX.1-schnell live in
``bench/configs/<model>/`` (sources in ``bench/configs/SOURCES.md``) and this module builds the
real pipeline from them without downloading a byte::

    from archs import ARCHS, build_pipeline, analyse

    report = analyse(ARCHS["flux-schnell"])          # meta device: no memory, a few seconds
    report["params"]["transformer"]                  # 11_891_178_560
    report["flops"]["denoiser_step"]                 # FLOPs of one forward at 1024x1024

    pipe = build_pipeline(ARCHS["sd-turbo"], device="cuda", dtype=torch.bfloat16)
    pipe("a lighthouse", num_inference_steps=1, guidance_scale=0.0)

``tiny=True`` builds the same classes with the widths in ``configs/<model>/tiny.json`` (a few
channels, one or two layers): every block type, the latent channels and the VAE's downscale stay
as published, so a tiny pipeline saved with ``save_pretrained`` has the real repository's folder
layout and model_index.json and loads and draws the way the real one does, in seconds on a CPU.
The tests install those through the daemon (``tests/_fixtures_hub.py``); they prove loading and
wiring, not picture quality. :data:`CATALOG_ARCHS` maps the signed catalog's model names to them.

Tokenizers are not the real ones (CLIP's is 1.5 MB of BPE merges, T5's a SentencePiece model):
every tokenizer slot gets the small CLIP tokenizer shipped with ``pennello-tiny`` (Qwen's slots a
byte-level tokenizer with Qwen's special tokens, made on the spot). What a
tokenizer costs downstream is the padded length it hands the text encoder, and diffusers pads
every prompt to the model's length (77 for CLIP, ``max_sequence_length`` = 256 for FLUX-schnell's
T5), so the text encoders and the denoiser's cross-attention see the same shapes as with the real
vocabularies.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

log = logging.getLogger("bench.archs")

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "installer" / "embedded" / "pennello-tiny" / "tokenizer"
CLIP_TOKENS = 77
# Qwen2.5-VL's chat and vision tokens, in the order the tiny Qwen tokenizer numbers them.
QWEN_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


@dataclass(frozen=True)
class Arch:
    """One benchmark target: a config directory and how the model is normally run."""

    name: str
    config: str            # directory under bench/configs/
    size: int              # square image side in pixels
    steps: int
    guidance: float = 0.0  # > 1 turns on classifier-free guidance: two denoiser passes per step
    max_sequence_length: int | None = None  # T5 prompt length for FLUX pipelines

    @property
    def config_dir(self) -> Path:
        return CONFIGS_DIR / self.config

    @property
    def call_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``pipe(...)`` that make it run as the model card says."""
        kwargs: dict[str, Any] = {"num_inference_steps": self.steps, "guidance_scale": self.guidance,
                                  "height": self.size, "width": self.size}
        if self.max_sequence_length:
            kwargs["max_sequence_length"] = self.max_sequence_length
        return kwargs


# SDXL base 1.0 and SDXL-Turbo share the UNet, VAE and text encoders (Turbo is a fine-tune of
# base; the configs differ in scheduler and default sample_size only), so "sdxl-base-1024" runs
# the sdxl-turbo configs the way base is run: 1024², 30 steps, CFG 5.0.
ARCHS: dict[str, Arch] = {a.name: a for a in (
    Arch("sd-turbo", "sd-turbo", size=512, steps=1),
    Arch("sdxl-turbo", "sdxl-turbo", size=512, steps=1),
    Arch("sdxl-base-1024", "sdxl-turbo", size=1024, steps=30, guidance=5.0),
    Arch("flux-schnell", "flux-schnell", size=1024, steps=4, max_sequence_length=256),
)}
# The catalog's models (manifests/*.json) by their catalog names, run as their manifests say.
CATALOG_ARCHS: dict[str, Arch] = {
    "sd-turbo": ARCHS["sd-turbo"],
    "sdxl-turbo": ARCHS["sdxl-turbo"],
    "flux.1-schnell": ARCHS["flux-schnell"],
    "sd-x4-upscaler": Arch("sd-x4-upscaler", "sd-x4-upscaler", size=128, steps=20),
    "qwen-image-edit": Arch("qwen-image-edit", "qwen-image-edit", size=1024, steps=40, guidance=4.0),
}


def model_index(arch: Arch) -> dict[str, Any]:
    return json.loads((arch.config_dir / "model_index.json").read_text(encoding="utf-8"))


def denoiser_name(arch: Arch) -> str:
    """'unet' or 'transformer': whichever the pipeline's model_index names."""
    return "transformer" if "transformer" in model_index(arch) else "unet"


@cache
def _tokenizer() -> transformers.PreTrainedTokenizerBase:
    return transformers.CLIPTokenizer.from_pretrained(TOKENIZER_DIR)


@cache
def _qwen_tokenizer() -> transformers.PreTrainedTokenizerBase:
    """A byte-level BPE with no merges and Qwen's chat and vision tokens as ids 0-7 (the tiny
    text encoder's config names them): Qwen-Image's pipelines and processor find those tokens by
    name, and a prompt simply costs more tokens than with Qwen's 151k vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([], trainers.BpeTrainer(
        vocab_size=300, special_tokens=list(QWEN_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return transformers.Qwen2Tokenizer(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def _qwen_processor() -> Any:
    """Qwen2-VL's processor (its default image settings) over the tiny tokenizer, without the
    video half that transformers 5 builds only with torchvision (the daemon loads it the same way)."""
    from pennello.daemon.engine.qwen_processor import ImageOnlyQwen2VLProcessor

    return ImageOnlyQwen2VLProcessor(image_processor=transformers.Qwen2VLImageProcessorPil(),
                                     tokenizer=_qwen_tokenizer())


# Slots whose class needs more than pennello-tiny's CLIP tokenizer.
_TOKENIZERS: dict[str, Callable[[], Any]] = {"Qwen2Tokenizer": _qwen_tokenizer, "Qwen2VLProcessor": _qwen_processor}


def tiny_widths(arch: Arch) -> dict[str, dict[str, Any]]:
    """The config values ``tiny=True`` changes, per component (``configs/<model>/tiny.json``)."""
    return json.loads((arch.config_dir / "tiny.json").read_text(encoding="utf-8"))


def _diffusers_component(class_name: str, path: Path, changes: dict[str, Any]) -> Any:
    cls = getattr(diffusers, class_name)
    return cls.from_config({**cls.load_config(path), **changes})


def _transformers_component(class_name: str, path: Path, changes: dict[str, Any]) -> Any:
    if class_name in _TOKENIZERS:
        return _TOKENIZERS[class_name]()
    if "Tokenizer" in class_name:
        return _tokenizer()
    model = getattr(transformers, class_name)(transformers.AutoConfig.from_pretrained(path, **changes))
    # transformers 5 builds some layers in the config's saved torch_dtype (float16 for several of
    # these text encoders); a loaded model has one dtype throughout: the one asked for.
    return model.to(dtype=torch.get_default_dtype())


_LIBRARIES: dict[str, Callable[[str, Path, dict[str, Any]], Any]] = {
    "diffusers": _diffusers_component,
    "transformers": _transformers_component,
}


@contextmanager
def _created_on(device: str | torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly on ``device`` in ``dtype``: a 12B model never exists in fp32."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def weighted(arch: Arch) -> tuple[str, ...]:
    """The components of ``arch`` that have weights (not schedulers, tokenizers, processors)."""
    return tuple(name for name, spec in model_index(arch).items()
                 if isinstance(spec, list) and spec[0] is not None and not _weightless(name))


def _weightless(name: str) -> bool:
    return name.endswith("scheduler") or name.startswith(("tokenizer", "processor"))


def build_components(arch: Arch, device: str | torch.device = "meta", dtype: torch.dtype = torch.float32,
                     only: tuple[str, ...] | None = None, tiny: bool = False) -> dict[str, Any]:
    """Every component named in ``model_index.json``, with random weights.

    Args:
        device: "meta" (shapes only, no memory), "cpu" or "cuda".
        only: component names to build (default: all); the others are left out.
        tiny: shrink the widths as ``configs/<model>/tiny.json`` says (same classes and layout).

    Returns:
        ``{name: module, scheduler or tokenizer}``; components the index lists as ``[null, null]``
        are None, and plain settings (``force_zeros_for_empty_prompt``) pass through.
    """
    components: dict[str, Any] = {}
    widths = tiny_widths(arch) if tiny else {}
    for name, spec in model_index(arch).items():
        if name.startswith("_") or (only is not None and name not in only):
            continue
        if not isinstance(spec, list):
            components[name] = spec
        elif spec[0] is None:
            components[name] = None
        elif _weightless(name):
            components[name] = _LIBRARIES[spec[0]](spec[1], arch.config_dir / name, {})
        else:
            start = time.perf_counter()
            with _created_on(device, dtype):
                components[name] = _LIBRARIES[spec[0]](spec[1], arch.config_dir / name, widths.get(name, {})).eval()
            log.debug("built %s/%s on %s in %.2f s", arch.name, name, device, time.perf_counter() - start)
    return components


def build_pipeline(arch: Arch, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   seed: int = 0, tiny: bool = False) -> diffusers.DiffusionPipeline:
    """The real pipeline class (``model_index["_class_name"]``) over random-weight components."""
    torch.manual_seed(seed)
    components = build_components(arch, device, dtype, tiny=tiny)
    if "requires_safety_checker" in components:
        components["requires_safety_checker"] = False  # there is no safety checker to require
    index = model_index(arch)
    pipe = getattr(diffusers, index["_class_name"])(**components)
    if "processor" in components:  # Qwen's, a subclass without the video half (_qwen_processor):
        pipe.register_to_config(processor=index["processor"])  # saved as the real repository names it
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _cpu_flash_attention_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any,
                               out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch's counter knows the CUDA attention kernels but not the CPU one, which SDPA picks on CPU;
# without this, attention would be missing from every count taken on a CPU.
_CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops,
}


def param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs (2 per multiply-add) of the matmuls, convolutions and attention ``fn`` runs."""
    counter = FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION_FLOPS)
    with counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def _unet_inputs(unet: Any, batch: int, size: int, tokens: int, device: Any, dtype: Any) -> dict[str, Any]:
    cfg = unet.config
    side = size // 8
    kwargs: dict[str, Any] = {
        "sample": torch.randn(batch, cfg.in_channels, side, side, device=device, dtype=dtype),
        "timestep": torch.full((batch,), 999, device=device),
        "encoder_hidden_states": torch.randn(batch, tokens, cfg.cross_attention_dim, device=device, dtype=dtype),
        "return_dict": False,
    }
    if cfg.addition_embed_type == "text_time":  # SDXL: pooled text embedding + 6 size/crop ids
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled, device=device, dtype=dtype),
            "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * batch, device=device, dtype=dtype)}
    return kwargs


def _flux_inputs(transformer: Any, batch: int, size: int, tokens: int, device: Any, dtype: Any) -> dict[str, Any]:
    cfg = transformer.config
    patches = (size // 16) ** 2  # 8x VAE downsampling, then 2x2 latent patches
    kwargs: dict[str, Any] = {
        "hidden_states": torch.randn(batch, patches, cfg.in_channels, device=device, dtype=dtype),
        "encoder_hidden_states": torch.randn(batch, tokens, cfg.joint_attention_dim, device=device, dtype=dtype),
        "pooled_projections": torch.randn(batch, cfg.pooled_projection_dim, device=device, dtype=dtype),
        "timestep": torch.ones(batch, device=device, dtype=dtype),
        "img_ids": torch.zeros(patches, 3, device=device, dtype=dtype),
        "txt_ids": torch.zeros(tokens, 3, device=device, dtype=dtype),
        "return_dict": False,
    }
    if cfg.guidance_embeds:
        kwargs["guidance"] = torch.full((batch,), 3.5, device=device, dtype=dtype)
    return kwargs


_DENOISER_INPUTS: dict[str, Callable[..., dict[str, Any]]] = {
    "UNet2DConditionModel": _unet_inputs,
    "FluxTransformer2DModel": _flux_inputs,
}


def denoiser_inputs(arch: Arch, denoiser: torch.nn.Module, batch: int = 1, size: int | None = None,
                    device: Any = None, dtype: Any = None) -> dict[str, Any]:
    """Random keyword arguments for one denoiser forward at ``size`` (default: the arch's)."""
    param = next(denoiser.parameters())
    tokens = arch.max_sequence_length or CLIP_TOKENS
    return _DENOISER_INPUTS[type(denoiser).__name__](
        denoiser, batch, size or arch.size, tokens, device or param.device, dtype or param.dtype)


def vae_latents(vae: Any, batch: int, size: int) -> torch.Tensor:
    param = next(vae.parameters())
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    return torch.randn(batch, vae.config.latent_channels, size // scale, size // scale,
                       device=param.device, dtype=param.dtype)


def text_ids(encoder: torch.nn.Module, batch: int, tokens: int) -> torch.Tensor:
    """Token ids in range for ``encoder``'s vocabulary, on its device."""
    return torch.randint(0, 1000, (batch, tokens), device=next(encoder.parameters()).device)


def denoiser_evals_per_step(arch: Arch) -> int:
    return 2 if arch.guidance > 1 and denoiser_name(arch) == "unet" else 1


def analyse(arch: Arch, size: int | None = None, tiny: bool = False) -> dict[str, Any]:
    """Parameter counts and FLOPs of every part of ``arch`` at ``size``, on the meta device
    (of its ``tiny`` widths when asked, as :func:`build_components` shrinks them).

    Returns:
        ``{"params": {component: n}, "flops": {"denoiser_step", "vae_decode", <text encoders>,
        "per_image"}}``; ``per_image`` is the whole pipeline (denoiser steps × passes per step,
        text encoders, VAE decode) at batch 1.
    """
    size = size or arch.size
    parts = build_components(arch, "meta", tiny=tiny)
    modules = {n: m for n, m in parts.items() if isinstance(m, torch.nn.Module)}
    denoiser = modules[denoiser_name(arch)]
    vae = modules["vae"]
    flops = {
        "denoiser_step": count_flops(lambda: denoiser(**denoiser_inputs(arch, denoiser, 1, size))),
        "vae_decode": count_flops(lambda: vae.decode(vae_latents(vae, 1, size), return_dict=False)),
    }
    for name, module in modules.items():
        if name.startswith("text_encoder"):
            tokens = arch.max_sequence_length if isinstance(module, transformers.T5EncoderModel) else CLIP_TOKENS
            flops[name] = count_flops(lambda m=module, t=tokens: m(text_ids(m, 1, t)))
    flops["per_image"] = (flops["denoiser_step"] * denoiser_evals_per_step(arch) * arch.steps
                          + sum(v for k, v in flops.items() if k.startswith("text_encoder"))
                          + flops["vae_decode"])
    return {"size": size, "steps": arch.steps, "guidance": arch.guidance,
            "params": {n: param_count(m) for n, m in modules.items()}, "flops": flops}
