"""The fetchers that download: HTTP(S) mirrors and the Hugging Face Hub.

They register with the registry of :mod:`pennello.installer.fetchers`, which imports this
module the first time a source needs a fetcher it does not have (a mirror or the Hub), so
nothing that merely reads the store or installs from this machine loads it. Each download is resumable and never reads more
than the manifest's size (a server sending endless data is cut off and refused).

============  ================================================================================
kind          where the bytes come from
============  ================================================================================
mirror        ``base_url + "/" + path`` over HTTP(S); partial downloads are kept in
              ``paths.downloads_dir`` and resumed with a Range request
huggingface   the Hub's ``resolve`` URL of the pinned commit (``HF_ENDPOINT`` is honoured),
              downloaded by the same resumable, size-capped HTTP code as a mirror
============  ================================================================================

Unlocked manifests (no file list yet, see ``pennello manifest lock``) list their files with
:meth:`Fetcher.list_files`: a Hub repository through its API, a mirror through ``index.json``
at ``base_url`` (a JSON list of relative paths).

    >>> from pennello.installer.fetchers import FetchOptions, fetcher_for
    >>> from pennello.installer.manifest import Source
    >>> fetcher = fetcher_for(Source("mirror", base_url="http://10.0.0.5/tiny"), "tiny",
    ...                       FetchOptions(downloads_dir=Path("/tmp/dl")))
    >>> fetcher.url("unet/config.json")
    'http://10.0.0.5/tiny/unet/config.json'
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, TypeVar
from urllib.parse import quote

import requests
import urllib3

from pennello.errors import FetchError, IntegrityError, ManifestFormatError
from pennello.installer import gitpin
from pennello.installer.gitpin import CommitFiles
from pennello.installer.fetchers import CHUNK, FetchOptions, Fetcher, Progress, Select, register_fetcher
from pennello.installer.manifest import FileEntry, Source, check_relative_path

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# huggingface_hub (imported below, lazily) builds its user-agent header with telemetry: the torch
# version and an AI-agent check that asks the Hub for its list of agents. pennello asks the Hub
# for the commit's objects and the files it installs, nothing else; a user may still opt in.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


class _Hashing:
    """A file being written, hashed as it is written: never read back to be checked.

    The store compares the digest with the manifest before the file becomes a blob, as it
    would after hashing the file itself; a download so costs one pass over its bytes, not
    two. sha256 runs on a thread of its own (hashlib lets go of the GIL), overlapping the
    socket reads and disk writes instead of adding to them; a short queue bounds the memory.
    """

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._start()

    def _start(self) -> None:
        self.sha256 = hashlib.sha256()
        self._thread = threading.Thread(target=self._hash, args=(self.sha256,), name="sha256", daemon=True)
        self._thread.start()

    def _hash(self, sha256: Any) -> None:
        while (chunk := self._chunks.get()) is not None:
            sha256.update(chunk)

    def _stop(self) -> None:
        self._chunks.put(None)
        self._thread.join()

    def __enter__(self) -> _Hashing:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def hexdigest(self) -> str:
        """The digest of everything written (call after the ``with`` block)."""
        return self.sha256.hexdigest()

    def take_existing(self) -> None:
        """Hash what the file already holds (a resumed download's earlier part)."""
        self.f.seek(0)
        while block := self.f.read(CHUNK):
            self._chunks.put(block)

    def write(self, chunk: bytes) -> None:
        self.f.write(chunk)
        self._chunks.put(chunk)

    def restart(self) -> None:
        """Forget everything written: the server sends the whole file again."""
        self._stop()
        self.f.truncate(0)
        self.f.seek(0)
        self._start()


class _Truncated(Exception):
    """The server ended the response early without a protocol error; worth a resumed retry."""


# Body reads go through urllib3 directly, so its errors (dropped connection, read timeout) count too.
_RETRYABLE = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
              urllib3.exceptions.HTTPError, _Truncated)


