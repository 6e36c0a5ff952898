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
    client = Client(catalog_daemon.url)
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
