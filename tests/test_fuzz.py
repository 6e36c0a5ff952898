"""Fuzzing: schemathesis sends generated requests to every operation of a real daemon, built from
the daemon's own ``/api/openapi.json``, and no response may be a server error or stray from the
description (status code, content type, body schema; invalid input must get a 4xx).

The daemon is real (waitress on 127.0.0.1, the embedded tiny model) with small limits
(``bench/fuzz_api.py:fuzz_config``) so that valid requests stay cheap; the caller is the owner
(loopback). A few examples per operation here; ``python bench/fuzz_api.py`` is the full-length
run (docs/fuzz.md).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import requests

from pennello.daemon.http.openapi import build_spec


def _bench_module(name: str):
    """A module of bench/ (not a package), loaded from its file."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


fuzz_api = _bench_module("fuzz_api")

EXAMPLES = 8  # per operation and mode: ~60 s for the whole file on 2 slow cores
CONFIG = fuzz_api.fuzz_config()
OPERATIONS = sorted(f"{method.upper()} {path}" for path, item in build_spec(CONFIG)["paths"].items()
                    for method in item if f"{method.upper()} {path}" not in fuzz_api.EXCLUDED)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    url, stop = fuzz_api.start_daemon(tmp_path_factory.mktemp("home"), CONFIG)
    yield url
    stop()


@pytest.fixture(scope="module")
def schema(daemon):
    return fuzz_api.load_schema(daemon)


def test_the_served_description_follows_the_daemons_limits(daemon):
    served = requests.get(f"{daemon}/api/openapi.json", timeout=30).json()
    assert served == build_spec(CONFIG)
    generate = served["components"]["schemas"]["GenerateRequest"]["properties"]
    assert generate["n"]["maximum"] == CONFIG.engine.max_n == 2
    assert generate["steps"]["maximum"] == CONFIG.engine.max_steps
    assert generate["prompt"]["maxLength"] == CONFIG.engine.max_prompt_chars
    assert build_spec()["components"]["schemas"]["GenerateRequest"]["properties"]["n"]["maximum"] == 16


def test_sizes_are_narrowed_in_requests_only():
    spec = fuzz_api.cheap_spec(build_spec(CONFIG))
    schemas = spec["components"]["schemas"]
    assert schemas["GenerateRequest"]["properties"]["width"]["maximum"] == fuzz_api.CHEAP_SIDE
    assert schemas["EditForm"]["properties"]["height"]["maximum"] == fuzz_api.CHEAP_SIDE
    assert "maximum" not in schemas["Image"]["properties"]["width"]  # responses as described


@pytest.mark.parametrize("label", OPERATIONS)
def test_operation(label, schema, daemon):
    method, path = label.split(" ", 1)
    tally = fuzz_api.fuzz_operation(schema[path][method.lower()], daemon, EXAMPLES, seed=0)
    assert tally.cases > 0
    assert tally.server_errors == 0 and tally.failures == [], "\n".join(tally.failures)


def test_every_operation_is_fuzzed_or_excluded_with_a_reason(schema):
    labels = {op.label for op in fuzz_api.operations(schema)}
    assert labels == set(OPERATIONS)
    assert all(reason.strip() for reason in fuzz_api.EXCLUDED.values())


# --- regressions: what the fuzzer found ------------------------------------------------------------

def test_an_unroutable_model_name_gets_a_documented_404(daemon, schema):
    """``/v1/models/<path:name>`` does not match a name with a line break; the app answers."""
    response = requests.get(f"{daemon}/v1/models/a%0Ab", timeout=30)
    assert response.status_code == 404
    case = schema["/v1/models/{name}"]["get"].Case(path_parameters={"name": "a\nb"})
    case.validate_response(response, checks=fuzz_api.CHECKS)


def test_a1111_progress_ignores_any_skip_current_image(daemon):
    response = requests.get(f"{daemon}/sdapi/v1/progress", params={"skip_current_image": "¿#É"}, timeout=30)
    assert response.status_code == 200 and "progress" in response.json()


@pytest.mark.parametrize("field, value", [("n", -3214659), ("guidance", -7.05e16), ("steps", 0),
                                          ("seed", 2**32), ("width", 0)])
def test_a_pipeline_no_daemon_could_run_is_not_saved(daemon, field, value):
    """Found by the fuzzer: PUT saved n=-3214659 and answered with a Pipeline its own schema refuses."""
    response = requests.put(f"{daemon}/api/pipelines/unsaved", json={"prompt": "x", field: value}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["field"] == field
    saved = requests.get(f"{daemon}/api/pipelines", timeout=30).json()["pipelines"]
    assert "unsaved" not in {pipeline["name"] for pipeline in saved}


def test_a_nan_guidance_is_not_saved(daemon):
    response = requests.put(f"{daemon}/api/pipelines/unsaved", data='{"prompt": "x", "guidance": NaN}',
                            headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["field"] == "guidance"


def _png_base64(size: tuple[int, int] = (16, 16)) -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_a1111_img2img_refuses_a_bad_mask_invert_without_a_mask(daemon):
    """Found by the fuzzer: inpainting_mask_invert 123709 was checked only when a mask was sent."""
    response = requests.post(f"{daemon}/sdapi/v1/img2img", json={
        "init_images": [_png_base64()], "prompt": "x", "inpainting_mask_invert": 123709}, timeout=120)
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "inpainting_mask_invert"


def test_an_edit_queued_without_waiting_is_a_documented_202(daemon, schema):
    """Found by the fuzzer: ``wait=false`` answered 202, which the description did not list."""
    import base64

    picture = base64.b64decode(_png_base64())
    response = requests.post(f"{daemon}/api/edit", data={"prompt": "x", "wait": "false"},
                             files={"image": ("p.png", picture, "image/png")}, timeout=120)
    assert response.status_code == 202
    operation = schema["/api/edit"]["post"]
    operation.Case(body={"prompt": "x", "wait": False}, media_type="multipart/form-data").validate_response(
        response, checks=fuzz_api.MULTIPART_CHECKS)
