"""Fixtures for installer tests: tiny fake models, a throwaway signing key, a real HTTP mirror.

The mirror is a threading ``http.server`` on 127.0.0.1 that honours ``Range`` and can be told
to misbehave per path: drop the connection part way, end early without a length, send other
bytes, send data without end, or answer only requests made at the same time as others. It records every request's path and headers.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlparse

import pytest

from pennello.errors import FetchError
from pennello.installer.manifest import FileEntry, Manifest, PipelineSpec, Source, dump_envelope
from pennello.installer.ownwheel import repack

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


def store_listing(paths: Any) -> dict[str, tuple[int, str]]:
    """Every file under the store (but its lock), with its mode, link count and sha256: for
    comparing the store before and after something that must leave it as it was. Empty folders
    do not count: they hold nothing a loader could pick up."""
    root = paths.store_dir
    return {p.relative_to(root).as_posix(): (p.stat().st_mode, p.stat().st_nlink,
                                             hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if not p.is_dir() and p.name != ".lock"}


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return root


@pytest.fixture(scope="session")
def dependency_wheels(tmp_path_factory) -> list[str]:
    """pip find-links (folders) holding a wheel of every installed dependency of pennello, packed
    from this environment, so that ``bundle export --with-wheels`` resolves them with no network;
    torch is left to pip's find-links where they already hold it. Made once: the round trips
    from an editable and from a one-click install both export with it."""
    from packaging.requirements import Requirement

    names, pending = set(), [r for r in importlib.metadata.requires("pennello") or [] if "extra ==" not in r]
    while pending:
        requirement = Requirement(pending.pop())
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = requirement.name.lower().replace("_", "-")
        if name not in names:
            names.add(name)
            pending += importlib.metadata.requires(name) or []
    find_links = os.environ.get("PIP_FIND_LINKS", "").split()
    torch_wheel = f"torch-{importlib.metadata.version('torch')}-"
    have_torch = any(p.name.startswith(torch_wheel) for d in find_links if Path(d).is_dir() for p in Path(d).iterdir())
    dest = tmp_path_factory.mktemp("dependency-wheels")
    for name in sorted(names - ({"torch"} if have_torch else set())):
        dist = importlib.metadata.distribution(name)
        try:
            repack(dist, dest)
        except FetchError:  # a file changed since install: some machines patch certifi's CA bundle
            repack(_WithoutRecordedHashes(dist), dest)
    return [str(dest), *find_links]


class _WithoutRecordedHashes(importlib.metadata.PathDistribution):
    """An installed distribution whose ``RECORD`` is read without its hashes, so that it is packed
    as its files are now (the wheel gets a fresh ``RECORD``); for the tests' dependency wheels only."""

    def __init__(self, dist: importlib.metadata.Distribution) -> None:
        record = next(f for f in dist.files or [] if f.name == "RECORD" and f.parent.name.endswith(".dist-info"))
        super().__init__(Path(dist.locate_file(record)).parent)

    def read_text(self, filename: str) -> str | None:
        text = super().read_text(filename)
        return re.sub(r",sha256=[^,]*,", ",,", text) if filename == "RECORD" and text else text


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
    no_range: set[str] = field(default_factory=set)  # paths always sent whole, Range or not
    pace: dict[str, float] = field(default_factory=dict)  # path -> seconds to wait per 64 KiB sent
    # Paths answered only once every one of them is being asked for at the same time (503 after
    # 5 s of waiting): a client fetching them one after another never gets them.
    together: set[str] = field(default_factory=set)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._waiting: dict[frozenset[str], threading.Barrier] = {}
        self._lock = threading.Lock()

    def wait_for_the_others(self) -> bool:
        """Block until every path of ``together`` is being asked for; False after 5 s without."""
        with self._lock:
            barrier = self._waiting.setdefault(frozenset(self.together),
                                               threading.Barrier(len(self.together), timeout=5))
        try:
            barrier.wait()
            return True
        except threading.BrokenBarrierError:
            return False

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
            if path in mirror.together and not mirror.wait_for_the_others():
                self.send_error(503, "the other files were not asked for at the same time")
                return None
            data = mirror.substitute.get(path, mirror.files.get(path))
            if data is None:
                self.send_error(404)
                return None
            ranged = "Range" in self.headers and path not in mirror.no_range
            start = int(self.headers["Range"][len("bytes="):].split("-")[0]) if ranged else 0
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
            body = body if cut is None else body[:cut]
            step = 65536 if path in mirror.pace else max(len(body), 1)
            try:
                for at in range(0, len(body), step):
                    time.sleep(mirror.pace.get(path, 0))
                    self.wfile.write(body[at:at + step])
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading (a cancelled install)
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
    with _serving(server, state):
        yield state


@contextlib.contextmanager
def _serving(server: Any, state: Any) -> Iterator[None]:
    """Run ``server`` on a thread while the block runs; ``state.url`` is where it listens."""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield
    finally:
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



# --- a stand-in Hugging Face Hub: git smart HTTP (dulwich) plus the file routes --------------------

LFS_RULE = b" filter=lfs diff=lfs merge=lfs -text\n"


def lfs_pointer_for(data: bytes) -> bytes:
    """The Git LFS pointer a repository stores in place of ``data``."""
    return (b"version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize %d\n"
            % (hashlib.sha256(data).hexdigest().encode(), len(data)))


