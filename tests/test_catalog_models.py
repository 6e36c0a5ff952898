"""Each catalog model installs from its signed commit, loads and draws through the daemon.

The models are the real architectures (the same diffusers/transformers classes, folder layout and
``model_index.json`` as the real repositories) with random weights and shrunk widths, built
once per session by ``catalog_daemon`` (tests/_fixtures_hub.py). What this proves is loading and
wiring: install, the family's pipeline class, the manifest's defaults, the right route for each
purpose. It says nothing about picture quality, so "not blank" is all a picture is checked for.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import requests
from PIL import Image

from _fixtures_hub import bench_archs, shipped_manifest
from pennello.client.api import Client

GENERATORS = ["sd-turbo", "sdxl-turbo", "flux.1-schnell"]


def _picture(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float64)


def _assert_not_blank(pixels: np.ndarray) -> None:
    """Random weights draw noise: many distinct values, not one colour (nor NaNs turned black)."""
    assert pixels.std() > 5, f"a blank picture (std {pixels.std():.2f})"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100


@pytest.mark.slow
def test_every_catalog_model_installs_the_files_of_its_signed_commit(catalog_daemon):
    from pennello.installer.store import Store

    assert set(catalog_daemon.installs) == set(bench_archs().CATALOG_ARCHS)
    store = Store(catalog_daemon.home)
    for name, result in catalog_daemon.installs.items():
        assert result.returncode == 0, f"{name}: {result.stderr}"
        assert result.stdout.startswith(f"{name} v{shipped_manifest(name).version} installed")
        installed = store.get(name)
        committed = catalog_daemon.repositories[name]
        assert sorted(f.path for f in installed.manifest.files) == sorted(committed)
        for path, data in committed.items():
            assert (installed.path / path).read_bytes() == data
    # The weights came as LFS files over the resolve route, the rest inside the git objects.
    downloaded = [p for p in catalog_daemon.hub.requests if "/resolve/" in p]
    assert downloaded and all(p.endswith(".safetensors") for p in downloaded)


@pytest.mark.slow
@pytest.mark.parametrize("name", GENERATORS)
def test_each_generator_draws_at_its_manifest_defaults(catalog_daemon, name):
    defaults = shipped_manifest(name).pipeline.defaults
    client = Client(catalog_daemon.url, paths=catalog_daemon.home)
    image, = client.generate("a lighthouse on a cliff", model=name, seed=7)
    assert (image["width"], image["height"]) == (defaults["width"], defaults["height"])
    pixels = _picture(image["bytes"])
    assert pixels.shape == (defaults["height"], defaults["width"], 3)
    _assert_not_blank(pixels)
    loaded = {m["name"]: m for m in client.call("GET", "/api/ps")["models"]}
    assert loaded[name]["family"] == shipped_manifest(name).pipeline.family


@pytest.mark.slow
def test_the_x4_upscaler_enlarges_through_the_upscale_route(catalog_daemon):
    source = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    source.save(buffer, "PNG")
    response = requests.post(f"{catalog_daemon.url}/api/upscale",
                             files={"image": ("small.png", buffer.getvalue())},
                             data={"scale": "4", "method": "ai"}, timeout=300)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["upscale"]["model"] == "sd-x4-upscaler"
    image = answer["image"]
    assert (image["width"], image["height"]) == (160, 192)
    pixels = _picture(requests.get(catalog_daemon.url + image["url"], timeout=30).content)
    assert pixels.shape == (192, 160, 3)
    _assert_not_blank(pixels)


@pytest.fixture(scope="module")
def qwen_edit(catalog_daemon):
    """``qwen_edit(seed, references)``: the picture of an edit of ``references`` random pictures
    (drawn from ``seed``) through the edit route, which hands Qwen's Plus pipeline the pictures
    as a list. Two steps at 256²: the VAE encodes every reference at about one megapixel whatever
    the output size, so each edit costs seconds and is made once per module."""
    pictures: dict[tuple[int, int], np.ndarray] = {}

    def edit(seed: int, references: int) -> np.ndarray:
        if (seed, references) not in pictures:
            rng = np.random.default_rng(seed)
            files = []
            for i in range(references):
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(buffer, "PNG")
                files.append(("image", (f"{i}.png", buffer.getvalue())))
            response = requests.post(f"{catalog_daemon.url}/api/edit", files=files, timeout=600, data={
                "prompt": "put them side by side", "model": "qwen-image-edit", "steps": "2", "width": "256",
                "height": "256", "seed": "1"})
            assert response.status_code == 200, response.text
            image, = response.json()["images"]
            assert (image["width"], image["height"]) == (256, 256)
            pictures[seed, references] = _picture(requests.get(catalog_daemon.url + image["url"], timeout=30).content)
        return pictures[seed, references]
    return edit


@pytest.mark.slow
@pytest.mark.parametrize("references", [1, 2, 3])
def test_qwen_image_edit_edits_with_one_to_three_references(qwen_edit, references):
    """Loaded without torchvision: the processor's video half is left out (daemon/engine/qwen_processor.py)."""
    pixels = qwen_edit(references, references)
    assert pixels.shape == (256, 256, 3)
    _assert_not_blank(pixels)


