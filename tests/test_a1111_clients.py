"""Real AUTOMATIC1111 clients against a real daemon on loopback: the ``webuiapi`` library, and the
request sequences Open WebUI and SillyTavern send, replayed exactly, each ending in real pictures.

Before this, Open WebUI stopped at its first call (``GET /sdapi/v1/options``: 404), SillyTavern
could not connect (options, samplers, schedulers, upscalers, sd-vae: 404) and every generation it
sent was refused for its own fields (``url``, ``auth``, ``clip_skip``, ``hr_additional_modules``),
and A1111's own API tests failed on ``inpainting_mask_invert: false``.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
import webuiapi
from PIL import Image

from pennello.daemon.engine.jobs import GenerateRequest

SIZE = {"width": 64, "height": 64}


def _picture(b64: str) -> Image.Image:
    data = base64.b64decode(b64)
    assert data.startswith(b"\x89PNG")
    return Image.open(io.BytesIO(data))


@pytest.fixture
def api(url):
    parts = urlsplit(url)
    return webuiapi.WebUIApi(host=parts.hostname, port=parts.port, sampler="Euler a", steps=2)


def test_webuiapi_reads_every_catalogue(api):
    assert api.util_get_current_model().startswith("pennello-tiny [")
    assert api.util_get_model_names() == [api.util_get_current_model()]
    assert {"Euler a", "DPM++ 2M", "DDIM", "PLMS", "UniPC", "LCM", "Heun", "DPM2"} <= set(api.util_get_sampler_names())
    assert {"automatic", "karras", "exponential"} <= set(api.util_get_scheduler_names())
    assert api.get_upscalers()[0]["name"] == "None" and "lanczos" in {u["name"] for u in api.get_upscalers()}
    styles = api.get_prompt_styles()
    assert styles and all("{prompt}" in s["prompt"] for s in styles)
    for empty in (api.get_sd_vae, api.get_loras, api.get_hypernetworks, api.get_face_restorers,
                  api.get_realesrgan_models, api.get_latent_upscale_modes):
        assert empty() == []
    assert api.get_embeddings() == {"loaded": {}, "skipped": {}}
    assert api.get_cmd_flags()["api"] is True and api.get_memory()["ram"]["total"] > 0
    assert api.get_scripts() == {"txt2img": [], "img2img": []}
    api.refresh_checkpoints()


def test_webuiapi_generates_with_a_sampler_and_reads_the_picture_back(api):
    result = api.txt2img(prompt="a red kite", seed=11, sampler_name="DPM++ 2M", scheduler="Karras",
                         batch_size=2, **SIZE)
    assert len(result.images) == 2 and result.images[0].size == (64, 64)
    assert result.info["sampler_name"] == "DPM++ 2M" and result.info["scheduler"] == "Karras"
    assert result.info["all_seeds"] == [11, 12]
    info = api.png_info(result.image).info
    assert info.startswith("a red kite\n") and "Seed: 11" in info


def test_webuiapi_switches_the_model_and_it_persists(api, url, api_engine):
    title = api.util_get_current_model()
    api.util_set_model("pennello-tiny")  # the closest title, posted as sd_model_checkpoint
    saved = json.loads((api_engine.paths.state_dir / "a1111-options.json").read_text())
    assert saved["local"]["sd_model_checkpoint"] == "pennello-tiny"
    assert api.util_get_current_model() == title
    api.set_options({"jpeg_quality": 80})  # unknown to pennello: kept and echoed
    assert api.get_options()["jpeg_quality"] == 80 and api.util_get_current_model() == title
    missing = requests.post(f"{url}/sdapi/v1/options", json={"sd_model_checkpoint": "v1-5-pruned [6ce0161689]"})
    assert missing.status_code == 404 and "v1-5-pruned" in missing.json()["error"]["message"]
    wrong = requests.post(f"{url}/sdapi/v1/options", json={"sd_model_checkpoint": 3})
    assert wrong.status_code == 400 and wrong.json()["error"]["field"] == "sd_model_checkpoint"


# Open WebUI (backend/open_webui/routers/images.py at 02530d50: verify_url, get_models,
# set_image_model, image_generations for the "automatic1111" engine), as data.
OPEN_WEBUI_HEADERS = {"authorization": ""}  # get_automatic1111_api_auth without API auth set
OPEN_WEBUI = [
    ("GET", "options", None),      # verify_url
    ("GET", "sd-models", None),    # get_models: id = title
    ("GET", "options", None),      # set_image_model reads them, then posts them back changed
    ("POST", "options", "<options with sd_model_checkpoint = the chosen model>"),
    ("GET", "options", None),      # get_image_model: options["sd_model_checkpoint"]
    ("POST", "txt2img", {"prompt": "a lighthouse at dusk", "batch_size": 1, **SIZE, "steps": 2,
                         "negative_prompt": "blurry"}),
]


def test_open_webui_sequence(url):
    options = None
    for method, route, body in OPEN_WEBUI:
        if body == OPEN_WEBUI[3][2]:
            body = {**options, "sd_model_checkpoint": "pennello-tiny"}
        response = requests.request(method, f"{url}/sdapi/v1/{route}", json=body, headers=OPEN_WEBUI_HEADERS)
        assert response.status_code == 200, (route, response.text)
        options = response.json() if route == "options" and method == "GET" else options
    result = response.json()
    assert _picture(result["images"][0]).size == (64, 64)
    assert json.loads(result["info"])["sd_model_name"] == "pennello-tiny"


# SillyTavern 1.12 (src/endpoints/stable-diffusion.js: ping, upscalers, vaes, samplers, schedulers,
# models, get-model, set-model, generate; the body from public/scripts/extensions/stable-diffusion/
# index.js generateAutoImage with its default settings, at 64x64 and 2 steps for a CPU).
SILLYTAVERN_HEADERS = {"Authorization": "Basic "}  # getBasicAuthHeader("") on every call
SILLYTAVERN = [
    ("GET", "options"), ("GET", "upscalers"), ("GET", "latent-upscale-modes"), ("GET", "sd-vae"),
    ("GET", "sd-modules"), ("GET", "samplers"), ("GET", "schedulers"), ("GET", "sd-models"),
    ("GET", "options"),
]
SILLYTAVERN_GENERATE = {
    "url": "http://127.0.0.1:7860", "auth": "", "prompt": "a cat in a teacup", "negative_prompt": "",
    "sampler_name": "DDIM", "scheduler": "normal", "steps": 2, "cfg_scale": 7, **SIZE,
    "restore_faces": False, "enable_hr": False, "hr_upscaler": "Latent", "hr_scale": 2,
    "hr_additional_modules": [], "denoising_strength": 0.7, "hr_second_pass_steps": 0,
    "override_settings": {"CLIP_stop_at_last_layers": 1}, "override_settings_restore_afterwards": True,
    "clip_skip": 1, "save_images": True, "send_images": True, "do_not_save_grid": False,
    "do_not_save_samples": False}


def test_sillytavern_sequence(url):
    for method, route in SILLYTAVERN:
        response = requests.request(method, f"{url}/sdapi/v1/{route}", headers=SILLYTAVERN_HEADERS)
        assert response.status_code == 200, (route, response.text)
    title = response.json()["sd_model_checkpoint"]
    session = requests.Session()
    session.headers.update(SILLYTAVERN_HEADERS)
    assert session.post(f"{url}/sdapi/v1/options", json={"sd_model_checkpoint": title}).status_code == 200
    progress = session.get(f"{url}/sdapi/v1/progress").json()  # set-model waits until idle
    assert progress["progress"] == 0 and progress["state"]["job_count"] == 0
    assert "forge_preset" not in session.get(f"{url}/sdapi/v1/options").json()  # generate: not Forge
    response = session.post(f"{url}/sdapi/v1/txt2img", json=SILLYTAVERN_GENERATE)
    assert response.status_code == 200, response.text
    assert _picture(response.json()["images"][0]).size == (64, 64)
    assert json.loads(response.json()["info"])["sampler_name"] == "DDIM"


def test_a1111s_own_img2img_test_body(url, drawn):
    """The payload of A1111's test/test_img2img.py: inpainting_mask_invert is a boolean there."""
    buffer = io.BytesIO()
    drawn.resize((64, 64)).save(buffer, "PNG")
    body = {"init_images": [base64.b64encode(buffer.getvalue()).decode()], "resize_mode": 0,
            "denoising_strength": 0.75, "mask": None, "mask_blur": 4, "inpainting_fill": 0,
            "inpaint_full_res": False, "inpaint_full_res_padding": 0, "inpainting_mask_invert": False,
            "prompt": "example prompt", "styles": [], "seed": -1, "subseed": -1, "subseed_strength": 0,
            "seed_resize_from_h": -1, "seed_resize_from_w": -1, "batch_size": 1, "n_iter": 1, "steps": 3,
            "cfg_scale": 7, **SIZE, "restore_faces": False, "tiling": False, "negative_prompt": "",
            "eta": 0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1, "override_settings": {},
            "sampler_index": "Euler a", "include_init_images": False}
    response = requests.post(f"{url}/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    assert _picture(response.json()["images"][0]).size == (64, 64)


def test_samplers_change_the_picture_and_are_never_batched_together(url):
    def pixels(**extra):
        result = requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "a kite", "seed": 3, "steps": 3,
                                                                 **SIZE, **extra})
        assert result.status_code == 200, result.text
        return np.asarray(_picture(result.json()["images"][0]))

    own = pixels()
    assert np.array_equal(own, pixels(scheduler="Automatic"))
    assert np.array_equal(pixels(sampler_name="DPM++ 2M Karras"),
                          pixels(sampler_name="dpm++ 2m", scheduler="karras"))
    assert not np.array_equal(own, pixels(sampler_name="DDIM"))
    assert not np.array_equal(pixels(sampler_name="Euler"), pixels(sampler_name="Heun"))
    keys = {GenerateRequest(prompt="x", sampler=s).batch_key() for s in ("Euler", "DDIM", None)}
    assert len(keys) == 3


