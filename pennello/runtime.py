"""``daemon.json``: where a running daemon says it listens, so clients on this machine find it.

The daemon writes it once it accepts requests and removes it when it stops; the CLI, the tray
and :class:`pennello.client.Client` read it. It lives in the shared core because both sides
use it and neither should import the other for it. A reader gets None for a missing,
half-written or foreign file: a stale file from a killed daemon is the reader's to judge (its
``pid``).

    >>> from pennello.paths import get_paths
    >>> path = write_daemon_info(get_paths().runtime_dir, "http://127.0.0.1:8420")  # doctest: +SKIP
    >>> read_daemon_info()["url"]  # doctest: +SKIP
    'http://127.0.0.1:8420'
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pennello import __version__
from pennello.files import write_atomic
from pennello.paths import Paths, get_paths

DAEMON_FILE = "daemon.json"


def write_daemon_info(runtime_dir: Path, url: str, fingerprint: str | None = None) -> Path:
    """Publish this process as the daemon at ``url`` (``fingerprint``: its HTTPS certificate's).

    Returns:
        the file written, for the daemon to remove when it stops.
    """
    path = runtime_dir / DAEMON_FILE
    info = {"pid": os.getpid(), "url": url, "fingerprint": fingerprint, "started": time.time(),
            "version": __version__}
    write_atomic(path, json.dumps(info).encode("utf-8"))
    return path


def read_daemon_info(paths: Paths | None = None) -> dict[str, Any] | None:
    """What the local daemon published about itself (``pid``, ``url``, ``fingerprint``,
    ``started``, ``version``), or None."""
    path = (paths or get_paths()).runtime_dir / DAEMON_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("url"), str) else None
