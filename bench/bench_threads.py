"""CPU threads and OpenMP waiting: what a CPU daemon should default to on a shared desktop.

torch's CPU kernels run on an OpenMP pool whose idle workers spin for a while before sleeping.
When another process keeps a core busy, a worker that lost its core holds up every parallel
region and the spinning ones burn the rest: on 2 cores a 2-thread pipeline slowed ~47x next to one
busy process. This measures the embedded model with 1 or all threads, OpenMP's default waiting
or ``OMP_WAIT_POLICY=PASSIVE``, on a quiet machine and next to ``--busy`` busy processes.

    python bench/bench_threads.py                 # writes bench/results/threads-cpu.json
    python bench/bench_threads.py --calls 20      # quicker

Each setting runs in a fresh process (OpenMP reads its environment once, at load), and settings
are interleaved over ``--repeats`` rounds so drift on a shared machine hits all of them alike.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _common import row, write_result

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "installer" / "embedded" / "pennello-tiny"

CHILD = """
import json, sys, time, torch
from diffusers import StableDiffusionPipeline
threads, calls, batch = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
pipe = StableDiffusionPipeline.from_pretrained(sys.argv[4], local_files_only=True)
pipe.set_progress_bar_config(disable=True)
run = lambda i: pipe(["a large red circle on a blue background, center"] * batch, num_inference_steps=4,
                     height=64, width=64, guidance_scale=1.0, generator=torch.Generator().manual_seed(i))
run(0)
times = []
for i in range(calls):
    start = time.perf_counter(); run(i); times.append(time.perf_counter() - start)
print(json.dumps(times))
"""


def _spin(stop: multiprocessing.Event) -> None:  # type: ignore[valid-type]
    while not stop.is_set():  # the "other busy program" on the desktop
        sum(range(10_000))


def measure(threads: int, passive: bool, busy: int, calls: int, batch: int) -> list[float]:
    """Seconds per image for ``calls`` pipeline calls in a fresh process."""
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("OMP_NUM_THREADS", None)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(busy)]
    for spinner in spinners:
        spinner.start()
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(calls), str(batch), str(MODEL_DIR)],
                             env=env, check=True, capture_output=True, text=True, timeout=1800).stdout
    finally:
        stop.set()
        for spinner in spinners:
            spinner.join()
    return [t / batch for t in json.loads(out.strip().splitlines()[-1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=40, help="timed pipeline calls per setting and round")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds over all settings")
    parser.add_argument("--busy", type=int, default=1, help="busy processes in the contended runs")
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    settings = [(threads, passive, busy) for busy in (0, args.busy) for threads in sorted({1, cores})
                for passive in (False, True)]
    samples: dict[tuple[int, bool, int], list[float]] = {s: [] for s in settings}
    for _ in range(args.repeats):
        for setting in settings:
            samples[setting] += measure(*setting, calls=args.calls, batch=args.batch)
            print(setting, f"{1000 * statistics.median(samples[setting]):.1f} ms/image", flush=True)
    rows = []
    for (threads, passive, busy), times in samples.items():
        wait = "passive" if passive else "default"
        load = f"next to {busy} busy process{'es' if busy > 1 else ''}" if busy else "quiet"
        rows.append(row(f"embedded 64x64 4 steps, {threads} thread{'s' if threads > 1 else ''}, "
                        f"OpenMP wait {wait}, {load}", 1000 * statistics.median(times), "ms/image", "",
                        threads=threads, omp_wait_policy=wait, busy=busy,
                        p90=1000 * statistics.quantiles(times, n=10)[-1]))
    write_result("threads-cpu", rows, calls=args.calls, batch=args.batch, repeats=args.repeats)


if __name__ == "__main__":
    main()
