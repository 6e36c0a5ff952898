"""Installing models: verify the manifest, fetch and verify every file, then switch versions.

The order is what makes an install safe:

1. the envelope is verified by the trust policy (signatures, threshold, expiry, rollback);
2. every file the store lacks is fetched into ``store/tmp/`` (a few files at once, see
   ``FetchOptions.parallel_files``), hashed as it is written, and checked against the manifest
   (size and sha256) before it becomes a blob; if any file fails, the others stop where they
   are (their partial downloads kept), the blobs this run added are set aside as complete
   partial downloads, so the store is left exactly as it was and the next attempt downloads
   none of them again;
3. the version directory is built from blobs in ``store/staging/`` and renamed into place;
4. ``current`` is switched, older versions and unreferenced blobs go, and only then is the
   version recorded as seen (so a failed install never blocks a retry of the same version).

A manifest that pins a Hub commit but lists no files (the shipped catalog's entries) gets its
file list from that commit's own git objects (``signed commit``, see
:mod:`pennello.installer.gitpin`): the commit id is signed, and every hash follows from it.
Where the source cannot serve those objects, the hashes can only be recorded as the files first
arrive (``first fetch``), and only if the ``first_fetch`` callback agrees (the command asks).

Before step 2 a caller can ask what it would download (:meth:`Installer.downloads`): the
``pennello install`` command asks the user first when that is over
``[installer] confirm_over_mb``. Files already in the store and files copied from this machine
(the embedded model, ``--from DIR``) do not count.

    >>> from pennello.config import load_config
    >>> from pennello.paths import get_paths
    >>> installer = Installer(get_paths().ensure(), load_config())
    >>> installer.install("pennello-tiny").path.name  # doctest: +SKIP
    'v2'
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from pennello.config import Config
from pennello.errors import (CommitObjectsUnavailable, DiskSpaceError, FetchError, IntegrityError, ModelNotFoundError,
                             TrustError)
from pennello.installer.catalog import Catalog
from pennello.installer.manifest import FileEntry, Manifest, Source
from pennello.installer.fetchers import FetchOptions, Fetcher, fetcher_for
from pennello.installer.store import FIRST_FETCH, SIGNED_COMMIT, SIGNED_HASHES, FileList, InstalledModel, Store
from pennello.installer.trust import TrustPolicy
from pennello.paths import Paths

log = logging.getLogger(__name__)


class _Stopped(Exception):
    """Another file of the same install failed: this download stops, keeping its partial."""


@dataclass(frozen=True)
class Verified:
    """A manifest the trust policy accepted, with its exact bytes and where its files come from."""

    manifest: Manifest
    raw: bytes
    fetcher: Fetcher
    files: FileList  # the manifest's own list, or the one derived from its signed commit
    contents: dict[str, bytes] = field(default_factory=dict)  # sha256 -> bytes that came with the commit


@dataclass(frozen=True)
class Downloads:
    """What installing some manifests would fetch over the network, before anything is fetched."""

    size: int  # bytes, files already in the store left out
    files: int
    models: tuple[str, ...]  # "name vN" of each model that downloads something
    paths: tuple[tuple[str, int], ...] = ()  # (path in its model, bytes) of each file, largest first


def _need(store: Store, verified: list[Verified]) -> dict[str, tuple[FileEntry, Verified]]:
    """Every file the store lacks, once per sha256, with the manifest that brings it."""
    missing: dict[str, tuple[FileEntry, Verified]] = {}
    for v in verified:
        for entry in v.files.files:
            if entry.sha256 not in missing and not store.has_blob(entry):
                missing[entry.sha256] = (entry, v)
    return missing


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def check_disk_space(directory: Path, needed: int, what: str) -> None:
    """Raise DiskSpaceError unless ``directory``'s file system has ``needed`` bytes free."""
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise DiskSpaceError(f"{what} needs {format_bytes(needed)} of free disk in {directory}, but only "
                             f"{format_bytes(free)} is free; free some space and try again")


