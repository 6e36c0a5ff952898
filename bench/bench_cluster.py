"""A pennello cluster's throughput and the front's added latency (docs/cluster.md).

By default it builds its own cluster on this machine, as tests/test_cluster.py does: a head on
127.0.0.2 with the front (``pennello serve --cluster``), later a second node on 127.0.0.3, each
with its own store and the embedded model. Then:

* **the front's added latency**: one picture at a time, the same request through the front
  (pennello's client: HTTP, the queue, saving to the gallery) and straight to the model's Serve
  deployment (a :class:`ray.serve.handle.DeploymentHandle`, as the front calls it); the
  difference of their medians (goal: at most 5 ms);
* **pictures per second, p50 and p99 of a request** through the front under the same load
  (``--requests`` from ``--clients`` threads) with one node, then two (the front restarted, so
  its model is deployed on both), and how many pictures each node drew.

On one machine both "boxes" share its cores, so a second node adds no compute: the 2-node row
says what the cluster's parallel batches give, not what a second box would. Where the nodes
are real boxes, start them (``pennello node``) and the front yourself and pass ``--url``: only
the throughput under load is measured then.

    python bench/bench_cluster.py                      # writes bench/results/cluster-cpu.json
    python bench/bench_cluster.py --url http://192.168.1.20:8420 --token TOKEN --tag office
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import percentile, row, write_result  # noqa: E402

from pennello.client import Client  # noqa: E402
from pennello.paths import get_paths  # noqa: E402

HEAD_IP, NODE_IP = "127.0.0.2", "127.0.0.3"
HEAD_PORT, HEAD_BASE, NODE_BASE = 26379, 26400, 26500  # pinned; other than the tests' defaults
PROMPT, STEPS = "a red kite over a beach", 4
LATENCY_STEPS = 1  # the added latency is what the front adds around a draw: a short draw, less noise
START_TIMEOUT_S = 300
SAME_MACHINE = " (both on this machine's cores)"  # the 2-node rows say so: no second box's compute
MACHINE_NOTE = ("one 2-core machine for both nodes, the front and the bench, loaded by other work while "
                "measured (load average below): noisy. A second node adds no compute here; on an "
                "oversubscribed machine its processes only win a larger share of the CPU from the other "
                "work, so the 2-node gain says nothing about a second box")


def pictures_by_node(client: Client) -> dict[str, int]:
    """How many pictures each node has drawn, summed over the deployed models."""
    counts: dict[str, int] = {}
    for model in client.ps()["models"]:
        for node, count in (model.get("cluster") or {}).get("pictures_by_node", {}).items():
            counts[node] = counts.get(node, 0) + count
    return counts


def under_load(client: Client, requests: int, clients: int, label: str) -> list[dict[str, Any]]:
    """``requests`` pictures from ``clients`` threads through the front: pictures/s, p50, p99."""
    before = pictures_by_node(client)

    def one(seed: int) -> float:
        started = time.perf_counter()
        client.generate(PROMPT, seed=seed, steps=STEPS)
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        seconds = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - started
    drawn = {node[:8]: count - before.get(node, 0) for node, count in pictures_by_node(client).items()}
    print(f"{label}: {requests / wall:.2f} pictures/s, by node {drawn}")
    load = {"requests": requests, "clients": clients, "steps": STEPS, "pictures_by_node": drawn}
    return [row(f"{label}: pictures per second", requests / wall, "pictures/s", **load),
            row(f"{label}: request p50", percentile(seconds, 50), "s", **load),
            row(f"{label}: request p99", percentile(seconds, 99), "s", **load)]


def gain(one: list[dict[str, Any]], two: list[dict[str, Any]]) -> dict[str, Any]:
    """Pictures per second with two nodes over one, on the same load."""
    return row(f"2 nodes / 1 node, pictures per second{SAME_MACHINE}", two[0]["value"] / one[0]["value"], "x",
               ">= 1.8x where each node has its own cores or GPU")


def added_latency(client: Client, head: str, home: Path, rounds: int) -> list[dict[str, Any]]:
    """One picture through the front and one straight to the deployment per round, in turns
    (which goes first alternates); the median of the rounds' differences, as bench_daemon does."""
    direct = direct_call(head, home)
    through, straight = [], []
    for seed in range(rounds):
        calls = [(through, lambda: client.generate(PROMPT, seed=seed, steps=LATENCY_STEPS)),
                 (straight, lambda: direct(seed))]
        for sample, call in calls if seed % 2 else reversed(calls):
            started = time.perf_counter()
            call()
            sample.append((time.perf_counter() - started) * 1000)
    differences = [front - alone for front, alone in zip(through, straight)]
    spread = statistics.quantiles(differences, n=4)
    print(f"one picture: through the front {statistics.median(through):.1f} ms, straight to the deployment "
          f"{statistics.median(straight):.1f} ms; paired differences p25/p50/p75 {spread[0]:.1f}/"
          f"{statistics.median(differences):.1f}/{spread[2]:.1f} ms")
    extra = {"rounds": rounds, "steps": LATENCY_STEPS, "through_front_ms": round(statistics.median(through), 2),
             "direct_ms": round(statistics.median(straight), 2),
             "difference_p25_ms": round(spread[0], 2), "difference_p75_ms": round(spread[2], 2)}
    return [row("front's added latency, median of paired differences (1 node)", statistics.median(differences),
                "ms", "<= 5 ms", **extra)]


