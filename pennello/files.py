"""Writing files so that no reader, and no crash, ever sees half of one.

    >>> from pathlib import Path
    >>> from pennello.files import write_atomic
    >>> write_atomic(Path("/tmp/pennello-doc/state.json"), b"{}")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterable

from pennello.errors import DiskSpaceError

# What a write answers when the disk (or the user's quota) is full.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int | None = None, durable: bool = True) -> None:
    """Replace ``path`` with ``data``: temp file in the same directory, fsync, rename, fsync dir.

    Args:
        mode: permissions of the new file; the temp file starts as 0600, so a private file is
            never readable by others, even briefly.
        durable: fsync the file before the rename and the directory after it. False still never
            shows readers half a file; call :func:`make_durable` later to survive a power cut.

    Raises:
        DiskSpaceError: the disk is full; nothing was changed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in _DISK_FULL:
            raise DiskSpaceError(f"the disk holding {path.parent} is full: {path.name} was not written "
                                 f"(the old one, if any, is unchanged); free some space and try again") from e
        raise
    if durable:
        fsync_dir(path.parent)


def make_durable(paths: Iterable[Path]) -> None:
    """fsync files written with ``durable=False``, then each of their directories once."""
    paths = list(paths)
    for path in paths:
        try:
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        except FileNotFoundError:  # removed meanwhile (a picture its client did not keep): nothing to sync
            continue
    for directory in dict.fromkeys(path.parent for path in paths):
        fsync_dir(directory)
