"""SD-Turbo on a CPU: diffusers as it was, each speed-up alone, and pennello's CPU default.

Random weights of the real SD-Turbo architecture (``archs.py``) cost what the trained model costs,
so this needs no download. Each configuration runs in a fresh process, one after the other, and
reports its cold start (process start to first picture, OpenVINO's conversion included), its
seconds per picture (median of ``--runs``), its peak RSS and its achieved GFLOP/s next to the
matmul peak this CPU reaches in torch (fp32 and bf16)::

    python bench/bench_cpu.py                         # 512², 1 step, batch 1: bench/results/cpu.json
    python bench/bench_cpu.py --size 64 --runs 1 --configs diffusers-fp32,openvino+tiny

Configurations: ``diffusers-fp32`` (before this change), ``bf16`` (torch autocast), ``channels-last``,
``compile`` (torch.compile of the UNet), ``tiny`` (the TAESD-architecture decoder), ``openvino``
(pennello's backend) and ``openvino+tiny`` (the daemon's CPU default for 1-4-step SD models).
Raw optimum-intel cannot be measured next to them: optimum-intel 2.2 needs huggingface-hub<1.22,
diffusers 0.42 needs >=1.32. Timings on a shared machine are noisy: the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import row, write_result

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ("diffusers-fp32", "bf16", "channels-last", "compile", "tiny", "bf16+channels-last+tiny",
           "openvino", "openvino+tiny")
DEFAULT = "openvino+tiny"

CHILD = r"""
import json, os, resource, statistics, sys, time
started = time.perf_counter()
import contextlib, torch, diffusers
sys.path[:0] = [sys.argv[5], os.path.join(sys.argv[5], "..")]
from archs import ARCHS, build_pipeline
config, size, runs, cache = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
parts = set(config.split("+"))
pipe = build_pipeline(ARCHS["sd-turbo"])
if "openvino" in parts:
    from pathlib import Path
    from pennello.daemon.engine.backends import openvino_backend
    openvino_backend.convert(pipe, "sd-turbo-random", "random-weights", Path(cache))
if "tiny" in parts:
    pipe.vae = diffusers.AutoencoderTiny().eval()
if "channels-last" in parts:
    for module in (pipe.unet, pipe.vae):
        module.to(memory_format=torch.channels_last)
if "compile" in parts:
    pipe.unet.forward = torch.compile(pipe.unet.forward)
autocast = (lambda: torch.autocast("cpu", torch.bfloat16)) if "bf16" in parts else contextlib.nullcontext
def draw(seed):
    with torch.inference_mode(), autocast():
        pipe("a lighthouse at dusk", width=size, height=size, num_inference_steps=1, guidance_scale=0.0,
             generator=torch.Generator().manual_seed(seed))
draw(0)
cold = time.perf_counter() - started
times = []
for i in range(runs):
    t = time.perf_counter(); draw(i + 1); times.append(time.perf_counter() - t)
print(json.dumps({"cold_s": cold, "median_s": statistics.median(times), "runs": times,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def matmul_peak(dtype_name: str, n: int = 1024, repeats: int = 20) -> float:
    """GFLOP/s of torch's best square matmul here (the best of ``repeats``)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def flops_per_image(size: int, tiny: bool) -> float:
    """The pipeline's FLOPs for one picture (meta device), with the tiny decoder's instead of the VAE's."""
    import diffusers
    import torch
    from archs import ARCHS, analyse, count_flops

    flops = analyse(ARCHS["sd-turbo"], size)["flops"]
    if not tiny:
        return flops["per_image"]
    with torch.device("meta"):
        decoder = diffusers.AutoencoderTiny()
        latents = torch.zeros(1, 4, size // 8, size // 8)
    return flops["per_image"] - flops["vae_decode"] + count_flops(lambda: decoder.decode(latents))


def run_config(config: str, size: int, runs: int, cache: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", CHILD, config, str(size), str(runs), str(cache),
                           str(Path(__file__).resolve().parent)], env=env, capture_output=True, text=True,
                          check=False, timeout=3600)
    if done.returncode:
        raise SystemExit(f"{config} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    args = parser.parse_args()
    configs = args.configs.split(",")
    load = os.getloadavg()
    peaks = {dtype: matmul_peak(dtype) for dtype in ("float32", "bfloat16")}
    cache = Path(os.environ.get("PENNELLO_HOME", Path.home() / ".cache" / "pennello-bench")) / "cache"
    label = f"{args.size}², 1 step, batch 1"
    rows, details = [], {}
    for config in configs:
        result = details[config] = run_config(config, args.size, args.runs, cache)
        gflops = flops_per_image(args.size, "tiny" in config) / result["median_s"] / 1e9
        rows += [row(f"sd-turbo {label}, {config}: seconds per picture", result["median_s"], "s"),
                 row(f"sd-turbo {label}, {config}: cold start to first picture", result["cold_s"], "s"),
                 row(f"sd-turbo {label}, {config}: peak RSS", result["peak_rss_mb"], "MB"),
                 row(f"sd-turbo {label}, {config}: achieved GFLOP/s", gflops, "GFLOP/s",
                     share_of_fp32_matmul_peak=round(gflops / peaks["float32"], 3),
                     share_of_bf16_matmul_peak=round(gflops / peaks["bfloat16"], 3))]
    if "diffusers-fp32" in details and DEFAULT in details:
        rows.append(row(f"sd-turbo {label}: pennello CPU default ({DEFAULT}) speed-up over diffusers fp32",
                        details["diffusers-fp32"]["median_s"] / details[DEFAULT]["median_s"], "x", "≥ 3x"))
    rows += [row("torch fp32 matmul peak (1024²)", peaks["float32"], "GFLOP/s"),
             row("torch bf16 matmul peak (1024²)", peaks["bfloat16"], "GFLOP/s")]
    write_result("cpu", rows, details=details, load_average_at_start=load, load_average_at_end=os.getloadavg(),
                 note="configurations run one after the other, each in a fresh process; torch and OpenVINO "
                      "use their default thread counts; the machine was shared (load averages above)")


if __name__ == "__main__":
    main()
