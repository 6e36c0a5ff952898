"""The verified model store: content-addressed blobs, and one directory per installed model version.

Layout under ``paths.store_dir``::

    blobs/sha256/ab/abcdef…        read-only files named by their sha256, shared by every model
    models/<name>/v<version>/      hard links to blobs (copies where linking fails) + manifest.json
                                   (+ pinned-files.json, commit.pack when the manifest lists no files)
    models/<name>/current          "v<version>": the version the daemon loads
    models/<name>/broken           present after ``verify`` found damage: the model does not load
    tmp/  staging/  quarantine/    work areas; nothing in them is ever loaded

Every write goes to ``tmp/`` or ``staging/`` first, is fsynced and checked, and only then
renamed into place, so a crash never leaves a partial or unverified file where a loader looks.
The daemon only reads: :meth:`Store.get` and :meth:`Store.installed`. Hashing, checking,
linking and removing single files is :mod:`pennello.installer.blobs`'s.

Every installed version records how its files were verified (:attr:`InstalledModel.verification`,
shown by ``pennello models``, ``pennello verify`` and ``GET /api/models``): ``signed hashes``
(the signed manifest lists each file's sha256), ``signed commit`` (the manifest pins a commit
and lists no files: the hashes were derived from the commit's git objects, kept as
``commit.pack`` for bundles) or ``first fetch`` (recorded as the files first arrived, with
consent, or a manifest locked on this machine). Any but the first is written, with the file
list, to ``pinned-files.json``; the manifest itself stays byte for byte as signed.

    >>> from pennello.paths import get_paths
    >>> store = Store(get_paths())
    >>> [m.name for m in store.installed()]  # doctest: +SKIP
    ['pennello-tiny']
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from filelock import FileLock
from tqdm import tqdm

from pennello.errors import IntegrityError, ManifestFormatError, ModelNotFoundError, StoreError
from pennello.files import fsync_dir, write_atomic
from pennello.installer.blobs import READ_ONLY, check_file, file_sha256, link_or_copy, remove_tree, unique_path
from pennello.installer.manifest import MANIFEST_FILENAME, FileEntry, Manifest, is_model_name, parse_envelope
from pennello.paths import Paths

log = logging.getLogger(__name__)
# file_sha256, check_file and remove_tree are the store's public helpers too (bundles, locks, benches).
__all__ = ["Store", "InstalledModel", "FileList", "FileProblem", "file_sha256", "check_file", "remove_tree",
           "SIGNED_HASHES", "SIGNED_COMMIT", "FIRST_FETCH", "VERIFICATIONS", "PINNED_FILE", "COMMIT_PACK"]

CURRENT_FILE = "current"
PINNED_FILE = "pinned-files.json"
COMMIT_PACK = "commit.pack"  # the signed commit's git objects the hashes were derived from
SIGNED_HASHES, SIGNED_COMMIT, FIRST_FETCH = "signed hashes", "signed commit", "first fetch"
VERIFICATIONS = (SIGNED_HASHES, SIGNED_COMMIT, FIRST_FETCH)  # strongest first
BROKEN_FILE = "broken"
VERIFIED_FILE = "verified"
_HASH_WORKERS = min(4, os.cpu_count() or 1)  # hashlib releases the GIL: files hash in parallel


@dataclass(frozen=True)
class InstalledModel:
    """One verified, loadable model version: ``from_pretrained(path, local_files_only=True)``."""

    name: str
    version: int
    path: Path
    manifest: Manifest
    digest: str  # the manifest's digest: names exactly these files
    verification: str = SIGNED_HASHES  # how the files' hashes are known: one of VERIFICATIONS


@dataclass(frozen=True)
class FileList:
    """The files a version is built from, and how their hashes are known (``SIGNED_HASHES``…)."""

    files: tuple[FileEntry, ...]
    how: str = SIGNED_HASHES
    objects: bytes = b""  # SIGNED_COMMIT: the commit's git objects as a pack (kept as COMMIT_PACK)


@dataclass(frozen=True)
class FileProblem:
    """A file of an installed model that is missing or does not match its manifest entry."""

    model: str
    path: str
    problem: str  # "missing", or what differs

    def __str__(self) -> str:
        return f"{self.model}: {self.path}: {self.problem}"


class Store:
    """The model store of one pennello home. Reads are lock-free; changes hold ``store/.lock``."""

    def __init__(self, paths: Paths) -> None:
        self.root = paths.store_dir
        self.blobs_dir = self.root / "blobs" / "sha256"
        self.models_dir = self.root / "models"
        self.tmp_dir = self.root / "tmp"
        self.staging_dir = self.root / "staging"
        self.quarantine_dir = self.root / "quarantine"

    # --- reading (the daemon's API) ----------------------------------------------------------------

    def installed(self) -> list[InstalledModel]:
        """Every model with a current, unbroken version, sorted by name."""
        found = []
        for name in self.names():
            with contextlib.suppress(StoreError):
                found.append(self.get(name))
        return found

    def names(self) -> list[str]:
        """Names of models that have a ``current`` version, broken or not."""
        if not self.models_dir.is_dir():
            return []
        return sorted(d.name for d in self.models_dir.iterdir() if (d / CURRENT_FILE).is_file())

    def get(self, name: str, verify: bool = False) -> InstalledModel:
        """The current version of an installed model.

        Args:
            verify: re-hash every file first (see :meth:`verify`).

        Raises:
            ModelNotFoundError: no such model is installed.
            IntegrityError: ``pennello verify`` found it damaged (or ``verify`` finds it now).
        """
        version_dir, manifest = self.current(name)
        signed = self._signed(version_dir)  # its digest is what the trust policy records
        if self.is_broken(name):
            raise IntegrityError(f"model {name!r} is damaged and will not load "
                                 f"({'; '.join(self.damage(name))}); repair it with `pennello install {name}`")
        if verify:
            self.verify([name], progress=False)
        return InstalledModel(name, manifest.version, version_dir, manifest, signed.digest,
                              self.file_list(version_dir, signed).how)

    def file_list(self, version_dir: Path, signed: Manifest | None = None) -> FileList:
        """How the files of an installed version were verified (see the module docstring)."""
        try:
            data = json.loads((version_dir / PINNED_FILE).read_bytes())
            if data["how"] not in VERIFICATIONS:
                raise ValueError(f"unknown verification {data['how']!r}")
            return FileList(tuple(FileEntry.from_dict(f) for f in data["files"]), data["how"])
        except FileNotFoundError:
            signed = signed or self._signed(version_dir)
            # Locked on this machine before the kind was recorded: its own flag says first fetch.
            return FileList(signed.files, FIRST_FETCH if signed.trust_on_first_use else SIGNED_HASHES)
        except (ValueError, KeyError, TypeError, ManifestFormatError) as e:
            raise IntegrityError(f"{version_dir / PINNED_FILE} is damaged ({e}); repair the model with "
                                 f"`pennello install {version_dir.parent.name}`") from e

    def raw_manifest(self, name: str) -> bytes:
        """The signed envelope of the current version, exactly as it was received."""
        return (self.get(name).path / MANIFEST_FILENAME).read_bytes()

    def is_broken(self, name: str) -> bool:
        return (self.models_dir / name / BROKEN_FILE).exists()

    def damage(self, name: str) -> list[str]:
        """What ``verify`` found wrong with a broken model ("path: problem" each); [] if nothing."""
        try:
            return (self.models_dir / name / BROKEN_FILE).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []

    def last_verified(self, name: str) -> str | None:
        """When ``verify`` last found every file of the current version intact (UTC), if ever."""
        try:
            return (self.models_dir / name / VERIFIED_FILE).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None

    # --- blobs -----------------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        return self.blobs_dir / sha256[:2] / sha256

    def has_blob(self, entry: FileEntry) -> bool:
        """True if the blob for ``entry`` exists and re-hashes correctly.

        A damaged blob is quarantined (and False returned), so it is fetched again rather than
        linked into another model.
        """
        blob = self.blob_path(entry.sha256)
        if not blob.exists():
            return False
        problem = check_file(blob, entry)
        if problem:
            self._quarantine(blob, f"blob for {entry.path}: {problem}")
            return False
        return True

    @contextlib.contextmanager
    def temp_file(self, label: str) -> Iterator[Path]:
        """A fresh path in ``tmp/`` for a source to write; removed afterwards unless it was ingested."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix=f"{label[:40].replace('/', '_')}.")
        os.close(fd)
        path = Path(name)
        try:
            yield path
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def ingest(self, temp: Path, entry: FileEntry, sha256: str | None = None) -> Path:
        """Move a finished temp file into ``blobs/`` after checking its size and sha256.

        Args:
            sha256: the digest of ``temp``'s bytes, computed as they were written (a fetcher's);
                None: hash the file now.

        Raises:
            IntegrityError: the bytes are not the ones the manifest names; the temp file is deleted.
        """
        with open(temp, "rb+") as f:
            os.fsync(f.fileno())
        problem = check_file(temp, entry, sha256)
        if problem:
            temp.unlink()
            raise IntegrityError(f"{entry.path}: {problem}; the file was refused and deleted")
        blob = self.blob_path(entry.sha256)
        if blob.exists():  # keep the inode that model directories already link to
            temp.unlink()
            return blob
        blob.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(temp, READ_ONLY)
        os.replace(temp, blob)
        fsync_dir(blob.parent)
        return blob

    # --- model versions --------------------------------------------------------------------------

    def lock(self) -> FileLock:
        """The store's write lock: one install, removal or verify at a time."""
        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / ".lock"))

    def clean_work_areas(self) -> None:
        """Forget what an interrupted run left in ``tmp/`` and ``staging/`` (call with the lock held)."""
        for area in (self.tmp_dir, self.staging_dir):
            if area.exists():
                remove_tree(area)

    def commit_version(self, manifest: Manifest, raw: bytes, files: FileList | None = None) -> InstalledModel:
        """Make ``manifest``'s version current, built from blobs that are already in the store.

        ``files`` is the list derived for a manifest that lists none (default: its own). The directory is assembled in ``staging/``, checked, renamed into ``models/``, and only
        then is ``current`` switched to it; older versions are removed afterwards.

        Raises:
            StoreError: a blob is missing (call :meth:`ingest` for every file first).
        """
        start = time.perf_counter()
        files = files or FileList(manifest.files)
        staging = self._build_staging(manifest.name, manifest.version, raw, files)
        model_dir = self.models_dir / manifest.name
        target = model_dir / f"v{manifest.version}"
        model_dir.mkdir(parents=True, exist_ok=True)
        if target.exists():  # re-installing the same version (a repair): swap the directory
            old = Path(tempfile.mkdtemp(dir=self.staging_dir, prefix="old."))
            os.replace(target, old / target.name)
        os.replace(staging, target)
        fsync_dir(model_dir)
        write_atomic(model_dir / CURRENT_FILE, f"{target.name}\n".encode())
        with contextlib.suppress(FileNotFoundError):
            (model_dir / BROKEN_FILE).unlink()
        self._stamp_verified(manifest.name)  # every file was just checked on its way in
        for other in model_dir.iterdir():
            if other.is_dir() and other.name != target.name:
                remove_tree(other)
        self.clean_work_areas()
        log.debug("committed %s v%d in %.3fs", manifest.name, manifest.version, time.perf_counter() - start)
        return InstalledModel(manifest.name, manifest.version, target,
                              replace(manifest, files=files.files), manifest.digest, files.how)

    def _build_staging(self, name: str, version: int, raw: bytes, files: FileList) -> Path:
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.staging_dir, prefix=f"{name}-v{version}."))
        for entry in files.files:
            blob = self.blob_path(entry.sha256)
            if not blob.exists():
                raise StoreError(f"{name}: blob for {entry.path} is not in the store")
            dest = staging / entry.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(blob, dest, entry)
        write_atomic(staging / MANIFEST_FILENAME, raw)
        if files.how != SIGNED_HASHES:
            pinned = {"how": files.how, "files": [entry.to_dict() for entry in files.files]}
            write_atomic(staging / PINNED_FILE, (json.dumps(pinned, indent=1) + "\n").encode())
        if files.objects:
            write_atomic(staging / COMMIT_PACK, files.objects)
        return staging

    def remove(self, name: str) -> int:
        """Remove an installed model and garbage-collect blobs nothing references any more.

        Returns:
            bytes freed.

        Raises:
            ModelNotFoundError: not installed.
        """
        model_dir = self.models_dir / name
        if not model_dir.is_dir():
            raise self._not_installed(name)
        # `current` goes first so no reader picks a half-removed directory.
        with contextlib.suppress(FileNotFoundError):
            (model_dir / CURRENT_FILE).unlink()
        trash = Path(tempfile.mkdtemp(dir=self._ensure(self.staging_dir), prefix=f"removed-{name}."))
        os.replace(model_dir, trash / name)
        remove_tree(trash)
        return self.collect_garbage()

    def collect_garbage(self) -> int:
        """Delete blobs that no model version references. Returns bytes freed."""
        referenced = {entry.sha256 for manifest in self._all_manifests() for entry in manifest.files}
        freed = 0
        if not self.blobs_dir.is_dir():
            return 0
        for blob in self.blobs_dir.glob("*/*"):
            if blob.name not in referenced:
                freed += blob.stat().st_size
                os.chmod(blob, 0o600)
                blob.unlink()
        return freed

    def _all_manifests(self) -> Iterator[Manifest]:
        for manifest_file in self.models_dir.glob(f"*/v*/{MANIFEST_FILENAME}"):
            yield self._with_files(manifest_file.parent)

    # --- verification ----------------------------------------------------------------------------

    def verify(self, names: list[str] | None = None, progress: bool = True) -> list[FileProblem]:
        """Re-hash every file of the current versions of ``names`` (default: all installed).

        Damaged files are moved to ``quarantine/`` together with their blob, and the model is
        marked broken so nothing loads it until ``pennello install NAME`` repairs it.

        Raises:
            IntegrityError: some file is missing or damaged; the message lists every one.
            ModelNotFoundError: a name is not installed.
        """
        names = self.names() if names is None else names
        work = [(version_dir, entry) for name in names
                for version_dir, manifest in [self.current(name)] for entry in manifest.files]
        with tqdm(total=sum(e.size for _, e in work), unit="B", unit_scale=True, desc="verify",
                  disable=None if progress else True) as bar, ThreadPoolExecutor(_HASH_WORKERS) as pool:
            def check(item: tuple[Path, FileEntry]) -> str | None:
                problem = check_file(item[0] / item[1].path, item[1])
                bar.update(item[1].size)
                return problem

            results = list(pool.map(check, work))
        problems = []
        for (version_dir, entry), problem in zip(work, results):
            if problem:
                problems.append(FileProblem(version_dir.parent.name, entry.path, problem))
                self._contain(problems[-1], version_dir, entry)
        for name in set(names) - {p.model for p in problems}:
            self._stamp_verified(name)
        if problems:
            damaged = " ".join(sorted({p.model for p in problems}))
            raise IntegrityError(f"{len(problems)} damaged or missing file(s), quarantined: "
                                 + "; ".join(map(str, problems))
                                 + f". The model will not load until you repair it with "
                                 f"`pennello install {damaged}`")
        return problems

    def current(self, name: str) -> tuple[Path, Manifest]:
        """The current version's directory and manifest, damaged or not (for listings and repairs)."""
        if not is_model_name(name):  # e.g. a client's model field: never a path to look at
            raise self._not_installed(name)
        model_dir = self.models_dir / name
        try:
            version_dir = model_dir / (model_dir / CURRENT_FILE).read_text(encoding="utf-8").strip()
            raw = (version_dir / MANIFEST_FILENAME).read_bytes()
        except (FileNotFoundError, NotADirectoryError) as e:
            raise self._not_installed(name) from e
        return version_dir, self._with_files(version_dir, raw)

    @staticmethod
    def _signed(version_dir: Path, raw: bytes | None = None) -> Manifest:
        raw = (version_dir / MANIFEST_FILENAME).read_bytes() if raw is None else raw
        return Manifest.from_signed(parse_envelope(raw)[0])

    def _with_files(self, version_dir: Path, raw: bytes | None = None) -> Manifest:
        """The signed manifest with the files the version was built from."""
        signed = self._signed(version_dir, raw)
        return replace(signed, files=self.file_list(version_dir, signed).files)

    def _not_installed(self, name: str) -> ModelNotFoundError:
        installed = ", ".join(self.names()) or "none"
        return ModelNotFoundError(f"model {name!r} is not installed (installed: {installed}); "
                                  f"install it with `pennello install {name}`")

    def _stamp_verified(self, name: str) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_atomic(self.models_dir / name / VERIFIED_FILE, f"{now}\n".encode())

    def _contain(self, problem: FileProblem, version_dir: Path, entry: FileEntry) -> None:
        model_dir = version_dir.parent
        with open(model_dir / BROKEN_FILE, "a", encoding="utf-8") as f:
            f.write(f"{problem.path}: {problem.problem}\n")
        damaged = version_dir / entry.path
        blob = self.blob_path(entry.sha256)
        if damaged.exists():
            # A hard-linked file and its blob are one inode: the blob is just as damaged.
            shared = blob.exists() and os.path.samefile(blob, damaged)
            self._quarantine(damaged, str(problem))
            if shared:
                blob.unlink()

    def _quarantine(self, path: Path, why: str) -> None:
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        dest = self.quarantine_dir / f"{time.strftime('%Y%m%dT%H%M%S')}-{path.name}"
        os.replace(path, unique_path(dest))
        log.warning("quarantined %s (%s) to %s", path, why, self.quarantine_dir)

    @staticmethod
    def _ensure(directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        return directory
