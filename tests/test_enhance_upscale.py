"""Auto-enhance and upscaling: the algorithms on real pictures of the embedded model, the HTTP
routes on a real server (uploads, limits, metadata), and ``pennello enhance`` / ``upscale``."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
import requests
from click.testing import CliRunner
from PIL import Image, ImageFilter

from _fixtures_api import StoreWithExtras, installed_as, png_bytes
from pennello.cli import cli
from pennello.config import ImagesConfig
from pennello.daemon.pictures.enhance import enhance, measure
from pennello.daemon.pictures.uploads import ALGORITHMICALLY_ENHANCED, decode_upload
from pennello.daemon.engine.outputs import TRAINED_ALGORITHMIC_MEDIA, parse_xmp
from pennello.daemon.tools.upscale import upscale_lanczos
from pennello.errors import RequestError, TooLargeError


def _degrade(image: Image.Image) -> Image.Image:
    """Washed out (values squeezed into 80-180) and soft (blurred): what enhance should fix."""
    pixels = np.asarray(image.resize((256, 256), Image.Resampling.BICUBIC), dtype=np.float64)
    washed = 80 + (pixels - pixels.min()) / max(np.ptp(pixels), 1) * 100
    return Image.fromarray(washed.astype(np.uint8)).filter(ImageFilter.GaussianBlur(2))


def _fake_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (no pixel data): a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _record(url: str, image: dict) -> tuple[str | None, dict]:
    data = requests.get(url + image["url"], timeout=30).content
    with Image.open(io.BytesIO(data)) as picture:
        return parse_xmp(picture.info["xmp"])


# --- enhance -------------------------------------------------------------------------------------

def _scene() -> Image.Image:
    """A picture with the full range and crisp edges: a grey ramp with coloured squares on it."""
    ramp = np.tile(np.linspace(0, 255, 64), (64, 1))
    pixels = np.stack([ramp, ramp, ramp], axis=2)
    pixels[8:24, 8:24] = (220, 30, 30)
    pixels[40:56, 36:52] = (20, 40, 200)
    return Image.fromarray(pixels.astype(np.uint8))


def test_enhance_restores_contrast_and_sharpness_of_a_degraded_picture():
    # Not a generated picture: how much range the model's output has is not what this checks.
    degraded = _degrade(_scene())
    result = enhance(degraded)
    assert result.applied == ["contrast", "sharpness"]
    assert result.after["contrast_spread"] > result.before["contrast_spread"] + 0.3
    assert result.after["sharpness"] > 2 * result.before["sharpness"]
    assert result.after == measure(result.image) and result.image.size == degraded.size
    # One linear stretch for R, G and B: the mid-tone stays near where it was.
    assert abs(result.after["brightness"] - result.before["brightness"]) < 30


def test_enhance_leaves_a_crisp_full_range_picture_alone():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    crisp = Image.fromarray(pixels)
    result = enhance(crisp)
    assert result.applied == [] and result.before == result.after
    assert np.array_equal(np.asarray(result.image), pixels)


def test_enhance_a_solid_colour_is_a_no_op():
    result = enhance(Image.new("RGB", (32, 32), (90, 140, 60)))
    assert result.applied == [] and result.before["contrast_spread"] == 0.0


def test_post_enhance_saves_the_result_with_before_and_after_metrics(url, drawn):
    upload = png_bytes(_degrade(drawn))
    response = requests.post(f"{url}/api/enhance", files={"image": ("washed.png", upload)}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["applied"] == ["contrast", "sharpness"]
    assert body["after"]["contrast_spread"] > body["before"]["contrast_spread"]
    assert body["image"]["enhance"]["before"] == body["before"]
    source, record = _record(url, body["image"])
    # An upload pennello did not draw is marked enhanced, not AI-made.
    assert source == ALGORITHMICALLY_ENHANCED
    assert record["tool"] == "enhance" and record["enhance"]["after"] == body["after"]
    assert record["from_upload"].startswith("sha256:") and record["owner"] == "local"
    gallery = requests.get(f"{url}/api/outputs", timeout=30).json()["images"]
    assert gallery[0]["id"] == body["image"]["id"] and gallery[0]["enhance"]["applied"]


def test_enhance_a_gallery_picture_by_id_keeps_it_marked_as_ai_made(url):
    job = requests.post(f"{url}/api/generate", json={"prompt": "a kite", "seed": 5, "wait": True},
                        timeout=120).json()
    response = requests.post(f"{url}/api/enhance", files={"image_id": (None, job["images"][0]["id"]),
                                                           "format": (None, "webp")}, timeout=60)
    assert response.status_code == 200, response.text
    image = response.json()["image"]
    assert image["format"] == "webp"
    source, record = _record(url, image)
    assert source == TRAINED_ALGORITHMIC_MEDIA and record["from_image"] == job["images"][0]["id"]


def test_generate_with_enhance_true_measures_and_records_each_picture(url):
    response = requests.post(f"{url}/api/generate", json={"prompt": "a red kite", "seed": 11, "n": 2,
                                                          "enhance": True, "wait": True}, timeout=120)
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["enhance"] is True
    for image in job["images"]:
        assert set(image["enhance"]) == {"before", "after", "applied"}
        _, record = _record(url, image)
        assert record["enhance"] == image["enhance"] and record["prompt"] == "a red kite"
    plain = requests.post(f"{url}/api/generate", json={"prompt": "a red kite", "seed": 11, "wait": True},
                          timeout=120).json()
    assert "enhance" not in plain["images"][0]


@pytest.mark.parametrize(("files", "data", "status", "field"), [
    ({}, {"format": "png"}, 400, "image"),
    ({"image": ("notes.txt", b"hello, not a picture")}, {}, 400, "image"),
    ({"image": ("empty.png", b"")}, {}, 400, "image"),
    ({"image": ("bomb.png", _fake_png_header(30000, 30000))}, {}, 413, "image"),
    ({"image": ("cut.png", _fake_png_header(64, 64))}, {}, 400, "image"),
    ({"image": ("x.png", png_bytes(Image.new("RGB", (8, 8))))}, {"format": "gif"}, 400, "format"),
    ({"image": ("x.png", png_bytes(Image.new("RGB", (8, 8))))}, {"colour": "red"}, 400, "colour"),
])
def test_enhance_refuses_bad_uploads_naming_the_field(url, files, data, status, field):
    response = requests.post(f"{url}/api/enhance", files=files or {"format": (None, "png")},
                             data=data if files else None, timeout=30)
    assert response.status_code == status, response.text
    assert response.json()["error"]["field"] == field


def test_enhance_needs_multipart(url):
    response = requests.post(f"{url}/api/enhance", json={"image_id": "x"}, timeout=30)
    assert response.status_code == 400 and "multipart" in response.json()["error"]["message"]


def test_decode_limits_bytes_pixels_and_format():
    small = ImagesConfig(max_upload_bytes=1000, max_upload_pixels=100)
    with pytest.raises(TooLargeError, match="max_upload_bytes"):
        decode_upload(b"\x89PNG\r\n\x1a\n" + b"0" * 2000, small)
    with pytest.raises(TooLargeError, match="11x11"):
        decode_upload(png_bytes(Image.new("RGB", (11, 11))), small)
    gif = io.BytesIO()
    Image.new("RGB", (4, 4)).save(gif, "GIF")
    with pytest.raises(RequestError, match="not a PNG, JPEG or WebP"):
        decode_upload(gif.getvalue(), small)
    assert decode_upload(png_bytes(Image.new("RGBA", (10, 10))), small).mode == "RGB"


# --- upscale -------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [2, 4, 8])
def test_tiled_lanczos_equals_a_whole_picture_resize(drawn, scale):
    source = drawn.resize((100, 76))  # tiles that do not divide the picture evenly
    tiled = upscale_lanczos(source, scale, tile=24)
    whole = source.resize((100 * scale, 76 * scale), Image.Resampling.LANCZOS)
    assert tiled.size == whole.size
    difference = np.abs(np.asarray(tiled, dtype=np.int16) - np.asarray(whole, dtype=np.int16))
    assert difference.max() <= 1


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_post_upscale_scales_and_records(url, drawn, scale):
    response = requests.post(f"{url}/api/upscale", files={"image": ("kite.png", png_bytes(drawn))},
                             data={"scale": str(scale)}, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["image"]["width"], body["image"]["height"]) == (64 * scale, 64 * scale)
    assert body["upscale"] == {"method": "lanczos", "scale": scale, "from": "64x64",
                               "to": f"{64 * scale}x{64 * scale}", "tile": 256, "model": None}
    _, record = _record(url, body["image"])
    assert record["upscale"]["scale"] == scale and record["size"] == f"{64 * scale}x{64 * scale}"


def test_the_client_upscales_a_gallery_picture_as_the_tray_does(url):
    from pennello.client import Client

    client = Client(url)
    (made,) = client.generate("a small red circle", seed=3)
    bigger = client.upscale(made["id"], 4)
    assert (bigger["width"], bigger["height"]) == (made["width"] * 4, made["height"] * 4)
    assert bigger["upscale"]["method"] == "lanczos"
    _, record = _record(url, bigger)
    assert record["from_image"] == made["id"]
    with Image.open(io.BytesIO(bigger["bytes"])) as picture:
        assert picture.size == (bigger["width"], bigger["height"])


def test_upscale_with_enhance(url, drawn):
    response = requests.post(f"{url}/api/upscale", files={"image": ("k.png", png_bytes(_degrade(drawn)))},
                             data={"scale": "2", "enhance": "true"}, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["image"]["enhance"]["applied"]


@pytest.mark.parametrize(("data", "status", "field", "words"), [
    ({"scale": "3"}, 400, "scale", "2, 4, 8"),
    ({"scale": "four"}, 400, "scale", "integer"),
    ({}, 400, "scale", "required"),
    ({"scale": "4", "method": "bicubic"}, 400, "method", "ai, lanczos"),
    ({"scale": "4", "method": "ai"}, 404, "method", "sd-x4-upscaler"),
])
def test_upscale_refuses_bad_requests_clearly(url, drawn, data, status, field, words):
    response = requests.post(f"{url}/api/upscale", files={"image": ("k.png", png_bytes(drawn))}, data=data,
                             timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field and words in error["message"]


def test_upscale_refuses_a_result_over_the_output_limit(url):
    big = png_bytes(Image.new("RGB", (1100, 1100), (20, 40, 60)))  # 8x would be 8800x8800 > 8192x8192
    response = requests.post(f"{url}/api/upscale", files={"image": ("big.png", big)}, data={"scale": "8"},
                             timeout=30)
    assert response.status_code == 413
    assert response.json()["error"]["field"] == "scale" and "8800x8800" in response.json()["error"]["message"]


# --- CLI -----------------------------------------------------------------------------------------

def test_cli_enhance_and_upscale(url, drawn, tmp_path):
    source = tmp_path / "washed.png"
    _degrade(drawn).save(source)
    runner = CliRunner()
    result = runner.invoke(cli, ["enhance", str(source), "--url", url])
    assert result.exit_code == 0, result.output
    assert "washed-enhanced.png" in result.output and "applied: contrast, sharpness" in result.output
    with Image.open(tmp_path / "washed-enhanced.png") as image:
        assert image.size == (256, 256)
    result = runner.invoke(cli, ["upscale", str(source), "--scale", "4", "--url", url, "--out",
                                 str(tmp_path / "big")])
    assert result.exit_code == 0, result.output
    assert "256x256 -> 1024x1024" in result.output
    with Image.open(tmp_path / "big" / "washed-x4.png") as image:
        assert image.size == (1024, 1024)
    result = runner.invoke(cli, ["upscale", str(source), "--method", "ai", "--url", url])
    assert result.exit_code != 0 and "sd-x4-upscaler" in result.output


# --- the AI upscaler as a job (a tiny random-weight StableDiffusionUpscalePipeline) ---------------

def _tiny_upscaler(home, name="sd-x4-upscaler"):
    """A real StableDiffusionUpscalePipeline built here from the embedded model's text encoder,
    tokenizer and VAE (its VAE scales by 4, as the x4 upscaler's does) and a small random UNet
    taking latents plus the low-res picture (4 + 3 channels), installed under ``name``."""
    import torch
    from diffusers import (DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, StableDiffusionUpscalePipeline,
                           UNet2DConditionModel)

    from pennello.installer import Store

    tiny = Store(home).get("pennello-tiny")
    base = StableDiffusionPipeline.from_pretrained(tiny.path, local_files_only=True)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=7, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=base.text_encoder.config.hidden_size, attention_head_dim=4, norm_num_groups=8,
        num_class_embeds=1000)  # the noise level of the low-res picture is its class label
    pipe = StableDiffusionUpscalePipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=unet,
        low_res_scheduler=DDPMScheduler(), scheduler=DDIMScheduler(prediction_type="v_prediction"),
        max_noise_level=350)
    target = home.cache_dir / name
    pipe.save_pretrained(target)
    return installed_as(tiny, target, name, "sd-upscale", "StableDiffusionUpscalePipeline")


@pytest.fixture
def ai_server(make_server, make_engine, home):
    from pennello.installer import Store

    store = StoreWithExtras(Store(home))
    running = make_server(engine=make_engine(store=store))
    store.extra["sd-x4-upscaler"] = _tiny_upscaler(home)
    return running


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_ai_upscale_runs_as_a_job_of_the_catalog_model(ai_server, drawn, scale):
    small = drawn.resize((40, 32))
    response = requests.post(f"{ai_server.url}/api/upscale", files={"image": ("s.png", png_bytes(small))},
                             data={"scale": str(scale), "method": "ai"}, timeout=300)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["image"]["width"], body["image"]["height"]) == (40 * scale, 32 * scale)
    assert body["upscale"]["model"] == "sd-x4-upscaler" and body["upscale"]["method"] == "ai"
    (job,) = [j for j in requests.get(f"{ai_server.url}/api/jobs", timeout=10).json()["jobs"]
              if j["kind"] == "upscale"]
    # One 128-pixel tile, 20 denoising steps, each a progress step of the job.
    assert job["status"] == "done" and job["tiles"] == 1 and job["total_steps"] == 20 and job["step"] == 20
    assert job["model"] == "sd-x4-upscaler" and job["images"] == []  # the route saved the picture


def test_ai_upscale_is_tiled_and_can_be_cancelled(ai_server, drawn):
    import threading

    big = drawn.resize((240, 240))  # 2 x 2 overlapping tiles of 128 (stride 112): 4 x 20 steps
    answers: list[requests.Response] = []
    thread = threading.Thread(target=lambda: answers.append(requests.post(
        f"{ai_server.url}/api/upscale", files={"image": ("b.png", png_bytes(big))},
        data={"scale": "4", "method": "ai"}, timeout=300)))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not [j for j in ai_server.engine.jobs() if j.kind == "upscale" and j.step > 0]:
            assert time.monotonic() < deadline, "the upscale job never made progress"
            time.sleep(0.05)
        (job,) = [j for j in ai_server.engine.jobs() if j.kind == "upscale"]
        assert job.total_steps == 4 * 20
        assert requests.delete(f"{ai_server.url}/api/jobs/{job.id}", timeout=10).json()["status"] == "cancelled"
    finally:
        thread.join(120)
    assert answers and answers[0].status_code == 409, answers and answers[0].text
    assert "cancelled" in answers[0].json()["error"]["message"] and job.step < job.total_steps
