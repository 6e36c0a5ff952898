"""The engine without HTTP: real pipeline (the embedded tiny model), real queue, real files."""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from datetime import date, timedelta

import numpy as np
import pytest
from PIL import Image

from pennello.daemon import GenerateRequest
from pennello.daemon.engine.outputs import TRAINED_ALGORITHMIC_MEDIA, parse_xmp
from pennello.errors import BusyError, DaemonError, ModelNotFoundError, NotFoundError, RequestError
from pennello.installer import Store
from _fixtures_daemon import SLOW_STEPS, config_with, wait_until_running


def pixels(job, index=0) -> np.ndarray:
    with Image.open(job.images[index].path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def run(engine, **fields):
    job = engine.submit(GenerateRequest(**{"prompt": "a red kite", **fields}))
    assert job.wait(60), "job did not finish"
    return job


class ExtraModels:
    """The real store plus extra names that point at other directories (for failure and
    keep-alive tests that need a second model)."""

    def __init__(self, store: Store, **extra) -> None:
        self.store, self.extra = store, extra

    def installed(self):
        return self.store.installed() + list(self.extra.values())

    def get(self, name, verify=False):
        return self.extra[name] if name in self.extra else self.store.get(name, verify)


def second_model(home, name, break_weights=False):
    """A copy of the embedded model under another name; optionally with truncated UNet weights."""
    tiny = Store(home).get("pennello-tiny")
    target = home.cache_dir / name
    shutil.copytree(tiny.path, target)
    if break_weights:
        weights = next((target / "unet").glob("*.safetensors"))
        weights.unlink()
        weights.write_bytes(b"not safetensors")
    return replace(tiny, name=name, path=target)


def test_generate_uses_manifest_defaults_and_returns_seeds(engine):
    job = run(engine, seed=7, n=2)
    assert job.status == "done" and job.error is None
    assert job.seeds == [7, 8]
    assert [image.seed for image in job.images] == [7, 8]
    defaults = Store(engine.paths).get("pennello-tiny").manifest.pipeline.defaults
    assert (job.request.width, job.request.height, job.request.steps) == (
        defaults["width"], defaults["height"], defaults["steps"])
    for image in job.images:
        assert image.path.is_file() and image.path.parent.parent == engine.paths.outputs_dir
        with Image.open(image.path) as picture:
            assert picture.format == "PNG" and picture.size == (defaults["width"], defaults["height"])


def test_random_seeds_are_reported_and_reproduce_the_picture(engine):
    first = run(engine)
    again = run(engine, seed=first.seeds[0])
    assert np.array_equal(pixels(first), pixels(again))
    other = run(engine, seed=(first.seeds[0] + 1) % 2**32)
    assert not np.array_equal(pixels(first), pixels(other))


def test_compatible_queued_jobs_share_one_pipeline_call(engine):
    blocker = engine.submit(GenerateRequest(prompt="busy", steps=SLOW_STEPS))
    wait_until_running(blocker)
    calls_before = engine.stats["pipeline_calls"]
    batched = [engine.submit(GenerateRequest(prompt=f"kite {i}", negative_prompt=f"rain {i}", seed=i))
               for i in range(3)]
    batched.append(engine.submit(GenerateRequest(prompt="two kites", seed=10, n=2)))
    other_size = engine.submit(GenerateRequest(prompt="a wide kite", width=128, seed=1))
    for job in [blocker, *batched, other_size]:
        assert job.wait(60) and job.status == "done", job.error
    # the blocker, then one call for the 5 compatible images, then one for the other size
    assert engine.stats["pipeline_calls"] - calls_before == 3
    assert [job.batch_size for job in batched] == [5, 5, 5, 5]
    assert other_size.batch_size == 1 and blocker.batch_size == 1
    assert [image.seed for image in batched[3].images] == [10, 11]


def test_a_picture_does_not_depend_on_its_batch_mates(engine):
    alone = run(engine, prompt="kite 1", seed=1)
    blocker = engine.submit(GenerateRequest(prompt="busy", steps=SLOW_STEPS))
    wait_until_running(blocker)
    mates = [engine.submit(GenerateRequest(prompt=f"kite {i}", seed=i)) for i in range(3)]
    for job in mates:
        assert job.wait(60)
    assert mates[1].batch_size == 3
    # Batched matrix products may round differently; the picture must be the same to the eye.
    assert np.abs(pixels(alone) - pixels(mates[1])).max() <= 2


def test_more_images_than_max_batch_are_split_across_calls(make_engine):
    engine = make_engine(config_with(engine={"max_batch": 2}))
    calls_before = engine.stats["pipeline_calls"]
    job = run(engine, n=5, seed=100)
    assert job.status == "done"
    assert [image.seed for image in job.images] == [100, 101, 102, 103, 104]
    assert engine.stats["pipeline_calls"] - calls_before == 3
    assert job.batch_size == 2


def test_cancel_a_queued_job(engine):
    blocker = engine.submit(GenerateRequest(prompt="busy", steps=SLOW_STEPS))
    wait_until_running(blocker)
    queued = engine.submit(GenerateRequest(prompt="never mind"))
    assert engine.cancel(queued.id).status == "cancelled"
    assert blocker.wait(60) and blocker.status == "done"
    assert queued.images == [] and queued.started is None
    assert engine.health()["queue_depth"] == 0
    assert [name for name, _ in queued.events()] == ["cancelled"]


def test_cancel_a_running_job_stops_it_and_the_worker_goes_on(engine):
    job = engine.submit(GenerateRequest(prompt="long", steps=SLOW_STEPS))
    wait_until_running(job)
    engine.cancel(job.id)
    assert job.wait(30) and job.status == "cancelled"
    assert job.step < SLOW_STEPS and job.images == []
    assert run(engine).status == "done"


def test_a_failing_job_does_not_kill_the_worker(make_engine, home):
    store = ExtraModels(Store(home))
    engine = make_engine(store=store)
    store.extra["broken"] = second_model(home, "broken", break_weights=True)
    failed = run(engine, model="broken")
    assert failed.status == "failed"
    assert "broken" in failed.error and "do not load" in failed.error
    assert run(engine).status == "done"
    assert engine.health()["ready"]


def test_idle_models_unload_after_keep_alive_but_the_default_stays(make_engine, home):
    store = ExtraModels(Store(home))
    engine = make_engine(config_with(engine={"keep_alive_s": 1}), store=store)
    store.extra["other"] = second_model(home, "other")
    assert run(engine, model="other").status == "done"
    assert {m["name"] for m in engine.ps()} == {"pennello-tiny", "other"}
    deadline = time.monotonic() + 10
    while len(engine.ps()) > 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [m["name"] for m in engine.ps()] == ["pennello-tiny"]


def test_explicit_load_and_unload(engine):
    assert engine.unload("pennello-tiny") == {"name": "pennello-tiny", "unloaded": True}
    assert engine.ps() == []
    assert engine.unload("pennello-tiny")["unloaded"] is False
    described = engine.load("pennello-tiny")
    assert described["name"] == "pennello-tiny" and described["param_bytes"] > 0
    assert described["device"] == "cpu" and described["expires_in_s"] is None
    with pytest.raises(ModelNotFoundError):
        engine.load("no-such-model")


@pytest.mark.parametrize(("fields", "field"), [
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "x" * 2001}, "prompt"),
    ({"negative_prompt": "x" * 2001}, "negative_prompt"),
    ({"n": 0}, "n"),
    ({"n": 17}, "n"),
    ({"n": True}, "n"),
    ({"width": 65}, "width"),
    ({"height": 4096}, "height"),
    ({"width": 32}, "width"),
    ({"steps": 0}, "steps"),
    ({"steps": 101}, "steps"),
    ({"guidance": 31.0}, "guidance"),
    ({"guidance": -1}, "guidance"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**32}, "seed"),
    ({"format": "gif"}, "format"),
])
def test_bad_requests_are_refused_naming_the_field(engine, fields, field):
    with pytest.raises(RequestError) as caught:
        engine.submit(GenerateRequest(**{"prompt": "a kite", **fields}))
    assert caught.value.field == field and caught.value.http_status == 400