class Installer:
    """Installs, repairs and updates models in one pennello home."""

    def __init__(self, paths: Paths, config: Config, policy: TrustPolicy | None = None,
                 options: FetchOptions | None = None, progress: bool = True,
                 first_fetch: Callable[[str, str], None] | None = None,
                 on_bytes: Callable[[int], None] | None = None) -> None:
        """``first_fetch(model, why)`` is asked before hashes are recorded on first fetch (it
        raises ConsentError to refuse); without it such an install is refused. ``on_bytes(n)`` is
        told of every chunk that arrives (``pennello install --json`` reports progress from it)."""
        self.paths, self.config = paths, config
        self.policy = policy or TrustPolicy.load(paths, config.trust)
        self.store = Store(paths)
        self.options = options or FetchOptions(downloads_dir=paths.downloads_dir,
                                               max_file_bytes=config.trust.max_file_bytes)
        self.progress = progress
        self.first_fetch = first_fetch
        self.on_bytes = on_bytes

    def install(self, name: str) -> InstalledModel:
        """Install (or repair, or update to) the catalog's version of ``name``."""
        return self.install_raw(Catalog(self.paths).get(name).raw, expected_name=name)

    def install_raw(self, raw: bytes, expected_name: str | None = None,
                    local_dir: Path | None = None) -> InstalledModel:
        """Install the model a signed envelope describes.

        Args:
            expected_name: refuse a manifest for any other model (what the user asked for).
            local_dir: take the files from this directory instead of the manifest's source.

        Raises:
            TrustError: the manifest is refused (see the message for which check failed).
            FetchError, IntegrityError, DiskSpaceError: a file could not be had intact.
        """
        return self.install_all([self.verify(raw, expected_name, local_dir)])[0]

    def verify(self, raw: bytes, expected_name: str | None = None,
               local_dir: Path | None = None) -> Verified:
        """Check a manifest with the trust policy and pick the fetcher for its files.

        Raises:
            TrustError: refused by the policy, for another model than asked, or unlocked and
                pinning no commit.
            FetchError, IntegrityError: an unlocked manifest's commit could not be read, or its
                objects do not hash to the signed id.
            ConsentError: hashes could only be recorded on first fetch, and that was refused.
        """
        manifest = self.policy.verify(raw)
        if expected_name is not None and manifest.name != expected_name:
            raise TrustError(f"manifest is for model {manifest.name!r}, not {expected_name!r}; refused")
        if local_dir is None:
            fetcher = fetcher_for(manifest.source, manifest.name, self.options)
        else:
            fetcher = fetcher_for(Source("local"), manifest.name, replace(self.options, local_dir=local_dir))
        return Verified(manifest, raw, fetcher, *self._file_list(manifest, fetcher))

    def _file_list(self, manifest: Manifest, fetcher: Fetcher) -> tuple[FileList, dict[str, bytes]]:
        """The files to install, and the bytes of those that came with the commit's objects."""
        if manifest.locked:  # locked on some machine from what arrived there: first fetch, not the maker's
            return FileList(manifest.files, FIRST_FETCH if manifest.trust_on_first_use else SIGNED_HASHES), {}
        if self._is_current(manifest):  # installed already: its list was derived then
            return self.store.file_list(self.store.get(manifest.name).path), {}
        # Only here: `pennello serve` imports this module, and must never load code that fetches.
        from pennello.installer.lock import default_files, fetch_and_record, pipeline_files

        label = f"{manifest.name} v{manifest.version}"
        try:
            # A source without a revision (a mirror) says it needs a lock.
            derived = fetcher.commit_files(pipeline_files, manifest.source.revision or "")
            return FileList(derived.files, SIGNED_COMMIT, derived.objects), derived.contents
        except CommitObjectsUnavailable as e:
            if self.first_fetch is None:
                raise FetchError(f"{label}: {e}; its file hashes cannot be derived from the signed commit, "
                                 f"and recording them on first fetch needs your consent "
                                 f"(`pennello install {manifest.name}` asks)") from e
            self.first_fetch(label, str(e))
        wanted = default_files(fetcher, manifest.source.kind)
        entries = fetch_and_record(self.store, fetcher, wanted, manifest.name, self.progress)
        return FileList(tuple(entries), FIRST_FETCH), {}

    def downloads(self, verified: list[Verified]) -> Downloads:
        """What :meth:`install_all` would download for ``verified``: nothing is fetched or changed."""
        todo = [v for v in verified if not self._is_current(v.manifest)]
        remote = [(entry, v) for entry, v in _need(self.store, todo).values()
                  if v.fetcher.remote and entry.sha256 not in v.contents]
        models = dict.fromkeys(f"{v.manifest.name} v{v.manifest.version}" for _, v in remote)
        largest = sorted(((entry.path, entry.size) for entry, _ in remote), key=lambda p: -p[1])
        return Downloads(sum(entry.size for entry, _ in remote), len(remote), tuple(models), tuple(largest))

    def install_all(self, verified: list[Verified]) -> list[InstalledModel]:
        """Fetch every file of every manifest, then make each version current.

        No model changes unless every file of every manifest arrived intact.
        """
        with self.store.lock():
            self.store.clean_work_areas()
            todo = [v for v in verified if not self._is_current(v.manifest)]
            for v in verified:
                if v not in todo:
                    log.info("%s v%d is already installed", v.manifest.name, v.manifest.version)
            start = time.perf_counter()
            self._fetch_missing(todo)
            log.debug("fetched files of %d model(s) in %.3fs", len(todo), time.perf_counter() - start)
            for v in todo:
                self.store.commit_version(v.manifest, v.raw, v.files)
            self.store.collect_garbage()  # after every commit: blobs of later models are not yet referenced
        for v in todo:
            self.policy.record(v.manifest)
        return [self.store.get(v.manifest.name) for v in verified]

    def _is_current(self, manifest: Manifest) -> bool:
        try:
            return self.store.get(manifest.name).digest == manifest.digest
        except (ModelNotFoundError, IntegrityError):
            return False

    def _fetch_missing(self, verified: list[Verified]) -> None:
        """Fetch every file the store lacks into a blob; if any fails, the store is left as it was."""
        missing = _need(self.store, verified)
        needed = sum(entry.size for entry, _ in missing.values())
        names = ", ".join(f"{v.manifest.name} v{v.manifest.version}" for v in verified)
        check_disk_space(self.store.root, needed, f"installing {names}")
        arrived: list[Path] = []
        try:
            with tqdm(total=needed, unit="B", unit_scale=True, desc=names[:40] or "install",
                      disable=None if self.progress else True) as bar:
                def advance(n: int) -> None:
                    bar.update(n)
                    if self.on_bytes is not None:
                        self.on_bytes(n)

                self._fetch_in_parallel(list(missing.values()), advance, arrived)
        except BaseException:
            self._set_aside(arrived)
            raise

    def _fetch_in_parallel(self, todo: list[tuple[FileEntry, Verified]], update: Callable[[int], None],
                           arrived: list[Path]) -> None:
        """Fetch ``todo`` into blobs, ``options.parallel_files`` at a time, adding each blob to
        ``arrived``; the first failure stops the others where they are (their partial downloads
        are kept for the next attempt) and is raised once every one of them has stopped."""
        stop, lock = threading.Event(), threading.Lock()

        def progress(n: int) -> None:
            if stop.is_set():
                raise _Stopped("another file of this install failed")
            with lock:  # tqdm's counter is not thread-safe
                update(n)

        def one(entry: FileEntry, v: Verified) -> Path:
            with self.store.temp_file(entry.path) as temp:
                return self.store.ingest(temp, entry, self._fetch(v, entry, temp, progress))

        with ThreadPoolExecutor(max(1, self.options.parallel_files), thread_name_prefix="fetch") as pool:
            futures = [pool.submit(one, entry, v) for entry, v in todo]
            try:
                for future in as_completed(futures):
                    future.result()  # the first failure (or Ctrl-C while waiting) ends the wait
            finally:
                stop.set()
                for future in futures:
                    future.cancel()
                wait(futures)
                arrived.extend(f.result() for f in futures if not f.cancelled() and f.exception() is None)

    def _fetch(self, v: Verified, entry: FileEntry, temp: Path, progress: Callable[[int], None]) -> str:
        """Put ``entry``'s bytes in ``temp``; their sha256. Files that came with the commit's
        objects are written from there: never downloaded twice."""
        content = v.contents.get(entry.sha256)
        if content is None:
            return v.fetcher.fetch(entry, temp, progress)
        (self.options.downloads_dir / f"{entry.sha256}.part").unlink(missing_ok=True)  # set aside earlier
        temp.write_bytes(content)
        progress(len(content))
        return hashlib.sha256(content).hexdigest()

    def _set_aside(self, blobs: list[Path]) -> None:
        """Move the blobs of a failed install to the partial downloads: the store is as it was,
        and the next attempt finds them complete there, checks them again and downloads nothing."""
        self.options.downloads_dir.mkdir(parents=True, exist_ok=True)
        for blob in blobs:
            os.chmod(blob, 0o600)
            os.replace(blob, self.options.downloads_dir / f"{blob.name}.part")
        self.store.clean_work_areas()


def ensure_embedded_default(paths: Paths, config: Config) -> InstalledModel:
    """The default model, installed from the package's own files if it is not yet installed.

    Raises:
        ModelNotFoundError: the default model is not installed and is not an embedded one.
        TrustError, IntegrityError: its shipped manifest or files do not verify.
    """
    name = config.engine.default_model
    try:
        return Store(paths).get(name)
    except (ModelNotFoundError, IntegrityError) as e:
        entry = Catalog(paths).get(name)
        if entry.manifest.source.kind != "embedded":
            raise ModelNotFoundError(f"default model {name!r} is not installed and is not shipped "
                                     f"inside pennello; install it with `pennello install {name}`") from e
        log.info("installing the embedded model %s", name)
        return Installer(paths, config, progress=False).install_raw(entry.raw, expected_name=name)
