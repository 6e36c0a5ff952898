"""Fixtures for installer tests: tiny fake models, a throwaway signing key, a real HTTP mirror.

The mirror is a threading ``http.server`` on 127.0.0.1 that honours ``Range`` and can be told
to misbehave per path: drop the connection part way, end early without a length, send other
bytes, or send data without end. It records every request's path and headers.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlparse

import pytest

from pennello.installer.manifest import FileEntry, Manifest, PipelineSpec, Source, dump_envelope

KEY_NAME = "test-publisher"
# "pennello-tiny vN" as the shipped catalog has it: the version goes up whenever it is retrained.
TINY_VERSION = "v{}".format(json.loads(
    (Path(__file__).resolve().parents[1] / "manifests" / "pennello-tiny.json").read_bytes())["signed"]["version"])
TINY_LABEL = f"pennello-tiny {TINY_VERSION}"


def entries_for(files: dict[str, bytes]) -> tuple[FileEntry, ...]:
    return tuple(FileEntry(path, hashlib.sha256(data).hexdigest(), len(data))
                 for path, data in sorted(files.items()))


def make_manifest(name: str, files: dict[str, bytes], version: int = 1,
                  source: Source | None = None, locked: bool = True) -> Manifest:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    return Manifest(name=name, version=version, created=now, expires=now + timedelta(days=30),
                    pipeline=PipelineSpec("StableDiffusionPipeline", "sd", {"steps": 1}),
                    license="Apache-2.0", source=source or Source("local"),
                    files=entries_for(files) if locked else (), locked=locked)


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return root


@pytest.fixture
def publish(home):
    """``publish(manifest) -> bytes``: a signed envelope, by a key trusted in ``home``."""
    from pennello.installer.keys import generate_key, load_private_key, sign_signed

    generate_key(home, KEY_NAME)
    key = load_private_key(KEY_NAME, home)

    def sign(manifest: Manifest) -> bytes:
        signed = manifest.to_signed()
        return dump_envelope(signed, [sign_signed(signed, key)])
    return sign


@dataclass
class Mirror:
    """What the HTTP mirror serves and how it misbehaves; ``requests`` logs (path, headers)."""

    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    drop_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before dropping (once)
    short: dict[str, int] = field(default_factory=dict)  # path -> bytes sent, no Content-Length (always)
    substitute: dict[str, bytes] = field(default_factory=dict)  # path -> other bytes served
    endless: set[str] = field(default_factory=set)  # paths answered with data that never ends
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def ranges(self, path: str) -> list[str]:
        return [h["Range"] for p, h in self.requests if p == path and "Range" in h]


def _handler(mirror: Mirror) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = unquote(urlparse(self.path).path).lstrip("/")
            mirror.requests.append((path, dict(self.headers)))
            if path in mirror.endless:
                return self._endless()
            data = mirror.substitute.get(path, mirror.files.get(path))
            if data is None:
                self.send_error(404)
                return None
            start = int(self.headers["Range"][len("bytes="):].split("-")[0]) if "Range" in self.headers else 0
            body = data[start:]
            if path in mirror.short:
                self.send_response(200)
                self.end_headers()
                self.wfile.write(data[:mirror.short[path]])
                return None
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = mirror.drop_after.pop(path, None)
            self.wfile.write(body if cut is None else body[:cut])
            return None

        def _endless(self) -> None:
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(1024):  # 64 MiB at most, so a broken client cannot hang the test
                    self.wfile.write(b"\0" * 65536)
            except (BrokenPipeError, ConnectionResetError):
                pass
    return Handler


@pytest.fixture
def mirror() -> Iterator[Mirror]:
    """A real HTTP server on 127.0.0.1 (ephemeral port) serving ``mirror.files``."""
    state = Mirror()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def load_script(name: str) -> Any:
    """``packaging/<name>.py`` as a module (the scripts there are not part of the package)."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "packaging" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module

