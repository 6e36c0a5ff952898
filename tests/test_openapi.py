"""The OpenAPI description: valid OpenAPI 3.1, complete (every route of the app), and true (real
responses match its schemas)."""

from __future__ import annotations

import re

import jsonschema
import pytest
import requests
from openapi_spec_validator import validate

from pennello.daemon.http.openapi import build_spec

_IGNORED_METHODS = {"HEAD", "OPTIONS"}


def _openapi_path(rule: str) -> str:
    """Flask's ``/api/jobs/<job_id>`` or ``<path:name>`` as OpenAPI's ``/api/jobs/{job_id}``."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def _routes(app) -> set[tuple[str, str]]:
    return {(_openapi_path(rule.rule), method.lower())
            for rule in app.url_map.iter_rules() if not rule.endpoint.endswith("static")
            for method in rule.methods - _IGNORED_METHODS}


@pytest.fixture
def app_and_url(api_server):
    url = api_server()
    return api_server.app, url


def test_the_document_is_valid_openapi_3_1():
    spec = build_spec()
    assert spec["openapi"] == "3.1.0"
    validate(spec)


def test_every_route_is_documented_and_nothing_else(app_and_url):
    app, _ = app_and_url
    spec = build_spec()
    documented = {(path, method) for path, item in spec["paths"].items() for method in item}
    routes = _routes(app)
    assert routes - documented == set(), "routes missing from daemon/http/openapi/"
    assert documented - routes == set(), "documented routes the app does not have"
    # The blueprints the app really registers are the ones tagged in the description.
    assert {"/v1/images/generations", "/sdapi/v1/txt2img", "/api/pair", "/api/generate"} <= \
        {path for path, _ in routes}


def test_served_over_http_without_a_token(api_server):
    url, lan = api_server(lan=True)
    for base in (url, lan):
        response = requests.get(f"{base}/api/openapi.json")
        assert response.status_code == 200 and response.json() == build_spec()


def _check(data, schema_name: str) -> None:
    spec = build_spec()
    jsonschema.Draft202012Validator(
        {"$ref": f"#/components/schemas/{schema_name}", "components": spec["components"]}).validate(data)


def test_real_responses_match_the_schemas(app_and_url):
    _, url = app_and_url
    job = requests.post(f"{url}/api/generate", json={"prompt": "a kite", "n": 2, "wait": True}).json()
    _check(job, "Job")
    _check(requests.get(f"{url}/api/jobs").json(), "JobList")
    _check(requests.get(f"{url}/api/outputs").json(), "Outputs")
    _check(requests.get(f"{url}/api/models").json(), "ModelList")
    _check(requests.get(f"{url}/api/ps").json(), "LoadedList")
    _check(requests.get(f"{url}/api/progress").json(), "Progress")
    _check(requests.get(f"{url}/api/health").json(), "Health")
    _check(requests.post(f"{url}/api/pair/code").json(), "PairCode")
    _check(requests.get(f"{url}/api/pair/status").json(), "PairStatus")
    _check(requests.get(f"{url}/api/tokens").json(), "TokenList")
    _check(requests.post(f"{url}/api/generate", json={"prompt": ""}).json(), "Error")
    _check(requests.post(f"{url}/v1/images/generations", json={"prompt": "x", "size": "64x64"}).json(),
           "OpenAIImagesResponse")
    _check(requests.get(f"{url}/v1/models").json(), "OpenAIModelList")
    _check(requests.post(f"{url}/v1/images/generations", json={"prompt": "x", "model": "nope"}).json(),
           "OpenAIError")
    _check(requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1}).json(),
           "A1111Txt2ImgResponse")
    for model in requests.get(f"{url}/sdapi/v1/sd-models").json():
        _check(model, "A1111SDModel")
    _check(requests.get(f"{url}/sdapi/v1/progress").json(), "A1111Progress")


def test_schemas_refuse_what_the_routes_refuse():
    with pytest.raises(jsonschema.ValidationError):
        _check({"prompt": "x", "colour": "red"}, "GenerateRequest")
    with pytest.raises(jsonschema.ValidationError):
        _check({"n": 2}, "OpenAIImageRequest")
    _check({"prompt": "x", "size": "64x64", "quality": "hd"}, "OpenAIImageRequest")
