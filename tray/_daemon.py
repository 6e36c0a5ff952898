"""Finding the daemon, or starting ``pennello serve`` for the tray, and stopping only that one.

A daemon already running on this pennello home (started by hand, by the systemd user unit, or
by another tray) is used as it is, and left running when the tray quits. Otherwise the tray
starts ``python -m pennello serve`` in the background, with its output in
``log_dir/tray-serve.log``, and stops it on quit. Two starts racing for the same home are
settled by the daemon's own lock: the loser exits with status 8 and the tray attaches to the
winner.

    >>> from pennello.paths import get_paths
    >>> supervisor = DaemonSupervisor(get_paths())  # doctest: +SKIP
    >>> supervisor.ensure_running()  # doctest: +SKIP
    >>> supervisor.client()  # None until the daemon published its address  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Sequence

from pennello.client import Client
from pennello.errors import DaemonError, PennelloError
from pennello.launch import detached, python_command
from pennello.paths import Paths
from pennello.runtime import read_daemon_info

log = logging.getLogger(__name__)

LOG_FILE = "tray-serve.log"
START_TIMEOUT_S = 300.0  # a first start may install the embedded model and warm up a slow disk
STOP_TIMEOUT_S = 60.0  # the daemon lets its running batch finish (30 s grace) before exiting
_ALREADY_RUNNING_EXIT = DaemonError.exit_code


class DaemonSupervisor:
    """The daemon the tray talks to.

    Args:
        paths: the pennello home whose daemon to find or start.
        url: use the daemon at this URL and never start one (e.g. one on another machine).
        token: a paired device token for ``url``.
        command: how to start the daemon (default ``python -m pennello serve``).
    """

    def __init__(self, paths: Paths, url: str | None = None, token: str | None = None,
                 command: Sequence[str] | None = None, start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.paths = paths
        self.url, self.token = url, token
        self.command = list(command or python_command("-m", "pennello", "serve"))
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.started_here = False
        self._client: Client | None = None
        self._started_at = 0.0
        self._log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.paths.log_dir / LOG_FILE

    def ensure_running(self) -> None:
        """Attach to a running daemon, or start one (returns at once; see :meth:`client`).

        Raises:
            DaemonError: ``url`` was given and does not answer, or ``pennello serve`` cannot be run.
        """
        if self.url is not None:
            self._client = Client(self.url, self.token, paths=self.paths, timeout=10)
            self._client.health()
            return
        if self._attach() or (self.process is not None and self.process.poll() is None):
            return
        self.paths.log_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self._log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} tray starts: {' '.join(self.command)}\n".encode())
        self._log.flush()
        try:  # detached: Ctrl-C reaches the tray only
            self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=self._log,
                                            stderr=subprocess.STDOUT, **detached())
        except OSError as e:
            raise DaemonError(f"could not start `{' '.join(self.command)}`: {e}; is pennello installed "
                              f"in this environment?") from e
        self.started_here, self._started_at = True, time.monotonic()
        log.info("started pennello serve (pid %d), log in %s", self.process.pid, self.log_path)

    def client(self) -> Client | None:
        """A client for the daemon, or None while it is still starting (or not running)."""
        if self._client is not None:
            return self._client
        if self.process is not None and self.process.poll() is None:
            info = read_daemon_info(self.paths)
            if info is not None and info.get("pid") == self.process.pid:
                self._client = Client(info["url"], self.token, paths=self.paths, timeout=10)
            return self._client
        self._attach()
        return self._client

    def problem(self) -> str | None:
        """Why the daemon this tray started is not running, or None if nothing is wrong."""
        if self.process is None:
            return None
        code = self.process.poll()
        if code is None:
            if self._client is None and time.monotonic() - self._started_at > self.start_timeout_s:
                return (f"pennello did not start within {self.start_timeout_s:.0f} s; "
                        f"see {self.log_path}")
            return None
        if code == _ALREADY_RUNNING_EXIT and self._attach():
            log.info("another pennello won the race to start; using it")
            self.process, self.started_here = None, False
            return None
        self._client = None
        return f"pennello stopped (exit status {code}): {self._log_tail()} — full log: {self.log_path}"

    def stop(self) -> None:
        """Stop the daemon if this tray started it; a daemon it attached to keeps running."""
        process, self.process = self.process, None
        self._client = None
        if process is None or process.poll() is not None:
            self._close_log()
            return
        log.info("stopping pennello serve (pid %d)", process.pid)
        process.send_signal(signal.CTRL_BREAK_EVENT if sys.platform == "win32" else signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("pennello serve did not stop in %.0f s; killing it", STOP_TIMEOUT_S)
            process.kill()
            process.wait()
        self._close_log()

    def _attach(self) -> bool:
        info = read_daemon_info(self.paths)
        if info is None:
            return False
        client = Client(info["url"], self.token, paths=self.paths, timeout=5)
        try:
            client.health()
        except PennelloError:
            return False  # a stale daemon.json from a daemon that was killed
        client.timeout = 10
        self._client = client
        return True

    def _log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "no log"
        tail = [line for line in text.splitlines() if line.strip()][-lines:]
        return " / ".join(tail) or "no output"

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