class HttpFetcher:
    """Resumable, size-capped downloads over HTTP(S). Subclasses say what URL a path has."""

    remote = True

    def __init__(self, options: FetchOptions, headers: dict[str, str] | None = None) -> None:
        self.options = options
        # Identity encoding: the bytes counted and hashed are the file's bytes.
        self.headers = {**(headers or {}), "Accept-Encoding": "identity"}
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        """This thread's session: the installer fetches several files at once, and a
        ``requests.Session`` is not documented as safe to share between threads."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def url(self, path: str) -> str:
        raise NotImplementedError

    def list_files(self) -> list[str]:
        raise NotImplementedError

    def sizes(self, paths: list[str]) -> dict[str, int | None]:
        """Each file's ``Content-Length`` from a HEAD request; None where the server gives none."""
        return {path: self._head_size(path) for path in paths}

    def _head_size(self, path: str) -> int | None:
        try:
            response = self.session.head(self.url(path), headers=self.headers, allow_redirects=True,
                                         timeout=(self.options.connect_timeout_s, self.options.read_timeout_s))
        except requests.RequestException as e:
            log.info("%s: no size (%s)", self.url(path), e)
            return None
        length = response.headers.get("Content-Length", "")
        return int(length) if response.ok and length.isdigit() else None

    def fetch(self, entry: FileEntry, dest: Path, progress: Progress) -> str:
        """Download ``entry`` into ``dest``, hashing it on the way; returns its sha256."""
        # Named by the expected hash: a partial of one file can never be resumed as another.
        partial = self.options.downloads_dir / f"{entry.sha256}.part"
        partial.parent.mkdir(parents=True, exist_ok=True)
        if partial.exists() and partial.stat().st_size <= entry.size:
            progress(partial.stat().st_size)
        try:
            digest = self._with_retries(self.url(entry.path),
                                        lambda url: self._resume(url, partial, entry, progress), partial, entry.size)
        except IntegrityError:
            partial.unlink(missing_ok=True)  # an overlong answer is never worth resuming
            raise
        shutil.move(partial, dest)
        return digest

    def fetch_unknown(self, path: str, dest: Path, progress: Progress) -> str:
        def attempt(url: str) -> str:
            with open(dest, "wb") as f, _Hashing(f) as sink:
                self._stream(url, sink, 0, self.options.max_file_bytes, path, progress, {})
            return sink.hexdigest()
        return self._with_retries(self.url(path), attempt, dest, None)

    def _with_retries(self, url: str, attempt: Callable[[str], _T], partial: Path, size: int | None) -> _T:
        for tries in range(self.options.retries + 1):
            try:
                return attempt(url)
            except _RETRYABLE as e:
                error = e
                log.warning("%s: %s; retrying (%d of %d)", url, e, tries + 1, self.options.retries)
                time.sleep(min(0.2 * 2**tries, 5.0))
        have = partial.stat().st_size if partial.exists() else 0
        of = f" of {size}" if size is not None else ""
        raise FetchError(f"{url}: download failed after {self.options.retries + 1} attempts ({error}); "
                         f"{have}{of} bytes are kept and the next attempt resumes from there")

    def _resume(self, url: str, partial: Path, entry: FileEntry, progress: Progress) -> str:
        """Append the rest of ``entry`` to ``partial``; the sha256 of the whole file."""
        offset = partial.stat().st_size if partial.exists() else 0
        if offset > entry.size:
            partial.unlink()
            offset = 0
        with open(partial, "ab+") as f, _Hashing(f) as sink:
            sink.take_existing()  # the part an earlier attempt left: its bytes count too
            if offset < entry.size:
                headers = {"Range": f"bytes={offset}-"} if offset else {}
                offset = self._stream(url, sink, offset, entry.size, entry.path, progress, headers)
        if offset < entry.size:
            raise _Truncated(f"the server sent {offset} of {entry.size} bytes")
        return sink.hexdigest()

    def _stream(self, url: str, sink: _Hashing, offset: int, limit: int, what: str,
                progress: Progress, headers: dict[str, str]) -> int:
        """Append the response body to ``sink`` (holding ``offset`` bytes); return the new length."""
        timeout = (self.options.connect_timeout_s, self.options.read_timeout_s)
        try:
            response = self.session.get(url, headers={**self.headers, **headers}, stream=True,
                                        timeout=timeout)
        except requests.RequestException as e:
            if isinstance(e, _RETRYABLE):
                raise
            raise FetchError(f"{url}: {e}") from e
        with response:
            start = self._start_offset(response, url, offset, sink)
            if start < offset:
                progress(start - offset)  # those bytes come again: count them once
            offset = start
            announced = response.headers.get("Content-Length")
            if announced and announced.isdigit() and offset + int(announced) > limit:
                raise _endless(url, what, limit, f"the server announces {offset + int(announced)} bytes")
            # read1 hands over whatever arrived, so a dropped connection loses nothing already
            # received; asking for one byte past the limit is enough to know it was exceeded.
            while chunk := response.raw.read1(min(CHUNK, limit + 1 - offset), decode_content=False):
                if offset + len(chunk) > limit:
                    raise _endless(url, what, limit, "the server kept sending")
                sink.write(chunk)
                offset += len(chunk)
                progress(len(chunk))
            sink.f.flush()
            os.fsync(sink.f.fileno())
        return offset

    @staticmethod
    def _start_offset(response: requests.Response, url: str, offset: int, sink: _Hashing) -> int:
        """Check the status; a server that ignored our Range restarts the file from byte 0."""
        if offset and response.status_code == 206 \
                and response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            return offset
        if response.status_code == 200:
            if offset:
                log.info("%s: server ignored the Range request; downloading from the start", url)
                sink.restart()
            return 0
        raise FetchError(f"{url}: HTTP {response.status_code} {response.reason}")


def _endless(url: str, what: str, limit: int, how: str) -> IntegrityError:
    return IntegrityError(f"{url}: {how}, more than the {limit} bytes allowed for {what}; "
                          f"download stopped and refused (endless data)")


