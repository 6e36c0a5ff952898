"""Raw diffusers pipelines on real architectures (random weights): what a GPU really delivers.

For each target in ``archs.ARCHS`` (SD-Turbo 512² 1 step, SDXL-Turbo 512² 1 step, SDXL 1024² 30
steps CFG, FLUX.1-schnell 1024² 4 steps) it measures latency and images/s at batch 1/4/8, peak GPU
memory, the denoiser's achieved TFLOP/s (FLOPs counted with ``FlopCounterMode``) as a fraction of
the card's dense bf16 peak, VAE decode time, cold start (process start → pipeline on the device →
first image), the "20 Einsteins" demo at 1024² and the cost of PNG encoding::

    python bench/bench_pipelines.py                          # GPU: bf16, SDPA, every arch
    python bench/bench_pipelines.py --channels-last --tag channels-last
    python bench/bench_pipelines.py --compile --archs sd-turbo --tag compile
    python bench/bench_pipelines.py --cpu-small              # CPU: meta-device FLOPs + SD-Turbo at 128²
    python bench/bench_pipelines.py --cpu-small --shrunk     # the same classes, tiny widths: proves it runs

Each run writes ``bench/results/pipelines-gpu-<tag>.json`` (``archs-cpu.json`` for --cpu-small);
``bench/run_gpu.sh`` runs the baseline and every option one after the other. Weights are random,
so images are noise, but every kernel, shape and byte moved is the real model's.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from _common import add_shrunk_option, percentile, row, write_result
from archs import (ARCHS, Arch, analyse, build_pipeline, denoiser_evals_per_step, denoiser_inputs,
                   denoiser_name, text_ids, vae_latents)

log = logging.getLogger("bench.pipelines")

PROMPT = "a lighthouse on a cliff at sunset, oil painting"
EINSTEIN_STYLES = ("oil painting", "pencil sketch", "1950s black and white photograph", "watercolor")
PNG_LEVELS = (0, 1, 6)
PNG_SIZES = (512, 1024)

# Dense bf16 tensor-core peaks, TFLOP/s (no sparsity). H100/A100 as in PERFORMANCE-NOTES.md;
# the others from NVIDIA's datasheets. First match wins, so "H100 PCIe" precedes "H100".
PEAK_BF16_TFLOPS: tuple[tuple[str, str, float], ...] = (
    (r"H100.*PCIe", "H100 PCIe", 756.0),
    (r"H100", "H100 SXM", 989.0),
    (r"H200", "H200", 989.0),
    (r"A100", "A100", 312.0),
    (r"\bL4\b", "L4", 121.0),
    (r"RTX 4090", "RTX 4090", 165.0),
)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SDPA_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")


def peak_tflops(device: str) -> tuple[str, float] | None:
    """(label, dense bf16 TFLOP/s) of the named GPU, or None when it is not in the table."""
    for pattern, label, peak in PEAK_BF16_TFLOPS:
        if re.search(pattern, device):
            return label, peak
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], Any], device: torch.device, runs: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``runs`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _sdpa_context(backend: str) -> Any:
    """Pin F.scaled_dot_product_attention (which UNet and FLUX attention both call) to a kernel."""
    if backend == "auto":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel({"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                        "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[backend])


# ---------------------------------------------------------------- PNG encoding

def _photo_like(size: int, rng: np.random.Generator) -> Image.Image:
    """Smooth colour fields plus sensor-like grain: compresses like a photo, unlike pure noise."""
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([128 + 100 * np.sin(2 * np.pi * (1.5 * x + 0.5 * y)),
                     128 + 90 * np.cos(2 * np.pi * (2 * y - x)),
                     128 + 80 * np.sin(6 * np.pi * x * y)], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8))


def _png_seconds(image: Image.Image, level: int, runs: int) -> tuple[float, int]:
    def encode() -> int:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=level)
        return buffer.tell()
    size = encode()
    return percentile(seconds(encode, torch.device("cpu"), runs, warmup=0), 50), size


def png_rows(runs: int = 5) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Pillow PNG encode time at each size and compress_level, photo-like and worst-case noise."""
    rng = np.random.default_rng(0)
    rows, details = [], {}
    for size in PNG_SIZES:
        images = {"photo-like": _photo_like(size, rng),
                  "noise": Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))}
        for level in PNG_LEVELS:
            for content, image in images.items():
                took, nbytes = _png_seconds(image, level, runs)
                details[f"{size}/{level}/{content}"] = {"seconds": took, "bytes": nbytes}
            took = details[f"{size}/{level}/photo-like"]["seconds"]
            rows.append(row(f"PNG encode {size}² compress_level={level}", took * 1000, "ms",
                            "≈0.35 s at level 6, 0.09 s level 1, 0.05 s level 0 (1024², small CPU)"))
    return rows, details