def test_an_unknown_sampler_is_a_400_naming_the_known_ones(url):
    response = requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "x", "sampler_name": "Euler z"})
    assert response.status_code == 400 and response.json()["error"]["field"] == "sampler_name"
    assert "DPM++ 2M" in response.json()["error"]["message"]


def test_interrupt_stops_the_callers_running_txt2img(url):
    answers = []
    worker = threading.Thread(target=lambda: answers.append(requests.post(
        f"{url}/sdapi/v1/txt2img", json={"prompt": "slow", "steps": 100, "seed": 1, **SIZE})))
    worker.start()
    deadline = time.monotonic() + 60
    while requests.get(f"{url}/sdapi/v1/progress").json()["state"]["sampling_step"] == 0:
        assert worker.is_alive() and time.monotonic() < deadline, f"never saw the job running: {answers}"
        time.sleep(0.02)
    assert requests.post(f"{url}/sdapi/v1/interrupt").json() == {}
    worker.join(60)
    assert answers[0].status_code == 409 and answers[0].json()["error"]["type"] == "cancelled"
    deadline = time.monotonic() + 10  # the call stops at its next denoising step, not at once
    while requests.get(f"{url}/sdapi/v1/progress").json()["state"]["job_count"]:
        assert time.monotonic() < deadline, "the interrupted call kept running"
        time.sleep(0.02)