@pytest.mark.slow
def test_qwen_image_edit_pictures_depend_on_the_references(qwen_edit):
    """Same prompt, same seed, another reference picture: another picture (the references reach
    the pipeline through the processor and the VAE, not only their count)."""
    assert np.abs(qwen_edit(1, 1) - qwen_edit(12, 1)).max() > 0


def test_qwens_processor_loads_from_the_published_layout_without_torchvision(tmp_path):
    """The published repositories' ``processor/`` has the older layout: preprocessor_config.json
    naming the fast (torchvision) image processor and Qwen2_5_VLProcessor, plus a video
    processor's config; it loads with the PIL image processor where torchvision is missing."""
    import json

    from pennello.daemon.engine.qwen_processor import load_processor

    bench_archs()._qwen_tokenizer().save_pretrained(tmp_path)
    common = {"patch_size": 14, "temporal_patch_size": 2, "merge_size": 2, "min_pixels": 3136,
              "max_pixels": 12845056, "image_mean": [0.48145466, 0.4578275, 0.40821073],
              "image_std": [0.26862954, 0.26130258, 0.27577711], "processor_class": "Qwen2_5_VLProcessor"}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {**common, "image_processor_type": "Qwen2VLImageProcessor"}))
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(
        {**common, "video_processor_type": "Qwen2VLVideoProcessor"}))
    processor = load_processor(tmp_path)
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (56, 84, 3), dtype=np.uint8))
    out = processor(text=["<|vision_start|><|image_pad|><|vision_end|>a cat"], images=[picture],
                    return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 4, 6]]  # 56x84 in 14-pixel patches
    assert out["pixel_values"].shape == (24, 3 * 2 * 14 * 14)


@pytest.mark.slow
def test_sdxl_turbo_draws_with_up_to_four_steps(catalog_daemon):
    image, = Client(catalog_daemon.url, paths=catalog_daemon.home).generate("a lighthouse", model="sdxl-turbo", steps=4, seed=3)
    assert (image["width"], image["height"]) == (512, 512)
    _assert_not_blank(_picture(image["bytes"]))


@pytest.mark.slow
def test_flux_schnell_prompts_reach_t5_at_its_256_tokens(catalog_daemon, make_engine):
    """FluxPipeline pads prompts to 512 T5 tokens unless told; schnell was distilled at 256."""
    from pennello.daemon.engine.jobs import GenerateRequest
    from pennello.installer.store import Store

    engine = make_engine(store=Store(catalog_daemon.home))  # its own home: its own job journal
    engine.load("flux.1-schnell")
    t5 = engine.residency.loaded["flux.1-schnell"].pipe.text_encoder_2
    lengths: list[int] = []
    hook = t5.register_forward_pre_hook(lambda _, args, kwargs: lengths.append(
        (args[0] if args else kwargs["input_ids"]).shape[-1]), with_kwargs=True)
    try:
        job = engine.submit(GenerateRequest(prompt="a lighthouse", model="flux.1-schnell", width=256, height=256))
        job.wait()
    finally:
        hook.remove()
    assert job.status == "done", job.error
    assert lengths == [256]


# --- where each catalog model goes on 8, 12 and 16 GB cards (no GPU needed) ----------------------

