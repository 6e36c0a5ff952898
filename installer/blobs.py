"""The store's file-level helpers: hashing and checking a file against its manifest entry,
hard links with a checked copy as fallback, and removing read-only trees.

:mod:`pennello.installer.store` builds on these; they touch one file or tree at a time and
know nothing of models or versions.

    >>> from pennello.installer.manifest import FileEntry
    >>> check_file(Path("/nonexistent"), FileEntry("a", "0" * 64, 1))
    'missing'
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

from pennello.errors import IntegrityError
from pennello.installer.manifest import FileEntry

READ_ONLY = 0o444  # blobs and the files linked to them: an accidental write fails


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in large blocks by hashlib (as fast as ``sha256sum``)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_file(path: Path, entry: FileEntry, sha256: str | None = None) -> str | None:
    """None if ``path`` holds exactly ``entry``'s bytes, else what is wrong with it.

    ``sha256`` is the file's digest when it is known already (hashed as it was written).
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if size != entry.size:
        return f"size {size} bytes, manifest says {entry.size}"
    digest = sha256 or file_sha256(path)
    if digest != entry.sha256:
        return f"sha256 {digest}, manifest says {entry.sha256}"
    return None


def remove_tree(path: Path) -> None:
    """rmtree that also removes read-only files (Windows refuses to delete them otherwise)."""
    def make_writable(func: Callable[..., object], target: str, _exc: object) -> None:
        os.chmod(target, 0o700)
        func(target)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=make_writable)
    else:
        shutil.rmtree(path, onerror=make_writable)


def unique_path(path: Path) -> Path:
    """``path``, or ``path.1``, ``path.2``… whichever does not exist yet."""
    candidate, n = path, 1
    while candidate.exists():
        candidate, n = path.with_name(f"{path.name}.{n}"), n + 1
    return candidate


def link_or_copy(blob: Path, dest: Path, entry: FileEntry) -> None:
    """``dest`` as a hard link to ``blob``, or a checked read-only copy where linking fails."""
    try:
        os.link(blob, dest)
    except OSError:  # another file system, or one without hard links
        shutil.copyfile(blob, dest)
        problem = check_file(dest, entry)
        if problem:
            raise IntegrityError(f"copy of {entry.path} into the model directory is wrong: {problem}")
        os.chmod(dest, READ_ONLY)
