"""The AUTOMATIC1111-compatible API on a real server, with the response shapes A1111 clients read."""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time

import numpy as np
import pytest
import requests
from PIL import Image



@pytest.fixture
def url(api_server):
    return api_server()


def _pixels(b64: str) -> np.ndarray:
    data = base64.b64decode(b64)
    assert data.startswith(b"\x89PNG")
    return np.asarray(Image.open(io.BytesIO(data)))


def test_txt2img_batches_and_seeds_like_a1111(url):
    body = {"prompt": "a red kite", "negative_prompt": "blurry", "steps": 3, "cfg_scale": 1.5,
            "width": 64, "height": 64, "seed": 42, "batch_size": 2, "n_iter": 2,
            "sampler_name": "Euler a", "restore_faces": False, "styles": [], "send_images": True}
    response = requests.post(f"{url}/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert set(result) == {"images", "parameters", "info"}
    pictures = [_pixels(image) for image in result["images"]]
    assert len(pictures) == 4 and all(p.shape == (64, 64, 3) for p in pictures)
    assert len({p.tobytes() for p in pictures}) == 4
    assert result["parameters"]["seed"] == 42 and result["parameters"]["sampler_name"] == "Euler a"
    info = json.loads(result["info"])
    assert info["seed"] == 42 and info["all_seeds"] == [42, 43, 44, 45]
    assert info["all_prompts"] == ["a red kite"] * 4 and info["negative_prompt"] == "blurry"
    assert (info["width"], info["height"], info["steps"], info["cfg_scale"]) == (64, 64, 3, 1.5)
    assert info["sd_model_name"] == "pennello-tiny" and len(info["sd_model_hash"]) == 10
    assert len(info["infotexts"]) == 4 and "Seed: 43" in info["infotexts"][1]
    assert info["infotexts"][0].startswith("a red kite\nNegative prompt: blurry\nSteps: 3")


def test_same_seed_same_picture_as_the_native_api(url):
    a1111 = requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "a kite", "seed": 7, "steps": 2}).json()
    native = requests.post(f"{url}/api/generate", json={"prompt": "a kite", "seed": 7, "steps": 2,
                                                         "wait": True}).json()
    native_png = requests.get(url + native["images"][0]["url"]).content
    assert np.array_equal(_pixels(a1111["images"][0]), np.asarray(Image.open(io.BytesIO(native_png))))


def test_seed_minus_one_is_random_then_consecutive(url):
    infos = [json.loads(requests.post(f"{url}/sdapi/v1/txt2img", json={
        "prompt": "a kite", "seed": -1, "batch_size": 2, "steps": 1}).json()["info"]) for _ in range(2)]
    for info in infos:
        assert 0 <= info["seed"] and info["all_seeds"] == [info["seed"], info["seed"] + 1]
    assert infos[0]["seed"] != infos[1]["seed"]


def test_send_images_false_and_model_by_checkpoint_title(url):
    title = requests.get(f"{url}/sdapi/v1/sd-models").json()[0]["title"]
    result = requests.post(f"{url}/sdapi/v1/txt2img", json={
        "prompt": "x", "steps": 1, "send_images": False,
        "override_settings": {"sd_model_checkpoint": title}}).json()
    assert result["images"] == [] and json.loads(result["info"])["sd_model_name"] == "pennello-tiny"
    missing = requests.post(f"{url}/sdapi/v1/txt2img", json={
        "prompt": "x", "override_settings": {"sd_model_checkpoint": "v1-5-pruned.safetensors [6ce0161689]"}})
    assert missing.status_code == 404 and "v1-5-pruned.safetensors" in missing.json()["error"]["message"]


