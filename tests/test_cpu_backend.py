"""The OpenVINO backend on a CPU: conversion through the real path, the cache, the fall-back, privacy.

A random-weight pipeline of SD-Turbo's architecture (its published configs from bench/configs,
shrunk in width so it converts in seconds) is installed like any model and drawn through a real
daemon on loopback. Tests that need OpenVINO skip with a reason where ``pennello[cpu]`` is not
installed; CI installs it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from pennello.daemon.engine import backends
from pennello.daemon.engine.profiles import Plan
from pennello.installer import Store
from _fixtures_api import StoreWithExtras, installed_as

needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                    reason="OpenVINO is not installed (pip install -e '.[cpu]')")
REPO = Path(__file__).resolve().parents[1]
SD_TURBO = REPO / "bench" / "configs" / "sd-turbo"
NAME = "sd-turbo-mini"


def save_mini_sd_turbo(target: Path, vae_widths: tuple[int, ...] = (32, 32, 32, 32)) -> Path:
    """SD-Turbo's UNet, VAE and text encoder configs with few channels, random weights, saved."""
    import diffusers
    import transformers

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel.from_config(
        diffusers.UNet2DConditionModel.load_config(SD_TURBO / "unet"), block_out_channels=(32, 32, 64, 64),
        attention_head_dim=(2, 2, 4, 4), layers_per_block=1, cross_attention_dim=32, sample_size=8)
    vae = diffusers.AutoencoderKL.from_config(
        diffusers.AutoencoderKL.load_config(SD_TURBO / "vae"), block_out_channels=vae_widths,
        layers_per_block=1, sample_size=64)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig.from_pretrained(
        SD_TURBO / "text_encoder", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, projection_dim=32))
    tokenizer = transformers.CLIPTokenizer.from_pretrained(REPO / "installer" / "embedded" / "pennello-tiny" / "tokenizer")
    scheduler = diffusers.EulerDiscreteScheduler.from_pretrained(SD_TURBO / "scheduler")
    diffusers.StableDiffusionPipeline(vae, text, tokenizer, unet, scheduler, safety_checker=None,
                                      feature_extractor=None, requires_safety_checker=False).save_pretrained(target)
    return target


@pytest.fixture
def mini(home):
    """The mini SD-Turbo installed next to the embedded model (the store records it like any)."""
    from pennello.installer import ensure_embedded_default
    from pennello.config import Config

    ensure_embedded_default(home, Config())
    tiny = Store(home).get("pennello-tiny")
    return installed_as(tiny, save_mini_sd_turbo(home.cache_dir / NAME), NAME, "sd", "StableDiffusionPipeline")


@pytest.fixture
def convert_small(monkeypatch):
    """Let OpenVINO take models as small as the test's (the daemon keeps tiny ones on torch)."""
    monkeypatch.setattr(backends, "MIN_OPENVINO_PARAMS", 0)


def placement(engine, name: str = NAME) -> dict:
    return next(model["placement"] for model in engine.ps() if model["name"] == name)


def fetch(url: str, response: requests.Response) -> np.ndarray:
    """The pixels of a finished generate response's first picture."""
    import io

    from PIL import Image

    assert response.status_code == 200, response.text
    image = requests.get(url + response.json()["images"][0]["url"], timeout=30)
    return np.asarray(Image.open(io.BytesIO(image.content)).convert("RGB"), dtype=np.int16)


def draw(url: str, model: str, seed: int = 3) -> np.ndarray:
    body = {"prompt": "a lighthouse at dusk", "model": model, "width": 64, "height": 64, "steps": 1,
            "guidance": 0.0, "seed": seed, "wait": True}
    return fetch(url, requests.post(f"{url}/api/generate", json=body, timeout=300))


