"""Daemon benchmark on the embedded model: HTTP overhead, batching gain, and cold start.

    python bench/bench_daemon.py            # writes bench/results/daemon-cpu.json
    python bench/bench_daemon.py --quick    # the CI-sized run (tests/test_bench_cpu.py)

1. Overhead: ``POST /api/generate {"wait": true}`` (queue, pipeline, PNG encode and write, JSON)
   against calling the same diffusers pipeline directly, one request at a time, the two
   alternating; reported as the median of the paired differences and as p50 minus p50.
2. Batching: images/s with 8 concurrent HTTP clients vs the same requests one after another.
3. Cold start: from launching ``pennello serve`` on an empty home (installs the embedded model)
   to the first picture answered over HTTP.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch
from _common import owner_session, percentile, remember_owner, row, write_result
from pennello.daemon import Engine, GenerateRequest, create_app, start_background_server
from pennello.installer import ensure_embedded_default

from pennello.config import Config
from pennello.paths import get_paths

REQUESTS = 50
CLIENTS = 8
PER_CLIENT = 8
WARMUP = 5


def paired_ms(direct, http, times: int, warmup: int = WARMUP) -> tuple[list[float], list[float]]:
    """Milliseconds of ``times`` calls of each, alternating after a few warm-up calls.

    Alternating matters: the tiny pipeline's own latency drifts by tens of percent over a run
    (clocks, caches, neighbours), and measuring all of one then all of the other would book
    that drift as HTTP overhead.
    """
    for _ in range(warmup):
        direct(), http()
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(times):
        for action, out in ((direct, samples[0]), (http, samples[1])):
            started = time.perf_counter()
            action()
            out.append((time.perf_counter() - started) * 1000)
    return samples


def direct_pipeline_call(engine: Engine, request: GenerateRequest, batch: int = 1):
    """The same work without HTTP, queue or saving: the warm pipeline called as the engine calls
    it (a prompt and a seeded CPU generator per image, PIL images out), on the engine's worker
    thread. Not on this one: the engine sets torch's CPU threads from its worker, and OpenMP
    keeps that count per calling thread, so a call from here would run with a different number
    of threads (3x slower next to a busy process on 2 cores, see bench_threads.py)."""
    pipe = engine.residency.ensure_loaded(request.model).pipe
    seed = iter(range(10**6))

    def call() -> None:
        generators = [torch.Generator("cpu").manual_seed(next(seed)) for _ in range(batch)]
        engine.on_device(lambda: pipe(
            prompt=["a red kite"] * batch, width=request.width, height=request.height,
            num_inference_steps=request.steps, guidance_scale=request.guidance, generator=generators,
            output_type="pil"))

    return call


def http_call(url: str, n: int = 1, timeout: float = 60):
    """``POST /api/generate {"wait": true}`` of ``n`` images at the model's defaults."""
    session = owner_session(url)
    seed = iter(range(0, 10**6, n))

    def call() -> None:
        response = session.post(url + "/api/generate", timeout=timeout,
                                json={"prompt": "a red kite", "seed": next(seed), "n": n, "wait": True})
        assert response.status_code == 200, response.text

    return call


def images_per_second(url: str, clients: int, total: int = CLIENTS * PER_CLIENT) -> float:
    """Throughput of ``clients`` threads sending ``total`` requests, each client back to back."""

    def client(index: int) -> None:
        session = owner_session(url)
        for i in range(total // clients):
            response = session.post(url + "/api/generate", timeout=120,
                                    json={"prompt": f"kite {index} {i}", "wait": True})
            assert response.status_code == 200, response.text

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return total / (time.perf_counter() - started)


@contextmanager
def served(env: dict[str, str], log_path: Path) -> Iterator[tuple[str, float, float]]:
    """``pennello serve --port 0`` as a subprocess; yields (URL, seconds from launch to listening,
    seconds to the first picture answered)."""
    started = time.perf_counter()
    with log_path.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "pennello", "serve", "--port", "0"],
                                   stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    try:
        line = process.stdout.readline()
        listening = time.perf_counter() - started
        match = re.search(r"(http://\S+)", line)
        if not match:
            raise SystemExit(f"pennello serve did not start ({line!r}):\n{log_path.read_text()[-3000:]}")
        url = match.group(1)
        remember_owner(url, get_paths(env["PENNELLO_HOME"]))
        http_call(url, timeout=1800)()
        yield url, listening, time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(timeout=300)


def cold_start_s() -> tuple[float, float]:
    """Seconds from launching `pennello serve` on an empty home to (serving, first picture)."""
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "PENNELLO_HOME": home}
        with served(env, Path(home) / "serve.log") as (_url, serving, first):
            return serving, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few requests of each kind (CI size)")
    args = parser.parse_args()
    requests_n, warmup, total = (6, 1, CLIENTS) if args.quick else (REQUESTS, WARMUP, CLIENTS * PER_CLIENT)
    with tempfile.TemporaryDirectory() as home:
        paths = get_paths(home).ensure()
        config = Config()
        ensure_embedded_default(paths, config)
        engine = Engine(config, paths)
        engine.start()
        probe = engine.submit(GenerateRequest(prompt="defaults"))  # its request has them filled in
        probe.wait()
        request = probe.request
        _, url, stop = start_background_server(create_app(config, engine, paths))
        remember_owner(url, paths)
        try:
            direct, http = paired_ms(direct_pipeline_call(engine, request), http_call(url), requests_n, warmup)
            sequential = images_per_second(url, 1, total)
            concurrent = images_per_second(url, CLIENTS, total)
        finally:
            stop()
            engine.stop()
    serving, first = cold_start_s()
    direct_p50, http_p50 = percentile(direct, 50), percentile(http, 50)
    overhead = http_p50 - direct_p50
    paired = statistics.median(h - d for h, d in zip(http, direct))
    rows = [
        row("pipeline direct p50 (64x64, 4 steps)", direct_p50, "ms"),
        row("HTTP generate+wait p50", http_p50, "ms"),
        row("HTTP overhead, median of paired differences", paired, "ms", "<= 5 ms or <= 5%"),
        row("HTTP overhead p50", overhead, "ms", "<= 5 ms or <= 5%"),
        row("HTTP overhead p50 relative", 100 * overhead / direct_p50, "%", "<= 5 ms or <= 5%"),
        row("throughput, 1 client", sequential, "images/s"),
        row(f"throughput, {CLIENTS} concurrent clients", concurrent, "images/s"),
        row("batching gain", concurrent / sequential, "x", "> 1"),
        row("serve start to listening (fresh home)", serving, "s"),
        row("serve start to first image (fresh home)", first, "s"),
    ]
    write_result("daemon-cpu", rows, requests=requests_n, http_p90_ms=percentile(http, 90),
                  direct_p90_ms=percentile(direct, 90), direct_stdev_ms=statistics.stdev(direct),
                  load_average=os.getloadavg(), model=request.model,
                  image_size=[request.width, request.height], steps=request.steps)


if __name__ == "__main__":
    main()
