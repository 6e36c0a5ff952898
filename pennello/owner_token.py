"""The owner token: the credential that makes a caller this machine's user, not just anyone on it.

Loopback is shared by every account and program on a computer, so being on ``127.0.0.1`` proves
nothing. The daemon makes a random token the first time it serves and keeps it in
``state_dir/owner.token``, readable by this OS user only (0600, in a per-user directory;
``PENNELLO_HOME`` relocates it). The pennello CLI, the tray and the quick-generate window read it
and send it as ``Authorization: Bearer``; another account cannot read the file, so it cannot act
as the owner. Deleting the file and restarting the daemon makes a new one (the old one stops
working).

This module is in the core because both sides need it: the daemon creates the file, clients read
it, and clients may not import the daemon.

    >>> from pennello.paths import get_paths
    >>> paths = get_paths(getfixture("tmp_path"))
    >>> read_owner_token(paths) is None
    True
    >>> token = ensure_owner_token(paths)
    >>> read_owner_token(paths) == token, oct(owner_token_path(paths).stat().st_mode & 0o777)
    (True, '0o600')
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from pennello.paths import Paths

OWNER_TOKEN_FILE = "owner.token"
TOKEN_BYTES = 32


def owner_token_path(paths: Paths) -> Path:
    return paths.state_dir / OWNER_TOKEN_FILE


def read_owner_token(paths: Paths) -> str | None:
    """The owner token, or None when there is none yet or this user may not read it."""
    try:
        token = owner_token_path(paths).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token or None


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` points at this machine's loopback, the only place the owner token is sent.

    >>> is_loopback_url("http://127.0.0.1:8420"), is_loopback_url("https://192.168.1.20:8420")
    (True, False)
    """
    try:
        host = (urlsplit(url).hostname or "").rstrip(".")
    except ValueError:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ensure_owner_token(paths: Paths) -> str:
    """The owner token, made now if the file does not exist yet.

    The server and its isolated model worker may both get here first: the file is written under a
    temporary name and linked into place, which fails when it exists, so one token wins and
    nobody ever reads half a file.

    Raises:
        OSError: the state directory cannot be written, or the existing file cannot be read.
    """
    path = owner_token_path(paths)
    existing = read_owner_token(paths)
    if existing is not None:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_urlsafe(TOKEN_BYTES) + "\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    token = read_owner_token(paths)
    if token is None:
        raise PermissionError(f"{path} exists but cannot be read by this user; it must belong to the "
                              "user who runs pennello (delete it and start pennello again)")
    return token
