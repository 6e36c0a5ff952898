"""Finding the daemon of this pennello home, and starting one on demand as ``ollama run`` does.

``pennello generate`` without ``--url``/``--remote`` uses the local daemon; when none runs, it
starts ``python -P -m pennello serve`` detached (:mod:`pennello.launch`), with its output in
``log_dir/serve.log``, says so on stderr, waits until the daemon publishes its address, and
leaves it running for the next command (``pennello stop`` ends it). Whether a daemon runs is
asked of its instance lock, which the OS drops when the process ends: a stale ``daemon.json``
or a reused pid cannot fool it.

    >>> url = ensure_daemon(get_paths())  # doctest: +SKIP
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import click
import filelock

from pennello.errors import DaemonError
from pennello.launch import detached, python_command
from pennello.paths import Paths
from pennello.runtime import read_daemon_info

from ..server import LOCK_FILE

LOG_FILE = "serve.log"
START_TIMEOUT_S = 300.0  # a first start may install the embedded model and warm up a slow disk
_POLL_S = 0.2


def daemon_running(paths: Paths) -> bool:
    """Whether a daemon holds this home's instance lock."""
    lock = filelock.FileLock(str(paths.runtime_dir / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return True
    lock.release()
    return False


def ensure_daemon(paths: Paths, timeout: float = START_TIMEOUT_S) -> str:
    """The local daemon's URL, starting the daemon first when none runs.

    Raises:
        DaemonError: ``pennello serve`` exited, or did not publish its address within ``timeout``.
    """
    info = read_daemon_info(paths)
    if info is not None and daemon_running(paths):
        return info["url"]
    process: subprocess.Popen[bytes] | None = None
    log_path = paths.log_dir / LOG_FILE
    if not daemon_running(paths):  # else one is starting: wait for it below
        process = _spawn(log_path)
        click.echo(f"pennello was not running; starting it (pid {process.pid}, log {log_path})…", err=True)
    deadline = time.monotonic() + timeout
    while True:
        ours = process is not None and process.poll() is None
        info = _published(paths, process.pid if ours else None)
        if info is not None:
            break
        if process is not None and not ours and not daemon_running(paths):
            raise DaemonError(f"pennello serve exited with status {process.returncode}; see {log_path}")
        if time.monotonic() > deadline:
            raise DaemonError(f"pennello did not start within {timeout:.0f} s; see {log_path}")
        time.sleep(_POLL_S)
    if process is not None:
        click.echo(f"pennello is serving on {info['url']} and keeps running (`pennello stop` ends it)", err=True)
    return info["url"]


def _published(paths: Paths, pid: int | None) -> dict[str, Any] | None:
    """What a running daemon published, once it has (from ``pid`` when given: an older file may be
    left by a daemon that was killed); a daemon that lost the race to another gives no ``pid``."""
    info = read_daemon_info(paths)
    if info is None or not daemon_running(paths) or (pid is not None and info.get("pid") != pid):
        return None
    return info


def _spawn(log_path: Path) -> subprocess.Popen[bytes]:
    command = python_command("-m", "pennello", "serve")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} started for `pennello generate`\n".encode())
        log.flush()
        try:
            return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    **detached())
        except OSError as e:
            raise DaemonError(f"could not start `{' '.join(command)}`: {e}") from e
