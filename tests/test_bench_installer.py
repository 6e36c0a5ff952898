"""The installer benchmarks run: bench_verify and bench_download at a tiny size.

Speed is measured in bench/, never asserted here; these only prove the scripts work and write
results in the shape bench/report.py reads (into a temporary results directory).
"""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def bench(tmp_path, monkeypatch):
    """Import a bench script the way it runs (bench/ on sys.path), writing results to tmp_path."""
    monkeypatch.syspath_prepend(str(BENCH))
    common = importlib.import_module("_common")
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path / "results")
    return importlib.import_module


def _rows(path: Path) -> dict[str, dict]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert set(data) >= {"benchmark", "machine", "rows"} and data["machine"]["device"]
    assert all(set(r) >= {"metric", "value", "unit", "goal", "device"} for r in data["rows"])
    return {r["metric"]: r for r in data["rows"]}


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs sha256sum (GNU coreutils)")
def test_bench_verify_runs_at_a_tiny_size(bench, tmp_path):
    module = bench("bench_verify")
    assert module.parse_size("1G") == 1024**3 and module.parse_size("64MiB") == 64 * 1024**2
    result = module.main(["--size", "2M", "--rounds", "1"])
    assert set(result["mb_s"]) >= {"sha256sum", "file_sha256", "Store.verify"}
    rows = _rows(tmp_path / "results" / "verify-cpu.json")
    assert rows["file_sha256 / sha256sum"]["unit"] == "x" and rows["file_sha256 / sha256sum"]["value"] > 0
    assert rows["Store.verify 2 MiB"]["goal"] == ">= 0.9x sha256sum"


def test_bench_download_runs_at_a_tiny_size(bench, tmp_path):
    result = bench("bench_download").main(["--size", "2M", "--files", "2", "--rounds", "1"])
    assert set(result["mb_s"]) == {"install", "install, one file at a time", "raw HTTP download", "raw copy"}
    rows = _rows(tmp_path / "results" / "download-cpu.json")
    assert rows["install from 127.0.0.1 mirror, 2 MiB in 2 files"]["value"] > 0
    assert json.loads((tmp_path / "results" / "download-cpu.json").read_text())["files"] == 2
