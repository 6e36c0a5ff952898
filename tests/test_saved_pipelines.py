"""Saved pipelines (generate → enhance → upscale → check) on the embedded model: stored in
``pipelines.toml``, managed and run over HTTP and with ``pennello pipeline``."""

from __future__ import annotations

import io

import pytest
import requests
from click.testing import CliRunner
from PIL import Image

from pennello.cli import cli
from pennello.daemon.engine.outputs import parse_xmp
from pennello.daemon.tools.pipelines import PIPELINES_FILE, PipelineBook, SavedPipeline
from pennello.errors import ConfigError, NotFoundError, RequestError


@pytest.fixture
def url(api_server, api_engine):
    yield api_server()
    (api_engine.paths.config_dir / PIPELINES_FILE).unlink(missing_ok=True)


def test_saved_pipelines_validate_and_round_trip(tmp_path):
    book = PipelineBook(tmp_path)
    assert book.all() == {}
    pipeline = SavedPipeline.from_dict("poster", {"prompt": "{subject}, poster", "upscale": 4, "enhance": True, "n": 2})
    book.save(pipeline)
    assert book.get("poster") == pipeline and pipeline.to_dict() == {
        "name": "poster", "prompt": "{subject}, poster", "n": 2, "enhance": True, "upscale": 4}
    for name, data, field in (("Bad Name", {"prompt": "x"}, "name"), ("p", {}, "prompt"),
                              ("p", {"prompt": "x", "upscale": 3}, "upscale"),
                              ("p", {"prompt": "x", "n": "2"}, "n"), ("p", {"prompt": "x", "enhance": 1}, "enhance"),
                              ("p", {"prompt": "x", "colour": "red"}, "colour"),
                              ("p", {"prompt": "x", "upscale_method": "bicubic"}, "upscale_method")):
        with pytest.raises(RequestError) as error:
            SavedPipeline.from_dict(name, data)
        assert error.value.field == field
    with pytest.raises(RequestError, match="subject"):
        pipeline.render_prompt(None)
    book.delete("poster")
    with pytest.raises(NotFoundError):
        book.delete("poster")
    (tmp_path / PIPELINES_FILE).write_text('[broken]\nprompt = "x"\nupscale = 5\n')
    with pytest.raises(ConfigError, match="broken"):
        book.all()


def test_save_list_run_and_delete_over_http(url):
    response = requests.put(f"{url}/api/pipelines/poster", json={
        "prompt": "{subject}, art nouveau poster", "n": 2, "seed": 40, "enhance": True, "upscale": 2}, timeout=30)
    assert response.status_code == 200, response.text
    listed = requests.get(f"{url}/api/pipelines", timeout=30).json()["pipelines"]
    assert listed == [{"name": "poster", "prompt": "{subject}, art nouveau poster", "n": 2, "seed": 40,
                       "enhance": True, "upscale": 2}]
    response = requests.post(f"{url}/api/pipelines/poster/run", json={"subject": "a fox"}, timeout=300)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["job"]["prompt"] == "a fox, art nouveau poster" and result["job"]["seeds"] == [40, 41]
    assert all("enhance" in image for image in result["job"]["images"])  # enhanced before saving
    assert [(i["width"], i["height"], i["seed"]) for i in result["images"]] == [(128, 128, 40), (128, 128, 41)]
    assert result["copyright"] == {"checked": False, "flagged": []}
    data = requests.get(url + result["images"][0]["url"], timeout=30).content
    _, record = parse_xmp(Image.open(io.BytesIO(data)).info["xmp"])
    assert record["pipeline"] == "poster" and record["from_image"] == result["job"]["images"][0]["id"]
    assert record["upscale"]["scale"] == 2 and record["enhance"]["applied"] is not None
    assert record["prompt"] == "a fox, art nouveau poster"
    seeded = requests.post(f"{url}/api/pipelines/poster/run", json={"subject": "a fox", "seed": 7}, timeout=300)
    assert seeded.json()["job"]["seeds"] == [7, 8]
    assert requests.delete(f"{url}/api/pipelines/poster", timeout=30).json() == {"name": "poster", "deleted": True}
    assert requests.post(f"{url}/api/pipelines/poster/run", timeout=30).status_code == 404


@pytest.mark.parametrize(("pipeline", "run", "status", "field", "words"), [
    ({"prompt": "{subject}, poster"}, {}, 400, "subject", "subject"),
    ({"prompt": "x", "check": True}, {}, 404, None, "reference_dir"),
    ({"prompt": "x", "upscale": 4, "upscale_method": "ai"}, {}, 404, "method", "sd-x4-upscaler"),
    ({"prompt": "x", "width": 65}, {}, 400, "width", "multiple of 8"),
    ({"prompt": "x"}, {"colour": "red"}, 400, "colour", "unknown"),
])
def test_runs_fail_early_and_clearly(url, pipeline, run, status, field, words):
    assert requests.put(f"{url}/api/pipelines/p", json=pipeline, timeout=30).status_code == 200
    response = requests.post(f"{url}/api/pipelines/p/run", json=run, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field and words in error["message"]


def test_bad_saves_are_refused(url):
    for name, body, field in (("Bad Name", {"prompt": "x"}, "name"), ("p", {"prompt": "x", "upscale": 3}, "upscale"),
                              ("p", {"n": 2}, "prompt")):
        response = requests.put(f"{url}/api/pipelines/{name}", json=body, timeout=30)
        assert response.status_code == 400 and response.json()["error"]["field"] == field
    assert requests.put(f"{url}/api/pipelines/p", data="x", timeout=30).status_code == 400


def test_cli_pipeline(url, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["pipeline", "save", "thumbs", "--prompt", "{subject}, watercolour", "-n", "2",
                                 "--seed", "5", "--enhance", "--upscale", "4", "--url", url])
    assert result.exit_code == 0 and "saved pipeline thumbs" in result.output, result.output
    result = runner.invoke(cli, ["pipeline", "list", "--url", url])
    assert "generate -> enhance -> upscale x4" in result.output
    result = runner.invoke(cli, ["pipeline", "run", "thumbs", "a heron", "--out", str(tmp_path), "--url", url])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "thumbs-5.png") as image:
        assert image.size == (256, 256)
    assert (tmp_path / "thumbs-6.png").exists()
    result = runner.invoke(cli, ["pipeline", "run", "thumbs", "--url", url])
    assert result.exit_code != 0 and "subject" in result.output
    assert runner.invoke(cli, ["pipeline", "delete", "thumbs", "--url", url]).exit_code == 0


def test_pipeline_responses_match_their_openapi_schemas(url):
    import jsonschema

    from pennello.daemon.http.openapi import build_spec

    components = build_spec()["components"]

    def check(data, name):
        jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                         "components": components}).validate(data)

    check(requests.put(f"{url}/api/pipelines/p", json={"prompt": "x", "upscale": 2}, timeout=30).json(), "Pipeline")
    check(requests.get(f"{url}/api/pipelines", timeout=30).json(), "PipelineList")
    check(requests.post(f"{url}/api/pipelines/p/run", timeout=120).json(), "PipelineResult")
