"""The native HTTP API on a real waitress server (127.0.0.1, ephemeral port), with requests."""

from __future__ import annotations

import io
import time

import pytest
import requests
from PIL import Image

from pennello.client import Client, sse_events
from pennello.daemon import GenerateRequest
from pennello.daemon.engine.outputs import TRAINED_ALGORITHMIC_MEDIA, parse_xmp
from pennello.errors import BusyError, RequestError
from _fixtures_daemon import SLOW_STEPS, config_with, wait_until_running


def post_generate(server, **body) -> requests.Response:
    return requests.post(server.api("/generate"), json={"prompt": "a red kite", **body}, timeout=60)


def error_of(response: requests.Response) -> dict:
    assert response.headers["Content-Type"].startswith("application/json")
    return response.json()["error"]


def wait_for(predicate, timeout=30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_health_models_and_ps(server):
    health = requests.get(server.api("/health"), timeout=10).json()
    assert health["ready"] and health["device"] == "cpu" and health["default_model"] == "pennello-tiny"
    models = requests.get(server.api("/models"), timeout=10).json()["models"]
    tiny = next(m for m in models if m["name"] == "pennello-tiny")
    assert tiny["loaded"] and tiny["default"] and tiny["family"] == "sd"
    ps = requests.get(server.api("/ps"), timeout=10).json()["models"]
    assert [m["name"] for m in ps] == ["pennello-tiny"] and ps[0]["param_bytes"] > 0


def test_generate_and_wait_returns_images_with_metadata(server):
    response = post_generate(server, prompt="a lighthouse", negative_prompt="fog", seed=9, n=2, wait=True)
    assert response.status_code == 200
    job = response.json()
    assert job["status"] == "done" and job["seeds"] == [9, 10]
    assert [image["seed"] for image in job["images"]] == [9, 10]
    image = requests.get(server.url + job["images"][0]["url"], timeout=10)
    assert image.status_code == 200 and image.headers["Content-Type"] == "image/png"
    with Image.open(io.BytesIO(image.content)) as picture:
        assert picture.size == (job["width"], job["height"])
        parameters, xmp = picture.info["parameters"], picture.info["xmp"]
    assert "a lighthouse" in parameters and "Negative prompt: fog" in parameters and "Seed: 9" in parameters
    source, record = parse_xmp(xmp)
    assert source == TRAINED_ALGORITHMIC_MEDIA
    assert record["model"] == "pennello-tiny" and record["model_version"] >= 1
    assert len(record["manifest_digest"]) == 64 and record["owner"] == "local"


@pytest.mark.parametrize(("fmt", "content_type"), [("jpeg", "image/jpeg"), ("webp", "image/webp")])
def test_other_formats_are_served_with_their_content_type(server, fmt, content_type):
    job = post_generate(server, format=fmt, wait=True).json()
    image = requests.get(server.url + job["images"][0]["url"], timeout=10)
    assert image.headers["Content-Type"] == content_type
    with Image.open(io.BytesIO(image.content)) as picture:
        assert picture.format == fmt.upper()
        assert parse_xmp(picture.info["xmp"])[0] == TRAINED_ALGORITHMIC_MEDIA


def test_generate_without_wait_answers_202_and_the_job_can_be_polled(server):
    response = post_generate(server, seed=1)
    assert response.status_code == 202
    job_id = response.json()["id"]
    assert response.headers["Location"] == f"/api/jobs/{job_id}"

    def done() -> bool:
        return requests.get(server.api(f"/jobs/{job_id}"), timeout=10).json()["status"] == "done"

    wait_for(done)
    listed = requests.get(server.api("/jobs"), timeout=10).json()["jobs"]
    assert job_id in [job["id"] for job in listed]


def test_stream_sends_progress_then_the_result(server):
    with requests.post(server.api("/generate"), json={"prompt": "a kite", "steps": 6, "stream": True},
                       stream=True, timeout=60) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = list(sse_events(response))
    names = [name for name, _ in events]
    assert names[0] == "job" and names[-1] == "done"
    assert [data["step"] for name, data in events if name == "progress"] == [1, 2, 3, 4, 5, 6]
    assert len(events[-1][1]["images"]) == 1


def test_job_events_replay_for_a_finished_job(server):
    job = post_generate(server, wait=True).json()
    with requests.get(server.api(f"/jobs/{job['id']}/events"), stream=True, timeout=30) as response:
        names = [name for name, _ in sse_events(response)]
    assert names[0] == "job" and names[-1] == "done" and "progress" in names


def test_cancel_a_queued_job_over_http(server):
    blocker = server.engine.submit(GenerateRequest(prompt="busy", steps=SLOW_STEPS))
    wait_until_running(blocker)
    queued = post_generate(server).json()
    response = requests.delete(server.api(f"/jobs/{queued['id']}"), timeout=10)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert requests.get(server.api(f"/jobs/{queued['id']}"), timeout=10).json()["images"] == []


def test_a_client_leaving_a_stream_cancels_its_queued_job(make_server):
    # The server notices a gone client when a keep-alive write fails: give it a few seconds.
    server = make_server(config_with(engine={"max_steps": 2000}))
    blocker = server.engine.submit(GenerateRequest(prompt="busy", steps=2000))
    wait_until_running(blocker)
    response = requests.post(server.api("/generate"), json={"prompt": "gone", "stream": True},
                             stream=True, timeout=30)
    name, data = next(sse_events(response))
    assert name == "job" and data["status"] == "queued"
    response.close()
    job = server.engine.get_job(data["id"])
    assert job.wait(30) and job.status == "cancelled"
    assert blocker.status == "running"  # started work is kept
    server.engine.cancel(blocker.id)


def test_a_full_queue_answers_429_with_retry_after(make_server):
    server = make_server(config_with(engine={"queue_size": 1}))
    blocker = server.engine.submit(GenerateRequest(prompt="busy", steps=SLOW_STEPS))
    wait_until_running(blocker)
    assert post_generate(server).status_code == 202
    response = post_generate(server)
    assert response.status_code == 429 and int(response.headers["Retry-After"]) >= 1
    assert error_of(response)["type"] == "busy"
    with pytest.raises(BusyError):
        Client(server.url).generate("still too many")


@pytest.mark.parametrize(("body", "field"), [
    ({"prompt": 5}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "x" * 2001}, "prompt"),
    ({"negative_prompt": ["no"]}, "negative_prompt"),
    ({"n": "2"}, "n"),
    ({"n": 0}, "n"),
    ({"n": 17}, "n"),
    ({"width": 65}, "width"),
    ({"width": 64.0}, "width"),
    ({"height": 4096}, "height"),
    ({"steps": 0}, "steps"),
    ({"steps": 101}, "steps"),
    ({"steps": True}, "steps"),
    ({"guidance": 30.5}, "guidance"),
    ({"guidance": "high"}, "guidance"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**32}, "seed"),
    ({"format": "gif"}, "format"),
    ({"stream": "yes"}, "stream"),
    ({"colour": "red"}, "colour"),
    ({"model": 3}, "model"),
])
def test_bad_input_is_a_400_naming_the_field(server, body, field):
    response = post_generate(server, **body)
    assert response.status_code == 400
    assert error_of(response)["field"] == field and field in error_of(response)["message"]