def test_options_are_per_caller(api_server):
    """A paired device's checkpoint and options are its own; the owner's stay as they were."""
    url, lan = api_server(lan=True)
    code = requests.post(f"{url}/api/pair/code").json()["code"]
    token = requests.post(f"{lan}/api/pair", json={"code": code, "name": "tavern pc"}).json()["token"]
    device = {"Authorization": f"Bearer {token}"}
    assert requests.post(f"{url}/sdapi/v1/options", json={"jpeg_quality": 90}).status_code == 200
    answer = requests.post(f"{lan}/sdapi/v1/options", headers=device,
                           json={"sd_model_checkpoint": "pennello-tiny", "jpeg_quality": 10})
    assert answer.status_code == 200, answer.text
    assert requests.get(f"{lan}/sdapi/v1/options", headers=device).json()["jpeg_quality"] == 10
    assert requests.get(f"{url}/sdapi/v1/options").json()["jpeg_quality"] == 90
    assert requests.get(f"{lan}/sdapi/v1/options").status_code == 401  # and a stranger has none
    txt2img = requests.post(f"{lan}/sdapi/v1/txt2img", headers=device, json={"prompt": "x", "steps": 1, **SIZE})
    assert json.loads(txt2img.json()["info"])["sd_model_name"] == "pennello-tiny"


def test_the_native_api_names_the_sampler_too(url):
    refused = requests.post(f"{url}/api/generate", json={"prompt": "x", "sampler": "Euler z"})
    assert refused.status_code == 400 and refused.json()["error"]["field"] == "sampler"
    done = requests.post(f"{url}/api/generate", json={"prompt": "x", "steps": 2, "sampler": "UniPC",
                                                      "scheduler": "Karras", "wait": True, **SIZE})
    assert done.status_code == 200 and done.json()["sampler"] == "UniPC", done.text