def test_unknown_model_and_job(engine):
    with pytest.raises(ModelNotFoundError):
        engine.submit(GenerateRequest(prompt="x", model="no-such-model"))
    with pytest.raises(NotFoundError):
        engine.get_job("nope")


def test_jobs_are_private_to_their_owner(engine):
    job = run(engine, owner="phone-1")
    assert engine.get_job(job.id, owner="phone-1") is job
    with pytest.raises(NotFoundError):
        engine.get_job(job.id, owner="phone-2")
    assert engine.jobs(owner="phone-2") == [] and engine.jobs(owner="phone-1") == [job]


def test_a_full_queue_is_busy_with_a_retry_hint(make_engine):
    engine = make_engine(config_with(engine={"queue_size": 1}))
    blocker = engine.submit(GenerateRequest(prompt="busy", steps=SLOW_STEPS))
    wait_until_running(blocker)
    engine.submit(GenerateRequest(prompt="waiting"))
    with pytest.raises(BusyError) as caught:
        engine.submit(GenerateRequest(prompt="one too many"))
    assert caught.value.retry_after >= 1 and caught.value.http_status == 429


def test_progress_reports_the_running_batch(engine):
    assert engine.progress()["state"] == "idle"
    job = engine.submit(GenerateRequest(prompt="long", steps=SLOW_STEPS))
    wait_until_running(job)
    progress = engine.progress()
    assert progress["state"] == "running" and progress["jobs"] == [job.id]
    assert 0 < progress["fraction"] < 1 and progress["total"] == SLOW_STEPS
    assert job.wait(60)