def test_missing_prompt_and_non_json_bodies(server):
    response = requests.post(server.api("/generate"), json={"n": 1}, timeout=10)
    assert response.status_code == 400 and error_of(response)["field"] == "prompt"
    for data in ("not json", "[1, 2]"):
        response = requests.post(server.api("/generate"), data=data, timeout=10,
                                 headers={"Content-Type": "application/json"})
        assert response.status_code == 400 and "JSON object" in error_of(response)["message"]


def test_unknown_things_are_404_json(server):
    response = post_generate(server, model="no-such-model")
    assert response.status_code == 404 and error_of(response)["field"] == "model"
    for path in ("/jobs/nope", "/images/20200101-000000-000000-00000000", "/images/..%2Fetc",
                 "/no-such-route"):
        response = requests.get(server.api(path), timeout=10)
        assert response.status_code == 404, path
        assert error_of(response)["message"]
    response = requests.post(server.api("/models/no-such-model/load"), timeout=10)
    assert response.status_code == 404 and error_of(response)["type"] == "model_not_found"


def test_wrong_method_is_405_json(server):
    response = requests.put(server.api("/health"), timeout=10)
    assert response.status_code == 405 and "GET" in response.headers["Allow"]
    assert error_of(response)["type"] == "method_not_allowed"


def test_a_body_over_the_limit_is_413_json(make_server):
    server = make_server(config_with(server={"max_body_bytes": 1024}))
    response = post_generate(server, prompt="x" * 2000)
    assert response.status_code == 413 and error_of(response)["type"] == "request_entity_too_large"


def test_load_and_unload_over_http(server):
    response = requests.post(server.api("/models/pennello-tiny/unload"), timeout=30)
    assert response.json() == {"name": "pennello-tiny", "unloaded": True}
    assert requests.get(server.api("/ps"), timeout=10).json()["models"] == []
    response = requests.post(server.api("/models/pennello-tiny/load"), timeout=60)
    assert response.status_code == 200 and response.json()["name"] == "pennello-tiny"
    assert post_generate(server, wait=True).json()["status"] == "done"


def test_gallery_lists_newest_first_with_paging(server):
    ids = [post_generate(server, prompt=f"kite {i}", seed=i, wait=True).json()["images"][0]["id"]
           for i in range(3)]
    page = requests.get(server.api("/outputs?limit=2"), timeout=10).json()
    assert [image["id"] for image in page["images"]] == ids[::-1][:2]
    assert page["images"][0]["prompt"] == "kite 2" and page["next_offset"] == 2
    rest = requests.get(server.api("/outputs?limit=2&offset=2"), timeout=10).json()
    assert [image["id"] for image in rest["images"]] == [ids[0]] and rest["next_offset"] is None
    response = requests.get(server.api("/outputs?limit=zero"), timeout=10)
    assert response.status_code == 400 and error_of(response)["field"] == "limit"


def test_outputs_survive_a_restart_on_the_same_home(make_server, make_engine):
    first = make_server()
    image_id = post_generate(first, prompt="remember me", wait=True).json()["images"][0]["id"]
    first.stop()
    first.engine.stop()
    second = make_server()
    images = requests.get(second.api("/outputs"), timeout=10).json()["images"]
    assert [image["id"] for image in images] == [image_id] and images[0]["prompt"] == "remember me"
    assert requests.get(second.api(f"/images/{image_id}"), timeout=10).status_code == 200


def test_client_generates_with_progress(server):
    steps = []
    images = Client(server.url).generate("a kite", seed=4, steps=3,
                                         on_progress=lambda step, total: steps.append((step, total)))
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert images[0]["seed"] == 4 and images[0]["bytes"].startswith(b"\x89PNG")
    with pytest.raises(RequestError) as caught:
        Client(server.url).generate("a kite", width=65)
    assert caught.value.field == "width"
