"""Speed-ups applied at model load (compile, channels_last, fuse_qkv): chosen per device profile,
validated as configuration, and drawing the same pictures as without them on the embedded model.

Inductor's C++ build of even the tiny UNet takes minutes on 2 CPU cores, so the compile tests run
``torch.compile`` with a backend that counts the graphs it is given and runs them eagerly: that
proves what is compiled, and when, in seconds. What Inductor itself costs is measured, not
asserted (docs/performance.md).
"""

from __future__ import annotations

import os
from typing import Callable, Iterator

import numpy as np
import pytest
import requests
import torch
from diffusers.models.attention_processor import Attention
from _fixtures_daemon import config_with
from test_engine import pixels, run

from pennello.config import load_config
from pennello.daemon.engine.profiles import COMPILE_CACHE, GIB, PROFILE_SPEED_UPS, ModelWeights, Plan, plan_for
from pennello.errors import ConfigError

SD_TURBO = ModelWeights({"unet": 865_910_724, "text_encoder": 340_387_840, "vae": 83_653_863})
GPU_FREE = {"large": 78 * GIB, "16gb": 15.1 * GIB, "12gb": 11.2 * GIB, "8gb": 7.4 * GIB}


def plan(device: str = "cuda", tier: str = "large", **kwargs) -> Plan:
    return plan_for(device, SD_TURBO, 2, 512 * 512, free_bytes=GPU_FREE[tier], **kwargs)


@pytest.fixture
def compile_with(monkeypatch) -> Iterator[Callable[[Callable], None]]:
    """``compile_with(backend)`` makes ``torch.compile`` use that backend, whatever mode is asked."""
    real_compile = torch.compile

    def use(backend: Callable) -> None:
        monkeypatch.setattr(torch, "compile",
                            lambda fn, mode=None, **kwargs: real_compile(fn, backend=backend, **kwargs))

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # the engine sets it; restored after
    torch._dynamo.reset()  # compiled code is cached per code object, across tests
    yield use
    torch._dynamo.reset()


@pytest.fixture
def compiled_graphs(compile_with) -> list[torch.fx.GraphModule]:
    """The graphs ``torch.compile`` is given from now on; each runs eagerly."""
    graphs: list[torch.fx.GraphModule] = []

    def record(graph: torch.fx.GraphModule, example_inputs: list) -> Callable:
        graphs.append(graph)
        return graph.forward

    compile_with(record)
    return graphs


def baseline(make_engine, seed: int = 5) -> np.ndarray:
    """The embedded model's picture for ``seed`` with every speed-up off."""
    return pixels(run(make_engine(config_with(engine={"compile": "off", "channels_last": "off",
                                                      "fuse_qkv": "off"})), seed=seed))


def placement(engine) -> dict:
    return next(model["placement"] for model in engine.ps())


@pytest.mark.parametrize("tier", ["large", "16gb", "12gb", "8gb"])
def test_every_speed_up_is_off_by_default_on_every_device_class(tier):
    for device in ("cuda", "mps", "cpu"):
        chosen = plan(device, tier)
        assert (chosen.compile, chosen.channels_last, chosen.fuse_qkv) == (None, False, False)
    assert not any(PROFILE_SPEED_UPS.values()), "turned on without a measurement in docs/performance.md?"


def test_auto_follows_the_profile_table_and_on_or_off_override_it(monkeypatch):
    monkeypatch.setitem(PROFILE_SPEED_UPS, "large", frozenset({"compile", "channels_last"}))
    assert plan(tier="large").compile == "default" and plan(tier="large").channels_last
    assert plan(tier="16gb").compile is None and not plan(tier="16gb").channels_last
    assert plan(tier="large", speed={"compile": "off"}).compile is None
    assert plan(tier="large", compile_mode="max-autotune").compile == "max-autotune"
    on = plan("cpu", speed={"compile": "on", "channels_last": "on", "fuse_qkv": "on"})
    assert (on.compile, on.channels_last, on.fuse_qkv) == ("default", True, True)
    assert on.describe()["compile"] == "default" and "not_applied" not in on.describe()


