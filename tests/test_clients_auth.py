"""What third-party front-ends send, against a real daemon on real sockets: OpenAI's own model
names from the real ``openai`` SDK (sync and async), HTTP Basic credentials carrying a paired
device's token from a LAN address, the OpenAPI document at the root, and ``pennello pair
--for-basic-auth``."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import uuid

import numpy as np
import openai
import pytest
import requests
from click.testing import CliRunner
from PIL import Image

from pennello.daemon.http.openapi import build_spec

from _fixtures_api import png_bytes
from _fixtures_owner import owner_token

OPENAI_NAMES = ("dall-e-2", "dall-e-3", "gpt-image-1")
NO_MODEL = {"absent": {}, "empty": {"model": ""}, **{name: {"model": name} for name in OPENAI_NAMES}}


def _drawn_png(b64: str) -> Image.Image:
    data = base64.b64decode(b64)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.size == (64, 64) and np.asarray(image).std() > 0  # a real picture, not blank
    return image


def _models_of(engine, prompt: str) -> set[str]:
    return {job.request.model for job in engine.jobs() if job.request.prompt == prompt}


# --- OpenAI model names ---------------------------------------------------------------------------

@pytest.mark.parametrize("model", NO_MODEL, ids=list(NO_MODEL))
def test_openai_sdk_with_openai_model_names_gets_the_default_model(api_server, api_engine, model):
    url = api_server()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=owner_token(url), max_retries=0, timeout=120)
    prompt = f"a red kite {uuid.uuid4()}"
    result = client.images.generate(prompt=prompt, size="64x64", response_format="b64_json",
                                    **NO_MODEL[model])
    (item,) = result.data
    _drawn_png(item.b64_json)
    assert _models_of(api_engine, prompt) == {api_engine.config.engine.default_model}


def test_async_openai_sdk_with_openai_model_names(api_server, api_engine):
    url = api_server()

    async def generate_all() -> list:
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=owner_token(url), max_retries=0,
                                      timeout=120) as client:
            return await asyncio.gather(*(client.images.generate(
                prompt=f"{name} {prompt_id}", size="64x64", **NO_MODEL[name]) for name in NO_MODEL))

    prompt_id = uuid.uuid4()
    results = asyncio.run(generate_all())
    assert [len(r.data) for r in results] == [1] * len(NO_MODEL)
    for result in results:
        _drawn_png(result.data[0].b64_json)
    for name in NO_MODEL:
        assert _models_of(api_engine, f"{name} {prompt_id}") == {api_engine.config.engine.default_model}


def test_v1_models_lists_the_installed_models(api_server, api_engine):
    url = api_server()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=owner_token(url), max_retries=0)
    listed = [model.id for model in client.models.list()]
    assert listed == [m["name"] for m in api_engine.models()] and "pennello-tiny" in listed
    assert all(model.owned_by == "pennello" for model in client.models.list())


def test_an_unknown_model_is_a_404_that_names_what_can_be_used(api_server):
    url = api_server()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=owner_token(url), max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        client.images.generate(model="made-up-model", prompt="a kite", size="64x64")
    error = caught.value.body
    assert caught.value.status_code == 404 and error["param"] == "model"
    assert error["code"] == "model_not_found" and error["type"] == "invalid_request_error"
    message = error["message"]
    assert "'made-up-model' is not installed" in message  # the problem, named
    assert "install made-up-model" not in message and "install it" not in message  # no advice to install it
    assert "pennello-tiny" in message  # installed: send it
    assert "pennello install NAME" in message and "sd-turbo" in message  # the catalog's models


def test_openai_edits_take_openai_model_names_too(api_server, drawn):
    url = api_server()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=owner_token(url), max_retries=0, timeout=120)
    picture = ("house.png", png_bytes(drawn), "image/png")
    result = client.images.edit(image=picture, prompt="a house in snow", model="dall-e-2", size="64x64")
    _drawn_png(result.data[0].b64_json)
    with pytest.raises(openai.NotFoundError) as caught:  # multipart: the name is read from the form
        client.images.edit(image=picture, prompt="x", model="made-up-model")
    message = caught.value.body["message"]
    assert "'made-up-model' is not installed" in message and "pennello install NAME" in message


def test_openai_names_when_the_default_model_is_missing_name_the_default(api_server, api_engine, monkeypatch):
    url = api_server()
    missing_default = api_engine.config.replace("engine", default_model="not-installed-default")
    monkeypatch.setattr(api_engine, "config", missing_default)
    response = requests.post(f"{url}/v1/images/generations", json={"prompt": "x", "model": "dall-e-2"})
    assert response.status_code == 404
    assert "'not-installed-default' is not installed" in response.json()["error"]["message"]


# --- HTTP Basic carrying a token, from a LAN address ---------------------------------------------------

def _pair(owner_url: str, device_url: str, name: str) -> dict:
    code = requests.post(f"{owner_url}/api/pair/code").json()["code"]
    response = requests.post(f"{device_url}/api/pair", json={"code": code, "name": name})
    assert response.status_code == 201, response.text
    return response.json()


def test_basic_auth_with_a_token_is_a_device_like_bearer(api_server, api_engine):
    url, lan = api_server(lan=True)
    paired = _pair(url, lan, "open webui")
    basic = ("any-user-name", paired["token"])  # requests sends Authorization: Basic base64(user:token)
    status = requests.get(f"{lan}/api/pair/status", auth=basic).json()
    assert status["scope"] == "device" and status["device"]["id"] == paired["id"] and not status["owner"]

    # What Open WebUI and SillyTavern do with their A1111 settings: txt2img with Basic credentials.
    made = requests.post(f"{lan}/sdapi/v1/txt2img", auth=basic, json={
        "prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2})
    assert made.status_code == 200, made.text
    _drawn_png(made.json()["images"][0])
    job = requests.post(f"{lan}/api/generate", auth=basic, json={"prompt": "a kite", "wait": True}).json()
    assert job["status"] == "done"
    assert api_engine.get_job(job["id"]).request.owner == f"device:{paired['id']}"
    assert requests.get(f"{lan}{job['images'][0]['url']}", auth=basic).status_code == 200

    # Per-device privacy holds both ways, whichever way each token is sent.
    other = _pair(url, lan, "laptop")
    theirs = requests.post(f"{lan}/api/generate", json={"prompt": "a boat", "wait": True},
                           headers={"Authorization": f"Bearer {other['token']}"}).json()
    assert requests.get(f"{lan}{theirs['images'][0]['url']}", auth=basic).status_code == 404
    assert requests.get(f"{lan}/api/jobs/{theirs['id']}", auth=basic).status_code == 404
    assert theirs["id"] not in [j["id"] for j in requests.get(f"{lan}/api/jobs", auth=basic).json()["jobs"]]
    assert requests.get(f"{lan}/api/jobs/{job['id']}", auth=("x", other["token"])).status_code == 404
    # And the token's use is recorded as for Bearer.
    listed = requests.get(f"{url}/api/tokens").json()["tokens"]
    assert next(t for t in listed if t["id"] == paired["id"])["last_used"] is not None


@pytest.mark.parametrize("credentials", ["user:not-a-token", ":", "user-only", "%%%not base64"])
def test_basic_auth_with_a_wrong_token_is_a_401_json(api_server, credentials):
    url, lan = api_server(lan=True)
    _pair(url, lan, "real device")
    encoded = base64.b64encode(credentials.encode()).decode() if credentials[0] != "%" else credentials
    response = requests.get(f"{lan}/sdapi/v1/sd-models", headers={"Authorization": f"Basic {encoded}"})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "unauthorized"
    assert "pair" in response.json()["error"]["message"]


def test_the_401_without_credentials_tells_of_basic_too(api_server):
    _, lan = api_server(lan=True)
    response = requests.get(f"{lan}/sdapi/v1/sd-models")
    assert response.status_code == 401 and "pennello pair --for-basic-auth" in response.json()["error"]["message"]


def test_basic_auth_device_token_on_an_owner_route_is_a_403(api_server):
    url, lan = api_server(lan=True)
    basic = ("sillytavern", _pair(url, lan, "sillytavern")["token"])
    for method, path in [("get", "/api/tokens"), ("post", "/api/pair/code"),
                         ("post", "/api/models/pennello-tiny/unload")]:
        response = requests.request(method, f"{lan}{path}", auth=basic)
        assert response.status_code == 403, path
        assert response.json()["error"]["type"] == "forbidden"


def test_basic_auth_with_an_owner_token_is_the_owner(api_server):
    url, lan = api_server(lan=True)
    issued = requests.post(f"{url}/api/tokens", json={"name": "admin box", "scope": "owner"}).json()
    assert requests.get(f"{lan}/api/tokens", auth=("admin", issued["token"])).status_code == 200


# --- the OpenAPI document at the root --------------------------------------------------------------

def test_openapi_document_is_also_at_the_root_without_a_token(api_server):
    url, lan = api_server(lan=True)
    for base in (url, lan):
        alias, main = requests.get(f"{base}/openapi.json"), requests.get(f"{base}/api/openapi.json")
        assert alias.status_code == 200 and alias.json() == main.json() == build_spec()
    assert "/openapi.json" in build_spec()["paths"]


# --- pennello pair --for-basic-auth ----------------------------------------------------------------

def test_pair_for_basic_auth_prints_settings_that_work(api_server, api_engine, monkeypatch):
    from pennello.daemon.cli.auth import pair

    url, lan = api_server(lan=True)
    monkeypatch.setenv("PENNELLO_HOME", str(api_engine.paths.data_dir.parent))
    (api_engine.paths.runtime_dir / "daemon.json").write_text(json.dumps({"pid": 1, "url": url}))
    try:
        result = CliRunner().invoke(pair, ["--for-basic-auth", "--as", "Open WebUI"])
    finally:
        (api_engine.paths.runtime_dir / "daemon.json").unlink()
    assert result.exit_code == 0, result.output
    printed_url = re.search(r"AUTOMATIC1111 Base URL:\s+(\S+)", result.output).group(1)
    auth = re.search(r"Api Auth String:\s+(\S+)", result.output).group(1)
    assert f"Authentication:                {auth}" in result.output  # SillyTavern's field, the same
    assert printed_url.rsplit(":", 1)[1] == lan.rsplit(":", 1)[1] and not printed_url.startswith("http://127.")
    user, _, password = auth.partition(":")
    # What the front-end will send with those settings, from another address of this machine:
    status = requests.get(f"{lan}/api/pair/status", auth=(user, password)).json()
    assert status["scope"] == "device" and status["device"]["name"] == "Open WebUI"


def test_pair_for_basic_auth_with_a_daemon_name_is_a_usage_error():
    from pennello.daemon.cli.auth import pair

    result = CliRunner().invoke(pair, ["auto", "--for-basic-auth"])
    assert result.exit_code == 2 and "--for-basic-auth" in result.output and "leave out NAME" in result.output


def test_serve_lan_takes_the_basic_auth_settings_pair_prints(home):
    """End to end: `pennello serve --lan` (TLS, its own process), the settings `pennello pair
    --for-basic-auth` prints, and a client sending them as Basic over the pinned certificate."""
    from _fixtures_lan import ServeProcess, run_cli

    from pennello.client.discover import pinned_session

    daemon = ServeProcess(home)
    try:
        printed = run_cli(home, "pair", "--for-basic-auth", "--as", "SillyTavern")
        assert printed.returncode == 0, printed.stderr + daemon.log_text()
        url = re.search(r"SD Web UI URL:\s+(\S+)", printed.stdout).group(1)
        user, _, password = re.search(r"Authentication:\s+(\S+)", printed.stdout).group(1).partition(":")
        assert url.startswith("https://") and url.rsplit(":", 1)[1] == daemon.url.rsplit(":", 1)[1]
        assert "self-signed" in printed.stderr and password not in printed.stderr
        assert str(home.data_dir / "tls" / "cert.pem") in printed.stderr
        front_end = pinned_session(daemon.fingerprint)
        front_end.auth = (user, password)
        status = front_end.get(f"{url}/api/pair/status", timeout=30).json()
        assert status["scope"] == "device" and status["device"]["name"] == "SillyTavern"
        made = front_end.post(f"{url}/sdapi/v1/txt2img", timeout=120, json={
            "prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2})
        assert made.status_code == 200, made.text
        _drawn_png(made.json()["images"][0])
        assert front_end.get(f"{url}/api/tokens", timeout=30).status_code == 403
        wrong = pinned_session(daemon.fingerprint).get(f"{url}/sdapi/v1/sd-models", auth=(user, "wrong"),
                                                       timeout=30)
        assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "unauthorized"
    finally:
        code = daemon.terminate()
    assert code == 0, daemon.log_text()