def test_every_listed_sampler_and_schedule_makes_a_picture(url):
    samplers = [s["name"] for s in requests.get(f"{url}/sdapi/v1/samplers").json()]
    schedules = [s["label"] for s in requests.get(f"{url}/sdapi/v1/schedulers").json()]
    pairs = [(s, "Automatic") for s in samplers] + [("DPM++ 2M", s) for s in schedules]
    for sampler, schedule in pairs:
        response = requests.post(f"{url}/sdapi/v1/txt2img", json={
            "prompt": "a kite", "steps": 3, "seed": 1, "sampler_name": sampler, "scheduler": schedule, **SIZE})
        assert response.status_code == 200, (sampler, schedule, response.text)
        assert _picture(response.json()["images"][0]).size == (64, 64)


def test_png_info_reads_a1111s_text_and_pennellos_xmp(url):
    from PIL import PngImagePlugin

    text = ('masterpiece, a castle\nNegative prompt: lowres, "bad"\nSteps: 20, Sampler: DPM++ 2M, '
            'Schedule type: Karras, CFG scale: 7, Seed: 123, Size: 512x768, Model hash: 6ce0161689, '
            'Lora hashes: "a: 1, b: 2", Version: v1.10.1')
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    info.add_text("Software", "A1111")
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG", pnginfo=info)
    answer = requests.post(f"{url}/sdapi/v1/png-info", json={"image": base64.b64encode(buffer.getvalue()).decode()})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["info"] == text and result["items"] == {"Software": "A1111"}
    parsed = result["parameters"]
    assert parsed["Prompt"] == "masterpiece, a castle" and parsed["Negative prompt"] == 'lowres, "bad"'
    assert (parsed["Sampler"], parsed["Schedule type"], parsed["Seed"]) == ("DPM++ 2M", "Karras", "123")
    assert (parsed["Size-1"], parsed["Size-2"], parsed["Lora hashes"]) == ("512", "768", "a: 1, b: 2")
    # A WebP has no PNG text: the parameters come from pennello's XMP record in it.
    job = requests.post(f"{url}/api/generate", json={"prompt": "a webp kite", "seed": 9, "steps": 1,
                                                     "format": "webp", "wait": True, **SIZE}).json()
    webp = requests.get(url + job["images"][0]["url"]).content
    parsed = requests.post(f"{url}/sdapi/v1/png-info", json={"image": base64.b64encode(webp).decode()}).json()
    assert parsed["parameters"]["Prompt"] == "a webp kite" and parsed["parameters"]["Seed"] == "9"
    broken = io.BytesIO()  # someone else's broken packet: no parameters, and no 500
    Image.new("RGB", (8, 8)).save(broken, "WEBP", xmp=b"<x:xmpmeta><unclosed</x:xmpmeta>")
    answer = requests.post(f"{url}/sdapi/v1/png-info", json={"image": base64.b64encode(broken.getvalue()).decode()})
    assert answer.status_code == 200 and answer.json()["info"] == "", answer.text


def test_png_info_refuses_what_is_not_a_picture(url):
    for body, field in (({"image": "bm90IGFuIGltYWdl"}, "image"), ({}, "image"), ({"image": 3}, "image")):
        answer = requests.post(f"{url}/sdapi/v1/png-info", json=body)
        assert answer.status_code == 400 and answer.json()["error"]["field"] == field, answer.text


def _kept(api_engine) -> int:
    return sum(1 for _ in api_engine.outputs.iter_newest())


def test_webuiapi_hires_fix_draws_twice_and_says_so(api, api_engine):
    """enable_hr was a 400: now the first pass is enlarged by the upscaler named and redrawn."""
    prompt = {"prompt": "a red circle on a blue background", "seed": 5, **SIZE}
    kept = _kept(api_engine)
    fixed = api.txt2img(**prompt, enable_hr=True, hr_scale=2, hr_upscaler="Lanczos", hr_second_pass_steps=3,
                        denoising_strength=0.6)
    assert fixed.image.size == (128, 128) and _kept(api_engine) == kept  # save_images false: not kept
    text = fixed.info["infotexts"][0]
    for part in ("Size: 64x64", "Denoising strength: 0.6", "Hires upscale: 2", "Hires steps: 3",
                 "Hires upscaler: Lanczos", "Sampler: Euler a"):
        assert part in text, text
    assert fixed.info["extra_generation_params"]["Hires upscaler"] == "Lanczos"
    enlarged = api.txt2img(**prompt).image.resize((128, 128), Image.Resampling.LANCZOS)
    assert np.abs(np.asarray(enlarged, float) - np.asarray(fixed.image, float)).mean() > 1  # redrawn
    latent = api.txt2img(**prompt, enable_hr=True, hr_resize_x=96, hr_upscaler="Latent (bicubic)",
                         hr_sampler_name="DDIM", hr_prompt="a green circle on a blue background", save_images=True)
    assert latent.image.size == (96, 96) and _kept(api_engine) == kept + 1  # the second pass only
    text = latent.info["infotexts"][0]
    assert "Hires upscaled as: a Lanczos resize" in text and "Sampler: DDIM" in text, text
    assert text.startswith("a green circle on a blue background\n")  # the second pass drew hr_prompt


