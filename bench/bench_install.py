"""How long the one-click install takes: from a bundle (no downloads) and from the package index.

Two sources, each timed with uv and with pip only (``PENNELLO_UV=0``), interleaved so that the
machine's load falls on both alike, in fresh temporary HOMEs (so pip's and uv's caches start
empty), then once more in the same HOMEs, which measures a repair/upgrade of an installed machine:

* **bundle**: ``packaging/install.sh --from BUNDLE``, exactly as on an air-gapped machine
  (``--no-index``). The bundle is made first (not timed): ``pennello bundle export pennello-tiny``
  plus a wheelhouse of torch (``torch==2.13.0``, the CPU build), uv and every other dependency,
  fetched with ``pip download`` into ``~/.cache/pennello-bench/`` and reused by later runs, and
  its hash lock ``lock.txt`` (the installer runs the bundle's uv only when the lock pins it).
* **index**: ``packaging/install.sh`` from this checkout, on a machine with no uv: the installer
  first installs uv from the package index with pip, then installs with it; downloads included.
  pip's own configuration applies to both (here a local folder holds the torch wheel).

Each install makes a venv, installs torch and pennello, installs and verifies the models,
registers start at login and writes the menu entry. Each step's time comes from when the
installer printed its ``[n/8]`` line. The load average before and after is recorded too.

    $ python bench/bench_install.py            # writes bench/results/install.json
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import row, write_result  # noqa: E402

from pennello.installer.wheelhouse import write_lock  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
INSTALL_SH = ROOT / "packaging" / "install.sh"
TORCH = os.environ.get("PENNELLO_TORCH", "torch==2.13.0")
CACHE = Path(os.environ.get("PENNELLO_BENCH_CACHE", Path.home() / ".cache" / "pennello-bench"))
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)
STEP = re.compile(r"^\[(\d+)/(\d+)\] (.+)$")


def wheelhouse() -> Path:
    """torch, pennello's dependencies and pennello's own wheel (downloads are cached between runs)."""
    tag = f"py{sys.version_info.major}{sys.version_info.minor}-{TORCH.replace('==', '-')}"
    wheels = CACHE / f"wheels-{tag}"
    wheels.mkdir(parents=True, exist_ok=True)
    for old in wheels.glob("pennello-*.whl"):
        old.unlink()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(wheels), str(ROOT)], check=True)
    ours = next(wheels.glob("pennello-*.whl"))
    print(f"filling the wheelhouse {wheels} (not timed)…", flush=True)
    # The dependencies of the wheel just built, so the wheelhouse follows pyproject.toml.
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--dest", str(wheels), TORCH, "uv", str(ours)],
                   check=True)
    return wheels


def make_bundle(work: Path, wheels: Path) -> Path:
    env = {**os.environ, "PENNELLO_HOME": str(work / "source")}
    bundle = work / "bundle"
    for args in (["install", "pennello-tiny"], ["bundle", "export", "pennello-tiny", "--out", str(bundle)]):
        subprocess.run([sys.executable, "-m", "pennello", *args], check=True, env=env, capture_output=True)
    shutil.copytree(wheels, bundle / "wheels")
    write_lock(bundle)
    return bundle


def run_installer(home: Path, source: tuple[str, ...], tool: str) -> tuple[float, dict[str, float]]:
    """One install from ``source`` (``--from BUNDLE``, or none: the package index) with ``tool``
    (uv or pip); returns the total and each step's seconds."""
    drop = ("PENNELLO_", "XDG_", "VIRTUAL_ENV", "PYTHONPATH", "DISPLAY", "WAYLAND_DISPLAY")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["HOME"] = str(home)
    if tool == "pip":
        env["PENNELLO_UV"] = "0"
    else:  # the bundle's uv or the index's, as on a machine without one: none from this one's PATH
        env["PATH"] = os.pathsep.join(d for d in env["PATH"].split(os.pathsep)
                                      if not (Path(d) / "uv").exists())
    started = time.perf_counter()
    marks: list[tuple[str, float]] = []
    process = subprocess.Popen(["bash", str(INSTALL_SH), *source, "--yes", "--no-start", "--python", BASE_PYTHON],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               stdin=subprocess.DEVNULL)
    assert process.stdout is not None
    output = []
    for line in process.stdout:
        output.append(line)
        match = STEP.match(line.strip())
        if match:
            marks.append((match.group(3), time.perf_counter()))
    if process.wait():
        raise SystemExit(f"install.sh ({tool}) failed:\n" + "".join(output[-40:]))
    if tool == "uv" and "installing packages with uv" not in "".join(output):
        raise SystemExit("install.sh did not use uv:\n" + "".join(output[-40:]))
    total = time.perf_counter() - started
    ends = [t for _, t in marks[1:]] + [started + total]
    return total, {name: end - begin for (name, begin), end in zip(marks, ends)}


