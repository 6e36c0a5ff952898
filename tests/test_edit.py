"""Image-to-image and inpainting on the embedded model: ``POST /api/edit``, OpenAI's
``/v1/images/edits`` driven by the official ``openai`` client, A1111's ``/sdapi/v1/img2img``,
and ``pennello edit``. Pixels are compared with the input, never with fixed values."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import openai
import pytest
import requests
import torch
from click.testing import CliRunner
from PIL import Image

from _fixtures_api import api_engine, api_server, drawn, png_bytes, url, lan_address  # noqa: F401
from pennello.cli import cli
from pennello.daemon.edit import fit_size, mask_to_l
from pennello.daemon.imaging import COMPOSITE_WITH_TRAINED_MEDIA
from pennello.daemon.outputs import parse_xmp
from pennello.daemon.pipelines import get_family


def _fetch(url: str, image: dict) -> tuple[np.ndarray, str | None, dict]:
    data = requests.get(url + image["url"], timeout=30).content
    with Image.open(io.BytesIO(data)) as picture:
        source, record = parse_xmp(picture.info["xmp"])
        return np.asarray(picture.convert("RGB"), dtype=np.float64), source, record


def _edit(url: str, image: bytes, mask: bytes | None = None, **fields) -> requests.Response:
    files = {"image": ("in.png", image)}
    if mask is not None:
        files["mask"] = ("mask.png", mask)
    return requests.post(f"{url}/api/edit", files=files,
                         data={"prompt": "a house by a lake at night", **{k: str(v) for k, v in fields.items()}},
                         timeout=120)


def _half_mask() -> Image.Image:
    """White (repaint) on the right half, black (keep) on the left."""
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))
    return mask


def test_img2img_redraws_the_picture_reproducibly_and_records_it(url, drawn, api_engine):
    response = _edit(url, png_bytes(drawn), seed=5, n=2, strength=0.6, steps=8)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == "img2img" and body["seeds"] == [5, 6] and body["strength"] == 0.6
    assert (body["width"], body["height"]) == (64, 64) and len(body["images"]) == 2
    pixels, source, record = _fetch(url, body["images"][0])
    assert source == COMPOSITE_WITH_TRAINED_MEDIA
    assert record["tool"] == "edit" and record["mode"] == "img2img" and record["seed"] == 5
    assert record["from_upload"].startswith("sha256:") and record["model"] == "pennello-tiny"
    assert pixels.std() > 0 and not np.array_equal(pixels, np.asarray(drawn, dtype=np.float64))
    again = _edit(url, png_bytes(drawn), seed=5, n=2, strength=0.6, steps=8).json()
    assert np.array_equal(_fetch(url, again["images"][0])[0], pixels)  # same request, same picture
    alone = _edit(url, png_bytes(drawn), seed=5, strength=0.6, steps=8).json()
    # Batched kernels round differently: the same seed alone may differ by a level or two.
    assert np.abs(_fetch(url, alone["images"][0])[0] - pixels).max() <= 2
    # The edit pipeline was built from the loaded model's components: no second copy of the weights.
    loaded = api_engine._loaded["pennello-tiny"]
    assert loaded.derived["img2img"].unet is loaded.pipe.unet and loaded.derived["img2img"].vae is loaded.pipe.vae


def test_strength_sets_how_many_denoising_steps_run(url, drawn, api_engine):
    """img2img starts part-way: strength x steps UNet calls (guidance 1.0: one call per step).
    The embedded model's weights are random, so this is checked by counting, not by pixels."""
    unet = api_engine._loaded["pennello-tiny"].pipe.unet
    calls: list[int] = []
    hook = unet.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        counts = {}
        for strength in (0.25, 0.5, 1.0):
            calls.clear()
            assert _edit(url, png_bytes(drawn), seed=9, strength=strength, steps=8).status_code == 200
            counts[strength] = len(calls)
    finally:
        hook.remove()
    assert counts == {0.25: 2, 0.5: 4, 1.0: 8}


def test_inpainting_keeps_the_unmasked_half_and_redraws_the_masked_one(url, drawn, api_engine):
    """Checked in latent space (the embedded model's weights are random, so its pixels say little):
    where the mask is black the final latents are the picture's own, where white they are redrawn."""
    first = _edit(url, png_bytes(drawn), mask=png_bytes(_half_mask()), seed=3, steps=4)  # builds the pipeline
    assert first.status_code == 200, first.text
    assert first.json()["mode"] == "inpaint"
    assert _fetch(url, first.json()["images"][0])[2]["mask"].startswith("sha256:")
    pipe = api_engine._loaded["pennello-tiny"].derived["inpaint"]
    seen: dict[str, torch.Tensor] = {}
    prepare, decode = pipe.prepare_latents, pipe.vae.decode

    def spy_prepare(*args, **kwargs):
        out = prepare(*args, **kwargs)
        seen["picture"] = out[2]  # (latents, noise, image_latents) when the UNet has 4 channels
        return out

    def spy_decode(latents, *args, **kwargs):
        seen["final"] = latents * pipe.vae.config.scaling_factor
        return decode(latents, *args, **kwargs)

    pipe.prepare_latents, pipe.vae.decode = spy_prepare, spy_decode
    try:
        assert _edit(url, png_bytes(drawn), mask=png_bytes(_half_mask()), seed=3, strength=1.0, steps=4).status_code == 200
    finally:
        del pipe.prepare_latents, pipe.vae.decode
    half = seen["final"].shape[-1] // 2
    change = (seen["final"] - seen["picture"]).abs()
    kept, redrawn = change[..., :half], change[..., half:]
    assert kept.max() < 1e-4 and redrawn.mean() > 0.1


