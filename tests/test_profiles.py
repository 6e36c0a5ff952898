"""Device profiles: placement chosen from the real architectures' sizes and the free VRAM.

The GPU cases use the parameter counts of the published SD-Turbo, SDXL-Turbo and FLUX.1-schnell
architectures (bench/configs, built on the meta device), so the tiers are checked against the
models people run, e.g. SDXL whole on a 16 GB RTX 4060 Ti and with model offload on an 8 GB card.
The CPU cases run the embedded model for real.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _fixtures_daemon import config_with
from _fixtures_installer import load_script
from pennello.daemon.engine.profiles import GIB, ModelWeights, Plan, apply_plan, plan_for, read_weights

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED = ROOT / "installer" / "embedded" / "pennello-tiny"
CARD_FREE = {"8 GB card": 7.4 * GIB, "12 GB card": 11.2 * GIB, "16 GB card": 15.1 * GIB, "H100": 78 * GIB}


@pytest.fixture(scope="module")
def weights() -> dict[str, ModelWeights]:
    """Parameters per component of the published architectures, counted on the meta device."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        archs = importlib.import_module("archs")
        return {name: ModelWeights({part: archs.param_count(module) for part, module in
                                    archs.build_components(archs.ARCHS[name], "meta").items()
                                    if isinstance(module, torch.nn.Module)})
                for name in ("sd-turbo", "sdxl-turbo", "flux-schnell")}
    finally:
        sys.path.remove(str(ROOT / "bench"))


@pytest.mark.parametrize("card, arch, size, profile, offload", [
    ("H100", "flux-schnell", 1024, "large", "none"),
    ("H100", "sdxl-turbo", 1024, "large", "none"),
    ("16 GB card", "sdxl-turbo", 1024, "16gb", "none"),
    ("16 GB card", "flux-schnell", 1024, "16gb", "sequential"),
    ("12 GB card", "sdxl-turbo", 1024, "12gb", "none"),
    ("8 GB card", "sdxl-turbo", 1024, "8gb", "model"),
    ("8 GB card", "sd-turbo", 512, "8gb", "none"),
])
def test_gpu_tier_and_offload_follow_the_free_memory(weights, card, arch, size, profile, offload):
    plan = plan_for("cuda", weights[arch], dtype_bytes=2, pixels=size * size, free_bytes=CARD_FREE[card])
    assert (plan.profile, plan.offload) == (profile, offload), plan.reason
    assert plan.vae_tiling == plan.vae_slicing == (profile != "large")
    assert plan.attention_slicing == (profile == "8gb")


def test_flux_components_do_not_fit_a_16gb_card_whole(weights):
    flux = weights["flux-schnell"]
    assert flux.largest_bytes(2) > 16 * GIB  # the 11.9B transformer alone is ~22 GiB in bf16
    assert plan_for("cuda", flux, 2, 1024 * 1024, free_bytes=30 * GIB).offload == "model"


def test_a_configured_profile_overrides_the_tier_but_not_the_fit(weights):
    plan = plan_for("cuda", weights["sd-turbo"], 2, 512 * 512, free_bytes=78 * GIB, profile="8gb")
    assert (plan.profile, plan.offload, plan.attention_slicing) == ("8gb", "none", True)


def test_cpu_and_apple_profiles():
    assert plan_for("cpu", ModelWeights({}), 4, 64 * 64, cpu_threads=3).cpu_threads == 3
    assert plan_for("cpu", ModelWeights({}), 4, 64 * 64).cpu_threads == max(1, torch.get_num_threads() - 1)
    assert plan_for("mps", ModelWeights({}), 2, 512 * 512).attention_slicing


def test_weights_are_read_from_the_headers_of_the_verified_files():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(EMBEDDED, local_files_only=True)
    counted = read_weights(EMBEDDED).params
    assert counted == {name: sum(p.numel() for p in getattr(pipe, name).parameters())
                       for name in ("text_encoder", "unet", "vae")}


def test_memory_savers_keep_the_embedded_model_drawing_what_is_asked():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(EMBEDDED, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe = apply_plan(pipe, Plan("8gb", "cpu", vae_tiling=True, vae_slicing=True, attention_slicing=True))
    assert pipe.vae.use_tiling and pipe.vae.use_slicing
    trainer = load_script("train_embedded_model")
    images = pipe(["a red circle"] * 4, num_inference_steps=4, height=64, width=64, guidance_scale=1.0,
                  generator=[torch.Generator().manual_seed(s) for s in range(4)]).images
    colours = [trainer.read_scene(np.asarray(image))[0] for image in images]
    assert colours.count("red") >= 3, colours


def test_the_engine_reports_the_cpu_placement_it_applied(make_engine):
    engine = make_engine(config_with(engine={"cpu_threads": 1}))
    engine.load(engine.config.engine.default_model)
    placement = next(model["placement"] for model in engine.ps())
    assert placement["profile"] == "cpu" and placement["cpu_threads"] == 1
    # On the worker, which runs the models: OpenMP keeps a thread count per thread.
    assert engine.on_device(torch.get_num_threads) == 1
