"""How long the one-click install takes, downloads excluded: ``packaging/install.sh --from BUNDLE``.

The bundle is made first (not timed): ``pennello bundle export pennello-tiny`` plus a wheelhouse
of torch (``torch==2.13.0``, the CPU build) and every other dependency, fetched with
``pip download`` into ``~/.cache/pennello-bench/`` and reused by later runs. Then, in a fresh
temporary HOME, the installer runs exactly as on an air-gapped machine (``--no-index``): a new
venv, torch, pennello, the models installed and verified, start at login, the menu entry. Each
step's time comes from when the installer printed its ``[n/8]`` line. A second run measures a
repair/upgrade of an installed machine.

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
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--dest", str(wheels), TORCH, str(ours)],
                   check=True)
    return wheels


def make_bundle(work: Path, wheels: Path) -> Path:
    env = {**os.environ, "PENNELLO_HOME": str(work / "source")}
    bundle = work / "bundle"
    for args in (["install", "pennello-tiny"], ["bundle", "export", "pennello-tiny", "--out", str(bundle)]):
        subprocess.run([sys.executable, "-m", "pennello", *args], check=True, env=env, capture_output=True)
    shutil.copytree(wheels, bundle / "wheels")
    return bundle


def run_installer(home: Path, bundle: Path) -> tuple[float, dict[str, float]]:
    """One install; returns the total and each step's seconds."""
    drop = ("PENNELLO_", "XDG_", "VIRTUAL_ENV", "PYTHONPATH", "DISPLAY", "WAYLAND_DISPLAY")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["HOME"] = str(home)
    started = time.perf_counter()
    marks: list[tuple[str, float]] = []
    process = subprocess.Popen(["bash", str(INSTALL_SH), "--from", str(bundle), "--yes", "--no-start",
                                "--python", BASE_PYTHON], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, stdin=subprocess.DEVNULL)
    assert process.stdout is not None
    output = []
    for line in process.stdout:
        output.append(line)
        match = STEP.match(line.strip())
        if match:
            marks.append((match.group(3), time.perf_counter()))
    if process.wait():
        raise SystemExit("install.sh failed:\n" + "".join(output[-40:]))
    total = time.perf_counter() - started
    ends = [t for _, t in marks[1:]] + [started + total]
    return total, {name: end - begin for (name, begin), end in zip(marks, ends)}


def main() -> None:
    wheels = wheelhouse()
    with tempfile.TemporaryDirectory(prefix="pennello-bench-install-") as tmp:
        work = Path(tmp)
        bundle = make_bundle(work, wheels)
        size_mb = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) / 1e6
        home = work / "home"
        home.mkdir()
        print("timing a fresh install from the bundle…", flush=True)
        total, steps = run_installer(home, bundle)
        print("timing a re-run (repair and upgrade)…", flush=True)
        again, again_steps = run_installer(home, bundle)
    rows = [row("one-click install, fresh (air-gapped bundle, no downloads)", total, "s", "< 300 s",
                bundle_mb=round(size_mb, 1), torch=TORCH)]
    rows += [row(f"install step: {name}", seconds, "s") for name, seconds in steps.items()]
    rows.append(row("one-click install, re-run (repair/upgrade)", again, "s", "< 60 s"))
    for name, seconds in steps.items():
        print(f"  {name:<26} {seconds:7.1f} s   (re-run {again_steps.get(name, 0):.1f} s)")
    print(f"  {'total':<26} {total:7.1f} s   (re-run {again:.1f} s)")
    write_result("install", rows, bundle_mb=round(size_mb, 1))


if __name__ == "__main__":
    main()