def direct_call(head: str, home: Path) -> Callable[[int], Any]:
    """Draw one picture on the deployment the front made, from this process as a Ray driver."""
    from pennello.config import Config
    from pennello.daemon.cluster.front import connect
    from pennello.daemon.engine.jobs import GenerateRequest
    from pennello.daemon.engine.resolve import resolve_request
    from pennello.installer import Store

    paths = get_paths(home)
    connect(head, paths.state_dir / "cluster-token", HEAD_IP)  # sets Ray's token before Ray is imported
    from ray import serve
    store = Store(paths)
    installed = store.get("pennello-tiny")
    request = resolve_request(GenerateRequest(prompt=PROMPT, model="pennello-tiny", steps=LATENCY_STEPS),
                              Config().engine, lookup=store.get)
    handle = serve.get_app_handle("pennello-pennello-tiny")
    handle._init(_prefer_local_routing=False)  # as the front calls it
    stream = handle.options(stream=True)  # the replica answers with its steps, then the pictures
    return lambda seed: list(stream.draw.remote(installed.name, installed.digest, [(request, seed)]))[-1]


class LocalCluster:
    """A head with the front on 127.0.0.2 and, after :meth:`add_node`, a node on 127.0.0.3."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.head_home, self.node_home = root / "head", root / "node"
        self.head = f"{HEAD_IP}:{HEAD_PORT}"
        self.processes: dict[str, subprocess.Popen] = {}
        for home in (self.head_home, self.node_home):
            subprocess.run([sys.executable, "-m", "pennello", "install", "pennello-tiny"], check=True,
                           capture_output=True, env={**os.environ, "PENNELLO_HOME": str(home)})

    def _start(self, name: str, home: Path, *args: str) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "w")
        # HOME too: `pennello node` writes Ray's ~/ray_bootstrap_config.yaml, which belongs in the bench's home
        env = {**os.environ, "PENNELLO_HOME": str(home), "HOME": str(home)}
        self.processes[name] = subprocess.Popen([sys.executable, "-m", "pennello", *args], text=True, env=env,
                                                stdout=subprocess.PIPE if name == "front" else log, stderr=log)
        return self.processes[name]

    def _wait_port(self, name: str, ip: str, port: int) -> None:
        import socket

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                raise RuntimeError(f"{name} exited: {(self.root / f'{name}.log').read_text()[-2000:]}")
            with socket.socket() as probe:
                if probe.connect_ex((ip, port)) == 0:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"{name}: nothing listens on {ip}:{port} after {START_TIMEOUT_S} s")

    def start_head(self) -> None:
        self._start("head", self.head_home, "node", "--head", "--ip", HEAD_IP, "--port", str(HEAD_PORT),
                    "--port-base", str(HEAD_BASE))
        self._wait_port("head", HEAD_IP, HEAD_PORT)

    def add_node(self) -> None:
        self._start("node", self.node_home, "node", "--join", self.head, "--ip", NODE_IP, "--port-base",
                    str(NODE_BASE), "--token-file", str(self.head_home / "data" / "state" / "cluster-token"))
        self._wait_port("node", NODE_IP, NODE_BASE + 1)  # its raylet

    def start_front(self) -> str:
        """Start the front (it deploys the model on every node now offering it); returns its URL."""
        front = self._start("front", self.head_home, "serve", "--port", "0", "--cluster", self.head)
        for line in front.stdout:  # Ray may print first; EOF when the front died
            if line.startswith("pennello is serving on "):
                threading.Thread(target=front.stdout.read, daemon=True).start()  # a full pipe would block it
                return line.split()[-1]
        raise RuntimeError(f"the front did not start: {(self.root / 'front.log').read_text()[-2000:]}")

    def stop(self, name: str) -> None:
        process = self.processes.pop(name)
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        for name in ("front", "node", "head"):
            if name in self.processes:
                self.stop(name)


def on_this_machine(args: argparse.Namespace) -> None:
    """Both measurements on a cluster of this machine (see the module's docstring)."""
    with tempfile.TemporaryDirectory(prefix="pennello-bench-cluster-") as tmp:
        cluster = LocalCluster(Path(tmp))
        try:
            cluster.start_head()
            url = cluster.start_front()
            client = Client(url, paths=get_paths(cluster.head_home))
            client.generate("warm-up", seed=0, steps=STEPS)
            latency = added_latency(client, cluster.head, cluster.head_home, args.rounds)
            one = under_load(client, args.requests, args.clients, "1 node")
            cluster.stop("front")
            cluster.add_node()
            url = cluster.start_front()
            client = Client(url, paths=get_paths(cluster.head_home))
            client.generate("warm-up", seed=0, steps=STEPS)
            two = under_load(client, args.requests, args.clients, f"2 nodes{SAME_MACHINE}")
        finally:
            cluster.close()
    write_result(f"cluster-{args.tag}", [*latency, *one, *two, gain(one, two)], note=MACHINE_NOTE,
                 load_average_1_5_15_min=[round(load, 1) for load in os.getloadavg()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="measure a running front instead (throughput under load only)")
    parser.add_argument("--token", help="a paired token, when that front is not on loopback")
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=60, help="pictures each way for the added latency")
    parser.add_argument("--tag", default="cpu")
    args = parser.parse_args()
    if not args.url:
        on_this_machine(args)
        return
    client = Client(args.url, args.token)
    client.generate("warm-up", seed=0, steps=STEPS)
    write_result(f"cluster-{args.tag}", under_load(client, args.requests, args.clients, "running front"))


if __name__ == "__main__":
    main()