@needs_openvino
def test_an_sd_turbo_architecture_model_is_converted_cached_and_draws_through_the_daemon(
        make_server, make_engine, home, mini, convert_small, caplog):
    from pennello.daemon.engine.backends.openvino_backend import OVModule

    running = make_server(engine=make_engine(store=StoreWithExtras(Store(home), **{NAME: mini})))
    picture = draw(running.url, NAME)
    assert picture.shape == (64, 64, 3) and picture.std() > 0
    (model,) = [m for m in requests.get(running.api("/ps"), timeout=30).json()["models"] if m["name"] == NAME]
    assert model["placement"]["backend"] == "openvino"
    assert model["placement"]["backend_device"].startswith("AUTO: ") and "CPU" in model["placement"]["backend_device"]
    pipe = running.engine.residency.loaded[NAME].pipe
    assert isinstance(pipe.unet, OVModule) and isinstance(pipe.vae.decoder, OVModule)
    cache = home.cache_dir / "openvino" / NAME
    key = json.loads((cache / "key.json").read_text())
    assert key["files"] == mini.digest and {p.name for p in cache.glob("*.xml")} == {"unet.xml", "decoder.xml"}
    # Same seed, the same picture but for rounding: OpenVINO's CPU plugin splits reductions by the
    # threads it gets, so runs differ by a level here and there (seen: mean 0.03 to 0.9, max 7);
    # another seed's picture is uncorrelated. Another size is compiled once and kept.
    again = draw(running.url, NAME)
    assert np.corrcoef(again.ravel(), picture.ravel())[0, 1] > 0.99
    body = {"prompt": "x", "model": NAME, "width": 128, "height": 64, "steps": 1, "guidance": 0.0, "wait": True}
    assert requests.post(running.api("/generate"), json=body, timeout=300).status_code == 200
    assert pipe.unet.compiled_shapes == 2


@needs_openvino
def test_openvino_draws_what_torch_draws_with_either_decoder(make_server, make_engine, home, mini, taesd,
                                                             convert_small):
    """With decoder tiny the tiny decoder of a model on OpenVINO is converted too (in torch fp32 it
    took four times OpenVINO's time at 512²), cached like the model's parts."""
    from pennello.daemon.engine.backends.openvino_backend import OVModule

    running = make_server(engine=make_engine(store=StoreWithExtras(Store(home), **{NAME: mini})))
    converted = draw(running.url, NAME)
    converted_tiny = fetch(running.url, generate(running.url, decoder="tiny"))
    assert isinstance(running.engine.residency.loaded[NAME].derived["tiny-decoder"].decoder, OVModule)
    assert json.loads((home.cache_dir / "openvino" / "taesd" / "key.json").read_text())["files"] == taesd.digest
    running.engine.residency.drop(NAME)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backends, "OPENVINO_FAMILIES", frozenset())
        on_torch = draw(running.url, NAME)
        on_torch_tiny = fetch(running.url, generate(running.url, decoder="tiny"))
    assert placement(running.engine)["backend"] == "torch"
    assert not isinstance(running.engine.residency.loaded[NAME].derived["tiny-decoder"].decoder, OVModule)
    # bf16 inside OpenVINO where the CPU has it: close, not bit-equal
    assert np.abs(converted - on_torch).mean() < 6, np.abs(converted - on_torch).mean()
    assert np.abs(converted_tiny - on_torch_tiny).mean() < 6, np.abs(converted_tiny - on_torch_tiny).mean()


@needs_openvino
def test_a_cache_made_from_other_files_is_converted_again_never_used(make_engine, home, mini, convert_small,
                                                                     caplog):
    engine = make_engine(store=StoreWithExtras(Store(home), **{NAME: mini}))
    engine.residency.ensure_loaded(NAME)
    key_file = home.cache_dir / "openvino" / NAME / "key.json"
    key = json.loads(key_file.read_text())
    key_file.write_text(json.dumps({**key, "files": "0" * 64}))
    (home.cache_dir / "openvino" / NAME / "unet.bin").write_bytes(b"not the converted weights")
    engine.residency.drop(NAME)
    caplog.set_level(logging.WARNING, logger="pennello.daemon.engine.backends.openvino_backend")
    engine.residency.ensure_loaded(NAME)
    assert "made from other files or libraries: converting again" in caplog.text
    assert json.loads(key_file.read_text()) == key
    assert placement(engine)["backend"] == "openvino"


