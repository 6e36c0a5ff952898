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

from _fixtures_api import StoreWithExtras, installed_as, png_bytes
from _fixtures_daemon import SLOW_STEPS, config_with, wait_until_running
from pennello.cli import cli
from pennello.daemon.tools.edit import fit_size, mask_to_l
from pennello.daemon.pictures.uploads import COMPOSITE_WITH_TRAINED_MEDIA
from pennello.daemon.engine.outputs import parse_xmp
from pennello.daemon.engine.families import get_family
from _fixtures_owner import owner_token


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
    loaded = api_engine.residency.loaded["pennello-tiny"]
    assert loaded.derived["img2img"].unet is loaded.pipe.unet and loaded.derived["img2img"].vae is loaded.pipe.vae


def test_strength_sets_how_many_denoising_steps_run(url, drawn, api_engine):
    """img2img starts part-way: strength x steps UNet calls (guidance 1.0: one call per step).
    The embedded model's weights are random, so this is checked by counting, not by pixels."""
    unet = api_engine.residency.loaded["pennello-tiny"].pipe.unet
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
    pipe = api_engine.residency.loaded["pennello-tiny"].derived["inpaint"]
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
    return openai.OpenAI(base_url=f"{url}/v1", api_key=owner_token(url), max_retries=0, timeout=120)


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
    assert error.value.body["param"] == "image" and "one picture at a time; got 2" in error.value.body["message"]
    with pytest.raises(openai.NotFoundError) as error:
        # (dall-e-2 would be the default model: tests/test_clients_auth.py)
        client.images.edit(image=("a.png", png_bytes(drawn), "image/png"), prompt="x", model="no-such-model")
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

    from pennello.daemon.http.openapi import build_spec

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
        check({"init_images": ["a", "b", "c", "d"]}, "A1111Img2ImgRequest")


# --- edits are jobs: queue, progress, cancel, 429 (issue 7) ----------------------------------------

def test_an_edit_streams_progress_events_like_a_generation(url, drawn):
    from pennello.client import sse_events

    files = {"image": ("in.png", png_bytes(drawn))}
    with requests.post(f"{url}/api/edit", files=files, stream=True, timeout=120, data={
            "prompt": "a house", "strength": "0.5", "steps": "8", "seed": "3", "stream": "true"}) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = list(sse_events(response))
    names = [name for name, _ in events]
    # strength 0.5 of 8 steps: img2img runs the last 4 of the schedule, one event each.
    assert names == ["job", "progress", "progress", "progress", "progress", "done"], names
    assert [data["step"] for name, data in events if name == "progress"] == [1, 2, 3, 4]
    done = events[-1][1]
    assert done["kind"] == "edit" and done["mode"] == "img2img" and done["total_steps"] == 4
    assert done["progress"] == 1.0 and len(done["images"]) == 1 and done["seeds"] == [3]


def test_an_edit_job_is_listed_and_can_be_cancelled(url, drawn, api_engine):
    response = requests.post(f"{url}/api/edit", files={"image": ("in.png", png_bytes(drawn))}, timeout=60,
                             data={"prompt": "slow", "strength": "1", "steps": str(SLOW_STEPS), "n": "4",
                                   "wait": "false"})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert response.headers["Location"] == f"/api/jobs/{job_id}"
    assert job_id in [job["id"] for job in requests.get(f"{url}/api/jobs", timeout=10).json()["jobs"]]
    wait_until_running(api_engine.get_job(job_id))
    cancelled = requests.delete(f"{url}/api/jobs/{job_id}", timeout=10).json()
    assert cancelled["status"] == "cancelled" and cancelled["kind"] == "edit"
    job = api_engine.get_job(job_id)
    assert job.wait(30) and 0 < job.step < SLOW_STEPS and job.images == []
    # The worker goes on: the next edit (a job of its own) finishes.
    after = _edit(url, png_bytes(drawn), steps=4, strength=0.5)
    assert after.status_code == 200 and after.json()["status"] == "done"


def test_edits_count_against_the_queue_and_a_full_queue_is_429(make_server, drawn):
    from pennello.daemon.engine.jobs import GenerateRequest

    running = make_server(config_with(engine={"queue_size": 1}))
    blocker = running.engine.submit(GenerateRequest(prompt="busy", steps=SLOW_STEPS))
    wait_until_running(blocker)
    waiting = _edit(running.url, png_bytes(drawn), wait="false", steps=4)
    assert waiting.status_code == 202, waiting.text
    refused = _edit(running.url, png_bytes(drawn), steps=4)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["type"] == "busy"
    running.engine.cancel(blocker.id)
    edit_job = running.engine.get_job(waiting.json()["id"])
    assert edit_job.wait(60) and edit_job.status == "done" and edit_job.kind == "edit"
    assert edit_job.batch_size == 1  # run alone, never batched with text-to-image jobs


