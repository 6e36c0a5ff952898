"""The real architectures through the daemon's HTTP API: what the API costs next to the pipeline.

``bench_pipelines.py`` times the raw diffusers calls; this times the same random-weight models
(``archs.py``) served by the daemon, the way a user's request reaches them. For each target the
pipeline is built, saved and installed into a temporary pennello home exactly as a published
model is: a manifest listing every file's sha256, signed with a throwaway Ed25519 key that home
trusts, verified by the trust policy, each file hash-checked into the content-addressed store.
The manifest's ``pipeline.defaults`` are the target's size, steps and guidance, so requests that
name none run as the model card says. Then:

1. Overhead, in process (``Engine`` + ``start_background_server``, the daemon's own app and
   server): the engine's warm pipeline called directly, as the engine calls it, alternating with
   ``POST /api/generate {"wait": true}`` and with ``POST /v1/images/generations`` (b64_json) at
   the model's defaults; the median of the paired differences, absolute and relative to the
   direct p50. At batch 4 too (``n: 4``, one pipeline call), with images/s both ways.
2. The "20 images: Albert Einstein in 4 styles" demo end to end, from the first request to the
   last picture's bytes received: ``POST /api/batch`` (what ``pennello batch "Albert Einstein"
   --styles 4 -n 20`` sends) then every picture and the contact sheet downloaded; and four
   concurrent OpenAI requests of ``n: 5``. The raw pipeline doing the same 20 images
   (``bench_pipelines.einstein_demo``) is the reference.
3. ``pennello serve`` as a user runs it (a subprocess, no-network mode and its isolation as
   configured): launch to listening and to the first picture, then the native and OpenAI
   routes' p50 through it (not paired with direct calls: one copy of the model at a time).

    python bench/bench_api.py                          # GPU: SD-Turbo, SDXL-Turbo 512² and 1024², FLUX.1-schnell
    python bench/bench_api.py --archs sdxl-base-1024   # SDXL, 30 steps with CFG (long: not in the default set)
    python bench/bench_api.py --archs sd-turbo sdxl-turbo-1024 --runs 10
    python bench/bench_api.py --set engine.compile=on --tag compile   # a daemon setting: PENNELLO_ENGINE_COMPILE
    python bench/bench_api.py --cpu-small --size 64    # CPU: SD-Turbo at 64², bench/results/api-cpu.json
    python bench/bench_api.py --cpu-small --shrunk     # the same classes, tiny widths: proves it runs

On a GPU the results go to ``bench/results/api-gpu-<tag>.json``.

Weights are random, so the pictures are noise, or flat where fp16 overflows to NaN (saved black):
their PNGs can be smaller and faster to encode than real ones. Each target's ``png_bytes`` in the
result says what was encoded; ``bench_pipelines.py``'s PNG rows give the cost for photo-like ones.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import gc
import hashlib
import io
import logging
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import requests
import torch
from PIL import Image

from _common import add_shrunk_option, cpu_name, owner_session, percentile, remember_owner, row, write_result
from archs import ARCHS, Arch, build_pipeline, model_index
from bench_daemon import direct_pipeline_call, http_call, paired_ms, served
from bench_pipelines import EINSTEIN_STYLES, einstein_demo
from pennello.config import Config, load_config
from pennello.daemon import Engine, GenerateRequest, create_app, start_background_server
from pennello.daemon.engine.engine import pick_device, pick_dtype
from pennello.daemon.engine.families import families, get_family
from pennello.installer import Installer, Manifest
from pennello.installer.keys import generate_key, load_private_key, sign_signed
from pennello.installer.manifest import FileEntry, PipelineSpec, Source, dump_envelope
from pennello.installer.fetchers import LocalFetcher
from pennello.paths import Paths, get_paths

log = logging.getLogger("bench.api")

# The demo's model: SDXL-Turbo's architecture at 1024², 4 steps (what the <= 5 s goal names).
DEMO = dataclasses.replace(ARCHS["sdxl-turbo"], name="sdxl-turbo-1024", size=1024, steps=4)
TARGETS: dict[str, Arch] = {**ARCHS, DEMO.name: DEMO}
GPU_DEFAULT = ("sd-turbo", "sdxl-turbo", DEMO.name, "flux-schnell")
DEMO_SUBJECT = "Albert Einstein"
KEY_NAME = "bench-publisher"
OVERHEAD_GOAL = "<= 3 % of the pipeline (SD-Turbo 512², 1 step, GPU)"
DEMO_GOAL = "<= 5 s on an H100 (SDXL-Turbo 1024², 4 steps)"
SETTING_RE = re.compile(r"^([a-z]+)\.([a-z_]+)=(.*)$")


# ---------------------------------------------------------------- a model in the verified store

def family_of(arch: Arch) -> str:
    """The daemon's model family whose allowed classes include the arch's pipeline class."""
    cls = model_index(arch)["_class_name"]
    return next(name for name in families() if cls in get_family(name).classes)


class _MovingFetcher(LocalFetcher):
    """Moves the staged files into the store instead of copying them: FLUX.1-schnell is 34 GB,
    and a copy would need twice that on the disk. The store still checks each file's size and
    sha256 against the signed manifest before it becomes a blob."""

    def _copy(self, relative: str, dest: Path, size: int, progress: Callable[[int], None]) -> None:
        self._refuse_links(relative)
        os.replace(self.root / relative, dest)
        progress(size)


def stage(arch: Arch, folder: Path, device: str, dtype: torch.dtype, shrunk: bool) -> None:
    """The arch's random-weight pipeline (tiny widths when ``shrunk``), saved as diffusers files in
    the dtype the daemon loads."""
    pipe = build_pipeline(arch, device, dtype, tiny=shrunk)
    pipe.save_pretrained(folder, safe_serialization=True)
    del pipe
    _free(device)


def signed_manifest(name: str, arch: Arch, folder: Path, paths: Paths, shrunk: bool) -> bytes:
    """A locked manifest for every file under ``folder``, signed by a key ``paths`` trusts."""
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        files.append(FileEntry(path.relative_to(folder).as_posix(), digest, path.stat().st_size))
    now = datetime.now(timezone.utc).replace(microsecond=0)
    defaults = {"width": arch.size, "height": arch.size, "steps": arch.steps, "guidance": arch.guidance}
    manifest = Manifest(name=name, version=1, created=now, expires=now + timedelta(days=1),
                        pipeline=PipelineSpec(model_index(arch)["_class_name"], family_of(arch), defaults),
                        license="other", source=Source("local"), files=tuple(files),
                        description=f"benchmark: {arch.name} architecture with random weights"
                                    + (", shrunk widths" if shrunk else ""))
    generate_key(paths, KEY_NAME)
    signed = manifest.to_signed()
    return dump_envelope(signed, [sign_signed(signed, load_private_key(KEY_NAME, paths))])


def install(arch: Arch, name: str, paths: Paths, config: Config, device: str, shrunk: bool) -> dict[str, float]:
    """Build, save, sign and install ``arch`` (tiny widths when ``shrunk``) as model ``name``;
    seconds of each stage."""
    dtype = pick_dtype(device, get_family(family_of(arch)))
    folder = Path(tempfile.mkdtemp(prefix="stage-", dir=paths.cache_dir))  # the store's file system: moves
    started = time.perf_counter()
    stage(arch, folder, device, dtype, shrunk)
    saved = time.perf_counter()
    raw = signed_manifest(name, arch, folder, paths, shrunk)
    installer = Installer(paths, config, progress=False)
    verified = installer.verify(raw, expected_name=name, local_dir=folder)
    installer.install_all([dataclasses.replace(verified, fetcher=_MovingFetcher(folder, name))])
    shutil.rmtree(folder)  # the emptied directories
    return {"build_and_save": saved - started, "sign_and_install": time.perf_counter() - saved}


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- requests

def openai_call(url: str, n: int = 1, timeout: float = 600) -> Callable[[], list[bytes]]:
    """``POST /v1/images/generations`` (b64_json) at the model's default size; returns the PNGs."""
    session = owner_session(url)

    def call(prompt: str = "a red kite") -> list[bytes]:
        response = session.post(url + "/v1/images/generations", timeout=timeout,
                                json={"prompt": prompt, "n": n, "response_format": "b64_json"})
        assert response.status_code == 200, response.text
        pictures = [base64.b64decode(item["b64_json"]) for item in response.json()["data"]]
        assert len(pictures) == n, response.text
        return pictures

    return call


