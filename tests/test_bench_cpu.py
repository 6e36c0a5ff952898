"""The CPU benchmarks run end to end in CI at small sizes and write well-formed results.

Speed is not asserted here (bench/ measures it); these runs prove the suite still works and that
every figure it reports is a real measurement of this machine. Results go to a temp dir, never
over the committed ``bench/results/``.

The benchmarks of SD-Turbo's architecture run ``--shrunk``: the same diffusers and transformers
classes, wired and served the same way, at the widths of ``bench/configs/sd-turbo/tiny.json``
(the full 865M UNet took minutes of CI for no more proof that the scripts work). Such a result
must never pass for a figure, so each run also checks it is marked shrunk and that
``bench/report.py`` refuses to table it, and a shrunk run aimed at ``bench/results/`` is refused.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def bench_report():
    """bench/report.py, loaded from its path (it imports nothing from bench/)."""
    spec = importlib.util.spec_from_file_location("report", BENCH / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_bench(tmp_path: Path, script: str, *args: str) -> dict:
    env = {**os.environ, "PENNELLO_BENCH_RESULTS": str(tmp_path), "PENNELLO_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, script, *args], cwd=BENCH, env=env, capture_output=True, check=False,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = tmp_path.glob("*.json")
    data = json.loads(result.read_text(encoding="utf-8"))
    assert data["machine"]["device"].startswith("cpu: ")
    shrunk = "--shrunk" in args
    assert bool(data.get("shrunk")) is shrunk
    for row in data["rows"]:
        assert isinstance(row["value"], (int, float)) and math.isfinite(row["value"]), row
        assert row["device"] == data["machine"]["device"]
        assert row.get("shrunk", False) is shrunk, row
    if shrunk:  # no table may show it as a figure
        with pytest.raises(ValueError, match=result.name):
            bench_report().load(tmp_path)
    return {row["metric"]: row["value"] for row in data["rows"]}


def test_daemon_bench_measures_overhead_batching_and_cold_start(tmp_path):
    rows = run_bench(tmp_path, "bench_daemon.py", "--quick")
    assert rows["pipeline direct p50 (64x64, 4 steps)"] > 0
    assert rows["HTTP generate+wait p50"] > 0
    assert rows["throughput, 8 concurrent clients"] > 0 and rows["batching gain"] > 0
    assert 0 < rows["serve start to listening (fresh home)"] < rows["serve start to first image (fresh home)"]


def test_embedded_bench_scores_adherence_and_latency(tmp_path):
    rows = run_bench(tmp_path, "bench_embedded.py", "--n", "4", "--rounds", "2")
    assert 0 <= rows["held-out adherence: colour"] <= 100
    assert rows["latency 64x64 4 steps guidance 2, batch 1"] > 0
    assert 0 < rows["weights"] <= 20


def test_a_shrunk_run_is_refused_where_it_would_land_in_the_committed_results():
    env = {k: v for k, v in os.environ.items() if k != "PENNELLO_BENCH_RESULTS"}
    before = sorted(path.name for path in (BENCH / "results").iterdir())
    done = subprocess.run([sys.executable, "bench_cpu.py", "--shrunk"], cwd=BENCH, env=env, capture_output=True,
                          check=False, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "--shrunk" in done.stderr and "PENNELLO_BENCH_RESULTS" in done.stderr
    assert sorted(path.name for path in (BENCH / "results").iterdir()) == before


def test_pipeline_bench_times_the_sd_turbo_classes_at_shrunk_widths_on_cpu(tmp_path):
    rows = run_bench(tmp_path, "bench_pipelines.py", "--cpu-small", "--shrunk", "--size", "64", "--runs", "2")
    assert rows["sd-turbo 64² fp32 CPU UNet achieved"] > 0
    assert rows["sd-turbo 64² fp32 CPU cold start to first image"] > 0
    # the meta-device analysis of the GPU targets is in the same run
    assert any(metric.startswith("sdxl-turbo") for metric in rows)
    assert any(metric.startswith("flux-schnell") for metric in rows)


def test_api_bench_serves_the_sd_turbo_classes_at_shrunk_widths_through_the_daemon(tmp_path):
    rows = run_bench(tmp_path, "bench_api.py", "--cpu-small", "--shrunk", "--size", "64", "--runs", "2",
                     "--warmup", "0", "--batch", "2", "--demo-images", "4")
    label = "sd-turbo 64² 1 step"  # the installed model's defaults, which requests without sizes get
    assert rows[f"{label}: pipeline direct b1 p50"] > 0
    for route in ("POST /api/generate b1", "POST /v1/images/generations b1"):
        assert rows[f"{label}: {route} p50"] > 0
        assert rows[f"{label}: {route} p50 through pennello serve"] > 0
        # a difference of two noisy timings: its sign is not asserted, only that it was measured
        assert f"{label}: {route} overhead relative to the pipeline" in rows
    assert rows[f"{label}: throughput b2 via /api/generate n=2"] > 0
    assert rows[f"{label}: demo 4 Einsteins via POST /api/batch, pictures received"] > 0
    assert rows[f"{label}: demo 4 Einsteins via 4 concurrent /v1/images/generations n=1"] > 0
    assert 0 < rows[f"{label}: pennello serve, launch to listening (model loaded)"] \
        < rows[f"{label}: pennello serve, launch to first picture"]


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO is not installed (pip install -e '.[cpu]')")
def test_cpu_bench_compares_diffusers_fp32_with_the_cpu_default_on_shrunk_sd_turbo(tmp_path, monkeypatch):
    # raw optimum-intel lives in a virtual environment of its own; where it is missing its row fails
    # alone, recorded, and the others are still measured
    monkeypatch.setenv("PENNELLO_OPTIMUM_PYTHON", str(tmp_path / "no-such-python"))
    rows = run_bench(tmp_path, "bench_cpu.py", "--shrunk", "--size", "64", "--runs", "1",
                     "--configs", "diffusers-fp32,optimum-intel,openvino+tiny")
    label = "sd-turbo 64², 1 step, batch 1"
    for config in ("diffusers-fp32", "openvino+tiny"):
        assert rows[f"{label}, {config}: seconds per picture"] > 0
        assert rows[f"{label}, {config}: cold start to first picture"] > rows[f"{label}, {config}: seconds per picture"]
        assert rows[f"{label}, {config}: peak RSS"] > 100
        assert rows[f"{label}, {config}: achieved GFLOP/s"] > 0
    assert rows[f"{label}: pennello CPU default (openvino+tiny) speed-up over diffusers fp32"] > 0
    assert rows["torch fp32 matmul peak (2048²)"] > 0 and rows["torch bf16 matmul peak (2048²)"] > 0
    details = json.loads((tmp_path / "cpu.json").read_text(encoding="utf-8"))["details"]
    assert "no-such-python" in details["optimum-intel"]["failed"]
    assert not any(metric.startswith(f"{label}, optimum-intel") for metric in rows)