def test_edit_a_gallery_picture_with_enhance(url, drawn):
    job = requests.post(f"{url}/api/generate", json={"prompt": "a boat", "seed": 2, "wait": True},
                        timeout=120).json()
    response = requests.post(f"{url}/api/edit", files={"image_id": (None, job["images"][0]["id"]),
                                                        "prompt": (None, "a boat at sunset"),
                                                        "enhance": (None, "true")}, timeout=120)
    assert response.status_code == 200, response.text
    image = response.json()["images"][0]
    assert "enhance" in image and _fetch(url, image)[2]["from_image"] == job["images"][0]["id"]


@pytest.mark.parametrize(("fields", "status", "field"), [
    ({"strength": 0}, 400, "strength"),
    ({"strength": 1.5}, 400, "strength"),
    ({"strength": 0.1, "steps": 4}, 400, "strength"),  # 0.4 of a step: nothing to do
    ({"strength": "lots"}, 400, "strength"),
    ({"model": "nope"}, 404, "model"),
    ({"width": 65}, 400, "width"),
    ({"n": 0}, 400, "n"),
    ({"prompt": ""}, 400, "prompt"),
])
def test_edit_refuses_bad_fields_naming_them(url, drawn, fields, status, field):
    response = _edit(url, png_bytes(drawn), **fields)
    assert response.status_code == status, response.text
    assert response.json()["error"]["field"] == field


def test_edit_needs_an_image_and_a_prompt(url):
    response = requests.post(f"{url}/api/edit", files={"prompt": (None, "x")}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["field"] == "image"
    response = requests.post(f"{url}/api/edit", files={"image": ("a.png", png_bytes(Image.new("RGB", (64, 64))))},
                             timeout=30)
    assert response.status_code == 400 and response.json()["error"]["field"] == "prompt"
    response = requests.post(f"{url}/api/edit", files={"image": ("a.png", png_bytes(Image.new("RGB", (64, 64)))),
                                                        "mask": ("m.txt", b"not a picture")},
                             data={"prompt": "x"}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["field"] == "mask"


def test_size_fitting_and_mask_conventions():
    sd = get_family("sd")
    assert fit_size((64, 64), sd) == (64, 64)
    assert fit_size((3000, 1500), sd) == (1024, 512)
    assert fit_size((30, 45), sd) == (64, 96)
    hole = Image.new("RGBA", (4, 4), (10, 200, 30, 255))
    hole.putpixel((1, 1), (0, 0, 0, 0))
    as_l = np.asarray(mask_to_l(hole))
    assert as_l[1, 1] == 255 and as_l[0, 0] == 0  # transparent: repaint; opaque: keep
    assert np.asarray(mask_to_l(_half_mask()))[0, 40] == 255  # no alpha: white means repaint


# --- OpenAI ---------------------------------------------------------------------------------------

@pytest.fixture
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)


def test_official_openai_client_edits_and_inpaints(client, drawn):
    result = client.images.edit(image=("house.png", png_bytes(drawn), "image/png"), prompt="a house in snow",
                                n=2, size="64x64", response_format="b64_json")
    assert len(result.data) == 2 and result.size == "64x64"
    images = [Image.open(io.BytesIO(base64.b64decode(item.b64_json))) for item in result.data]
    assert all(image.size == (64, 64) and image.format == "PNG" for image in images)
    assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1]))
    # OpenAI's mask: the picture with a transparent hole where to repaint.
    mask = drawn.convert("RGBA")
    mask.paste((0, 0, 0, 0), (32, 0, 64, 64))
    result = client.images.edit(image=("house.png", png_bytes(drawn), "image/png"),
                                mask=("mask.png", png_bytes(mask), "image/png"), prompt="a tree",
                                output_format="webp", quality="high")
    (item,) = result.data
    assert Image.open(io.BytesIO(base64.b64decode(item.b64_json))).format == "WEBP"
    # A list of one image (sent as image[]) works too.
    result = client.images.edit(image=[("house.png", png_bytes(drawn), "image/png")], prompt="a barn",
                                response_format="url")
    assert result.data[0].url.startswith("http")


