"""How files reach the store: the fetcher interface, the registry of fetchers by ``source.kind``,
and the fetchers for files already on this machine.

A fetcher writes the bytes of one manifest file into a path it is given (a temp file of the
store), hashing them as it writes; it never decides whether they are right: :meth:`Store.ingest`
compares size and sha256 with the manifest before the file becomes a blob.
What a fetcher must guarantee is that it never reads more than the manifest's size (a server
sending endless data is cut off and refused) and that local sources give regular files only.

============  ================================================================================
kind          where the bytes come from
============  ================================================================================
embedded      files shipped inside the package (``pennello/installer/embedded/<name>/``)
local         a directory given at install time (``pennello install --from DIR``)
mirror        over HTTP(S), see :mod:`pennello.installer.sources`
huggingface   the Hugging Face Hub, see :mod:`pennello.installer.sources`
============  ================================================================================

The downloading fetchers live apart, in :mod:`pennello.installer.sources`, and
:func:`fetcher_for` imports that module only when a manifest's source needs it: installing the
embedded model (what ``pennello serve`` may do) never loads code that can download, which
``tests/test_consent.py`` checks on a real ``pennello serve``.

    >>> from pennello.installer.manifest import Source
    >>> fetcher = fetcher_for(Source("embedded"), "pennello-tiny", FetchOptions(Path("/tmp/dl")))
    >>> fetcher.remote
    False
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.resources
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

from pennello.errors import CommitObjectsUnavailable, FetchError, IntegrityError
from pennello.installer.manifest import FileEntry, Source

if TYPE_CHECKING:  # gitpin loads dulwich: only the fetching side imports it
    from pennello.installer.gitpin import CommitFiles

Progress = Callable[[int], None]
Select = Callable[[list[str]], list[str]]  # which of a repository's paths to install
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class FetchOptions:
    """How fetchers behave; the defaults suit a home connection."""

    downloads_dir: Path  # resumable partial downloads, named by the expected sha256
    local_dir: Path | None = None  # the directory of a ``local`` source (``--from DIR``)
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0  # longest silence from a server before the attempt fails
    retries: int = 3  # further attempts after a dropped connection, each resuming
    max_file_bytes: int = 64 * 1024**3  # cap for files of unlocked manifests (size unknown)
    # Files fetched at once: one stream rarely fills a fast line (as huggingface_hub's pool).
    parallel_files: int = 4
    hub_endpoint: str | None = None  # None: huggingface_hub's (HF_ENDPOINT, else huggingface.co)


class Fetcher(Protocol):
    """Puts the bytes of one manifest file into ``dest``."""

    #: True when fetching means downloading (what ``pennello install`` asks about over
    #: ``[installer] confirm_over_mb``); False for files already on this machine.
    remote: bool

    def fetch(self, entry: FileEntry, dest: Path, progress: Progress) -> str:
        """Write ``entry``'s bytes to ``dest``, never more than ``entry.size`` of them.

        Returns:
            the sha256 of the bytes written, hashed as they were written (so the store need
            not read the file back to check it).

        Raises:
            FetchError: the source could not deliver the file.
            IntegrityError: it delivered more bytes than the manifest allows.
        """

    def fetch_unknown(self, path: str, dest: Path, progress: Progress) -> str:
        """Like :meth:`fetch` for a file whose size is not known yet (locking), capped at
        ``max_file_bytes``; returns the sha256 of what arrived."""

    def list_files(self) -> list[str]:
        """Relative paths of every file the source offers (for locking an unlocked manifest)."""

    def sizes(self, paths: list[str]) -> dict[str, int | None]:
        """What each of ``paths`` would weigh, as far as the source says without sending it
        (None: unknown). Only for asking before a download: nothing here is trusted."""

    def commit_files(self, select: Select, revision: str) -> CommitFiles:
        """The sha256 and size of the ``select``-ed files, derived from the git objects of
        ``revision``, the commit the manifest pins (an unlocked entry's hashes, bound to its
        signature).

        Raises:
            CommitObjectsUnavailable: the source cannot serve that commit's objects.
            ManifestFormatError: the source pins no commit (lock the manifest instead).
            IntegrityError: the objects do not hash to the signed commit.
        """


FetcherFactory = Callable[[Source, str, FetchOptions], Fetcher]
FETCHERS: dict[str, FetcherFactory] = {}


def register_fetcher(kind: str) -> Callable[[FetcherFactory], FetcherFactory]:
    """Register the factory for one ``source.kind``; built-in kinds register the same way."""
    def register(factory: FetcherFactory) -> FetcherFactory:
        FETCHERS[kind] = factory
        return factory
    return register


def fetcher_for(source: Source, name: str, options: FetchOptions) -> Fetcher:
    """The fetcher for a manifest's source.

    Raises:
        FetchError: no fetcher for that kind, or a ``local`` source without ``--from DIR``.
    """
    if source.kind not in FETCHERS:
        # The downloading fetchers register when their module is imported, on first need: so
        # installing from this machine (the embedded model `pennello serve` installs) never
        # loads code that downloads.
        importlib.import_module("pennello.installer.sources")
    try:
        factory = FETCHERS[source.kind]
    except KeyError:
        raise FetchError(f"model {name!r}: no fetcher for source kind {source.kind!r}; "
                         f"known: {', '.join(sorted(FETCHERS))}") from None
    return factory(source, name, options)


# --- local directories: --from DIR, bundles, the embedded model ---------------------------------

class LocalFetcher:
    """Regular files under a directory. Symbolic links and special files are refused.

    A file is looked for, in order, at ``blobs/sha256/<ab>/<sha256>`` (a bundle),
    ``<name>/<path>`` (a directory of several models) and ``<path>`` (one model's directory).
    """

    remote = False

    def __init__(self, root: Path, name: str) -> None:
        self.root, self.name = root, name

    def candidates(self, entry: FileEntry) -> list[str]:
        return [f"blobs/sha256/{entry.sha256[:2]}/{entry.sha256}", f"{self.name}/{entry.path}",
                entry.path]

    def fetch(self, entry: FileEntry, dest: Path, progress: Progress) -> str:
        relative = next((c for c in self.candidates(entry) if os.path.lexists(self.root / c)), None)
        if relative is None:
            raise FetchError(f"{entry.path} of model {self.name!r} is not in {self.root} "
                             f"(looked for {', '.join(self.candidates(entry))})")
        return self._copy(relative, dest, entry.size, progress)

    def fetch_unknown(self, path: str, dest: Path, progress: Progress) -> str:
        raise FetchError("local sources hold locked manifests only; lock from the original source")

    def list_files(self) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())

    def sizes(self, paths: list[str]) -> dict[str, int | None]:
        return {path: None for path in paths}  # local files are copies, never downloads

    def commit_files(self, select: Select, revision: str) -> CommitFiles:
        """From ``commits/<name>.pack`` (a bundle carries the commit's objects there)."""
        from pennello.installer import gitpin  # only for this; the daemon never gets here

        where = f"{self.name}@{revision[:12]} in {self.root}"
        try:
            objects = (self.root / "commits" / f"{self.name}.pack").read_bytes()
        except FileNotFoundError:
            raise CommitObjectsUnavailable(f"{self.root} holds no git objects of {self.name}'s signed "
                                           f"commit (commits/{self.name}.pack)") from None
        found = gitpin.commit_files(gitpin.unpack(objects, where), revision, where)

        def missing(file: gitpin.CommitFile) -> bytes:
            raise IntegrityError(f"{file.path} of {where}: its git blob {file.git_id} is not in the bundle")
        return gitpin.select_files(found, select([f.path for f in found]), objects, missing)

    def _copy(self, relative: str, dest: Path, size: int, progress: Progress) -> str:
        source = self.root / relative
        self._refuse_links(relative)
        # Non-blocking open: opening a FIFO for reading would otherwise wait for a writer forever.
        flags = (os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
        with os.fdopen(os.open(source, flags), "rb") as src, open(dest, "wb") as out:
            info = os.fstat(src.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise FetchError(f"{source}: not a regular file; refused")
            if info.st_size > size:
                raise IntegrityError(f"{source}: {info.st_size} bytes, more than the {size} the "
                                     f"manifest allows; refused")
            os.set_blocking(src.fileno(), True)
            # Read at most `size` bytes even if the file grows while we copy it.
            remaining, sha256 = size, hashlib.sha256()
            while remaining and (chunk := src.read(min(CHUNK * 4, remaining))):
                out.write(chunk)
                sha256.update(chunk)
                remaining -= len(chunk)
                progress(len(chunk))
        return sha256.hexdigest()

    def _refuse_links(self, relative: str) -> None:
        """Refuse a path if any component below the root is a symbolic link (it could point anywhere)."""
        current = self.root
        for part in relative.split("/"):
            current = current / part
            if current.is_symlink():
                raise FetchError(f"{current}: is a symbolic link; local sources must hold regular "
                                 f"files only (refused)")


def embedded_dir(name: str) -> Path:
    """Where the package keeps the files of an embedded model."""
    return Path(str(importlib.resources.files("pennello.installer") / "embedded" / name))


@register_fetcher("embedded")
def _embedded(source: Source, name: str, options: FetchOptions) -> Fetcher:
    return LocalFetcher(embedded_dir(name), name)


@register_fetcher("local")
def _local(source: Source, name: str, options: FetchOptions) -> Fetcher:
    if options.local_dir is None:
        raise FetchError(f"model {name!r} has a local source: install it with "
                         f"`pennello install --from DIR` pointing at its files")
    return LocalFetcher(options.local_dir, name)