def git_commit(repo: Any, files: dict[str, bytes], lfs: set[str], pointers: dict[str, bytes] | None = None) -> str:
    """Commit ``files`` to a dulwich repository, ``lfs`` paths as LFS pointers; the commit id.

    ``pointers`` replaces the pointer of some LFS paths (one that lies about the file).
    """
    from dulwich.index import commit_tree
    from dulwich.objects import Blob, Commit

    pointers = pointers or {}
    blobs = [(".gitattributes", b"".join(path.encode() + LFS_RULE for path in sorted(lfs)))]
    blobs += [(path, pointers.get(path) or lfs_pointer_for(data) if path in lfs else data)
              for path, data in files.items()]
    entries = []
    for path, content in blobs:
        blob = Blob.from_string(content)
        repo.object_store.add_object(blob)
        entries.append((path.encode(), blob.id, 0o100644))
    commit = Commit()
    commit.tree = commit_tree(repo.object_store, entries)
    commit.author = commit.committer = b"Publisher <publisher@example.invalid>"
    commit.commit_time = commit.author_time = 1_700_000_000
    commit.commit_timezone = commit.author_timezone = 0
    commit.message = b"weights\n"
    repo.object_store.add_object(commit)
    repo.refs[b"refs/heads/main"] = commit.id
    return commit.id.decode()


@dataclass
class Hub:
    """What the stand-in Hub serves: git repositories by ``owner/name`` and files by URL path."""

    url: str = ""
    repos: dict[str, Any] = field(default_factory=dict)  # "acme/tiny" -> dulwich MemoryRepo
    files: dict[str, bytes] = field(default_factory=dict)  # "acme/tiny/resolve/<rev>/<path>" -> bytes
    redirects: dict[str, str] = field(default_factory=dict)  # path -> URL answered with a 302
    drop_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before dropping (once)
    requests: list[str] = field(default_factory=list)  # paths of file requests
    git_auth: list[str | None] = field(default_factory=list)  # Authorization of each git request

    def publish(self, repo_id: str, files: dict[str, bytes], lfs: set[str],
                pointers: dict[str, bytes] | None = None) -> str:
        """A repository holding ``files`` at a new commit, served over git and ``resolve``
        (``pointers``: LFS pointers that lie, see :func:`git_commit`)."""
        from dulwich.repo import MemoryRepo

        repo = self.repos.setdefault(repo_id, MemoryRepo())
        commit = git_commit(repo, files, lfs, pointers)
        for path, data in files.items():
            self.files[f"{repo_id}/resolve/{commit}/{path}"] = data
        return commit

    def replace_object(self, repo_id: str, object_id: str, other: Any) -> None:
        """Serve ``other`` where ``object_id`` is asked for: objects that do not hash to their id."""
        self.repos[repo_id].object_store._data[object_id.encode()] = other

    def app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        """The file routes (WSGI), with ``Range`` for resumed downloads."""
        path = unquote(environ["PATH_INFO"]).lstrip("/")
        self.requests.append(path)
        if path in self.redirects:  # as the Hub sends LFS files to its CDN
            start_response("302 Found", [("Location", self.redirects[path]), ("Content-Length", "0")])
            return [b""]
        data = self.files.get(path)
        if data is None:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        start = int(environ.get("HTTP_RANGE", "bytes=0-")[len("bytes="):].split("-")[0] or 0)
        headers = [("Content-Length", str(len(data) - start))]
        if start:
            headers.append(("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}"))
        start_response("206 Partial Content" if start else "200 OK", headers)
        cut = self.drop_after.pop(path, None)
        return [data[start:]] if cut is None else _dropped(data[start:start + cut])


def _dropped(sent: bytes) -> Iterator[bytes]:
    """A body that ends, short of its Content-Length, with the connection dropped."""
    yield sent
    raise ConnectionAbortedError("the stand-in Hub drops the connection")


@pytest.fixture
def hub() -> Iterator[Hub]:
    """A real WSGI server on 127.0.0.1: dulwich's git smart HTTP for ``hub.repos``, files otherwise."""
    with serve_hub() as state:
        yield state


@contextlib.contextmanager
def serve_hub(state: Hub | None = None) -> Iterator[Hub]:
    """The stand-in Hub of the ``hub`` fixture, serving ``state`` (a new one by default) while the
    block runs: a test can stop a Hub and serve the same repositories again at another port."""
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIServer, make_server

    from dulwich.errors import NotGitRepository
    from dulwich.server import Backend
    from dulwich.web import WSGIRequestHandlerLogger, make_wsgi_chain

    class Repos(Backend):
        def open_repository(self, path: str | bytes) -> Any:
            name = (path.decode() if isinstance(path, bytes) else path).strip("/").removesuffix(".git")
            repo = state.repos.get(name)
            if repo is None:
                raise NotGitRepository(f"no git repository at {path}")
            return repo

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    state = state or Hub()
    chain = make_wsgi_chain(Repos(), fallback_app=state.app)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if "/info/refs" in environ["PATH_INFO"] or environ["PATH_INFO"].endswith("/git-upload-pack"):
            state.git_auth.append(environ.get("HTTP_AUTHORIZATION"))
        return chain(environ, start_response)

    server = make_server("127.0.0.1", 0, app,
                         server_class=Server, handler_class=WSGIRequestHandlerLogger)
    with _serving(server, state):
        yield state

