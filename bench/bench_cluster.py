"""A pennello cluster's throughput, measured through its front (docs/cluster.md).

Start the cluster first (``pennello node --head``, ``pennello node --join``, ``pennello serve
--cluster``), then point this at the front. It sends ``--requests`` text-to-image requests from
``--clients`` threads at once, with pennello's own client, and reports pictures per second, the
p50 and p95 of a request's seconds, and how many pictures each node drew (from ``/api/ps``).
Run it once with one node joined and once with two to see what the second box adds.

    python bench/bench_cluster.py --url http://127.0.0.1:8420 --requests 24 --clients 4 --tag two-nodes
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import percentile, row, write_result  # noqa: E402 - the bench folder's own helpers

from pennello.client import Client  # noqa: E402


def pictures_by_node(url: str) -> dict[str, int]:
    """How many pictures each node has drawn, summed over the deployed models."""
    counts: dict[str, int] = {}
    for model in requests.get(f"{url}/api/ps", timeout=30).json()["models"]:
        for node, count in (model.get("cluster") or {}).get("pictures_by_node", {}).items():
            counts[node] = counts.get(node, 0) + count
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the front's URL (pennello serve --cluster)")
    parser.add_argument("--token", help="a paired token, when the front is not on loopback")
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--tag", default="local")
    args = parser.parse_args()
    client = Client(args.url, args.token)
    client.generate("warm-up", seed=0)
    before = pictures_by_node(args.url)

    def one(seed: int) -> float:
        started = time.perf_counter()
        client.generate("a red kite over a beach", seed=seed)
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        seconds = list(pool.map(one, range(args.requests)))
    wall = time.perf_counter() - started
    after = pictures_by_node(args.url)
    drawn = {node: count - before.get(node, 0) for node, count in after.items()}
    rows = [row("cluster pictures per second", args.requests / wall, "pictures/s", clients=args.clients),
            row("cluster request p50", percentile(seconds, 50), "s"),
            row("cluster request p95", percentile(seconds, 95), "s")]
    for line in rows:
        print(f"{line['metric']}: {line['value']} {line['unit']}")
    print(f"pictures by node: {drawn}")
    write_result(f"cluster-{args.tag}", rows, pictures_by_node=drawn)


if __name__ == "__main__":
    main()