def test_img2img_takes_the_sampler_and_keeps_pictures_only_when_asked(url, drawn, api_engine):
    """img2img ignored sampler_name and scheduler; it kept every picture whatever save_images said."""
    buffer = io.BytesIO()
    drawn.resize((64, 64)).save(buffer, "PNG")
    body = {"init_images": [base64.b64encode(buffer.getvalue()).decode()], "prompt": "a blue star",
            "seed": 2, "steps": 4, "denoising_strength": 0.8}

    def run(**extra):
        response = requests.post(f"{url}/sdapi/v1/img2img", json={**body, **extra})
        assert response.status_code == 200, response.text
        return np.asarray(_picture(response.json()["images"][0])), json.loads(response.json()["info"])

    kept = _kept(api_engine)
    ddim, info = run(sampler_name="DDIM", scheduler="Karras")
    assert "Sampler: DDIM, Schedule type: Karras" in info["infotexts"][0] and info["sampler_name"] == "DDIM"
    assert _kept(api_engine) == kept
    euler, _ = run(sampler_name="Euler", save_images=True)
    assert not np.array_equal(ddim, euler) and _kept(api_engine) == kept + 1
    assert np.array_equal(ddim, run(sampler_name="ddim", scheduler="karras")[0])


def test_webuiapi_extras_upscale_with_pennellos_upscalers(api, url, drawn, api_engine):
    """extra-single-image and extra-batch-images were 404s."""
    picture = drawn.convert("RGB").resize((64, 48))
    kept = _kept(api_engine)
    single = api.extra_single_image(picture, upscaler_1="Lanczos", upscaling_resize=2.5)
    assert single.image.size == (160, 120) and "lanczos" in single.info
    expected = picture.resize((160, 120), Image.Resampling.LANCZOS)  # the 4x pass, then down to 2.5x
    assert np.abs(np.asarray(single.image, float) - np.asarray(expected, float)).mean() < 3
    cropped = api.extra_single_image(picture, resize_mode=1, upscaling_resize_w=96, upscaling_resize_h=96)
    assert cropped.image.size == (96, 96)  # "None": a plain resize, cropped to keep the aspect ratio
    batch = api.extra_batch_images([picture, picture.rotate(90)], upscaler_1="lanczos", upscaling_resize=2)
    assert [image.size for image in batch.images] == [(128, 96), (128, 96)]
    assert _kept(api_engine) == kept  # as in A1111's API, answered and not kept
    wrong = requests.post(f"{url}/sdapi/v1/extra-single-image", json={
        "image": webuiapi.raw_b64_img(picture), "upscaler_1": "R-ESRGAN 4x+"})
    assert wrong.status_code == 400 and wrong.json()["error"]["field"] == "upscaler_1"
    assert "lanczos" in wrong.json()["error"]["message"] and "None" in wrong.json()["error"]["message"]
    for body, field in (({"imageList": [{"name": "x"}]}, "imageList"), ({"imageList": []}, "imageList"),
                        ({"imageList": [{"data": "bm90"}], "resize_mode": 2}, "imageList"),
                        ({"imageList": [{"data": webuiapi.raw_b64_img(picture)}], "resize_mode": 2}, "resize_mode"),
                        ({"imageList": [{"data": webuiapi.raw_b64_img(picture)}], "upscaling_resize": 0},
                         "upscaling_resize")):
        answer = requests.post(f"{url}/sdapi/v1/extra-batch-images", json=body)
        assert answer.status_code == 400 and answer.json()["error"]["field"] == field, answer.text