# ---------------------------------------------------------------- cold start

def cold_start_child(arch: Arch, device: str, dtype: torch.dtype, size: int, shrunk: bool) -> None:
    """Child side of the cold-start measurement: print wall-clock stamps as JSON lines."""
    print(json.dumps({"stage": "imported", "t": time.time()}), flush=True)
    pipe = build_pipeline(arch, device, dtype, tiny=shrunk)
    _sync(torch.device(device))
    print(json.dumps({"stage": "built", "t": time.time()}), flush=True)
    pipe(PROMPT, **{**arch.call_kwargs, "height": size, "width": size})
    _sync(torch.device(device))
    print(json.dumps({"stage": "first_image", "t": time.time()}), flush=True)


def cold_start(arch: Arch, device: str, dtype_name: str, size: int, shrunk: bool) -> dict[str, float]:
    """Seconds from spawning a fresh Python to: imports done, pipeline built on device, first image."""
    cmd = [sys.executable, __file__, "--cold-start-child", arch.name, "--device", device,
           "--dtype", dtype_name, "--size", str(size), *(["--shrunk"] if shrunk else [])]
    start = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"cold-start child for {arch.name} failed:\n{done.stderr[-2000:]}")
    return {s["stage"]: s["t"] - start for s in map(json.loads, filter(None, done.stdout.splitlines()))}


# ---------------------------------------------------------------- GPU suite

def _apply_options(pipe: Any, arch: Arch, args: argparse.Namespace) -> None:
    denoiser = getattr(pipe, denoiser_name(arch))
    if args.channels_last:  # convolutions only: the UNet and the VAE
        for module in (pipe.vae, denoiser if denoiser_name(arch) == "unet" else None):
            if module is not None:
                module.to(memory_format=torch.channels_last)
    if args.vae_tiling:
        pipe.vae.enable_tiling()
    if args.compile:
        denoiser.compile(mode=args.compile_mode)


def _denoiser_rows(arch: Arch, pipe: Any, step_flops: int, batch: int, device: torch.device,
                   args: argparse.Namespace, peak: tuple[str, float] | None) -> list[dict[str, Any]]:
    denoiser = getattr(pipe, denoiser_name(arch))
    # the pipeline runs the denoiser on 2x the batch under classifier-free guidance
    inner = batch * denoiser_evals_per_step(arch)
    inputs = denoiser_inputs(arch, denoiser, inner)
    with torch.no_grad():
        took = percentile(seconds(lambda: denoiser(**inputs), device, args.runs, args.warmup), 50)
    achieved = step_flops * inner / took / 1e12
    rows = [row(f"{arch.name} denoiser forward b{batch}", took * 1000, "ms"),
            row(f"{arch.name} denoiser achieved b{batch}", achieved, "TFLOP/s")]
    if peak:
        rows.append(row(f"{arch.name} denoiser share of {peak[0]} peak b{batch}",
                        100 * achieved / peak[1], "%", f"of {peak[1]:g} dense bf16 TFLOP/s"))
    return rows


def _pipeline_rows(arch: Arch, pipe: Any, batch: int, device: torch.device,
                   args: argparse.Namespace) -> list[dict[str, Any]]:
    torch.cuda.reset_peak_memory_stats(device)
    times = seconds(lambda: pipe(PROMPT, num_images_per_prompt=batch, **arch.call_kwargs),
                    device, args.runs, args.warmup)
    p50 = percentile(times, 50)
    return [row(f"{arch.name} latency b{batch} p50", p50, "s", _PUBLISHED.get((arch.name, batch), "")),
            row(f"{arch.name} throughput b{batch}", batch / p50, "images/s"),
            row(f"{arch.name} peak GPU memory b{batch}", torch.cuda.max_memory_allocated(device) / 2**30, "GiB")]


_PUBLISHED = {
    ("sdxl-turbo", 1): "4 steps on H100 with TensorRT: 83.8 ms (VAE ≈30 ms)",
    ("sdxl-base-1024", 1): "A100: bf16 4.63 s, +SDPA 3.31 s, +compile+channels_last 2.54 s",
    ("flux-schnell", 1): "0.72 s on H100-class with fp8 + compile",
}


