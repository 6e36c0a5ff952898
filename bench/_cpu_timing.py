"""The measuring loop both CPU bench children share (stdlib only: raw optimum-intel's virtual
environment has no pennello): draw seed 0 and save it, then time ``runs`` more pictures, then
print the result line ``bench_cpu.py`` reads."""

from __future__ import annotations

import json
import resource
import statistics
import time
from typing import Any, Callable


def measure(draw: Callable[[int], Any], runs: int, started: float, picture: str) -> None:
    """Cold start (``started`` to the first picture), median seconds of ``runs`` pictures, peak RSS."""
    import numpy as np

    np.save(picture, draw(0))
    cold = time.perf_counter() - started
    times = []
    for i in range(runs):
        start = time.perf_counter()
        draw(i + 1)
        times.append(time.perf_counter() - start)
    print(json.dumps({"cold_s": cold, "median_s": statistics.median(times), "runs": times,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
