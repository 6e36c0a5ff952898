"""The shipped catalog and the embedded pennello-tiny model: signed, intact, and drawing what is asked."""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import re
from datetime import datetime, timezone

import numpy as np
import pytest

from _fixtures_installer import load_script
from pennello.config import Config
from pennello.errors import BadSignatureError
from pennello.installer.keys import generate_key
from pennello.installer.manifest import Manifest, parse_envelope
from pennello.installer.fetchers import embedded_dir
from pennello.installer.store import check_file
from pennello.installer.trust import TrustPolicy

CATALOG = importlib.resources.files("pennello.manifests")
EMBEDDED = embedded_dir("pennello-tiny")
# Fractions of 16 held-out prompts drawn right (shipped v4: 1.0, 0.94, 1.0; untrained: ~0.15,
# ~0.05, ~0.05): margins for other CPUs' rounding, not for a weaker model.
HELD_OUT_COLOUR_FLOOR = 0.9
HELD_OUT_BOTH_FLOOR = 0.8  # colour and shape
HELD_OUT_PLACE_FLOOR = 0.8


def _raw(name: str) -> bytes:
    return (CATALOG / f"{name}.json").read_bytes()


def _catalog_names() -> list[str]:
    return sorted(p.name[:-len(".json")] for p in CATALOG.iterdir() if p.name.endswith(".json"))