def einstein_demo(arch: Arch, pipe: Any, device: torch.device, per_style: int = 5) -> list[dict[str, Any]]:
    """Albert Einstein in 4 styles, ``per_style`` each (20 in all by default) at the arch's size,
    then PNG level 1."""
    images: list[Image.Image] = []
    _sync(device)
    start = time.perf_counter()
    for style in EINSTEIN_STYLES:
        images += pipe(f"Albert Einstein, {style}", num_images_per_prompt=per_style, **arch.call_kwargs).images
    _sync(device)
    generate = time.perf_counter() - start
    start = time.perf_counter()
    for image in images:
        image.save(io.BytesIO(), format="PNG", compress_level=1)
    encode = time.perf_counter() - start
    label = f"{arch.name} demo {len(images)} Einsteins"
    return [row(f"{label} generate", generate, "s"),
            row(f"{label} PNG encode (level 1)", encode, "s"),
            row(f"{label} total", generate + encode, "s")]


def measure_gpu(arch: Arch, args: argparse.Namespace, peak: tuple[str, float] | None) -> tuple[list, dict]:
    device = torch.device("cuda")
    report = analyse(arch, tiny=args.shrunk)
    step_flops = report["flops"]["denoiser_step"]
    rows = []
    if args.cold_start:
        stamps = cold_start(arch, "cuda", args.dtype, arch.size, args.shrunk)
        report["cold_start"] = stamps
        rows.append(row(f"{arch.name} cold start to first image", stamps["first_image"], "s",
                        "random init on device replaces reading weights"))
    start = time.perf_counter()
    pipe = build_pipeline(arch, device, DTYPES[args.dtype], tiny=args.shrunk)
    _sync(device)
    report["build_seconds"] = time.perf_counter() - start
    _apply_options(pipe, arch, args)
    with _sdpa_context(args.sdpa), torch.no_grad():
        if args.compile:  # first call pays the compile; report it, then measure warm
            report["compile_first_call_seconds"] = seconds(
                lambda: pipe(PROMPT, **arch.call_kwargs), device, runs=1, warmup=0)[0]
        for batch in args.batches:
            rows += _denoiser_rows(arch, pipe, step_flops, batch, device, args, peak)
            rows += _pipeline_rows(arch, pipe, batch, device, args)
        latents = vae_latents(pipe.vae, 1, arch.size)
        decode = percentile(seconds(lambda: pipe.vae.decode(latents), device,
                                    args.runs, args.warmup), 50)
        rows.append(row(f"{arch.name} VAE decode {arch.size}² b1", decode * 1000, "ms"))
        if args.demo and arch.size >= 1024:
            rows += einstein_demo(arch, pipe, device)
    del pipe
    torch.cuda.empty_cache()
    return rows, report


def run_gpu(args: argparse.Namespace) -> None:
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --cpu-small on a machine without a GPU")
    name = torch.cuda.get_device_name(0)
    peak = peak_tflops(name)
    if peak is None:
        log.warning("no dense bf16 peak known for %s: TFLOP/s are reported without a share of peak", name)
    options = {k: getattr(args, k) for k in ("dtype", "sdpa", "channels_last", "compile", "compile_mode",
                                             "vae_tiling", "batches", "runs", "warmup")}
    rows, details = png_rows() if args.png else ([], {})
    reports = {"png": details}
    for arch_name in tqdm(args.archs, desc="archs"):
        arch_rows, reports[arch_name] = measure_gpu(ARCHS[arch_name], args, peak)
        rows += arch_rows
    write_result(f"pipelines-gpu-{args.tag}", rows, shrunk=args.shrunk, options=options, peak=peak, archs=reports)


# ---------------------------------------------------------------- CPU (--cpu-small)

_PUBLISHED_PARAMS = {"sd-turbo": "published SD 2.1 UNet 865.9M", "sdxl-turbo": "published SDXL UNet 2.567B",
                     "sdxl-base-1024": "published SDXL UNet 2.567B", "flux-schnell": "published FLUX.1 12B"}
_PUBLISHED_FLOPS = {"sd-turbo": "≈0.84 TFLOP UNet, ≈2.5 TFLOP VAE decoder (NVIDIA)"}


def _analysis_rows(arch: Arch, report: dict[str, Any]) -> list[dict[str, Any]]:
    name = denoiser_name(arch)
    flops = report["flops"]
    return [row(f"{arch.name} {name} parameters", report["params"][name] / 1e6, "M", _PUBLISHED_PARAMS[arch.name]),
            row(f"{arch.name} {name} FLOPs per step at {arch.size}²", flops["denoiser_step"] / 1e12, "TFLOP",
                _PUBLISHED_FLOPS.get(arch.name, "")),
            row(f"{arch.name} VAE decode FLOPs at {arch.size}²", flops["vae_decode"] / 1e12, "TFLOP"),
            row(f"{arch.name} FLOPs per image ({arch.steps} steps)", flops["per_image"] / 1e12, "TFLOP")]


