"""Load: 200 concurrent generate calls for a while against a real ``pennello serve`` on loopback.

Each of 200 client threads posts ``/api/generate`` (embedded model, 64x64, 2 steps, ``wait``)
again and again; meanwhile the owner asks ``/api/health`` every 100 ms (from a process of its own). Then the same again with
three idle sockets open on the LAN port (``--lan`` mode, from this machine's own LAN address), and
once more with the client threads at nice 19. On a 2-core machine the 200 clients' own TLS and
HTTP work took 40-80% of a core, ten times what the serving process used, and competed with it
for the cores; real LAN devices bring their own CPUs, which the last phase stands in for.

Measured: generate latency p50/p99 (from a call's first try to its picture, Retry-After waits
included), ``/api/health`` p99 while busy (goal ≤ 100 ms; 9.6 s before waiting calls were
capped), requests lost (answered 5xx, not at all, or anything but a picture or a 429; goal 0),
the 429 refusals, and the peak RSS of the server and its model worker together. Each ``wait``
call holds a server thread until its picture is saved; at most ``server.max_waiting`` (32) may,
the others are refused with 429 and ``Retry-After``, which these clients honour and then try
again, so the owner's health check never queues behind waiting calls (daemon/http/waiting.py).

    python bench/bench_load.py                  # 60 s per phase, writes bench/results/load-cpu.json
    python bench/bench_load.py --seconds 20     # shorter
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

from _common import owner_session, percentile, remember_owner, row, write_result
from pennello.paths import get_paths

CLIENTS = 200
HEALTH_EVERY_S = 0.1
BODY = {"prompt": "a red kite over a green hill", "width": 64, "height": 64, "steps": 2, "wait": True}


def start(home: Path, lan: bool) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PENNELLO_HOME": str(home), "OMP_NUM_THREADS": "1",
           "PENNELLO_ENGINE_QUEUE_SIZE": str(CLIENTS * 2)}  # every client's call is queued, none 429
    process = subprocess.Popen([sys.executable, "-m", "pennello", "serve", "--port", "0", *(["--lan"] if lan else [])],
                               stdout=subprocess.PIPE, stderr=open(home.parent / "serve.log", "w"), text=True, env=env)
    match = re.match(r"pennello is serving on (\S+)", process.stdout.readline())
    if not match:
        raise SystemExit(f"serve did not start; see {home.parent / 'serve.log'}")
    return process, match.group(1)


def peak_rss_mb(pid: int) -> float:
    """VmHWM of the server and its children (the model worker), in MB."""
    pids = [pid] + [int(c) for t in Path(f"/proc/{pid}/task").glob("*/children") for c in t.read_text().split()]
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{p}/status").read_text()
            total += int(re.search(r"VmHWM:\s+(\d+)", status).group(1))
    return total / 1024


def _session(url: str) -> requests.Session:
    session = owner_session(url)
    session.verify = False  # LAN mode's self-signed certificate, on loopback; pinning is tested elsewhere
    return session


def owner(url: str, home: Path, stop: Any, answers: Any) -> None:
    """The owner's health checks every 100 ms, from a process of its own as the tray or the CLI
    is: in the callers' process it would wait for their 200 threads' interpreter lock, and time that."""
    requests.packages.urllib3.disable_warnings()
    remember_owner(url, get_paths(home))
    session = _session(url)
    health, failed = [], 0
    while not stop.is_set():
        started = time.perf_counter()
        try:
            answered = session.get(f"{url}/api/health", timeout=60).status_code == 200
        except requests.RequestException:
            answered = False
        health.append(time.perf_counter() - started)
        failed += not answered
        time.sleep(HEALTH_EVERY_S)
    answers.put((health, failed))


def phase(url: str, home: Path, seconds: float, clients_nice: int = 0) -> dict[str, Any]:
    """200 clients generating for ``seconds`` (their threads ``clients_nice`` steps below this
    process's priority) while the owner polls health; the figures."""
    stop = threading.Event()
    latencies: list[float] = []
    lost: list[str] = []
    refused: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + clients_nice)
        session = _session(url)
        started = time.perf_counter()
        while not stop.is_set():
            try:
                response = session.post(f"{url}/api/generate", json=BODY, timeout=600)
                ok = response.status_code == 200 and response.json().get("status") == "done"
            except requests.RequestException as e:
                ok, response = False, e
            if not ok and getattr(response, "status_code", None) == 429:  # refused, not lost
                with lock:
                    refused.append(float(response.headers["Retry-After"]))
                stop.wait(float(response.headers["Retry-After"]))
                continue  # the same call again: its latency goes on counting
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    lost.append(str(response)[:200])
            started = time.perf_counter()

    spawn = multiprocessing.get_context("spawn")
    owner_stop, answers = spawn.Event(), spawn.Queue()
    owner_process = spawn.Process(target=owner, args=(url, home, owner_stop, answers))
    owner_process.start()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    owner_stop.set()
    health, failed = answers.get(timeout=120)
    owner_process.join()
    for thread in threads:
        thread.join(timeout=600)
    return {"latency": latencies, "health": health, "lost": lost + ["health"] * failed, "refused": refused,
            "load_average": os.getloadavg()}


def _p(values: list[float], q: float) -> float:
    """A percentile; with one sample (a health check that waited the whole phase), that sample."""
    return percentile(values, q) if len(values) > 1 else max(values, default=0.0)


def lan_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the default route's address
        return probe.getsockname()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    requests.packages.urllib3.disable_warnings()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        process, url = start(home, lan=True)
        remember_owner(url, get_paths(home))
        try:
            warm = _session(url).post(f"{url}/api/generate", json=BODY, timeout=120)
            assert warm.status_code == 200, warm.text
            plain = phase(url, home, args.seconds)
            port = int(url.rsplit(":", 1)[1])
            with contextlib.ExitStack() as idle:
                for _ in range(3):
                    idle.enter_context(socket.create_connection((lan_address(), port), timeout=10))
                with_idle = phase(url, home, args.seconds)
            elsewhere = phase(url, home, args.seconds, clients_nice=19)
            rss = peak_rss_mb(process.pid)
        finally:
            process.terminate()
            process.wait(timeout=120)
    phases = (("", plain), (", 3 idle LAN sockets open", with_idle),
              (", clients at nice 19 (as on other machines)", elsewhere))
    for name, result in phases:
        print(f"phase{name}: {len(result['latency'])} made, {len(result['health'])} health checks, "
              f"{len(result['lost'])} lost, {len(result['refused'])} refused with 429")
        ms = [s * 1000 for s in result["latency"]]
        health = [s * 1000 for s in result["health"]]
        rows += [row(f"generate p50, {CLIENTS} concurrent{name}", _p(ms, 50), "ms"),
                 row(f"generate p99, {CLIENTS} concurrent{name}", _p(ms, 99), "ms"),
                 row(f"/api/health p99 while busy{name}", _p(health, 99), "ms", "<= 100 ms"),
                 row(f"requests lost{name}", len(result["lost"]), "", "= 0"),
                 row(f"refused with 429 (then tried again after Retry-After){name}", len(result["refused"]), ""),
                 row(f"pictures made{name}", len(ms), "")]
    rows.append(row("peak RSS, server + model worker", rss, "MB"))
    write_result("load-cpu", rows, clients=CLIENTS, seconds=args.seconds, load_average=os.getloadavg(),
                 phase_load_averages={name or "plain": result["load_average"] for name, result in phases},
                 lost_examples=[lost for _, result in phases for lost in result["lost"]][:10])


if __name__ == "__main__":
    main()
