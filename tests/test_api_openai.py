"""The OpenAI-compatible API, driven by the official ``openai`` client against a real server."""

from __future__ import annotations

import base64
import io

import numpy as np
import openai
import pytest
import requests
from _fixtures_owner import owner_token
from PIL import Image



@pytest.fixture
def url(api_server):
    return api_server()


@pytest.fixture
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=owner_token(url), max_retries=0, timeout=120)


def _png(data: bytes) -> Image.Image:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_official_client_generates_two_pngs(client):
    result = client.images.generate(model="pennello-tiny", prompt="a red kite over the sea",
                                    size="64x64", n=2, response_format="b64_json")
    assert len(result.data) == 2
    images = [_png(base64.b64decode(item.b64_json)) for item in result.data]
    assert all(image.size == (64, 64) and image.mode == "RGB" for image in images)
    pixels = [np.asarray(image) for image in images]
    assert all(p.std() > 0 for p in pixels)  # drawn, not blank
    assert not np.array_equal(pixels[0], pixels[1])  # two seeds, two pictures
    assert result.size == "64x64" and result.output_format == "png" and result.created > 0


def test_url_response_format_gives_absolute_fetchable_addresses(client, url):
    result = client.images.generate(model="pennello-tiny", prompt="a lighthouse", size="64x64",
                                    response_format="url")
    (item,) = result.data
    assert item.b64_json is None and item.url.startswith(f"{url}/api/images/")
    assert _png(requests.get(item.url).content).size == (64, 64)


def test_defaults_and_ignored_openai_only_fields(client, url):
    result = client.images.generate(prompt="a lighthouse", quality="hd", style="vivid", user="me",
                                    output_format="webp")
    (item,) = result.data
    assert item.b64_json is not None  # b64_json unless url is asked for, as for GPT image models
    image = Image.open(io.BytesIO(base64.b64decode(item.b64_json)))
    assert image.format == "WEBP" and image.size == (64, 64)  # pennello-tiny's default size


def test_unknown_model_is_a_404_in_openai_shape(client, url):
    # dall-e-3 and OpenAI's other names mean the default model (tests/test_clients_auth.py).
    with pytest.raises(openai.NotFoundError) as e:
        client.images.generate(model="no-such-model", prompt="a kite")
    assert e.value.code == "model_not_found" and e.value.param == "model"
    raw = requests.post(f"{url}/v1/images/generations", json={"model": "no-such-model", "prompt": "a kite"})
    assert raw.status_code == 404
    error = raw.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and "no-such-model" in error["message"]


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "size": "big"}, "size"),
    ({"prompt": "x", "size": "63x64"}, "size"),
    ({"prompt": "x", "response_format": "jpeg"}, "response_format"),
    ({"prompt": "x", "output_format": "gif"}, "output_format"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "stream": True}, "stream"),
    ({"prompt": "x", "colour": "red"}, "colour"),
    ({"prompt": ""}, "prompt"),
    ({"size": "64x64"}, "prompt"),
])
def test_bad_requests_name_the_param(url, body, param):
    response = requests.post(f"{url}/v1/images/generations", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_bad_request_through_the_client(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(model="pennello-tiny", prompt="x", size="7x7")
    assert e.value.param == "size"


def test_models_list_and_retrieve(client):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert "pennello-tiny" in ids
    model = client.models.retrieve("pennello-tiny")
    assert model.object == "model" and model.owned_by == "pennello"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-image-1")


def test_from_the_lan_the_api_key_is_the_paired_token(api_server):
    url, lan = api_server(lan=True)
    code = requests.post(f"{url}/api/pair/code").json()["code"]
    token = requests.post(f"{lan}/api/pair", json={"code": code, "name": "notebook"}).json()["token"]
    device = openai.OpenAI(base_url=f"{lan}/v1", api_key=token, max_retries=0)
    result = device.images.generate(model="pennello-tiny", prompt="a kite", size="64x64",
                                    response_format="b64_json")
    assert _png(base64.b64decode(result.data[0].b64_json)).size == (64, 64)
    stranger = openai.OpenAI(base_url=f"{lan}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        stranger.images.generate(model="pennello-tiny", prompt="a kite")
    assert e.value.code == "unauthorized" and e.value.response.json()["error"]["param"] is None
