"""The benchmark architectures in bench/configs/ are the published models.

Each config directory is built on the meta device (no memory, no download) and its denoiser must
have the published parameter count; FLOP counting is checked on a tiny UNet against the same
forward run on real CPU tensors.

Published figures, rounded: SD 2.x UNet "865M" (Stability AI's SD 2 release and model cards),
SDXL UNet "2.6B" (Podell et al. 2023, the SDXL report, Table 1), FLUX.1 "12 billion parameter"
(Black Forest Labs' FLUX.1-schnell model card). The exact counts below are what diffusers builds
from these configs; each must also sit within 1% of 865.9M / 2.567B / 11.9B.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def archs():
    """bench/archs.py, imported the way the benchmarks import it (bench/ on sys.path)."""
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("archs")
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize("name, component, exact, published", [
    ("sd-turbo", "unet", 865_910_724, 865.9e6),
    ("sdxl-turbo", "unet", 2_567_463_684, 2.567e9),
    ("flux-schnell", "transformer", 11_891_178_560, 11.9e9),
])
def test_denoiser_has_the_published_parameter_count(archs, name, component, exact, published):
    parts = archs.build_components(archs.ARCHS[name], "meta", only=(component,))
    count = archs.param_count(parts[component])
    assert all(p.device.type == "meta" for p in parts[component].parameters())
    assert count == exact
    assert abs(count - published) / published < 0.01


def test_flux_schnell_is_the_guidance_free_variant(archs):
    """schnell = dev (11,901,408,320) minus the 10,229,760-parameter guidance embedder."""
    parts = archs.build_components(archs.ARCHS["flux-schnell"], "meta", only=("transformer",))
    assert archs.param_count(parts["transformer"]) == 11_901_408_320 - (256 * 3072 + 3072 + 3072 * 3072 + 3072)


def test_every_config_dir_names_its_source(archs):
    sources = (BENCH / "configs" / "SOURCES.md").read_text(encoding="utf-8")
    for config in {a.config for a in archs.ARCHS.values()}:
        assert f"## {config}" in sources
        for path in (BENCH / "configs" / config).rglob("*.json"):
            json.loads(path.read_text(encoding="utf-8"))  # every file parses
            assert str(path.relative_to(BENCH / "configs" / config)) in sources, path


def test_pipeline_assembles_from_model_index(archs):
    """The real pipeline class over meta components; the local tokenizer pads to CLIP's 77 tokens."""
    import diffusers

    arch = archs.ARCHS["sdxl-turbo"]
    components = archs.build_components(arch, "meta")
    pipe = diffusers.StableDiffusionXLPipeline(**components)
    assert isinstance(pipe.text_encoder_2, __import__("transformers").CLIPTextModelWithProjection)
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    ids = pipe.tokenizer("Albert Einstein, oil painting", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and max(ids) < pipe.text_encoder.config.vocab_size


TINY_UNET = {"block_out_channels": [8, 16], "layers_per_block": 1, "cross_attention_dim": 16,
             "attention_head_dim": 2, "norm_num_groups": 4, "sample_size": 8,
             "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]}


def _tiny_unet_flops(archs, device: str, batch: int, side: int) -> int:
    import diffusers

    torch.manual_seed(0)
    with torch.device(device):
        unet = diffusers.UNet2DConditionModel(**TINY_UNET).eval()
        x = torch.randn(batch, 4, side, side)
        text = torch.randn(batch, 5, 16)
    return archs.count_flops(lambda: unet(x, torch.tensor([10] * batch, device=device), text))


def test_flop_count_on_meta_equals_the_real_forward(archs):
    meta = _tiny_unet_flops(archs, "meta", 1, 8)
    assert meta > 0
    assert meta == _tiny_unet_flops(archs, "cpu", 1, 8)
    assert _tiny_unet_flops(archs, "meta", 2, 8) == 2 * meta  # every op is batch-linear


def test_flop_count_of_a_linear_layer_is_exact(archs):
    layer = torch.nn.Linear(64, 32, bias=False)
    assert archs.count_flops(lambda: layer(torch.randn(10, 64))) == 2 * 10 * 64 * 32


def test_analyse_reports_the_whole_pipeline(archs):
    report = archs.analyse(archs.ARCHS["sd-turbo"])
    flops = report["flops"]
    assert report["params"]["text_encoder"] == 340_387_840
    assert flops["per_image"] == flops["denoiser_step"] + flops["text_encoder"] + flops["vae_decode"]
    # NVIDIA's TensorRT analysis of SD-Turbo at 512²: UNet ≈ 0.84 TFLOP, VAE decoder ≈ 2.5 TFLOP
    assert 0.7e12 < flops["denoiser_step"] < 0.9e12
    assert 2.3e12 < flops["vae_decode"] < 2.7e12