def demo_batch(url: str, n: int, timeout: float = 1800) -> dict[str, Any]:
    """``pennello batch "Albert Einstein" --styles 4 -n 20``: the batch, then every picture."""
    session = owner_session(url)
    started = time.perf_counter()
    response = session.post(url + "/api/batch", timeout=timeout,
                            json={"subject": DEMO_SUBJECT, "styles": len(EINSTEIN_STYLES), "n": n, "seed": 1})
    assert response.status_code == 200, response.text
    answered = time.perf_counter()
    result = response.json()
    ids = [image["id"] for style in result["styles"] for image in style["job"]["images"]]
    assert len(ids) == n, result
    sizes = [len(_get(session, url, i)) for i in ids]
    sheet = len(_get(session, url, result["contact_sheet"]["id"]))
    return {"total": time.perf_counter() - started, "answered": answered - started,
            "png_bytes": statistics.median(sizes), "contact_sheet_bytes": sheet}


def _get(session: requests.Session, url: str, image_id: str) -> bytes:
    response = session.get(f"{url}/api/images/{image_id}", timeout=120)
    assert response.status_code == 200, response.text
    return response.content


def demo_openai(url: str, n: int) -> float:
    """The demo as four concurrent OpenAI requests, one per style, ``n: 5`` each: seconds."""
    calls = [openai_call(url, n=n // len(EINSTEIN_STYLES)) for _ in EINSTEIN_STYLES]  # a session each
    started = time.perf_counter()
    with ThreadPoolExecutor(len(EINSTEIN_STYLES)) as pool:
        answers = pool.map(lambda call, style: call(f"{DEMO_SUBJECT}, {style}"), calls, EINSTEIN_STYLES)
        pictures = [picture for answer in answers for picture in answer]
    assert len(pictures) == n
    return time.perf_counter() - started


def picture_facts(png: bytes) -> dict[str, Any]:
    """What the daemon encoded: bytes, and whether the picture is one flat colour (NaN → black)."""
    with Image.open(io.BytesIO(png)) as picture:
        flat = all(low == high for low, high in picture.getextrema())
    return {"png_bytes": len(png), "flat": flat}


# ---------------------------------------------------------------- the daemon, two ways

@contextmanager
def in_process(config: Config, paths: Paths) -> Iterator[tuple[Engine, GenerateRequest, str]]:
    """The engine with the model warm, behind the daemon's app on a background waitress server;
    yields (engine, the resolved default request, base URL)."""
    engine = Engine(config, paths)
    engine.start()
    try:
        probe = engine.submit(GenerateRequest(prompt="defaults"))  # its request has them filled in
        probe.wait()
        assert probe.status == "done", probe.error
        _, url, stop = start_background_server(create_app(config, engine, paths))
        remember_owner(url, paths)
        try:
            yield engine, probe.request, url
        finally:
            stop()
    finally:
        engine.stop()


# ---------------------------------------------------------------- measurements

def overhead_rows(label: str, direct: list[float], http: list[float], route: str,
                  goal: str) -> list[dict[str, Any]]:
    paired = statistics.median(h - d for h, d in zip(http, direct))
    return [row(f"{label}: {route} p50", percentile(http, 50), "ms"),
            row(f"{label}: {route} overhead, median of paired differences", paired, "ms"),
            row(f"{label}: {route} overhead relative to the pipeline", 100 * paired / percentile(direct, 50),
                "%", goal)]


def measure_in_process(arch: Arch, label: str, config: Config, paths: Paths, args: argparse.Namespace,
                       details: dict[str, Any]) -> list[dict[str, Any]]:
    goal = OVERHEAD_GOAL if arch.name.startswith("sd-turbo") else ""
    with in_process(config, paths) as (engine, request, url):
        details["request"] = {k: getattr(request, k) for k in ("width", "height", "steps", "guidance")}
        details["plan"] = engine.ps()[0]["placement"]
        direct = direct_pipeline_call(engine, request)
        rows: list[dict[str, Any]] = []
        d_native, native = paired_ms(direct, http_call(url, timeout=1800), args.runs, args.warmup)
        rows += [row(f"{label}: pipeline direct b1 p50", percentile(d_native, 50), "ms")]
        rows += overhead_rows(label, d_native, native, "POST /api/generate b1", goal)
        openai = openai_call(url)
        details.update(picture_facts(openai()[0]))
        d_openai, via_openai = paired_ms(direct, openai, args.runs, args.warmup)
        rows += overhead_rows(label, d_openai, via_openai, "POST /v1/images/generations b1", goal)
        b = args.batch
        d_b, native_b = paired_ms(direct_pipeline_call(engine, request, batch=b),
                                  http_call(url, n=b, timeout=1800), args.runs, args.warmup)
        rows += [row(f"{label}: throughput b1 direct", 1000 / percentile(d_native, 50), "images/s"),
                 row(f"{label}: throughput b1 via /api/generate", 1000 / percentile(native, 50), "images/s"),
                 row(f"{label}: throughput b{b} direct", 1000 * b / percentile(d_b, 50), "images/s"),
                 row(f"{label}: throughput b{b} via /api/generate n={b}", 1000 * b / percentile(native_b, 50),
                     "images/s")]
        rows += overhead_rows(label, d_b, native_b, f"POST /api/generate n={b}", "")
        details["in_process_http_p50_ms"] = percentile(native, 50)
        if args.demo == arch.name:
            rows += demo_rows(arch, label, engine, request, url, args.demo_images, details)
    return rows


def demo_rows(arch: Arch, label: str, engine: Engine, request: GenerateRequest, url: str, n: int,
              details: dict[str, Any]) -> list[dict[str, Any]]:
    """The Einstein demo: raw pipeline (the reference, on the engine's worker thread as the
    engine would run it), then through the API two ways."""
    pipe = engine.residency.ensure_loaded(request.model).pipe
    per_style = n // len(EINSTEIN_STYLES)
    raw = engine.on_device(lambda: einstein_demo(arch, pipe, torch.device(engine.device), per_style))
    batch = demo_batch(url, n)
    openai = demo_openai(url, n)
    details["demo"] = batch
    raw_total, demo = raw[-1]["value"], f"{label}: demo {n} Einsteins"
    return [row(f"{demo}, raw pipeline + PNG level 1", raw_total, "s"),
            row(f"{demo} via POST /api/batch, pictures received", batch["total"], "s", DEMO_GOAL),
            row(f"{demo} via {len(EINSTEIN_STYLES)} concurrent /v1/images/generations n={per_style}", openai,
                "s", DEMO_GOAL),
            row(f"{demo} via /api/batch over raw", 100 * (batch["total"] / raw_total - 1), "%")]


def measure_served(label: str, env: dict[str, str], paths: Paths, args: argparse.Namespace,
                   details: dict[str, Any]) -> list[dict[str, Any]]:
    with served(env, paths.log_dir / "bench-serve.log") as (url, listening, first):
        routes = paired_ms(http_call(url, timeout=1800), openai_call(url), args.runs, args.warmup)
        health = owner_session(url).get(url + "/api/health", timeout=30).json()
    details["serve"] = {"offline": health.get("offline"), "device": health.get("device")}
    rows = [row(f"{label}: pennello serve, launch to listening (model loaded)", listening, "s"),
            row(f"{label}: pennello serve, launch to first picture", first, "s")]
    for route, times in zip(("POST /api/generate b1", "POST /v1/images/generations b1"), routes):
        rows.append(row(f"{label}: {route} p50 through pennello serve", percentile(times, 50), "ms"))
    rows.append(row(f"{label}: pennello serve minus in-process /api/generate p50 (not paired)",
                    percentile(routes[0], 50) - details["in_process_http_p50_ms"], "ms"))
    return rows


def measure(arch: Arch, args: argparse.Namespace, settings: dict[str, str]) -> tuple[list, dict]:
    """Every measurement of one target, on its own temporary home."""
    label = f"{arch.name} {arch.size}² {arch.steps} step{'s' if arch.steps > 1 else ''}"
    name = f"bench-{arch.name}"
    details: dict[str, Any] = {"model": name}
    with tempfile.TemporaryDirectory(prefix="pennello-api-") as home:
        env = {**os.environ, **settings, "PENNELLO_HOME": home, "PENNELLO_ENGINE_DEFAULT_MODEL": name}
        paths = get_paths(home).ensure()
        config = load_config(paths.config_file, environ=env)
        device = pick_device(config.engine.device)
        log.info("%s: building, saving and installing as %s on %s", label, name, device)
        details["install_seconds"] = install(arch, name, paths, config, device, args.shrunk)
        log.info("%s: in process", label)
        rows = measure_in_process(arch, label, config, paths, args, details)
        _free(device)
        if args.serve:
            log.info("%s: pennello serve", label)
            rows += measure_served(label, env, paths, args, details)
    for r in rows:
        log.info("%-100s %10.3f %s", r["metric"], r["value"], r["unit"])
    return rows, details


def settings_env(pairs: list[str]) -> dict[str, str]:
    """``section.key=value`` as the ``PENNELLO_SECTION_KEY`` variables the daemon reads."""
    env = {}
    for pair in pairs:
        match = SETTING_RE.match(pair)
        if not match:
            raise SystemExit(f"--set {pair!r}: use section.key=value, e.g. engine.max_batch=4")
        env[f"PENNELLO_{match[1]}_{match[2]}".upper()] = match[3]
    return env


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-small", action="store_true",
                   help="no GPU: SD-Turbo only, at --size, on the CPU (the demo too); writes api-cpu.json")
    p.add_argument("--size", type=int, default=64, help="image side for --cpu-small")
    p.add_argument("--archs", nargs="+", choices=list(TARGETS), help=f"targets (default: {' '.join(GPU_DEFAULT)})")
    p.add_argument("--demo", default=DEMO.name, help="the target that runs the 20-Einstein demo ('' for none)")
    p.add_argument("--demo-images", type=int, default=20, help="pictures in the demo, as many of each of 4 styles")
    p.add_argument("--batch", type=int, default=4, help="images per request for the batched throughput")
    p.add_argument("--no-serve", dest="serve", action="store_false", help="skip the `pennello serve` subprocess")
    p.add_argument("--runs", type=int, default=10, help="paired calls per measurement (at least 2)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls of each first")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a daemon setting for both the in-process engine and `pennello serve` (repeatable)")
    p.add_argument("--tag", default="baseline", help="result file suffix: api-gpu-<tag>.json")
    add_shrunk_option(p)
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    warnings.filterwarnings("ignore", message="invalid value encountered in cast")  # random weights → NaN pixels
    settings = settings_env(args.settings)
    if args.demo_images < len(EINSTEIN_STYLES) or args.demo_images % len(EINSTEIN_STYLES):
        sys.exit(f"--demo-images must be a multiple of {len(EINSTEIN_STYLES)}: as many pictures of each style")
    if args.cpu_small:
        small = dataclasses.replace(ARCHS["sd-turbo"], size=args.size)
        targets, args.demo, name = [small], small.name, "api-cpu"
        settings.setdefault("PENNELLO_ENGINE_DEVICE", "cpu")
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run with --cpu-small on a machine without a GPU")
        targets, name = [TARGETS[a] for a in args.archs or GPU_DEFAULT], f"api-gpu-{args.tag}"
    rows, details = [], {}
    for arch in targets:
        arch_rows, details[arch.name] = measure(arch, args, settings)
        rows += arch_rows
    if args.cpu_small:  # also where a GPU is present: the daemon was told to use the CPU
        for r in rows:
            r["device"] = cpu_name()
    write_result(name, rows, shrunk=args.shrunk, settings=settings, runs=args.runs, warmup=args.warmup, targets=details,
                 load_average=os.getloadavg())


if __name__ == "__main__":
    main()