def test_openai_edit_errors_have_openai_shape(client, drawn):
    with pytest.raises(openai.BadRequestError) as error:
        client.images.edit(image=[("a.png", png_bytes(drawn), "image/png"), ("b.png", png_bytes(drawn), "image/png")],
                           prompt="two")
    assert error.value.body["param"] == "image" and "exactly one image" in error.value.body["message"]
    with pytest.raises(openai.NotFoundError) as error:
        client.images.edit(image=("a.png", png_bytes(drawn), "image/png"), prompt="x", model="dall-e-2")
    assert error.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as error:
        client.images.edit(image=("a.txt", b"text", "text/plain"), prompt="x")
    assert error.value.body["param"] == "image"


# --- A1111 ----------------------------------------------------------------------------------------

def test_a1111_img2img_and_inpainting(url, drawn):
    init = base64.b64encode(png_bytes(drawn)).decode()
    response = requests.post(f"{url}/sdapi/v1/img2img", json={
        "init_images": [init], "prompt": "a house by a lake", "denoising_strength": 0.5, "steps": 8,
        "seed": 4, "batch_size": 2, "sampler_name": "Euler a", "resize_mode": 0}, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 2 and info["all_seeds"] == [4, 5] and info["denoising_strength"] == 0.5
    assert Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).size == (64, 64)
    assert "init_images" not in body["parameters"]
    response = requests.post(f"{url}/sdapi/v1/img2img", json={
        "init_images": ["data:image/png;base64," + init], "mask": base64.b64encode(png_bytes(_half_mask())).decode(),
        "inpainting_mask_invert": 1, "prompt": "x", "seed": 1, "mask_blur": 4, "inpainting_fill": 1},
        timeout=120)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("body", "field"), [
    ({}, "init_images"),
    ({"init_images": []}, "init_images"),
    ({"init_images": ["!!not base64!!"]}, "init_images"),
    ({"init_images": [base64.b64encode(b"plain text").decode()]}, "init_images"),
    ({"denoising_strength": 0.0}, "denoising_strength"),
    ({"mask": "AAAA"}, "mask"),
    ({"enable_hr": True}, "enable_hr"),
])
def test_a1111_img2img_refuses_bad_input(url, drawn, body, field):
    request = {"init_images": [base64.b64encode(png_bytes(drawn)).decode()], "prompt": "x", **body}
    if body == {}:
        del request["init_images"]
    response = requests.post(f"{url}/sdapi/v1/img2img", json=request, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == field


# --- CLI ------------------------------------------------------------------------------------------

def test_cli_edit(url, drawn, tmp_path):
    source = tmp_path / "house.png"
    drawn.save(source)
    mask = tmp_path / "mask.png"
    _half_mask().save(mask)
    result = CliRunner().invoke(cli, ["edit", str(source), "a house at dawn", "--mask", str(mask), "-n", "2",
                                      "--seed", "7", "--url", url])
    assert result.exit_code == 0, result.output
    assert "house-edit-7.png" in result.output and "inpaint" in result.output
    with Image.open(tmp_path / "house-edit-8.png") as image:
        assert image.size == (64, 64)
    result = CliRunner().invoke(cli, ["edit", str(source), "x", "--model", "nope", "--url", url])
    assert result.exit_code != 0 and "nope" in result.output


# --- the OpenAPI description of the tools matches real answers ----------------------------------

def test_tool_responses_match_their_openapi_schemas(url, drawn):
    import jsonschema

    from pennello.daemon.openapi import build_spec

    spec = build_spec()

    def check(data, name):
        jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                         "components": spec["components"]}).validate(data)

    image = {"image": ("h.png", png_bytes(drawn))}
    check(requests.post(f"{url}/api/enhance", files=image, timeout=60).json(), "EnhanceResponse")
    check(requests.post(f"{url}/api/upscale", files=image, data={"scale": "2", "enhance": "1"},
                        timeout=60).json(), "UpscaleResponse")
    check(_edit(url, png_bytes(drawn), mask=png_bytes(_half_mask()), enhance="true").json(), "EditResponse")
    check(requests.post(f"{url}/v1/images/edits", files=image, data={"prompt": "x"}, timeout=60).json(),
          "OpenAIImagesResponse")
    check(requests.post(f"{url}/v1/images/edits", files=image, timeout=60).json(), "OpenAIError")
    init = base64.b64encode(png_bytes(drawn)).decode()
    check(requests.post(f"{url}/sdapi/v1/img2img", json={"init_images": [init], "prompt": "x"},
                        timeout=60).json(), "A1111Txt2ImgResponse")
    check(requests.post(f"{url}/api/upscale", files=image, data={"scale": "3"}, timeout=60).json(), "Error")
    with pytest.raises(jsonschema.ValidationError):
        check({"prompt": "x", "colour": "red"}, "EditForm")
    with pytest.raises(jsonschema.ValidationError):
        check({"init_images": ["a", "b"]}, "A1111Img2ImgRequest")
