"""SD-Turbo and SDXL-Turbo on a CPU: diffusers as it was, each speed-up alone and together,
pennello's CPU default, and raw optimum-intel.

Random weights of the real architectures (``archs.py``) cost what the trained models cost, so this
needs no download. Each configuration runs in a fresh process (``cpu_child.py``), one after the
other, and reports its cold start (process start to first picture, OpenVINO's conversion
included), its seconds per picture (median of ``--runs``), its peak RSS, its achieved GFLOP/s next
to the large-matmul peak this CPU reaches in torch (fp32 and bf16), and how far its seed-0 picture
is from torch fp32's with the same decoder::

    python bench/bench_cpu.py                         # SD-Turbo 512², 1 step, batch 1: bench/results/cpu.json
    python bench/bench_cpu.py --arch sdxl-turbo --configs openvino+tiny --name cpu-sdxl
    python bench/bench_cpu.py --size 64 --runs 1 --configs diffusers-fp32,openvino+tiny
    python bench/bench_cpu.py --batch 4 --configs diffusers-fp32,openvino+tiny --name cpu-b4
    python bench/bench_cpu.py --shrunk --size 64 --runs 1   # the same classes, tiny widths: proves it runs

A configuration is options joined by ``+`` (``cpu_child.py`` lists them: ``threads-1``, ``bf16``,
``channels-last``, ``compile``, ``tiny``, ``openvino``, ``int8``); ``diffusers-fp32`` is the path
before the CPU work, ``openvino+tiny`` the daemon's CPU default for 1-4-step models.
``optimum-intel`` is raw optimum-intel without pennello, from a virtual environment of its own
(``cpu_child_optimum.py``; ``PENNELLO_OPTIMUM_PYTHON`` names its python). A configuration that fails
is recorded in ``details`` and the others still run. Timings on a shared machine are noisy: the load
average is recorded at the start, after each configuration and at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import add_shrunk_option, row, write_result

ROOT = Path(__file__).resolve().parent.parent
# In the order they run: the before, the default and its variants first, so a run cut short by a
# busy machine still has the rows that matter.
CONFIGS = ("diffusers-fp32", "tiny", "openvino+tiny", "openvino+int8+tiny", "openvino", "openvino+int8",
           "optimum-intel", "threads-1", "bf16", "channels-last", "bf16+channels-last+tiny",
           "openvino+tiny+threads-1", "compile", "bf16+channels-last+compile+tiny")
DEFAULT = "openvino+tiny"
# The most a default may change a picture against torch fp32 with the same seed and decoder, in
# mean levels of 255 (bf16 inside OpenVINO measured about 1-3 on this machine's tests).
QUALITY_LEVELS = 3.0
# Raw optimum-intel lives in a virtual environment of its own (cpu_child_optimum.py says how).
OPTIMUM_PYTHON = os.environ.get("PENNELLO_OPTIMUM_PYTHON", "/tmp/ovraw/bin/python")


def matmul_peak(dtype_name: str, n: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of torch's best large square matmul here (the best of ``repeats``)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def flops_per_image(arch: str, size: int, tiny: bool, shrunk: bool) -> float:
    """The pipeline's FLOPs for one picture (meta device; of the tiny widths when ``shrunk``), with
    the tiny decoder's instead of the VAE's when ``tiny``."""
    import diffusers
    import torch
    from archs import ARCHS, analyse, count_flops

    flops = analyse(ARCHS[arch], size, tiny=shrunk)["flops"]
    if not tiny:
        return flops["per_image"]
    with torch.device("meta"):
        decoder = diffusers.AutoencoderTiny()
        latents = torch.zeros(1, 4, size // 8, size // 8)
    return flops["per_image"] - flops["vae_decode"] + count_flops(lambda: decoder.decode(latents))


def saved_pipeline(arch: str, cache: Path, shrunk: bool) -> Path:
    """The random-weight pipeline of ``arch`` saved once, for optimum-intel to export from disk."""
    target = cache / f"{arch}{'-shrunk' if shrunk else ''}-random-pipeline"
    if not (target / "model_index.json").exists():
        from archs import ARCHS, build_pipeline

        build_pipeline(ARCHS[arch], tiny=shrunk).save_pretrained(target)
    return target


def run_config(config: str, arch: str, size: int, runs: int, cache: Path, pictures: Path,
               shrunk: bool, batch: int = 1) -> dict[str, Any]:
    """One configuration in a fresh process, ``batch`` pictures a call: its timings (seconds per
    picture) and its seed-0 pictures under ``pictures``, or ``{"failed": stderr}``."""
    picture = pictures / f"{config}.npy"
    here = Path(__file__).resolve().parent
    if config == "optimum-intel":
        if batch != 1:
            return {"failed": "the raw optimum-intel row is measured at batch 1 only"}
        if not Path(OPTIMUM_PYTHON).exists():  # checked first: saving the pipeline for it takes minutes
            return {"failed": f"no optimum-intel environment: {OPTIMUM_PYTHON} does not exist "
                              "(cpu_child_optimum.py says how to make one)"}
        command = [OPTIMUM_PYTHON, str(here / "cpu_child_optimum.py"), str(saved_pipeline(arch, cache, shrunk)),
                   str(size), str(runs), str(picture)]
    else:
        command = [sys.executable, str(here / "cpu_child.py"), config, arch, str(size), str(runs), str(cache),
                   str(picture), f"--batch={batch}", *(["--shrunk"] if shrunk else [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(ROOT), str(here)))}
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=3600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"failed": str(e)}
    if done.returncode:
        return {"failed": done.stderr[-3000:]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # per picture, as the batch-1 rows: a call draws ``batch`` pictures
    return {**result, "median_s": result["median_s"] / batch, "median_s_per_call": result["median_s"],
            "load_average_after": os.getloadavg()}


def difference(config: str, pictures: Path) -> float | None:
    """Mean absolute difference (0-255 levels) of ``config``'s seed-0 picture from torch fp32's with
    the same decoder; None when that reference was not run."""
    import numpy as np

    reference = pictures / ("tiny.npy" if "tiny" in config.split("+") else "diffusers-fp32.npy")
    if not reference.exists() or config in ("tiny", "diffusers-fp32"):
        return None
    return float(np.abs(np.load(pictures / f"{config}.npy") - np.load(reference)).mean() * 255)


def config_rows(label: str, config: str, result: dict[str, Any], gflops: float,
                peaks: dict[str, float], diff: float | None) -> list[dict[str, Any]]:
    rows = [row(f"{label}, {config}: seconds per picture", result["median_s"], "s"),
            row(f"{label}, {config}: cold start to first picture", result["cold_s"], "s"),
            row(f"{label}, {config}: peak RSS", result["peak_rss_mb"], "MB"),
            row(f"{label}, {config}: achieved GFLOP/s", gflops, "GFLOP/s",
                share_of_fp32_matmul_peak=round(gflops / peaks["float32"], 3),
                share_of_bf16_matmul_peak=round(gflops / peaks["bfloat16"], 3))]
    if diff is not None:
        rows.append(row(f"{label}, {config}: mean difference from torch fp32 (seed 0, same decoder)", diff,
                        "levels of 255", f"≤ {QUALITY_LEVELS} for a default"))
    return rows


def summary_rows(label: str, details: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline ratios: the default against today's path and against raw optimum-intel."""
    rows, details = [], {config: result for config, result in details.items() if "failed" not in result}
    if "diffusers-fp32" in details and DEFAULT in details:
        rows.append(row(f"{label}: pennello CPU default ({DEFAULT}) speed-up over diffusers fp32",
                        details["diffusers-fp32"]["median_s"] / details[DEFAULT]["median_s"], "x", "≥ 8x"))
    if "optimum-intel" in details and "openvino" in details:
        rows.append(row(f"{label}: pennello OpenVINO (full decoder) time relative to raw optimum-intel",
                        details["openvino"]["median_s"] / details["optimum-intel"]["median_s"], "x", "≤ 1.1x"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="sd-turbo", choices=("sd-turbo", "sdxl-turbo"))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1, help="pictures per pipeline call (rows stay per picture)")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--name", default="cpu", help="result file bench/results/<name>.json")
    add_shrunk_option(parser)
    args = parser.parse_args()
    load = os.getloadavg()
    peaks = {dtype: matmul_peak(dtype) for dtype in ("float32", "bfloat16")}
    cache = Path(os.environ.get("PENNELLO_HOME", Path.home() / ".cache" / "pennello-bench")) / "cache"
    pictures = Path(tempfile.mkdtemp(prefix="bench-cpu-"))
    label = f"{args.arch} {args.size}², 1 step, batch {args.batch}"
    rows, details = [], {}
    peak_rows = [row("torch fp32 matmul peak (2048²)", peaks["float32"], "GFLOP/s"),
                 row("torch bf16 matmul peak (2048²)", peaks["bfloat16"], "GFLOP/s")]
    for config in args.configs.split(","):
        result = details[config] = run_config(config, args.arch, args.size, args.runs, cache, pictures, args.shrunk,
                                              args.batch)
        if "failed" in result:  # recorded in details; the other configurations still run
            print(f"{config} failed:\n{result['failed']}", file=sys.stderr)
            continue
        tiny = "tiny" in config.split("+")
        gflops = flops_per_image(args.arch, args.size, tiny, args.shrunk) / result["median_s"] / 1e9
        rows += config_rows(label, config, result, gflops, peaks, difference(config, pictures))
        # written after every configuration: a run stopped early keeps what it measured
        write_result(args.name, rows + summary_rows(label, details) + peak_rows, shrunk=args.shrunk, details=details,
                     load_average_at_start=load, load_average_at_end=os.getloadavg(),
                     note="configurations run one after the other, each in a fresh process; torch and OpenVINO "
                          "use every core unless threads-1; the machine was shared (load averages above, and "
                          "per configuration in details)")


if __name__ == "__main__":
    main()