@needs_openvino
@pytest.mark.skipif(importlib.util.find_spec("nncf") is None, reason="NNCF is not installed (pip install nncf)")
def test_int8_weights_convert_smaller_and_draw_close_to_torch_fp32(home, mini):
    """NNCF's 8-bit weights: the cache says so, the UNet's weights file is about a quarter of its
    fp32 size, and the picture stays within the bound the CPU default is held to (3 levels of 255
    from torch fp32, same seed; docs/performance.md)."""
    from pennello.daemon.engine.backends import openvino_backend
    from pennello.daemon.engine.families import get_family

    pipe = get_family("sd").load("StableDiffusionPipeline", mini.path, "cpu", torch.float32)
    fp32_bytes = 4 * sum(p.numel() for p in pipe.unet.parameters())

    def draw_seed_5() -> np.ndarray:
        return pipe("a lighthouse", width=64, height=64, num_inference_steps=1, guidance_scale=0.0,
                    output_type="np", generator=torch.Generator().manual_seed(5)).images

    on_torch = draw_seed_5()
    openvino_backend.convert(pipe, NAME, mini.digest, home.cache_dir, weights="int8")
    int8 = draw_seed_5()
    folder = home.cache_dir / "openvino" / NAME
    assert json.loads((folder / "key.json").read_text())["weights"] == "int8"
    assert (folder / "unet.bin").stat().st_size < 0.4 * fp32_bytes
    assert np.abs(int8 - on_torch).mean() * 255 < 3, np.abs(int8 - on_torch).mean() * 255


def tiny_arch_model(home, arch: str = "sdxl-turbo", family: str = "sdxl", cls: str = "StableDiffusionXLPipeline"):
    """``arch``'s architecture with tiny widths (bench/configs/<arch>/tiny.json), random weights,
    saved and recorded in the store as ``<family>-tiny``."""
    from pennello.installer import ensure_embedded_default
    from pennello.config import Config
    from _fixtures_hub import bench_archs

    archs = bench_archs()
    ensure_embedded_default(home, Config())
    target = home.cache_dir / f"{family}-tiny"
    archs.build_pipeline(archs.ARCHS[arch], tiny=True).save_pretrained(target)
    return installed_as(Store(home).get("pennello-tiny"), target, f"{family}-tiny", family, cls)


@needs_openvino
def test_int8_weights_are_what_engine_openvino_weights_asks_and_fp32_said_so_without_nncf(home, mini, caplog):
    from pennello.daemon.engine.families import get_family

    pipe = get_family("sd").load("StableDiffusionPipeline", mini.path, "cpu", torch.float32)
    caplog.set_level(logging.WARNING, logger="pennello.daemon.engine.backends")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backends, "MIN_OPENVINO_PARAMS", 0)
        plan = backends.attach(pipe, Plan("cpu", "cpu"), mini, "sd", home.cache_dir, weights="int8")
    assert plan.backend == "openvino"
    converted = json.loads((home.cache_dir / "openvino" / NAME / "key.json").read_text())["weights"]
    if importlib.util.find_spec("nncf") is None:  # CI: NNCF is not in pennello[cpu]
        assert plan.openvino_weights == converted == "fp32"
        assert "engine.openvino_weights = int8 needs NNCF" in plan.backend_reason in caplog.text
    else:
        assert plan.openvino_weights == converted == "int8" and "NNCF" not in plan.backend_reason


@needs_openvino
def test_an_sdxl_architecture_model_with_its_added_conditioning_draws_on_openvino_as_on_torch(
        make_server, make_engine, home, convert_small):
    """SDXL's UNet takes pooled text embeddings and size/crop ids besides SD's three inputs: the
    converted model must get them (a picture made without them would not match torch's)."""
    from pennello.daemon.engine.backends.openvino_backend import OVModule

    model = tiny_arch_model(home)
    running = make_server(engine=make_engine(store=StoreWithExtras(Store(home), **{"sdxl-tiny": model})))
    body = {"prompt": "a lighthouse at dusk", "model": "sdxl-tiny", "width": 256, "height": 256, "steps": 1,
            "guidance": 0.0, "seed": 3, "wait": True}
    converted = fetch(running.url, requests.post(running.api("/generate"), json=body, timeout=300))
    assert placement(running.engine, "sdxl-tiny")["backend"] == "openvino"
    assert isinstance(running.engine.residency.loaded["sdxl-tiny"].pipe.unet, OVModule)
    running.engine.residency.drop("sdxl-tiny")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backends, "OPENVINO_FAMILIES", frozenset({"sd"}))
        on_torch = fetch(running.url, requests.post(running.api("/generate"), json=body, timeout=300))
    assert placement(running.engine, "sdxl-tiny")["backend"] == "torch"
    assert converted.shape == (256, 256, 3) and converted.std() > 0
    assert np.abs(converted - on_torch).mean() < 6, np.abs(converted - on_torch).mean()