def test_speed_ups_a_placement_cannot_take_are_reported_not_applied():
    squeezed = plan_for("cuda", SD_TURBO, 2, 512 * 512, free_bytes=2 * GIB, speed={"compile": "on", "fuse_qkv": "on"})
    assert squeezed.offload != "none" and squeezed.compile is None and not squeezed.fuse_qkv
    assert squeezed.not_applied == (f"compile: not with {squeezed.offload} offload",
                                    "fuse_qkv: not with attention slicing")


@pytest.mark.parametrize(("text", "key"), [
    ("compile = true", "engine.compile"),
    ('channels_last = "yes"', "engine.channels_last"),
    ('fuse_qkv = 1', "engine.fuse_qkv"),
    ('compile_mode = "fast"', "engine.compile_mode"),
])
def test_bad_speed_settings_are_config_errors_naming_the_key(tmp_path, text, key):
    path = tmp_path / "config.toml"
    path.write_text(f"[engine]\n{text}\n")
    with pytest.raises(ConfigError, match=key):
        load_config(path, environ={})


def test_speed_settings_from_the_environment(tmp_path):
    config = load_config(tmp_path / "none.toml", environ={"PENNELLO_ENGINE_FUSE_QKV": "on",
                                                           "PENNELLO_ENGINE_COMPILE_MODE": "max-autotune"})
    assert (config.engine.fuse_qkv, config.engine.compile_mode, config.engine.compile) == ("on", "max-autotune",
                                                                                           "auto")
    with pytest.raises(ConfigError, match="engine.compile"):
        load_config(tmp_path / "none.toml", environ={"PENNELLO_ENGINE_COMPILE": "yes"})


def test_channels_last_draws_the_same_picture_and_is_reported_over_http(make_engine, make_server):
    expected = baseline(make_engine)
    server = make_server(config_with(engine={"channels_last": "on"}))
    engine = server.engine
    pipe = engine.residency.loaded["pennello-tiny"].pipe
    for conv in (pipe.unet.conv_in, pipe.vae.decoder.conv_in):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert requests.get(server.api("/ps")).json()["models"][0]["placement"]["channels_last"] is True
    assert np.abs(pixels(run(engine, seed=5)) - expected).max() <= 2


def test_fused_qkv_draws_the_same_picture(make_engine):
    expected = baseline(make_engine)
    engine = make_engine(config_with(engine={"fuse_qkv": "on"}))
    pipe = engine.residency.loaded["pennello-tiny"].pipe
    attention = [m for m in [*pipe.unet.modules(), *pipe.vae.modules()] if isinstance(m, Attention)]
    assert attention and all(m.fused_projections for m in attention)
    assert placement(engine)["fuse_qkv"] is True
    assert np.abs(pixels(run(engine, seed=5)) - expected).max() <= 2


def test_compile_happens_at_load_and_the_first_request_does_not_recompile(make_engine, home, compiled_graphs):
    expected = baseline(make_engine)
    assert compiled_graphs == []
    engine = make_engine(config_with(engine={"compile": "on"}))
    at_load = len(compiled_graphs)
    assert at_load >= 1  # the warm-up generation traced the UNet
    reported = placement(engine)
    assert reported["compile"] == "default" and reported["warmup_s"] > 0
    assert np.abs(pixels(run(engine, seed=5)) - expected).max() <= 2
    assert len(compiled_graphs) == at_load, "the first request after load compiled again"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(home.cache_dir / COMPILE_CACHE)
    assert (home.cache_dir / COMPILE_CACHE).is_dir()


def test_a_failed_compile_leaves_the_model_running_uncompiled(make_engine, compile_with):
    def broken(graph: torch.fx.GraphModule, example_inputs: list) -> Callable:
        raise RuntimeError("no C++ compiler")

    compile_with(broken)
    engine = make_engine(config_with(engine={"compile": "on"}))
    reported = placement(engine)
    assert "compile" not in reported and "no C++ compiler" in reported["not_applied"][0]
    assert "forward" not in vars(engine.residency.loaded["pennello-tiny"].pipe.unet)  # the class's own again
    assert run(engine, seed=5).status == "done"