def test_stop_lets_the_running_batch_finish_and_saves_it(make_engine):
    engine = make_engine()
    running = engine.submit(GenerateRequest(prompt="finish me", steps=SLOW_STEPS))
    wait_until_running(running)
    queued = engine.submit(GenerateRequest(prompt="too late", width=128))
    engine.stop()
    assert running.status == "done" and running.images[0].path.is_file()
    assert queued.status == "cancelled"
    with pytest.raises(DaemonError):
        engine.submit(GenerateRequest(prompt="after stop"))


def test_pictures_carry_parameters_and_ai_provenance(engine):
    job = run(engine, prompt="a lighthouse", negative_prompt="fog", seed=42, owner="phone-1")
    with Image.open(job.images[0].path) as image:
        parameters, xmp = image.info["parameters"], image.info["xmp"]
    assert "a lighthouse" in parameters and "Negative prompt: fog" in parameters
    assert "Seed: 42" in parameters and "Model: pennello-tiny" in parameters
    source, record = parse_xmp(xmp)
    assert source == TRAINED_ALGORITHMIC_MEDIA
    digest = Store(engine.paths).get("pennello-tiny").digest
    assert record["manifest_digest"] == digest and record["owner"] == "phone-1"
    assert record["seed"] == 42 and record["steps"] == job.request.steps


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_lossy_formats_also_carry_xmp(engine, fmt):
    job = run(engine, format=fmt, seed=3)
    path = job.images[0].path
    with Image.open(path) as image:
        assert image.format == fmt.upper()
        source, record = parse_xmp(image.info["xmp"])
    assert source == TRAINED_ALGORITHMIC_MEDIA and record["seed"] == 3


def test_retention_prunes_old_days_only(engine):
    job = run(engine)
    old_day = engine.paths.outputs_dir / (date.today() - timedelta(days=40)).isoformat()
    old_day.mkdir()
    (old_day / "20200101-000000-000000-00000000.png").write_bytes(b"old")
    assert engine.outputs.prune(0) == 0 and old_day.exists()  # 0 keeps everything
    assert engine.outputs.prune(30) == 1
    assert not old_day.exists() and job.images[0].path.is_file()


def test_an_unreadable_picture_is_skipped_by_the_gallery(engine):
    job = run(engine)
    day = job.images[0].path.parent
    (day / "20200101-000000-000000-0000dead.png").write_bytes(b"")  # cut short by a power failure
    listed = engine.outputs.gallery()
    assert [record["id"] for record in listed] == [job.images[0].id]


@pytest.mark.parametrize(("family", "cls", "route"), [
    ("sd-upscale", "StableDiffusionUpscalePipeline", "/api/upscale"),
    ("qwen-image-edit", "QwenImageEditPlusPipeline", "/api/edit"),
])
def test_text_to_image_with_a_model_made_for_something_else_is_refused(make_engine, home, family, cls, route):
    """An upscaler or an edit model named for text-to-image: a 400 naming the model and the
    route to use, before any load is tried."""
    store = ExtraModels(Store(home))
    engine = make_engine(store=store)
    other = second_model(home, "other")
    pipeline = replace(other.manifest.pipeline, family=family, cls=cls, defaults={})
    store.extra["other"] = replace(other, manifest=replace(other.manifest, pipeline=pipeline))
    with pytest.raises(RequestError) as caught:
        engine.submit(GenerateRequest(prompt="a kite", model="other"))
    assert caught.value.field == "model" and caught.value.http_status == 400
    assert "not a text-to-image one" in str(caught.value) and route in str(caught.value)
    assert "other" not in engine.health()["loaded"] and engine.jobs() == []
