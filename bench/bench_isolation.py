"""What isolation costs: the proxy hop from the HTTP server to the model worker's Unix socket.

    python bench/bench_isolation.py            # writes bench/results/isolation-cpu.json
    python bench/bench_isolation.py --quick    # a few requests of each kind

Two real ``pennello serve`` daemons on the embedded model, one with ``offline.isolation =
"namespace"`` (server -> Unix socket -> worker), one with ``"off"`` (one process), each on its
own home. Requests alternate between them (A B, then B A), so drift on a shared machine and
the cost of going second fall on both:

1. a light request (``GET /api/models``): the hop's fixed cost per request;
2. ``POST /api/generate {"wait": true}`` (64x64, the model's default steps): the hop next to real work;
3. a streamed job (``"stream": true``): time to the first progress event.

Reported as p50 of each and the median of the paired differences.
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
from typing import Callable

import requests
from _common import percentile, row, write_result

REQUESTS = 200
GENERATES = 40
WARMUP = 5


class Daemon:
    def __init__(self, home: str, isolation: str) -> None:
        env = {**os.environ, "PENNELLO_HOME": home, "PENNELLO_OFFLINE_ISOLATION": isolation}
        self.process = subprocess.Popen([sys.executable, "-m", "pennello", "serve", "--port", "0"],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        line = self.process.stdout.readline()
        match = re.search(r"(http://\S+)", line)
        if not match:
            raise SystemExit(f"serve ({isolation}) did not start: {line!r}")
        self.url = match.group(1)
        self.session = requests.Session()
        self.session.trust_env = False
        self.seed = 0

    def models(self) -> None:
        assert self.session.get(self.url + "/api/models", timeout=30).status_code == 200

    def generate(self) -> None:
        self.seed += 1
        response = self.session.post(self.url + "/api/generate", timeout=120,
                                     json={"prompt": "a red kite", "seed": self.seed, "wait": True,
                                           "width": 64, "height": 64})
        assert response.status_code == 200, response.text

    def first_progress(self) -> float:
        """Milliseconds to the first progress event; reads on to the end, so the next job does
        not queue behind this one."""
        started, first = time.perf_counter(), None
        with self.session.post(self.url + "/api/generate", stream=True, timeout=120,
                               json={"prompt": "a kite", "stream": True, "width": 64, "height": 64}) as r:
            for line in r.iter_lines(decode_unicode=True):
                if line == "event: progress" and first is None:
                    first = (time.perf_counter() - started) * 1000
                elif line == "event: done":
                    break
        assert first is not None, "no progress event"
        return first

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=120)


def paired(a: Callable[[], float | None], b: Callable[[], float | None],
           times: int) -> tuple[list[float], list[float]]:
    """Milliseconds of each call (or what the call returns, when it measures itself)."""
    for _ in range(WARMUP):
        a(), b()
    samples: tuple[list[float], list[float]] = ([], [])
    for i in range(times):
        pair = ((a, samples[0]), (b, samples[1]))
        for action, out in pair if i % 2 == 0 else pair[::-1]:  # ABBA: order effects cancel
            started = time.perf_counter()
            measured = action()
            out.append(measured if measured is not None else (time.perf_counter() - started) * 1000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    light, heavy = (20, 5) if args.quick else (REQUESTS, GENERATES)
    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as two:
        isolated, single = Daemon(one, "namespace"), Daemon(two, "off")
        try:
            results = {name: paired(getattr(isolated, name), getattr(single, name), n)
                       for name, n in (("models", light), ("generate", heavy), ("first_progress", heavy))}
        finally:
            isolated.stop()
            single.stop()
    rows = []
    labels = {"models": "GET /api/models", "generate": "generate+wait 64x64",
              "first_progress": "stream: first progress event"}
    for name, (iso, one) in results.items():
        rows += [row(f"{labels[name]} p50, isolated", percentile(iso, 50), "ms"),
                 row(f"{labels[name]} p50, one process", percentile(one, 50), "ms"),
                 row(f"{labels[name]}: proxy hop, median of paired differences",
                     statistics.median(i - o for i, o in zip(iso, one)), "ms")]
    for r in rows:
        print(f"{r['metric']:<60} {r['value']:>9.3f} {r['unit']}")
    write_result("isolation-cpu", rows, requests=light, generates=heavy, load_average=os.getloadavg())


if __name__ == "__main__":
    main()
