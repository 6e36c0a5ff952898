"""Verify throughput: pennello's ``file_sha256`` and ``Store.verify`` against coreutils ``sha256sum``.

    python bench/bench_verify.py               # a 1 GiB file; writes bench/results/verify-cpu.json
    python bench/bench_verify.py --size 64M    # a CI-sized run
    python bench/bench_verify.py --keep DIR    # keep the store in DIR (and reuse it next time)

A model of one file of ``--size`` random bytes is put in a throwaway store, then the same bytes
are hashed by ``sha256sum FILE`` (a subprocess), by ``file_sha256`` (what every check of a file
calls) and by ``Store.verify`` (what ``pennello verify`` runs: thread pool, progress, stamps).
The file was just written and hashed once, so every round reads it from the page cache: the
figures are hashing speed, not disk speed, which is what makes the comparison fair. Methods run
interleaved, ``--rounds`` times each, and each keeps its best round (the one least disturbed by
other work on the machine). The goal: verifying costs no more than ``sha256sum`` would, >= 0.9x.
``openssl dgst -sha256``, when installed, is timed too as a reference: the same OpenSSL code
(SHA-NI where the CPU has it) that ``hashlib`` calls, so it shows how close to the hardware we are.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from _common import row, write_result

from pennello.errors import StoreError
from pennello.installer.manifest import FileEntry, Manifest, PipelineSpec, Source, dump_envelope
from pennello.installer.store import Store, file_sha256
from pennello.paths import get_paths

MODEL = "bench-verify"
GOAL = ">= 0.9x sha256sum"
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_size(text: str) -> int:
    """Bytes from ``4096``, ``64M``, ``1G`` or ``1GiB`` (binary units)."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 1G, 64M or 4096")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def make_store(root: Path, size: int) -> tuple[Store, Path, str]:
    """A store holding model ``bench-verify`` of one ``size``-byte file; (store, file, sha256).

    An existing store of the right size under ``root`` is reused (``--keep``).
    """
    store = Store(get_paths(root).ensure())
    try:
        model = store.get(MODEL)
    except StoreError:
        model = None
    if model is not None and model.manifest.files[0].size == size:
        return store, model.path / model.manifest.files[0].path, model.manifest.files[0].sha256
    if model is not None:
        store.remove(MODEL)
    digest = hashlib.sha256()
    block = os.urandom(16 * 1024**2)
    with store.temp_file("weights") as temp:
        with open(temp, "wb") as f:
            left = size
            while left:
                chunk = block[:min(left, len(block))]
                f.write(chunk)
                digest.update(chunk)
                left -= len(chunk)
        entry = FileEntry("weights.safetensors", digest.hexdigest(), size)
        store.ingest(temp, entry)  # hashes it once more: the page cache is warm from here on
    now = datetime.now(timezone.utc).replace(microsecond=0)
    manifest = Manifest(MODEL, 1, now, now + timedelta(days=1), PipelineSpec("StableDiffusionPipeline", "sd"),
                        "Apache-2.0", Source("local"), (entry,))
    model = store.commit_version(manifest, dump_envelope(manifest.to_signed(), []))
    return store, model.path / entry.path, entry.sha256


def sha256sum(path: Path) -> str:
    out = subprocess.run(["sha256sum", str(path)], check=True, capture_output=True, text=True).stdout
    return out.split()[0]


def openssl_sha256(path: Path) -> str:
    out = subprocess.run(["openssl", "dgst", "-sha256", "-r", str(path)], check=True, capture_output=True,
                         text=True).stdout
    return out.split()[0]


def best_seconds(methods: dict[str, Callable[[], object]], expected: str, rounds: int) -> dict[str, list[float]]:
    """Seconds of each round of each method, interleaved; every method must return ``expected``."""
    samples: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, method in methods.items():
            start = time.perf_counter()
            result = method()
            samples[name].append(time.perf_counter() - start)
            if result is not None and result != expected:
                raise AssertionError(f"{name} computed {result}, expected {expected}")
    return samples


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=1024**3, help="file size (default 1G)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per method (best counts)")
    parser.add_argument("--keep", type=Path, help="keep (and reuse) the store in this directory")
    args = parser.parse_args(argv)
    if shutil.which("sha256sum") is None:
        parser.error("sha256sum (GNU coreutils) is not on PATH; it is the baseline")

    work = args.keep or Path(tempfile.mkdtemp(prefix="pennello-bench-verify."))
    try:
        store, path, expected = make_store(work, args.size)
        methods: dict[str, Callable[[], object]] = {
            "sha256sum": lambda: sha256sum(path),
            "file_sha256": lambda: file_sha256(path),
            "Store.verify": lambda: store.verify([MODEL], progress=False) or None,
        }
        if shutil.which("openssl"):  # a reference only: the SHA-NI code Python's hashlib also uses
            methods["openssl"] = lambda: openssl_sha256(path)
        sha256sum(path)  # one untimed pass: the file is in the page cache for every method
        samples = best_seconds(methods, expected, args.rounds)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    mb_s = {name: args.size / min(times) / 1e6 for name, times in samples.items()}
    label = f"{args.size / 1024**3:g} GiB" if args.size >= 1024**3 else f"{args.size / 1024**2:g} MiB"
    rows = [
        row(f"sha256sum {label} (page cache)", mb_s["sha256sum"], "MB/s", "baseline"),
        row(f"file_sha256 {label}", mb_s["file_sha256"], "MB/s", GOAL),
        row(f"Store.verify {label}", mb_s["Store.verify"], "MB/s", GOAL),
        row("file_sha256 / sha256sum", mb_s["file_sha256"] / mb_s["sha256sum"], "x", ">= 0.9"),
        row("Store.verify / sha256sum", mb_s["Store.verify"] / mb_s["sha256sum"], "x", ">= 0.9"),
    ]
    if "openssl" in mb_s:
        rows.append(row(f"openssl dgst -sha256 {label} (reference)", mb_s["openssl"], "MB/s"))
    for r in rows:
        print(f"{r['metric']:40} {r['value']:>10.2f} {r['unit']}")
    write_result("verify-cpu", rows, size_bytes=args.size, rounds=args.rounds,
                 seconds={name: [round(t, 4) for t in times] for name, times in samples.items()})
    return {"mb_s": mb_s, "samples": samples}


if __name__ == "__main__":
    main()