def test_edit_jobs_are_private_to_their_owner(api_engine, drawn):
    from pennello.daemon.tools.edit import EditRequest, submit_edit
    from pennello.errors import NotFoundError

    job = submit_edit(api_engine, EditRequest(prompt="mine", image=drawn, steps=2, owner="device-a"))
    assert job.wait(60) and job.status == "done"
    assert api_engine.get_job(job.id, owner="device-a") is job
    with pytest.raises(NotFoundError):
        api_engine.get_job(job.id, owner="device-b")
    assert job.id not in [j.id for j in api_engine.jobs(owner="device-b")]


# --- several pictures: only for families that take references ------------------------------------

def test_several_pictures_to_an_sd_class_model_are_refused_naming_the_limit(url, drawn):
    files = [("image", ("a.png", png_bytes(drawn))), ("image", ("b.png", png_bytes(drawn)))]
    response = requests.post(f"{url}/api/edit", files=files, data={"prompt": "both"}, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["field"] == "image" and "one picture at a time; got 2" in error["message"]
    assert "qwen-image-edit" in error["message"]
    init = base64.b64encode(png_bytes(drawn)).decode()
    response = requests.post(f"{url}/sdapi/v1/img2img", json={"init_images": [init, init], "prompt": "x"},
                             timeout=60)
    assert response.status_code == 400 and response.json()["error"]["field"] == "init_images"


def _as_family(home, name, family, cls):
    """The embedded model's files installed under another name whose manifest names another
    family: enough for everything that happens before the weights load."""
    import shutil

    from pennello.installer import Store

    tiny = Store(home).get("pennello-tiny")
    target = home.cache_dir / name
    shutil.copytree(tiny.path, target)
    return installed_as(tiny, target, name, family, cls)


def test_reference_limits_and_masks_for_an_instruction_edit_family(make_server, make_engine, home, drawn):
    from pennello.installer import Store

    store = StoreWithExtras(Store(home))
    running = make_server(engine=make_engine(store=store))
    store.extra["editor"] = _as_family(home, "editor", "qwen-image-edit", "QwenImageEditPlusPipeline")
    store.extra["editor-v1"] = _as_family(home, "editor-v1", "qwen-image-edit", "QwenImageEditPipeline")

    def post(model, count, mask=False):
        files = [("image", (f"{i}.png", png_bytes(drawn))) for i in range(count)]
        if mask:
            files.append(("mask", ("m.png", png_bytes(_half_mask()))))
        return requests.post(f"{running.url}/api/edit", files=files, data={"prompt": "x", "model": model},
                             timeout=60)

    too_many = post("editor", 4)
    assert too_many.status_code == 400 and too_many.json()["error"]["field"] == "image"
    assert "takes at most 3 picture(s)" in too_many.json()["error"]["message"]
    assert post("editor-v1", 2).json()["error"]["message"].startswith("editor-v1 (QwenImageEditPipeline) "
                                                                      "takes at most 1 picture(s)")
    masked = post("editor", 1, mask=True)
    assert masked.status_code == 400 and masked.json()["error"]["field"] == "mask"
    assert "editor" not in running.engine.health()["loaded"]  # refused before any load
    # Text-to-image with the edit model: a clear 400 sending the client to /api/edit.
    drawing = requests.post(f"{running.url}/api/generate", json={"prompt": "x", "model": "editor"}, timeout=30)
    assert drawing.status_code == 400 and drawing.json()["error"]["field"] == "model"
    assert "POST /api/edit" in drawing.json()["error"]["message"]


def test_a_family_names_what_it_needs_before_loading(tmp_path):
    """A package the family requires and this environment lacks: say so, not a deep ImportError
    from inside from_pretrained. (Qwen-Image-Edit no longer needs torchvision, see
    daemon/engine/qwen_processor.py; an extension's family can still require a package.)"""
    import dataclasses

    from pennello.errors import StoreError

    needy = dataclasses.replace(get_family("qwen-image-edit"), requires=("pennello_no_such_package",))
    with pytest.raises(StoreError, match="needs pennello_no_such_package, which is not installed"):
        needy.load("QwenImageEditPlusPipeline", tmp_path, "cpu", torch.float32)