class MirrorFetcher(HttpFetcher):
    """An HTTP(S) directory holding the model's files under ``base_url``."""

    def __init__(self, base_url: str, options: FetchOptions, name: str = "") -> None:
        super().__init__(options)
        self.base_url, self.name = base_url.rstrip("/"), name

    def commit_files(self, select: Select, revision: str) -> CommitFiles:
        raise ManifestFormatError(
            f"manifest {self.name!r} is not locked (it pins a mirror but no file hashes, and a mirror "
            f"has no signed commit to derive them from); lock it first: "
            f"`pennello manifest lock {self.name} --key KEYNAME`")

    def url(self, path: str) -> str:
        return f"{self.base_url}/{quote(path)}"

    def list_files(self) -> list[str]:
        url = self.url("index.json")
        try:
            response = self.session.get(url, timeout=(self.options.connect_timeout_s,
                                                      self.options.read_timeout_s))
            response.raise_for_status()
            paths = response.json()
        except (requests.RequestException, ValueError) as e:
            raise FetchError(f"{url}: cannot read the mirror's file list ({e}); an unlocked mirror "
                             f"manifest needs index.json (a JSON list of paths) or --files") from e
        if not isinstance(paths, list):
            raise FetchError(f"{url}: must be a JSON list of relative file paths")
        return [check_relative_path(p) for p in paths]


class HubFetcher(HttpFetcher):
    """A Hugging Face Hub repository at a pinned commit.

    Files are fetched from their ``resolve`` URL by :class:`HttpFetcher` rather than by
    ``hf_hub_download``: one code path then resumes, caps and verifies every download against
    *our* manifest, and a local ``HF_ENDPOINT`` serves tests and offline mirrors of the Hub.
    For an unlocked manifest, :meth:`commit_files` derives the hashes from the commit's git
    objects (:mod:`pennello.installer.gitpin`); the small files' bytes come with those objects,
    and the installer stores them from there rather than downloading them again.
    """

    def __init__(self, repo: str, revision: str, options: FetchOptions) -> None:
        from huggingface_hub import constants
        from huggingface_hub.utils import build_hf_headers

        super().__init__(options, headers=build_hf_headers(library_name="pennello"))
        self.repo, self.revision = repo, revision
        self.endpoint = (options.hub_endpoint or constants.ENDPOINT).rstrip("/")

    def commit_files(self, select: Select, revision: str) -> CommitFiles:
        """Hashes of the selected files, from the pinned commit's git objects on the Hub."""
        where = f"{self.repo}@{revision[:12]}"
        from huggingface_hub import get_token

        store = gitpin.fetch_commit(self.endpoint, self.repo, revision, token=get_token(),
                                    timeout=self.options.read_timeout_s)
        found = gitpin.commit_files(store, revision, where)
        return gitpin.select_files(found, select([f.path for f in found]), gitpin.pack(store),
                                   lambda file: self._blob_over_http(file, where))

    def _blob_over_http(self, file: gitpin.CommitFile, where: str) -> bytes:
        """A blob the git server left out (partial clone), downloaded and checked against its id."""
        temp = self.options.downloads_dir / f"{file.git_id}.blob"
        temp.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.fetch_unknown(file.path, temp, lambda n: None)
            content = temp.read_bytes()
        finally:
            temp.unlink(missing_ok=True)
        actual = gitpin.git_blob_id(content)
        if actual != file.git_id:
            raise IntegrityError(f"{file.path} of {where}: git blob id {actual}, the signed commit says "
                                 f"{file.git_id}; the file was refused")
        return content

    def url(self, path: str) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(self.repo, path, revision=self.revision, endpoint=self.endpoint)

    def list_files(self) -> list[str]:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError

        try:
            paths = HfApi(endpoint=self.endpoint).list_repo_files(self.repo, revision=self.revision)
        except (HfHubHTTPError, OSError) as e:
            raise FetchError(f"cannot list {self.repo}@{self.revision} on {self.endpoint}: {e}") from e
        return [check_relative_path(p) for p in paths]

    def sizes(self, paths: list[str]) -> dict[str, int | None]:
        """Sizes from the Hub's file listing at the pinned commit (one API call)."""
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError

        try:
            tree = HfApi(endpoint=self.endpoint).list_repo_tree(self.repo, revision=self.revision, recursive=True)
            known = {item.path: getattr(item, "size", None) for item in tree}
        except (HfHubHTTPError, OSError) as e:
            log.info("cannot list the sizes of %s@%s: %s", self.repo, self.revision, e)
            known = {}
        return {path: known.get(path) for path in paths}


@register_fetcher("mirror")
def _mirror(source: Source, name: str, options: FetchOptions) -> Fetcher:
    assert source.base_url is not None  # Source.from_dict guarantees it
    return MirrorFetcher(source.base_url, options, name)


@register_fetcher("huggingface")
def _hub(source: Source, name: str, options: FetchOptions) -> Fetcher:
    assert source.repo is not None and source.revision is not None
    return HubFetcher(source.repo, source.revision, options)
