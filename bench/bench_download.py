"""Install throughput from an HTTP mirror on 127.0.0.1, against a raw download and a raw copy.

    python bench/bench_download.py                      # 256 MiB in 8 files; bench/results/download-cpu.json
    python bench/bench_download.py --size 16M --files 4 # a CI-sized run

A model of ``--files`` files of random bytes (``--size`` in all) is served by a small threaded
HTTP server on 127.0.0.1 that sends files with ``sendfile``, so the server costs next to nothing.
Three ways to land the same bytes on disk are timed, interleaved, ``--rounds`` times each, and
each keeps its best round:

* **install**: ``Installer.install_raw`` of a signed mirror manifest into a fresh pennello home:
  signature check, resumable size-capped downloads of a few files at once (``parallel_files``),
  each hashed (sha256) on its own thread as it is written, fsync, digest check, blob, hard
  links, version switch;
* **install, one file at a time**: the same with ``parallel_files=1``, as installs ran before;
* **raw HTTP download**: ``requests`` streaming the same URLs to files (1 MiB reads, fsync), no
  checks at all: the cost of the transport alone;
* **raw copy**: ``shutil.copyfile`` of the served files plus fsync: the cost of writing the bytes.

What install adds over the raw download is the price of verification. The ratio is given twice:
from each method's best round, and as the median over rounds of the ratio within each round
(steadier when other work shares the machine).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote, urlparse

import requests
from _common import row, write_result
from bench_verify import parse_size

from pennello.config import Config
from pennello.installer.fetchers import FetchOptions
from pennello.installer.install import Installer
from pennello.installer.keys import generate_key, load_private_key, sign_signed
from pennello.installer.manifest import FileEntry, Manifest, PipelineSpec, Source, dump_envelope
from pennello.installer.store import file_sha256, remove_tree
from pennello.paths import get_paths

MODEL = "bench-download"
CHUNK = 1024 * 1024


def make_files(root: Path, total: int, count: int) -> list[Path]:
    """``count`` files of random bytes, ``total`` bytes in all, under ``root/MODEL/``."""
    files = []
    block = os.urandom(16 * 1024**2)
    for number in range(count):
        size = total // count + (total % count if number == count - 1 else 0)
        path = root / MODEL / f"part-{number:02d}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            left = size
            while left:  # a fresh offset into the block per file, so no two files are alike
                start = (number * 4099) % (len(block) - 1)
                chunk = block[start:start + min(left, len(block) - start)]
                f.write(chunk)
                left -= len(chunk)
        files.append(path)
    return files


def serve(root: Path) -> tuple[ThreadingHTTPServer, str]:
    """A threaded HTTP server on 127.0.0.1 serving the files under ``root`` with sendfile."""
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            relative = unquote(urlparse(self.path).path).lstrip("/")
            path = (root / relative).resolve()
            if root.resolve() not in path.parents or not path.is_file():
                self.send_error(404)
                return
            with open(path, "rb") as f:
                self.send_response(200)
                self.send_header("Content-Length", str(os.fstat(f.fileno()).st_size))
                self.end_headers()
                self.connection.sendfile(f)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def signed_manifest(home: Path, url: str, files: list[Path]) -> bytes:
    """A manifest for ``files`` at the mirror, signed by a key made (and trusted) in ``home``."""
    paths = get_paths(home).ensure()
    generate_key(paths, "bench")
    entries = tuple(FileEntry(f.name, file_sha256(f), f.stat().st_size) for f in files)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    manifest = Manifest(MODEL, 1, now, now + timedelta(days=1), PipelineSpec("StableDiffusionPipeline", "sd"),
                        "Apache-2.0", Source("mirror", base_url=f"{url}/{MODEL}"), entries)
    signed = manifest.to_signed()
    return dump_envelope(signed, [sign_signed(signed, load_private_key("bench", paths))])


def forget_install(home: Path) -> None:
    """Leave ``home`` with only its key: no store, no versions seen (untimed, before each install)."""
    paths = get_paths(home)
    for directory in (paths.store_dir, paths.state_dir, paths.downloads_dir):
        if directory.exists():
            remove_tree(directory)


def install(home: Path, raw: bytes, parallel_files: int = FetchOptions.parallel_files) -> None:
    """A full ``pennello install`` of the manifest into ``home``, ``parallel_files`` at once."""
    paths = get_paths(home).ensure()
    options = FetchOptions(downloads_dir=paths.downloads_dir, parallel_files=parallel_files)
    Installer(paths, Config(), options=options, progress=False).install_raw(raw)


def raw_download(url: str, files: list[Path], dest: Path) -> None:
    session = requests.Session()
    for f in files:
        with session.get(f"{url}/{MODEL}/{f.name}", stream=True, timeout=60) as response, \
                open(dest / f.name, "wb") as out:
            response.raise_for_status()
            for chunk in response.iter_content(CHUNK):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())


def raw_copy(files: list[Path], dest: Path) -> None:
    for f in files:
        shutil.copyfile(f, dest / f.name)
        with open(dest / f.name, "rb+") as out:
            os.fsync(out.fileno())


Method = tuple[Callable[[], None], Callable[[], None]]  # (untimed preparation, timed work)


def timed(methods: dict[str, Method], rounds: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds of each round of each method, interleaved: (wall clock, this process's CPU time).

    The CPU time counts every thread of the process (the server's too, the same for every
    method): unlike the wall clock, it hardly depends on what else the machine is running.
    """
    wall: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, (prepare, work) in methods.items():
            prepare()
            start, start_cpu = time.perf_counter(), time.process_time()
            work()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=256 * 1024**2, help="bytes in all (default 256M)")
    parser.add_argument("--files", type=int, default=8, help="number of files (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per method (best counts)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="pennello-bench-download."))
    server = None
    try:
        files = make_files(work / "mirror", args.size, args.files)
        server, url = serve(work / "mirror")
        raw = signed_manifest(work / "home", url, files)
        out = work / "out"

        def empty_out() -> None:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()

        samples, cpu = timed({"install": (lambda: forget_install(work / "home"), lambda: install(work / "home", raw)),
                         "install, one file at a time": (lambda: forget_install(work / "home"),
                                                         lambda: install(work / "home", raw, parallel_files=1)),
                         "raw HTTP download": (empty_out, lambda: raw_download(url, files, out)),
                         "raw copy": (empty_out, lambda: raw_copy(files, out))}, args.rounds)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        remove_tree(work)

    mb_s = {name: args.size / min(times) / 1e6 for name, times in samples.items()}
    label = f"{args.size / 1024**2:g} MiB in {args.files} files"
    rows = [
        row(f"install from 127.0.0.1 mirror, {label}", mb_s["install"], "MB/s", "verified: sha256 + signature"),
        row(f"install one file at a time, {label}", mb_s["install, one file at a time"], "MB/s",
            "verified, parallel_files=1"),
        row(f"raw HTTP download, {label}", mb_s["raw HTTP download"], "MB/s", "no checks"),
        row(f"raw copy + fsync, {label}", mb_s["raw copy"], "MB/s", "disk only"),
        row("install / raw HTTP download", mb_s["install"] / mb_s["raw HTTP download"], "x", ">= 0.8x"),
        row("install one file at a time / raw HTTP download",
            mb_s["install, one file at a time"] / mb_s["raw HTTP download"], "x"),
        row("install / raw copy", mb_s["install"] / mb_s["raw copy"], "x"),
        # Within a round the install and the raw download run moments apart: on a loaded machine
        # the ratio within each round, at its median, swings less than that of two best rounds.
        row("install / raw HTTP download, median of paired rounds", statistics.median(
            raw / mine for raw, mine in zip(samples["raw HTTP download"], samples["install"])), "x", ">= 0.8x"),
        row("install CPU time / raw HTTP download CPU time, median", statistics.median(cpu["install"])
            / statistics.median(cpu["raw HTTP download"]), "x", "what verifying costs the processor"),
    ]
    for r in rows:
        print(f"{r['metric']:60} {r['value']:>10.2f} {r['unit']}")
    # The machine's load while it ran: absolute MB/s on a shared machine mean little without it;
    # the ratios, from interleaved rounds, hold up better.
    write_result("download-cpu", rows, size_bytes=args.size, files=args.files, rounds=args.rounds,
                 load_average=[round(x, 2) for x in os.getloadavg()],
                 seconds={name: [round(t, 4) for t in times] for name, times in samples.items()},
                 cpu_seconds={name: [round(t, 4) for t in times] for name, times in cpu.items()})
    return {"mb_s": mb_s, "samples": samples, "cpu": cpu}


if __name__ == "__main__":
    main()