@pytest.mark.parametrize("body, field", [
    ({"prompt": "x", "enable_hr": True, "hr_upscaler": "ESRGAN_4x"}, "hr_upscaler"),
    ({"prompt": "x", "enable_hr": True, "hr_scale": 64}, "hr_scale"),
    ({"prompt": "x", "enable_hr": True, "hr_resize_y": 2000}, "hr_resize_y"),
    ({"prompt": "x", "enable_hr": True, "denoising_strength": 1.5}, "denoising_strength"),
    ({"prompt": "x", "enable_hr": True, "hr_sampler_name": "Euler z"}, "hr_sampler_name"),
    ({"prompt": "x", "script_name": "x/y/z plot"}, "script_name"),
    ({"prompt": "x", "sampler_name": "Euler z"}, "sampler_name"),
    ({"prompt": "x", "scheduler": "Polyexponential"}, "scheduler"),
    ({"prompt": "x", "restore_faces": 2}, "restore_faces"),
    ({"prompt": "x", "batch_size": 0}, "batch_size"),
    ({"prompt": "x", "n_iter": -1}, "n_iter"),
    ({"prompt": "x", "steps": "many"}, "steps"),
    ({"prompt": "x", "width": 65}, "width"),
    ({"prompt": "x", "steps": True}, "steps"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "x", "override_settings": {"sd_model_checkpoint": 3}}, "override_settings"),
])
def test_refusals_name_the_field(url, body, field):
    response = requests.post(f"{url}/sdapi/v1/txt2img", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == field


# A1111's own test/test_txt2img.py (simple_txt2img_request, test_txt2img_with_hrfix_performed): its
# hires fix at denoising_strength 0 only enlarges (a 400 before, for enable_hr).
A1111_TXT2IMG_TEST_BODY = {
    "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0, "enable_hr": True, "eta": 0,
    "firstphase_height": 0, "firstphase_width": 0, "height": 64, "n_iter": 1, "negative_prompt": "",
    "prompt": "example prompt", "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0, "s_tmin": 0,
    "sampler_index": "Euler a", "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3,
    "styles": [], "subseed": -1, "subseed_strength": 0, "tiling": False, "width": 64}


def test_a1111s_own_hires_fix_test_body(url):
    response = requests.post(f"{url}/sdapi/v1/txt2img", json=A1111_TXT2IMG_TEST_BODY)
    assert response.status_code == 200, response.text
    assert _pixels(response.json()["images"][0]).shape == (128, 128, 3)  # hr_scale's default, 2
    text = json.loads(response.json()["info"])["infotexts"][0]
    assert "Size: 64x64" in text and "Hires upscale: 2, Hires upscaler: Latent" in text, text
    assert "Denoising strength: 0, Hires upscale: 2" in text, text


def test_a_missing_ai_upscaler_is_a_404_before_any_drawing(url, api_engine):
    """hr_upscaler "ai" without the AI upscaler installed failed only after the first pass."""
    calls = api_engine.stats["pipeline_calls"]
    response = requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "x", "enable_hr": True, "hr_upscaler": "AI"})
    assert response.status_code == 404 and response.json()["error"]["field"] == "hr_upscaler", response.text
    assert "pennello install" in response.json()["error"]["message"]
    assert api_engine.stats["pipeline_calls"] == calls
    extras = requests.post(f"{url}/sdapi/v1/extra-single-image", json={
        "image": base64.b64encode(_png_bytes()).decode(), "upscaler_1": "ai"})
    assert extras.status_code == 404 and extras.json()["error"]["field"] == "upscaler_1", extras.text


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buffer, "PNG")
    return buffer.getvalue()


def test_unknown_fields_and_scripts_are_ignored_and_logged_once(url, caplog):
    """A1111 ignores what it does not know (these two were 400s before); the log still says so."""
    body = {"prompt": "x", "steps": 1, "no_such_field": 1, "alwayson_scripts": {"controlnet": {}}}
    with caplog.at_level(logging.INFO, logger="pennello.daemon.http.routes.a1111.lenient"):
        for _ in range(2):
            response = requests.post(f"{url}/sdapi/v1/txt2img", json=body)
            assert response.status_code == 200, response.text
    notes = [r.getMessage() for r in caplog.records if r.name.endswith("a1111.lenient")]
    assert sum("no_such_field" in n for n in notes) == 1 and sum("controlnet" in n for n in notes) == 1


def test_off_values_of_unsupported_features_are_fine(url):
    response = requests.post(f"{url}/sdapi/v1/txt2img", json={
        "prompt": "x", "steps": 1, "enable_hr": False, "script_name": None, "alwayson_scripts": {}})
    assert response.status_code == 200


def test_sd_models_shape(url, api_engine):
    (model,) = requests.get(f"{url}/sdapi/v1/sd-models").json()
    digest = api_engine.models()[0]["digest"]
    assert model == {"title": f"pennello-tiny [{digest[:10]}]", "model_name": "pennello-tiny",
                     "hash": digest[:10], "sha256": digest, "filename": "pennello-tiny", "config": None}


def test_progress_idle_and_while_running(url):
    idle = requests.get(f"{url}/sdapi/v1/progress").json()
    assert idle["progress"] == 0 and idle["eta_relative"] == 0 and idle["current_image"] is None
    assert idle["state"]["job_count"] == 0 and set(idle["state"]) == {
        "skipped", "interrupted", "stopping_generation", "job", "job_count", "job_timestamp", "job_no",
        "sampling_step", "sampling_steps"}
    worker = threading.Thread(target=requests.post, args=(f"{url}/sdapi/v1/txt2img",),
                              kwargs={"json": {"prompt": "slow", "steps": 100, "seed": 1}})
    worker.start()
    seen = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and worker.is_alive():
        now = requests.get(f"{url}/sdapi/v1/progress", params={"skip_current_image": "true"}).json()
        if now["state"]["sampling_step"] > 0:
            seen = now
            for job_id in requests.get(f"{url}/api/progress").json()["jobs"]:
                requests.delete(f"{url}/api/jobs/{job_id}")  # seen enough; don't wait 100 steps
            break
        time.sleep(0.02)
    worker.join()
    assert seen is not None, "never saw the job running"
    assert 0 < seen["progress"] <= 1 and seen["eta_relative"] >= 0
    assert seen["state"]["job"] == "txt2img" and seen["state"]["sampling_steps"] == 100
    assert seen["state"]["job_count"] == 1 and len(seen["state"]["job_timestamp"]) == 14


def test_a_picture_not_kept_is_not_synced_after_it_left(tmp_path):
    """The saver syncs a batch's files after the answer; one an A1111 client did not keep may be
    gone by then (FileNotFoundError was logged as a failed sync)."""
    from pennello.files import make_durable, write_atomic

    kept, gone = tmp_path / "kept.png", tmp_path / "gone.png"
    for path in (kept, gone):
        write_atomic(path, b"x", durable=False)
    gone.unlink()
    make_durable([gone, kept])
