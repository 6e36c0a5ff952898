"""The copyright check: perceptual hashes, the reference folder, flags in responses, records and
the gallery (never dropped), the check route and ``pennello copyright``."""

from __future__ import annotations

import io

import numpy as np
import pytest
import requests
from click.testing import CliRunner
from PIL import Image, ImageOps

from pennello.cli import cli
from pennello.config import Config
from pennello.daemon import create_app, start_background_server
from pennello.daemon.pictures.copyright import ReferenceIndex, distance, hashes
from pennello.daemon.engine.engine import Engine
from pennello.daemon.engine.jobs import GenerateRequest
from pennello.daemon.engine.outputs import parse_xmp
from pennello.installer import ensure_embedded_default
from pennello.paths import get_paths


def _noise(seed: int, size: int = 96) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)).resize(
        (size, size), Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """An engine with the check on; the references hold one of the model's own pictures (saved
    smaller, as JPEG: a copy as found on the web) and unrelated pictures."""
    references = tmp_path_factory.mktemp("protected")
    paths = get_paths(tmp_path_factory.mktemp("home")).ensure()
    config = Config().replace("copyright", reference_dir=str(references))
    ensure_embedded_default(paths, config)
    engine = Engine(config, paths)
    engine.start()
    job = engine.submit(GenerateRequest(prompt="a famous painting", seed=77))
    assert job.wait(120) and job.status == "done"
    assert job.images[0].notes["copyright"] == {"flagged": False, "references": 0, "max_distance": 10,
                                                "matches": []}
    with Image.open(job.images[0].path) as image:
        work = image.convert("RGB")
    work.resize((48, 48)).save(references / "famous.jpg", quality=70)
    (references / "more").mkdir()
    for i in range(3):
        _noise(i).save(references / "more" / f"other-{i}.png")
    (references / "notes.txt").write_text("not a picture")
    (references / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    engine.extensions["copyright"].rescan()
    _, url, stop = start_background_server(create_app(config, engine, paths), "127.0.0.1", 0)
    yield engine, url, work
    stop()
    engine.stop()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_hashes_survive_resizing_and_recompression_and_tell_pictures_apart():
    picture = _noise(10, 128)
    buffer = io.BytesIO()
    picture.resize((61, 61)).save(buffer, "JPEG", quality=60)
    copy = Image.open(buffer).convert("RGB")
    assert all(distance(a, b) <= 6 for a, b in zip(hashes(picture), hashes(copy)))
    others = [hashes(_noise(seed, 128)) for seed in range(11, 16)]
    assert all(distance(hashes(picture)[0], other[0]) > 16 for other in others)


def test_the_index_follows_the_folder(tmp_path):
    index = ReferenceIndex(tmp_path / "missing")
    assert index.references() == []
    folder = tmp_path / "refs"
    folder.mkdir()
    index = ReferenceIndex(folder)
    _noise(1).save(folder / "a.png")
    assert index.rescan() == 1
    _noise(2).save(folder / "b.webp")
    (folder / "a.png").unlink()
    assert index.rescan() == 1 and index.references()[0].name == "b.webp"
    match = index.check(_noise(2), 10)
    assert match["flagged"] and match["matches"][0]["reference"] == "b.webp"
    assert not index.check(_noise(3), 10)["flagged"]


def test_a_copy_of_a_protected_work_is_flagged_never_dropped(setup):
    engine, url, _ = setup
    response = requests.post(f"{url}/api/generate", json={"prompt": "a famous painting", "seed": 77,
                                                          "wait": True}, timeout=120)
    assert response.status_code == 200
    image = response.json()["images"][0]  # the picture is there, flagged
    note = image["copyright"]
    assert note["flagged"] and note["references"] == 4  # the text file and the broken PNG are skipped
    assert note["matches"][0]["reference"] == "famous.jpg" and not note["matches"][0]["mirrored"]
    assert note["matches"][0]["phash_distance"] <= 10
    picture = requests.get(url + image["url"], timeout=30)
    assert picture.status_code == 200
    _, record = parse_xmp(Image.open(io.BytesIO(picture.content)).info["xmp"])
    assert record["copyright"] == note
    gallery = requests.get(f"{url}/api/outputs", timeout=30).json()["images"]
    assert next(r for r in gallery if r["id"] == image["id"])["copyright"]["flagged"]


def test_unrelated_pictures_are_not_flagged_but_still_checked(setup):
    _, url, _ = setup
    response = requests.post(f"{url}/api/enhance", files={"image": ("n.png", _png(_noise(40)))}, timeout=60)
    assert response.status_code == 200
    assert response.json()["image"]["copyright"] == {"flagged": False, "references": 4, "max_distance": 10,
                                                     "matches": []}


def test_check_route_finds_mirrored_and_resized_copies(setup):
    _, url, work = setup
    upload = _png(ImageOps.mirror(work).resize((200, 200)))
    note = requests.post(f"{url}/api/copyright/check", files={"image": ("m.png", upload)}, timeout=30).json()
    assert note["flagged"] and note["matches"][0] == {**note["matches"][0], "reference": "famous.jpg",
                                                      "mirrored": True}
    status = requests.get(f"{url}/api/copyright", timeout=30).json()
    assert status["exists"] and status["references"] == 4 and status["skipped"] == ["broken.png"]
    bad = requests.post(f"{url}/api/copyright/check", files={"image": ("x.txt", b"text")}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "image"


def test_cli_copyright_exits_10_when_flagged(setup, tmp_path):
    _, url, work = setup
    copy, other = tmp_path / "copy.png", tmp_path / "other.png"
    work.save(copy)
    _noise(50).save(other)
    result = CliRunner().invoke(cli, ["copyright", str(copy), str(other), "--url", url])
    assert result.exit_code == 10, result.output
    assert "copy.png  FLAGGED: resembles famous.jpg" in result.output and "other.png  ok" in result.output
    result = CliRunner().invoke(cli, ["copyright", str(other), "--url", url])
    assert result.exit_code == 0


def test_routes_say_when_the_check_is_off(api_server):
    url = api_server()  # the default config: no reference_dir
    response = requests.get(f"{url}/api/copyright", timeout=30)
    assert response.status_code == 404 and "reference_dir" in response.json()["error"]["message"]
    response = requests.post(f"{url}/api/copyright/check", files={"image": ("n.png", _png(_noise(1)))},
                             timeout=30)
    assert response.status_code == 404
    job = requests.post(f"{url}/api/generate", json={"prompt": "x", "wait": True}, timeout=120).json()
    assert "copyright" not in job["images"][0]


def test_a_saved_pipeline_with_check_reports_flags(setup, tmp_path):
    _, url, _ = setup
    body = {"prompt": "a famous painting", "seed": 77, "upscale": 2, "check": True}
    assert requests.put(f"{url}/api/pipelines/copycat", json=body, timeout=30).status_code == 200
    result = requests.post(f"{url}/api/pipelines/copycat/run", timeout=120).json()
    assert result["copyright"]["checked"] and result["copyright"]["flagged"] == [result["images"][0]["id"]]
    assert result["images"][0]["copyright"]["matches"][0]["reference"] == "famous.jpg"
    cli_result = CliRunner().invoke(cli, ["pipeline", "run", "copycat", "--out", str(tmp_path), "--url", url])
    assert cli_result.exit_code == 10 and "FLAGGED" in cli_result.output


def test_a_failing_check_never_costs_the_picture(monkeypatch):
    from pennello.daemon.pictures import copyright
    from pennello.daemon.engine import poststeps

    class Engine:
        config = Config().replace("copyright", reference_dir="/nowhere")
        extensions: dict = {}

    def broken(*_):
        raise PermissionError("denied")

    monkeypatch.setattr(copyright, "check_image", broken)
    picture = Image.new("RGB", (8, 8))
    image, notes = poststeps.run_post_steps(Engine(), picture, {})
    assert image is picture and notes["copyright"]["flagged"] is False
    assert "denied" in notes["copyright"]["error"]
