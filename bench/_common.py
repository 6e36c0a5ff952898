"""Shared plumbing for benchmarks: machine description and the JSON result format.

Every benchmark writes ``bench/results/<name>.json``::

    {"benchmark": name, "machine": {...}, "rows": [
        {"metric": "verify throughput", "value": 1870.2, "unit": "MB/s", "goal": ">= 0.9x sha256sum",
         "device": "cpu: AMD EPYC ..."}], ...extra fields...}

``bench/report.py`` turns the rows of every result file into the table in README.md.

``--shrunk`` (:func:`add_shrunk_option`, the same option in every benchmark of the real
architectures) builds the same classes with the widths of ``bench/configs/<model>/tiny.json``: a
run that proves the script works end to end in seconds and measures nothing a user would see. Its
result says ``"shrunk"`` at the top and in every row, and it is never written into the committed
``bench/results/`` (point ``PENNELLO_BENCH_RESULTS`` elsewhere), so no table can show it as a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import requests

from pennello.owner_token import read_owner_token
from pennello.paths import Paths

COMMITTED_RESULTS = Path(__file__).resolve().parent / "results"
# PENNELLO_BENCH_RESULTS redirects results (the CI-sized runs in tests write to a temp dir).
RESULTS_DIR = Path(os.environ.get("PENNELLO_BENCH_RESULTS") or COMMITTED_RESULTS)
SHRUNK = ("shrunk widths (bench/configs/<model>/tiny.json): proves the script runs, "
          "measures nothing real; never a figure")


def device_name() -> str:
    """'cuda: NVIDIA H100 ...' when a GPU is used, else 'cpu: <model> (<n> cores)'."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda: {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return cpu_name()


def cpu_name() -> str:
    """'cpu: <model> (<n> cores)', for rows measured on the CPU of a machine that has a GPU too."""
    return f"cpu: {_cpu_model()} ({os.cpu_count()} cores)"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": device_name(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def row(metric: str, value: float, unit: str, goal: str = "", **extra: Any) -> dict[str, Any]:
    """One table row; the device is filled in by :func:`write_result`."""
    return {"metric": metric, "value": round(value, 4), "unit": unit, "goal": goal, **extra}


def percentile(values: list[float], q: float) -> float:
    """q in [0, 100]; the inclusive method, so p50 of an odd sample is its median."""
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if q < 100 else max(values)


def _shrunk_refused() -> str | None:
    """Why a shrunk run may not write where results go now, or None when it may."""
    if RESULTS_DIR.resolve() == COMMITTED_RESULTS.resolve():
        return (f"--shrunk results are no figures and never go to {COMMITTED_RESULTS}: "
                "set PENNELLO_BENCH_RESULTS to another folder")
    return None


class _ShrunkFlag(argparse.Action):
    """``--shrunk``, refused as the command line is read (not after the run) where it would
    write into the committed results."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        refused = _shrunk_refused()
        if refused:
            parser.error(refused)
        setattr(namespace, self.dest, True)


def add_shrunk_option(parser: argparse.ArgumentParser) -> None:
    """The ``--shrunk`` option every benchmark of the real architectures shares."""
    parser.add_argument("--shrunk", action=_ShrunkFlag, nargs=0, default=False,
                        help="the same classes with the shrunk widths of bench/configs/<model>/tiny.json: "
                             "proves the script works in seconds, measures nothing real; the result is "
                             "marked shrunk and refused in bench/results/ (set PENNELLO_BENCH_RESULTS)")


def write_result(name: str, rows: list[dict[str, Any]], shrunk: bool = False, **extra: Any) -> Path:
    """Write ``bench/results/<name>.json`` and print where it went; a ``shrunk`` run's result is
    marked so at the top and in every row, and refused in the committed results."""
    refused = _shrunk_refused() if shrunk else None
    if refused:
        raise SystemExit(refused)
    machine = machine_info()
    for r in rows:
        r.setdefault("device", machine["device"])
        if shrunk:
            r["shrunk"] = True
    marks = {"shrunk": SHRUNK} if shrunk else {}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, **marks, "machine": machine, "rows": rows, **extra},
                               indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return path


_OWNERS: dict[str, Paths] = {}  # base URL -> home of the daemon serving it


def remember_owner(url: str, paths: Paths) -> None:
    """Note that the daemon at ``url`` keeps its state in ``paths``: a bench is the owner's own
    program, so its requests carry that daemon's owner token (docs/threat-model.md)."""
    _OWNERS[url] = paths


def owner_session(url: str) -> requests.Session:
    """A session to the daemon at ``url`` as its owner, never through an environment proxy."""
    session = requests.Session()
    session.trust_env = False
    paths = next((home for base, home in _OWNERS.items() if url.startswith(base)), None)
    token = read_owner_token(paths) if paths is not None else None
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    return session