CARDS = {"8gb": 7.4 * 1024**3, "12gb": 11.2 * 1024**3, "16gb": 15.1 * 1024**3}  # free VRAM after the desktop
# model: (dtype on a card with bf16, on one without (RTX 20xx), offload on the 8, 12 and 16 GB card)
PLACEMENT = {
    "sd-turbo": ("float16", "float16", ("none", "none", "none")),
    "sdxl-turbo": ("float16", "float16", ("model", "none", "none")),  # 6.5 GiB of weights in fp16
    "flux.1-schnell": ("bfloat16", "float16", ("sequential",) * 3),  # the transformer alone is 22 GiB
    "sd-x4-upscaler": ("float16", "float16", ("none", "none", "none")),
    # a 20.4B transformer and an 8.3B Qwen2.5-VL text encoder: 16 GiB for the encoder alone
    "qwen-image-edit": ("bfloat16", "float16", ("sequential",) * 3),
}


@pytest.fixture(scope="module")
def full_size_weights():
    """Parameters per component of the published architectures, counted on the meta device."""
    from pennello.daemon.engine.profiles import ModelWeights

    archs = bench_archs()
    return {name: ModelWeights({part: archs.param_count(module) for part, module in
                                archs.build_components(arch, "meta", only=archs.weighted(arch)).items()})
            for name, arch in archs.CATALOG_ARCHS.items()}


@pytest.mark.parametrize("bf16", [True, False], ids=["bf16 card", "no bf16"])
@pytest.mark.parametrize("name", sorted(PLACEMENT))
def test_each_catalog_model_has_a_placement_on_8_12_and_16_gb_cards(full_size_weights, monkeypatch, name, bf16):
    """The decision residency makes at load: dtype from the family, offload from what fits at the
    manifest's default size, VAE tiling and slicing on every card below 20 GB, attention slicing on 8 GB."""
    import torch

    from pennello.daemon.engine.devices import pick_dtype
    from pennello.daemon.engine.families import get_family
    from pennello.daemon.engine.profiles import plan_for

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    manifest = shipped_manifest(name)
    family = get_family(manifest.pipeline.family)
    dtype = pick_dtype("cuda", family)
    with_bf16, without, offloads = PLACEMENT[name]
    assert str(dtype).removeprefix("torch.") == (with_bf16 if bf16 else without)
    pixels = manifest.pipeline.defaults["width"] * manifest.pipeline.defaults["height"]
    for (card, free), offload in zip(CARDS.items(), offloads):
        plan = plan_for("cuda", full_size_weights[name], dtype.itemsize, pixels, free_bytes=free,
                        purpose=family.purpose)
        assert (plan.profile, plan.offload) == (card, offload), f"{name} on {card}: {plan.reason}"
        assert plan.vae_tiling and plan.vae_slicing
        assert plan.attention_slicing == (card == "8gb")
        assert plan.compile is None  # nothing measured yet turns it on


def test_the_upscaler_is_planned_at_the_size_it_works_at(full_size_weights):
    """The x4 upscaler's manifest size is its 128² input tile; it denoises and decodes the 512² output."""
    from pennello.daemon.engine.profiles import plan_for

    weights = full_size_weights["sd-x4-upscaler"]
    as_upscaler = plan_for("cuda", weights, 2, 128 * 128, free_bytes=CARDS["8gb"], purpose="upscale")
    assert "~0.8 GiB working memory" in as_upscaler.reason  # 0.5 GiB + 1 GiB per megapixel x 0.26
    assert "~0.5 GiB working memory" in plan_for("cuda", weights, 2, 128 * 128, free_bytes=CARDS["8gb"]).reason


@pytest.mark.slow
def test_the_x4_upscaler_runs_its_unet_once_per_step_at_the_manifests_guidance(catalog_daemon, make_engine):
    """The prompt is empty, so classifier-free guidance (the pipeline's default, 9) would run the
    UNet on two identical conditionings; the manifest's guidance 0 runs it once per step."""
    from pennello.daemon.tools.upscale import upscale
    from pennello.installer.store import Store

    engine = make_engine(store=Store(catalog_daemon.home))  # its own home: its own job journal
    engine.load("sd-x4-upscaler")
    unet = engine.residency.loaded["sd-x4-upscaler"].pipe.unet
    batches: list[int] = []
    hook = unet.register_forward_pre_hook(lambda _, args: batches.append(args[0].shape[0]))
    try:
        out, note = upscale(engine, Image.new("RGB", (32, 32), "teal"), 4, "ai")
    finally:
        hook.remove()
    assert out.size == (128, 128) and note["model"] == "sd-x4-upscaler"
    assert batches == [1] * 20  # one tile, 20 steps, one UNet pass each