def test_a1111s_own_extras_test_body(url, drawn):
    """The payload of A1111's test/test_extras.py (test_simple_upscaling_performed)."""
    buffer = io.BytesIO()
    drawn.resize((64, 64)).save(buffer, "PNG")
    payload = {"resize_mode": 0, "show_extras_results": True, "gfpgan_visibility": 0, "codeformer_visibility": 0,
               "codeformer_weight": 0, "upscaling_resize": 2, "upscaling_resize_w": 128, "upscaling_resize_h": 128,
               "upscaling_crop": True, "upscaler_1": "Lanczos", "upscaler_2": "None",
               "extras_upscaler_2_visibility": 0, "image": base64.b64encode(buffer.getvalue()).decode()}
    response = requests.post(f"{url}/sdapi/v1/extra-single-image", json=payload)
    assert response.status_code == 200, response.text
    assert _picture(response.json()["image"]).size == (128, 128)


def test_a_clients_default_512_on_pennello_tiny_is_the_prompt_enlarged(url):
    """webuiapi's default 512x512 on the 64x64 embedded model came back as noise: it is drawn at
    the model's native size, enlarged, and the answer says so; every route alike."""
    from _fixtures_installer import load_script

    trainer = load_script("train_embedded_model")
    parts = urlsplit(url)
    api = webuiapi.WebUIApi(host=parts.hostname, port=parts.port, sampler=None)  # the model's own sampler
    colours = []
    for seed in range(4):
        result = api.txt2img(prompt="a red circle", seed=seed, steps=4, cfg_scale=trainer.GUIDANCE)
        assert result.image.size == (512, 512)  # webuiapi's default size
        small = np.asarray(result.image.convert("RGB").resize((64, 64), Image.Resampling.LANCZOS))
        colours.append(trainer.read_scene(small)[0])
    assert colours.count("red") >= 3, colours
    assert result.info["extra_generation_params"] == {"Native size": "64x64", "Upscaled to": "512x512"}
    assert "Size: 512x512, Model: pennello-tiny, Native size: 64x64, Upscaled to: 512x512" in result.info["infotexts"][0]
    native = requests.post(f"{url}/api/generate", json={"prompt": "a red circle", "seed": 0, "steps": 4,
                                                        "width": 512, "height": 256, "wait": True}).json()
    assert (native["images"][0]["width"], native["images"][0]["height"]) == (512, 256)
    assert native["images"][0]["native_size"] == "64x64"
    openai = requests.post(f"{url}/v1/images/generations", json={"prompt": "a red circle", "size": "512x512"})
    assert _picture(openai.json()["data"][0]["b64_json"]).size == (512, 512)
    too_big = requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "x", "width": 2048})
    assert too_big.status_code == 400 and too_big.json()["error"]["field"] == "width"  # the family's bounds hold


def test_progress_previews_the_callers_running_picture(api_server):
    """current_image was always null: now it is the picture so far, for its own caller only."""
    url, lan = api_server(lan=True)
    code = requests.post(f"{url}/api/pair/code").json()["code"]
    device = {"Authorization": "Bearer " + requests.post(f"{lan}/api/pair", json={
        "code": code, "name": "watching pc"}).json()["token"]}
    parts = urlsplit(url)
    api = webuiapi.WebUIApi(host=parts.hostname, port=parts.port)
    assert api.get_progress()["current_image"] is None  # nothing runs
    worker = threading.Thread(target=lambda: requests.post(
        f"{url}/sdapi/v1/txt2img", json={"prompt": "a red circle", "steps": 100, "seed": 1, **SIZE}))
    worker.start()
    deadline, seen = time.monotonic() + 60, None
    while seen is None:
        assert worker.is_alive() and time.monotonic() < deadline, "never saw a preview"
        now = api.get_progress()
        if now["state"]["sampling_step"] > 0 and now["current_image"]:
            seen = now
        time.sleep(0.02)
    skipped = requests.get(f"{url}/sdapi/v1/progress", params={"skip_current_image": "true"}).json()
    other = requests.get(f"{lan}/sdapi/v1/progress", headers=device).json()
    requests.post(f"{url}/sdapi/v1/interrupt")
    worker.join(60)
    preview = np.asarray(_picture(seen["current_image"]).convert("RGB"))
    assert preview.shape == (64, 64, 3) and preview.std() > 0  # a decoded picture, not a flat fill
    assert skipped["current_image"] is None and skipped["state"]["job_count"] == 1
    assert other["state"]["job_count"] == 1 and other["current_image"] is None  # someone else's picture