@pytest.fixture
def policy(home):
    return TrustPolicy.load(home, Config().trust)


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(EMBEDDED, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _defaults() -> dict:
    """The sampling defaults the signed manifest gives the daemon for pennello-tiny."""
    return Manifest.from_signed(parse_envelope(_raw("pennello-tiny"))[0]).pipeline.defaults


def _draw(pipe, seed: int) -> np.ndarray:
    import torch

    d = _defaults()
    image = pipe("a red circle", num_inference_steps=d["steps"], height=d["height"], width=d["width"],
                 guidance_scale=d["guidance"], generator=torch.Generator().manual_seed(seed)).images[0]
    assert image.size == (64, 64)
    return np.asarray(image)


def test_catalog_lists_the_embedded_model_and_the_hub_models():
    assert {"pennello-tiny", "sd-turbo", "sdxl-turbo", "flux.1-schnell", "qwen-image-edit",
            "sd-x4-upscaler"} <= set(_catalog_names())


@pytest.mark.parametrize("name", _catalog_names())
def test_the_daemon_can_serve_every_catalog_entry(name):
    """Each entry names a registered family that allows its pipeline class, and that class
    exists in the installed diffusers, so installing it never ends in an unservable model."""
    import diffusers

    from pennello.daemon.engine.families import get_family

    manifest = Manifest.from_signed(parse_envelope(_raw(name))[0])
    family = get_family(manifest.pipeline.family)
    assert manifest.pipeline.cls in family.classes and hasattr(diffusers, manifest.pipeline.cls)


def test_the_catalog_has_the_ai_upscaler_the_config_names_and_a_multi_picture_editor():
    from pennello.daemon.engine.families import get_family

    upscaler = Manifest.from_signed(parse_envelope(_raw(Config().images.upscale_model))[0])
    assert get_family(upscaler.pipeline.family).purpose == "upscale"
    assert upscaler.source.repo == "stabilityai/stable-diffusion-x4-upscaler"
    editor = Manifest.from_signed(parse_envelope(_raw("qwen-image-edit"))[0])
    family = get_family(editor.pipeline.family)
    assert family.purpose == "edit" and family.images_allowed(editor.pipeline.cls) > 1


@pytest.mark.parametrize("name", _catalog_names())
def test_every_catalog_entry_verifies_against_the_shipped_release_key(policy, name):
    manifest = policy.verify(_raw(name))
    assert manifest.name == name


def test_a_changed_catalog_entry_is_refused(policy):
    envelope = json.loads(_raw("pennello-tiny"))
    envelope["signed"]["files"][0]["sha256"] = "0" * 64
    with pytest.raises(BadSignatureError):
        policy.verify(json.dumps(envelope).encode())


def test_embedded_files_are_exactly_the_signed_ones():
    manifest = Manifest.from_signed(parse_envelope(_raw("pennello-tiny"))[0])
    assert manifest.locked and manifest.source.kind == "embedded"
    on_disk = sorted(p.relative_to(EMBEDDED).as_posix() for p in EMBEDDED.rglob("*") if p.is_file())
    assert on_disk == sorted(f.path for f in manifest.files)
    assert {entry.path: check_file(EMBEDDED / entry.path, entry) for entry in manifest.files} \
        == {entry.path: None for entry in manifest.files}
    assert manifest.total_size < 20_000_000  # the embedded model's size budget


def test_hub_entries_pin_a_full_commit_and_list_no_files():
    for name in _catalog_names():
        manifest = Manifest.from_signed(parse_envelope(_raw(name))[0])
        if manifest.source.kind != "huggingface":
            continue
        assert not manifest.locked and manifest.files == ()
        assert re.fullmatch(r"[0-9a-f]{40}", manifest.source.revision)
        if manifest.pipeline.family == "tiny-decoder":  # decodes latents: no steps, no size of its own
            assert manifest.pipeline.cls == "AutoencoderTiny" and manifest.pipeline.defaults == {}
        else:
            assert manifest.pipeline.defaults["steps"] >= 1


def test_embedded_pipeline_draws_the_same_picture_for_the_same_seed(pipe):
    first, again, other = _draw(pipe, 0), _draw(pipe, 0), _draw(pipe, 1)
    assert first.shape == (64, 64, 3)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.std() > 0  # a picture, not a flat fill


@pytest.fixture(scope="module")
def trainer():
    """packaging/train_embedded_model.py: its scenes, held-out prompts and pixel checker."""
    return load_script("train_embedded_model")


def test_the_checker_reads_colour_and_shape_of_drawn_scenes(trainer):
    scenes = trainer.all_scenes()[::37]
    assert all(trainer.check(trainer.render(s), s) == (True, True) for s in scenes)
    assert all(trainer.placed(trainer.render(s), s) and trainer.read_layout(trainer.render(s))[1] == 1
               for s in scenes)
    moved = trainer.Scene("red", "circle", "blue", "small", "top left")
    assert not trainer.placed(trainer.render(moved), trainer.Scene("red", "circle", "blue", "small", "center"))


def test_the_manifest_samples_as_the_model_was_scored(trainer):
    """Adherence is measured at the trainer's GUIDANCE; the daemon samples at the manifest's."""
    assert _defaults() == {"width": 64, "height": 64, "steps": 4, "guidance": trainer.GUIDANCE}


def test_saving_the_shipped_pipeline_writes_the_signed_bytes_again(pipe, tmp_path):
    """What training's last step writes is what ships: no build paths, no leftover tokenizer state."""
    _draw(pipe, seed=0)  # a call leaves padding and truncation settings in the tokenizer
    load_script("build_embedded_model").save_pipeline(pipe, tmp_path / "resaved")
    shipped = {p.relative_to(EMBEDDED): p.read_bytes() for p in EMBEDDED.rglob("*") if p.is_file()}
    resaved = {p.relative_to(tmp_path / "resaved"): p.read_bytes()
               for p in (tmp_path / "resaved").rglob("*") if p.is_file()}
    assert sorted(resaved) == sorted(shipped)
    assert [str(path) for path in shipped if resaved[path] != shipped[path]] == []


def test_held_out_prompts_never_appear_in_training(trainer):
    train, test = trainer.split()
    seen = {(s.colour, s.shape, s.background) for s in train}
    assert test and not seen & {(s.colour, s.shape, s.background) for s in test}
    assert not {(s.colour, s.shape) for s in train} & set(trainer.HELD_OUT_PAIRS)


def test_a_red_circle_prompt_draws_a_red_circle(pipe, trainer):
    read = [trainer.read_scene(_draw(pipe, seed)) for seed in range(4)]
    assert sum(colour == "red" for colour, _ in read) >= 3, read
    assert sum(shape == "circle" for _, shape in read) >= 3, read


def test_the_place_in_the_prompt_moves_the_object(pipe, trainer):
    scenes = [trainer.Scene("green", "star", "white", "large", place) for place in trainer.POSITIONS]
    pictures = trainer.generate(pipe, scenes, seed=3, guidance=_defaults()["guidance"])
    assert sum(trainer.placed(p, s) for p, s in zip(pictures, scenes)) >= 4


def test_embedded_model_draws_held_out_prompts(pipe, trainer):
    # 16 prompts whose colour-shape-background combination training never showed (the first of
    # them colour-shape pairs it never saw at all), drawn at the shipped guidance; the checker
    # reads the main object's colour, shape and place from the pixels.
    result = trainer.score(pipe, trainer.held_out_prompts(16))
    assert result["colour"] >= HELD_OUT_COLOUR_FLOOR, result
    assert result["both"] >= HELD_OUT_BOTH_FLOOR, result
    assert result["place"] >= HELD_OUT_PLACE_FLOOR, result


@pytest.fixture(scope="module")
def sign_catalog():
    return load_script("sign_catalog")


def test_shipped_catalog_is_what_the_signing_script_writes(sign_catalog):
    for wanted in sign_catalog.catalog(datetime.now(timezone.utc)):
        shipped = parse_envelope(_raw(wanted.name))[0]
        assert sign_catalog._content(shipped) == sign_catalog._content(wanted.to_signed()), wanted.name


def test_signing_again_changes_nothing_and_renew_bumps_versions(home, tmp_path, sign_catalog):
    generate_key(home, "test-release")
    out = tmp_path / "catalog"
    args = ["--key", "test-release", "--out", str(out)]

    sign_catalog.main(args)
    first = {p.name: p.read_bytes() for p in out.glob("*.json")}
    assert set(first) == {f"{name}.json" for name in sign_catalog.CATALOG}
    sign_catalog.main(args)
    assert {p.name: p.read_bytes() for p in out.glob("*.json")} == first

    sign_catalog.main(args + ["--renew"])
    assert {parse_envelope(p.read_bytes())[0]["version"] for p in out.glob("*.json")} == {2}
