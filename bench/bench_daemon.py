"""Daemon benchmark on the embedded model: HTTP overhead, batching gain, and cold start.

    python bench/bench_daemon.py            # writes bench/results/daemon-cpu.json

1. Overhead: p50 of ``POST /api/generate {"wait": true}`` (queue, pipeline, PNG encode, fsync,
   JSON) minus p50 of calling the same diffusers pipeline directly, one request at a time.
2. Batching: images/s with 8 concurrent HTTP clients vs the same requests one after another.
3. Cold start: from launching ``pennello serve`` on an empty home (installs the embedded model)
   to the first picture answered over HTTP.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import requests
import torch
from _common import percentile, row, write_result

from pennello.config import Config
from pennello.daemon import Engine, GenerateRequest, create_app, start_background_server
from pennello.installer import ensure_embedded_default
from pennello.paths import get_paths

REQUESTS = 50
CLIENTS = 8
PER_CLIENT = 8
WARMUP = 5


def timed(action, times: int) -> list[float]:
    """Milliseconds of each of ``times`` calls, after a few warm-up calls."""
    for _ in range(WARMUP):
        action()
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def direct_pipeline_ms(engine: Engine, request: GenerateRequest) -> list[float]:
    """The same work without the daemon: the warm pipeline called in this thread."""
    pipe = engine._ensure_loaded(request.model).pipe
    seed = iter(range(10**6))

    def call() -> None:
        pipe(prompt=["a red kite"], width=request.width, height=request.height,
             num_inference_steps=request.steps, guidance_scale=request.guidance,
             generator=[torch.Generator("cpu").manual_seed(next(seed))], output_type="pil")

    return timed(call, REQUESTS)


def http_ms(url: str) -> list[float]:
    session = requests.Session()
    seed = iter(range(10**6))

    def call() -> None:
        response = session.post(url + "/api/generate", timeout=60,
                                json={"prompt": "a red kite", "seed": next(seed), "wait": True})
        assert response.status_code == 200, response.text

    return timed(call, REQUESTS)


def images_per_second(url: str, clients: int) -> float:
    """Throughput of ``clients`` threads each sending requests back to back."""
    total = CLIENTS * PER_CLIENT

    def client(index: int) -> None:
        session = requests.Session()
        for i in range(total // clients):
            response = session.post(url + "/api/generate", timeout=120,
                                    json={"prompt": f"kite {index} {i}", "wait": True})
            assert response.status_code == 200, response.text

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return total / (time.perf_counter() - started)


def cold_start_s() -> tuple[float, float]:
    """Seconds from launching `pennello serve` on an empty home to (serving, first picture)."""
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "PENNELLO_HOME": home}
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-c", "from pennello.daemon.cli import serve; serve(['--port', '0'])"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        try:
            line = process.stdout.readline()
            serving = time.perf_counter() - started
            url = re.search(r"(http://\S+)", line).group(1)
            response = requests.post(url + "/api/generate", json={"prompt": "first", "wait": True},
                                     timeout=120)
            assert response.status_code == 200, response.text
            first = time.perf_counter() - started
        finally:
            process.terminate()
            process.wait(timeout=60)
    return serving, first


def main() -> None:
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
        try:
            direct = direct_pipeline_ms(engine, request)
            http = http_ms(url)
            sequential = images_per_second(url, 1)
            concurrent = images_per_second(url, CLIENTS)
        finally:
            stop()
            engine.stop()
    serving, first = cold_start_s()
    direct_p50, http_p50 = percentile(direct, 50), percentile(http, 50)
    overhead = http_p50 - direct_p50
    rows = [
        row("pipeline direct p50 (64x64, 4 steps)", direct_p50, "ms"),
        row("HTTP generate+wait p50", http_p50, "ms"),
        row("HTTP overhead p50", overhead, "ms", "<= 5 ms or <= 5%"),
        row("HTTP overhead p50 relative", 100 * overhead / direct_p50, "%", "<= 5 ms or <= 5%"),
        row("throughput, 1 client", sequential, "images/s"),
        row(f"throughput, {CLIENTS} concurrent clients", concurrent, "images/s"),
        row("batching gain", concurrent / sequential, "x", "> 1"),
        row("serve start to listening (fresh home)", serving, "s"),
        row("serve start to first image (fresh home)", first, "s"),
    ]
    write_result("daemon-cpu", rows, requests=REQUESTS, http_p90_ms=percentile(http, 90),
                  direct_p90_ms=percentile(direct, 90), direct_stdev_ms=statistics.stdev(direct),
                  load_average=os.getloadavg(), model=request.model,
                  image_size=[request.width, request.height], steps=request.steps)


if __name__ == "__main__":
    main()