def cpu_small(args: argparse.Namespace) -> None:
    """Meta-device analysis of every arch, PNG costs, and SD-Turbo's real cost at a small size."""
    rows: list[dict[str, Any]] = []
    reports: dict[str, Any] = {}
    for arch in tqdm(ARCHS.values(), desc="meta analysis"):
        reports[arch.name] = analyse(arch, tiny=args.shrunk)
        rows += _analysis_rows(arch, reports[arch.name])
    png, reports["png"] = png_rows()
    rows += png
    rows += _sd_turbo_small(args.size, args.runs, reports, args.shrunk)
    write_result("archs-cpu", rows, shrunk=args.shrunk, mode="cpu-small", size=args.size, archs=reports)


def _sd_turbo_small(size: int, runs: int, reports: dict[str, Any], shrunk: bool) -> list[dict[str, Any]]:
    """SD-Turbo (SD 2.1 UNet, 865M; tiny widths when ``shrunk``) built for real on the CPU in fp32,
    timed at ``size``², 1 step."""
    arch, cpu = ARCHS["sd-turbo"], torch.device("cpu")
    label = f"sd-turbo {size}² fp32 CPU"
    stamps = cold_start(arch, "cpu", "fp32", size, shrunk)  # before building here: one copy in memory at a time
    start = time.perf_counter()
    pipe = build_pipeline(arch, "cpu", torch.float32, tiny=shrunk)
    build = time.perf_counter() - start
    flops = analyse(arch, size, tiny=shrunk)["flops"]
    inputs = denoiser_inputs(arch, pipe.unet, 1, size)
    latents, ids = vae_latents(pipe.vae, 1, size), text_ids(pipe.text_encoder, 1, 77)
    with torch.no_grad():
        latency = seconds(lambda: pipe(PROMPT, **{**arch.call_kwargs, "height": size, "width": size}), cpu, runs)
        unet = percentile(seconds(lambda: pipe.unet(**inputs), cpu, runs), 50)
        vae = percentile(seconds(lambda: pipe.vae.decode(latents), cpu, runs), 50)
        text = percentile(seconds(lambda: pipe.text_encoder(ids), cpu, runs), 50)
    reports["sd-turbo-cpu"] = {"size": size, "cold_start": stamps, "build_seconds": build,
                               "latency_seconds": latency, "flops": flops}
    return [row(f"{label} cold start to first image", stamps["first_image"], "s", "process start → image"),
            row(f"{label} pipeline built (random init)", build, "s"),
            row(f"{label} latency 1 step b1 p50", percentile(latency, 50), "s"),
            row(f"{label} UNet forward", unet * 1000, "ms"),
            row(f"{label} UNet achieved", flops["denoiser_step"] / unet / 1e9, "GFLOP/s"),
            row(f"{label} VAE decode", vae * 1000, "ms"),
            row(f"{label} text encoder", text * 1000, "ms")]


# ---------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-small", action="store_true",
                   help="no GPU: FLOPs/params of every arch on the meta device, PNG costs, SD-Turbo timed at --size")
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS), help="targets (GPU mode)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8], help="images per call")
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16", help="weights and activations")
    p.add_argument("--sdpa", choices=SDPA_BACKENDS, default="auto",
                   help="pin scaled_dot_product_attention to one kernel ('math' = unfused baseline)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format for UNet and VAE")
    p.add_argument("--compile", action="store_true", help="torch.compile the denoiser (minutes of warm-up)")
    p.add_argument("--compile-mode", default="max-autotune-no-cudagraphs", help="torch.compile mode")
    p.add_argument("--vae-tiling", action="store_true", help="decode in tiles (for 1024² on small cards)")
    p.add_argument("--no-demo", dest="demo", action="store_false", help="skip the 20-Einstein demo")
    p.add_argument("--no-cold-start", dest="cold_start", action="store_false", help="skip cold-start runs")
    p.add_argument("--no-png", dest="png", action="store_false", help="skip PNG encode timings")
    p.add_argument("--runs", type=int, default=5, help="timed repetitions per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed repetitions first")
    p.add_argument("--size", type=int, default=128, help="image side for the --cpu-small SD-Turbo timing")
    p.add_argument("--tag", default="baseline", help="result file suffix: pipelines-gpu-<tag>.json")
    p.add_argument("--cold-start-child", metavar="ARCH", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    add_shrunk_option(p)
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    warnings.filterwarnings("ignore", message="invalid value encountered in cast")  # random weights → NaN pixels
    torch.set_grad_enabled(False)
    if args.cold_start_child:
        cold_start_child(ARCHS[args.cold_start_child], args.device, DTYPES[args.dtype], args.size, args.shrunk)
    elif args.cpu_small:
        cpu_small(args)
    else:
        run_gpu(args)


if __name__ == "__main__":
    main()
