"""Style presets and style batches on the embedded model: one subject across styles and seeds,
the contact sheet, ``POST /api/batch``, ``GET /api/styles``, ``pennello batch`` and ``styles``."""

from __future__ import annotations

import io

import pytest
import requests
from click.testing import CliRunner
from PIL import Image

from pennello.cli import cli
from pennello.daemon.engine.outputs import parse_xmp
from pennello.daemon.tools.styles import STYLES_FILE, builtin_styles, choose_styles, load_styles, plan_style_batch
from pennello.errors import ConfigError, RequestError


@pytest.fixture
def url(api_server):
    return api_server()


def test_presets_render_and_plans_spread_evenly():
    styles = builtin_styles()
    assert len(styles) >= 8 and all("{subject}" in style.prompt for style in styles.values())
    assert styles["pixel-art"].render("  Albert Einstein ").startswith("Albert Einstein, 16-bit pixel art")
    four = choose_styles(styles, 4)
    assert [style.name for style in four] == list(styles)[:4]
    assert plan_style_batch(four, 20) == [5, 5, 5, 5] and plan_style_batch(four, 6) == [2, 2, 1, 1]
    for wanted, words in ((0, "from 1 to"), (99, "from 1 to"), (["photo", "nope"], "nope"),
                          (["photo", "photo"], "twice"), ([], "non-empty"), ("photo", "list")):
        with pytest.raises(RequestError, match=words) as error:
            choose_styles(styles, wanted)
        assert error.value.field == "styles"


def test_user_styles_file_adds_and_replaces_presets(tmp_path):
    (tmp_path / STYLES_FILE).write_text('[noir]\nprompt = "{subject}, film noir still"\nnegative = "colour"\n'
                                        '[photo]\nprompt = "{subject}, my own photo style"\n')
    styles = load_styles(tmp_path)
    assert styles["noir"].render("a cat") == "a cat, film noir still" and not styles["noir"].builtin
    assert styles["photo"].prompt == "{subject}, my own photo style"
    for text, words in (('[bad]\nprompt = "no slot"\n', "subject"), ("[bad]\nprompt = 3\n", "subject"),
                        ('[bad]\nprompt = "{subject}"\ncolour = "red"\n', "unknown key"),
                        ("not toml [", "not valid TOML"), ('bad = "x"\n', "must be a table")):
        (tmp_path / STYLES_FILE).write_text(text)
        with pytest.raises(ConfigError, match=words):
            load_styles(tmp_path)


def test_style_batch_runs_one_subject_across_styles_and_seeds_with_a_contact_sheet(url):
    response = requests.post(f"{url}/api/batch", json={"subject": "Albert Einstein", "styles": 4, "n": 20,
                                                       "seed": 100}, timeout=300)
    assert response.status_code == 200, response.text
    style_batch = response.json()
    assert style_batch["status"] == "done" and style_batch["seed"] == 100 and len(style_batch["styles"]) == 4
    for style in style_batch["styles"]:
        job = style["job"]
        assert job["status"] == "done" and style["prompt"].startswith("Albert Einstein, ")
        assert [image["seed"] for image in job["images"]] == [100, 101, 102, 103, 104]
        assert style["negative_prompt"] == builtin_styles()[style["name"]].negative
    sheet = style_batch["contact_sheet"]
    data = requests.get(url + sheet["url"], timeout=30).content
    with Image.open(io.BytesIO(data)) as picture:
        assert picture.size == (sheet["width"], sheet["height"])
        assert picture.width > 5 * 96 and picture.height > 4 * 96  # 5 columns, 4 rows of cells
        _, record = parse_xmp(picture.info["xmp"])
    assert record["tool"] == "contact-sheet" and record["subject"] == "Albert Einstein"
    assert record["images"] == [[image["id"] for image in style["job"]["images"]]
                                for style in style_batch["styles"]]


def test_style_batch_by_names_without_waiting(url):
    response = requests.post(f"{url}/api/batch", json={"subject": "a lighthouse", "styles": ["anime", "photo"],
                                                       "wait": False, "negative_prompt": "fog"}, timeout=60)
    assert response.status_code == 202, response.text
    style_batch = response.json()
    assert [style["name"] for style in style_batch["styles"]] == ["anime", "photo"]
    assert style_batch["contact_sheet"] is None and style_batch["styles"][0]["negative_prompt"].endswith(", fog")
    for style in style_batch["styles"]:
        job = requests.get(f"{url}/api/jobs/{style['job']['id']}", timeout=30).json()
        assert job["prompt"] == style["prompt"] and job["n"] == 1


@pytest.mark.parametrize(("body", "field"), [
    ({"styles": ["nope"]}, "styles"),
    ({"styles": 0}, "styles"),
    ({"styles": "photo"}, "styles"),
    ({"styles": 4, "n": 3}, "n"),
    ({"styles": 2, "n": 1000}, "n"),
    ({"subject": " "}, "subject"),
    ({"width": 65}, "width"),
    ({"colour": "red"}, "colour"),
])
def test_style_batch_refuses_bad_requests_naming_the_field(url, body, field):
    response = requests.post(f"{url}/api/batch", json={"subject": "a kite", **body}, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == field


def test_styles_route_and_cli_include_the_users_file(url, api_engine, tmp_path):
    styles_file = api_engine.paths.config_dir / STYLES_FILE
    styles_file.write_text('[noir]\nprompt = "{subject}, film noir still"\ndescription = "1940s crime film"\n')
    try:
        listed = requests.get(f"{url}/api/styles", timeout=30).json()["styles"]
        assert listed[-1] == {"name": "noir", "prompt": "{subject}, film noir still", "negative": "",
                              "description": "1940s crime film", "builtin": False}
        result = CliRunner().invoke(cli, ["styles", "--url", url])
        assert result.exit_code == 0 and "noir" in result.output and "(styles.toml)" in result.output
        result = CliRunner().invoke(cli, ["batch", "Albert Einstein", "--styles", "noir,photo", "-n", "4",
                                          "--seed", "3", "--url", url, "--out", str(tmp_path)])
        assert result.exit_code == 0, result.output
    finally:
        styles_file.unlink()
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ["albert-einstein-contact-sheet.png", "albert-einstein-noir-3.png", "albert-einstein-noir-4.png",
                     "albert-einstein-photo-3.png", "albert-einstein-photo-4.png"]
    result = CliRunner().invoke(cli, ["batch", "x", "--styles", "nope", "--url", url])
    assert result.exit_code != 0 and "nope" in result.output


def test_style_batch_and_styles_match_their_openapi_schemas(url):
    import jsonschema

    from pennello.daemon.http.openapi import build_spec

    components = build_spec()["components"]

    def check(data, name):
        jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                         "components": components}).validate(data)

    check(requests.get(f"{url}/api/styles", timeout=30).json(), "StyleList")
    check(requests.post(f"{url}/api/batch", json={"subject": "a kite", "styles": ["photo", "anime"]},
                        timeout=120).json(), "Batch")
    check({"subject": "a kite", "styles": ["photo"], "n": 2}, "BatchRequest")
    check({"subject": "a kite", "styles": 3}, "BatchRequest")
    with pytest.raises(jsonschema.ValidationError):
        check({"subject": "a kite", "styles": "photo"}, "BatchRequest")