class _SvdAttention:
    """An attention processor using an op OpenVINO's PyTorch frontend has no conversion for."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **_):
        from diffusers.models.attention_processor import AttnProcessor2_0

        out = AttnProcessor2_0()(attn, hidden_states, encoder_hidden_states, attention_mask)
        return out + torch.linalg.svd(out[0])[1].sum() * 0


@needs_openvino
def test_a_model_openvino_cannot_convert_falls_back_to_torch_with_a_logged_reason(home, mini, caplog):
    from pennello.daemon.engine.families import get_family

    pipe = get_family("sd").load("StableDiffusionPipeline", mini.path, "cpu", torch.float32)
    pipe.unet.set_attn_processor(_SvdAttention())
    torch_unet = pipe.unet
    caplog.set_level(logging.WARNING, logger="pennello.daemon.engine.backends")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backends, "MIN_OPENVINO_PARAMS", 0)
        plan = backends.attach(pipe, Plan("cpu", "cpu"), mini, "sd", home.cache_dir)
    assert plan.backend == "torch" and plan.backend_device == "cpu"
    assert f"OpenVINO could not convert {NAME}, torch serves it: OpConversionFailure" in plan.backend_reason
    assert plan.backend_reason in caplog.text
    assert pipe.unet is torch_unet and not (home.cache_dir / "openvino" / NAME / "key.json").exists()
    image = pipe("x", width=64, height=64, num_inference_steps=1, guidance_scale=0.0).images[0]
    assert image.size == (64, 64)


def test_the_embedded_model_and_gpu_families_say_why_they_stay_on_torch(engine):
    tiny = placement(engine, "pennello-tiny")
    assert tiny["backend"] == "torch" and tiny["backend_device"] == "cpu"
    expected = ("small model" if importlib.util.find_spec("openvino") else "OpenVINO is not installed")
    assert expected in tiny["backend_reason"]
    assert backends.choose(Plan("cpu", "cpu"), "flux", 12 * 10**9)[1] == \
        "OpenVINO serves sd, sdxl models; flux runs on torch"
    assert backends.choose(Plan("large", "cuda"), "sd", 10**9) == ("torch", "cuda: diffusers on torch")


def test_the_embedded_model_keeps_its_adherence_floor_through_the_cpu_default(engine):
    """The CPU profile's defaults (OpenVINO for SD-class models, the tiny decoder for 1-4 steps)
    leave the embedded model as it was: on torch, its own full decoder, and the held-out prompts
    drawn through the engine as well as test_embedded_model requires of the bare pipeline."""
    from PIL import Image

    from pennello.daemon.engine.jobs import GenerateRequest
    from _fixtures_installer import load_script
    from test_embedded_model import HELD_OUT_BOTH_FLOOR, HELD_OUT_COLOUR_FLOOR, HELD_OUT_PLACE_FLOOR

    trainer = load_script("train_embedded_model")
    scenes = trainer.held_out_prompts(16)
    jobs = [engine.submit(GenerateRequest(prompt=scene.prompt, seed=i)) for i, scene in enumerate(scenes)]
    assert all(job.wait(300) and job.status == "done" for job in jobs), [job.error for job in jobs]
    loaded = engine.residency.loaded["pennello-tiny"]
    assert loaded.plan.profile == "cpu" and loaded.plan.backend == "torch"
    assert "tiny-decoder" not in loaded.derived  # its VAE is its own: the tiny decoders do not fit it
    pictures = [np.asarray(Image.open(job.images[0].path).convert("RGB")) for job in jobs]
    checks = [trainer.check(picture, scene) for picture, scene in zip(pictures, scenes)]
    assert np.mean([colour for colour, _ in checks]) >= HELD_OUT_COLOUR_FLOOR, checks
    assert np.mean([colour and shape for colour, shape in checks]) >= HELD_OUT_BOTH_FLOOR, checks
    assert np.mean([trainer.placed(p, scene) for p, scene in zip(pictures, scenes)]) >= HELD_OUT_PLACE_FLOOR


def test_cpu_bf16_autocasts_the_torch_path_where_the_cpu_multiplies_bf16(make_engine):
    """engine.cpu_bf16 = on: generate calls on the CPU run under bf16 autocast (close to fp32's
    picture, not equal: the autocast did run), reported in placement; refused with a reason on a
    GPU and on a CPU without native bf16, where emulation would be slower than fp32."""
    from pennello.daemon.engine.profiles import ModelWeights, cpu_has_bf16, plan_for
    from _fixtures_daemon import config_with
    from test_engine import pixels, run

    weights = ModelWeights({"unet": 865_910_724})
    on_gpu = plan_for("cuda", weights, 2, 512 * 512, free_bytes=78 * 2**30, speed={"cpu_bf16": "on"})
    assert not on_gpu.cpu_bf16 and on_gpu.not_applied == (
        "cpu_bf16: for CPUs only (GPUs draw in half precision already)",)
    assert not plan_for("cpu", weights, 4, 512 * 512).cpu_bf16  # off unless asked: not measured to pay yet
    fp32 = pixels(run(make_engine(), seed=5))
    engine = make_engine(config_with(engine={"cpu_bf16": "on"}))
    shown = placement(engine, "pennello-tiny")
    if not cpu_has_bf16():
        assert shown["not_applied"] == ["cpu_bf16: this CPU has no bf16 instructions (AVX512-BF16 or AMX)"]
        return
    assert shown["cpu_bf16"] is True
    difference = np.abs(pixels(run(engine, seed=5)) - fp32).mean()
    assert 0 < difference < 6, difference


@needs_openvino
def test_openvino_sends_no_telemetry_under_the_no_network_guard(tmp_path, home, mini):
    """Converting runs OpenVINO's converter, which reports usage unless a consent file opts out
    (there is none in a fresh home); under the guard any attempt would be refused and counted."""
    script = textwrap.dedent(f"""
        import json, time, torch
        from pennello.daemon.net.offline import NetworkGuard
        guard = NetworkGuard().install()
        from pennello.daemon.engine.backends import openvino_backend
        if not {{block}}:
            import openvino_telemetry  # imported first: the converter as it comes, telemetry and all
        openvino = openvino_backend.import_openvino()
        class Double(torch.nn.Module):
            def forward(self, x):
                return x * 2
        openvino.convert_model(Double(), example_input=(torch.ones(1, 4),))
        time.sleep(2)  # telemetry is sent from a background thread
        import openvino.tools.ovc.telemetry_utils as used
        print(json.dumps({{"refused": guard.status()["refused"], "telemetry": used.tm.__name__}}))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env["HOME"] = str(tmp_path)  # no consent file: OpenVINO would send
    results = {}
    for block in (True, False):
        done = subprocess.run([sys.executable, "-c", script.replace("{block}", str(block))], env=env,
                              capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        # The sender may run in a forked child, whose refusals the guard there logs (stderr).
        results[block] = (json.loads(done.stdout.strip().splitlines()[-1]), done.stderr)
    assert results[True][0] == {"refused": 0, "telemetry": "openvino.tools.ovc.telemetry_stub"}
    assert "no-network mode refused" not in results[True][1]
    # The control: without the block the converter does try to reach Intel, and is refused.
    assert results[False][0]["telemetry"] == "openvino_telemetry"
    assert "no-network mode refused socket.getaddrinfo to www.google-analytics.com" in results[False][1]


# --- tiny decoders -------------------------------------------------------------------------------

def install_tiny_decoder(home, mirror, publish, name: str, latent_channels: int = 4):
    """A random-weight AutoencoderTiny installed as ``name`` through the real installer (signed
    manifest, HTTP mirror on loopback, hashes checked), as a catalog tiny decoder would be. TAESD,
    TAESDXL and TAEF1 share the architecture; SD and SDXL latents have 4 channels, FLUX.1's 16."""
    import diffusers
    from datetime import datetime, timedelta, timezone

    from pennello.config import Config
    from pennello.installer import Installer
    from pennello.installer.fetchers import FetchOptions
    from pennello.installer.manifest import Manifest, PipelineSpec, Source
    from _fixtures_installer import entries_for

    torch.manual_seed(1)
    folder = home.cache_dir / f"{name}-build"
    diffusers.AutoencoderTiny(latent_channels=latent_channels).save_pretrained(folder)
    files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    mirror.files.update({f"{name}/{path}": data for path, data in files.items()})
    now = datetime.now(timezone.utc).replace(microsecond=0)
    manifest = Manifest(name=name, version=1, created=now, expires=now + timedelta(days=30),
                        pipeline=PipelineSpec("AutoencoderTiny", "tiny-decoder", {}), license="MIT",
                        source=Source("mirror", base_url=f"{mirror.url}/{name}"), files=entries_for(files))
    options = FetchOptions(downloads_dir=home.downloads_dir, retries=0, read_timeout_s=5)
    return Installer(home, Config(), options=options, progress=False).install_raw(publish(manifest))


@pytest.fixture
def taesd(home, mirror, publish):
    return install_tiny_decoder(home, mirror, publish, "taesd")


def generate(url: str, **fields) -> requests.Response:
    body = {"prompt": "a lighthouse", "model": NAME, "width": 64, "height": 64, "steps": 1, "guidance": 0.0,
            "seed": 4, "wait": True, **fields}
    return requests.post(f"{url}/api/generate", json=body, timeout=300)


def test_decoder_tiny_decodes_with_the_installed_tiny_decoder_for_that_call_only(make_server, make_engine,
                                                                                 home, mini, taesd):
    import diffusers

    running = make_server(engine=make_engine(store=StoreWithExtras(Store(home), **{NAME: mini})))
    full = generate(running.url, decoder="full")
    tiny = generate(running.url, decoder="tiny")
    assert full.status_code == tiny.status_code == 200, (full.text, tiny.text)
    loaded = running.engine.residency.loaded[NAME]
    assert isinstance(loaded.derived["tiny-decoder"], diffusers.AutoencoderTiny)
    assert isinstance(loaded.pipe.vae, diffusers.AutoencoderKL)  # put back after the call
    full_pixels, tiny_pixels = (fetch(running.url, r) for r in (full, tiny))
    assert np.abs(full_pixels - tiny_pixels).mean() > 5
    # the mini model's VAE is not SD's: left out, the decoder is its own full one
    assert np.array_equal(fetch(running.url, generate(running.url)), full_pixels)


def test_the_cpu_profile_takes_the_tiny_decoder_for_few_steps_and_previews_of_a_standard_vae(make_engine, home,
                                                                                              mini, taesd):
    from pennello.daemon.engine.jobs import GenerateRequest
    from pennello.daemon.engine.backends.decoders import uses_tiny

    tiny = Store(home).get("pennello-tiny")
    model = installed_as(tiny, save_mini_sd_turbo(home.cache_dir / "std", vae_widths=(128, 256, 512, 512)),
                         "std-vae", "sd", "StableDiffusionPipeline")
    engine = make_engine(store=StoreWithExtras(Store(home), **{"std-vae": model}))
    loaded = engine.residency.ensure_loaded("std-vae")
    store = engine.residency.store
    request = GenerateRequest(prompt="x", model="std-vae", steps=1, width=64, height=64)  # small: decodes are cheap
    assert uses_tiny(loaded, request, store)
    assert not uses_tiny(loaded, GenerateRequest(prompt="x", steps=5), store)
    assert not uses_tiny(loaded, GenerateRequest(prompt="x", steps=1, decoder="full"), store)
    assert not uses_tiny(engine.residency.ensure_loaded("pennello-tiny"), GenerateRequest(prompt="x", steps=1), store)
    job = engine.submit(request)
    assert job.wait(300) and job.status == "done", job.error
    assert "tiny-decoder" in loaded.derived
    # Progress previews decode with the tiny decoder even where the picture itself is decoded in
    # full (6 steps): the UNet is held at its third step while the preview is asked for.
    decodes = {"full": 0, "tiny": 0}
    reached, go = threading.Event(), threading.Event()

    def count(which: str):
        return lambda *_: decodes.__setitem__(which, decodes[which] + 1)

    def hold(*_) -> None:
        hold.calls += 1
        if hold.calls == 3:
            reached.set()
            go.wait(120)

    hold.calls = 0
    hooks = [loaded.pipe.vae.decoder.register_forward_hook(count("full")),
             loaded.derived["tiny-decoder"].decoder.register_forward_hook(count("tiny")),
             loaded.pipe.unet.register_forward_pre_hook(hold)]
    try:
        job = engine.submit(GenerateRequest(prompt="x", model="std-vae", steps=6, guidance=0.0, width=64, height=64))
        assert reached.wait(300)
        assert engine.runner.preview.png([job.id]) is not None
        assert decodes == {"full": 0, "tiny": 1}
        go.set()
        assert job.wait(300) and job.status == "done", job.error
        assert decodes == {"full": 1, "tiny": 1}
    finally:
        go.set()
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize(("arch", "family", "cls", "decoder", "latent_channels"), [
    ("sdxl-turbo", "sdxl", "StableDiffusionXLPipeline", "taesdxl", 4),
    ("flux-schnell", "flux", "FluxPipeline", "taef1", 16),
])
def test_decoder_tiny_on_sdxl_and_flux_models_decodes_with_their_tiny_decoder(
        make_server, make_engine, home, mirror, publish, arch, family, cls, decoder, latent_channels):
    """SDXL latents need TAESDXL and FLUX.1's (16 channels, packed, shifted) TAEF1, not TAESD: the
    request names the family's decoder, a 400 until it is installed, then that call decodes with it
    (the pipelines read its own scaling, shift and upcasting settings)."""
    import diffusers

    model = tiny_arch_model(home, arch, family, cls)
    running = make_server(engine=make_engine(store=StoreWithExtras(Store(home), **{model.name: model})))
    fields = {"model": model.name, "width": 256, "height": 256}  # the families' smallest size
    missing = generate(running.url, **fields, decoder="tiny")
    assert missing.status_code == 400 and missing.json()["error"]["field"] == "decoder"
    assert f"needs the {decoder} model" in missing.json()["error"]["message"]
    install_tiny_decoder(home, mirror, publish, decoder, latent_channels)
    full = generate(running.url, **fields, decoder="full")
    tiny = generate(running.url, **fields, decoder="tiny")
    assert full.status_code == tiny.status_code == 200, (full.text, tiny.text)
    loaded = running.engine.residency.loaded[model.name]
    assert isinstance(loaded.derived["tiny-decoder"], diffusers.AutoencoderTiny)
    assert isinstance(loaded.pipe.vae, diffusers.AutoencoderKL)  # put back after the call
    full_pixels, tiny_pixels = (fetch(running.url, r) for r in (full, tiny))
    assert tiny_pixels.shape == (256, 256, 3) and tiny_pixels.std() > 0
    assert np.abs(full_pixels - tiny_pixels).mean() > 5


def test_a_bad_or_unavailable_decoder_is_a_400_naming_the_field(make_server, make_engine, home, mini):
    running = make_server(engine=make_engine(store=StoreWithExtras(Store(home), **{NAME: mini})))
    response = generate(running.url, decoder="medium")
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "decoder"
    assert response.json()["error"]["message"] == "decoder must be one of full, tiny"
    response = generate(running.url, decoder="tiny")
    assert response.status_code == 400 and response.json()["error"]["field"] == "decoder"
    assert "needs the taesd model, which is not installed: pennello install taesd" in response.json()["error"]["message"]


def test_a_saved_pipeline_with_an_unknown_decoder_is_refused_naming_it(server):
    response = requests.put(server.api("/pipelines/draft"), json={"prompt": "x", "decoder": "medium"}, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"] == {**response.json()["error"], "field": "decoder",
                                        "message": "decoder must be one of full, tiny"}
    assert requests.put(server.api("/pipelines/draft"), json={"prompt": "x", "decoder": "tiny"},
                        timeout=30).status_code == 200