def main() -> None:
    wheels = wheelhouse()
    load_before = os.getloadavg()
    runs: dict[str, tuple[float, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="pennello-bench-install-") as tmp:
        work = Path(tmp)
        bundle = make_bundle(work, wheels)
        size_mb = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) / 1e6
        sources = {"bundle": ("--from", str(bundle)), "index": ()}
        # Interleaved: fresh with each, then a re-run with each, so load changes fall on all alike.
        for kind in ("fresh", "re-run"):
            for source, args in sources.items():
                for tool in ("pip", "uv"):
                    home = work / f"home-{source}-{tool}"
                    home.mkdir(exist_ok=True)
                    print(f"timing a {kind} install from the {source} with {tool}…", flush=True)
                    runs[f"{source} {tool} {kind}"] = run_installer(home, args, tool)
    load = {"loadavg_1_5_15_before": [round(x, 2) for x in load_before],
            "loadavg_1_5_15_after": [round(x, 2) for x in os.getloadavg()], "cpu_count": os.cpu_count()}
    rows = result_rows(runs, "bundle", size_mb) + result_rows(runs, "index", size_mb)
    write_result("install", rows, bundle_mb=round(size_mb, 1), load=load)
    print(f"  load average before {load['loadavg_1_5_15_before']}, after {load['loadavg_1_5_15_after']}")


SOURCE_NAMES = {"bundle": "air-gapped bundle, no downloads", "index": "package index, downloads included"}


def result_rows(runs: dict[str, tuple[float, dict[str, float]]], source: str, size_mb: float) -> list[dict]:
    """The uv rows under the long-standing metric names (uv is the default), the pip ones beside;
    the bundle's rows keep their names, the index's say so."""
    rows = []
    for tool, name, goal, again_goal in (("uv", "one-click install", "< 90 s", "< 15 s"),
                                         ("pip", "one-click install with pip only", "", "")):
        total, steps = runs[f"{source} {tool} fresh"]
        again, again_steps = runs[f"{source} {tool} re-run"]
        extra = {"bundle_mb": round(size_mb, 1)} if source == "bundle" else {}
        rows.append(row(f"{name}, fresh ({SOURCE_NAMES[source]})", total, "s", goal, torch=TORCH, **extra))
        prefix = "install step" if tool == "uv" else "install step with pip only"
        where = "" if source == "bundle" else ", from the index"
        rows += [row(f"{prefix}{where}: {step}", seconds, "s") for step, seconds in steps.items()]
        rows.append(row(f"{name}, re-run (repair/upgrade{where})", again, "s", again_goal))
        for step, seconds in steps.items():
            print(f"  {source} {tool} {step:<26} {seconds:7.1f} s   (re-run {again_steps.get(step, 0):.1f} s)")
        print(f"  {source} {tool} {'total':<26} {total:7.1f} s   (re-run {again:.1f} s)")
    return rows

if __name__ == "__main__":
    main()
