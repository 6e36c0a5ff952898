"""Installing a model for the owner's web page, without the daemon loading code that fetches.

The daemon never imports the installer's fetching code (docs/architecture.md, "The doors"). So
installing from the page runs the same command a person would, ``pennello install NAME --json``,
as a separate process (started as :mod:`pennello.launch` starts pennello's own processes, so a
``pennello/`` folder in the current directory cannot stand in for the package), and reads its
JSON lines (:mod:`pennello.installer.cli_progress`):

1. :meth:`Installs.plan` runs it with ``--plan``: what would be downloaded (files, bytes,
   sources, licences), nothing changed. The page shows that and asks.
2. :meth:`Installs.start` runs it with ``--yes``, the owner's answer given in the page; a thread
   follows its ``progress`` lines until ``done`` or ``error``. One install at a time.
3. :meth:`Installs.cancel` sends SIGTERM: the installer stops as on a failure, leaving the store
   as it was.

The installer's own messages (stderr) go to ``logs/install.log``.

    >>> installs = Installs(paths)  # doctest: +SKIP
    >>> installs.plan("sd-turbo")["bytes"]  # doctest: +SKIP
    2_081_000_000
    >>> installs.start("sd-turbo").state  # doctest: +SKIP
    'running'
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from pennello.errors import ConflictError, FetchError, NotFoundError, PennelloError
from pennello.launch import python_command
from pennello.paths import HOME_ENV, Paths, get_paths

log = logging.getLogger(__name__)

State = Literal["running", "done", "failed", "cancelled"]
LOG_FILE = "install.log"
PLAN_TIMEOUT_S = 300.0  # a plan may read a Hub commit's git objects: seconds, not minutes, normally


@dataclass
class Install:
    """One ``pennello install`` the daemon started, as its JSON lines tell it."""

    name: str
    plan: dict[str, Any] | None = None
    state: State = "running"
    bytes: int = 0  # arrived so far
    total: int = 0  # to arrive, from the plan
    models: list[dict[str, Any]] = field(default_factory=list)  # installed, once done
    error: dict[str, Any] | None = None  # the installer's error line, once failed or cancelled
    started: float = field(default_factory=time.time)
    ended: float | None = None
    outcome: State | None = None  # what the last line told; the state once the process has exited

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "bytes": self.bytes, "total": self.total,
                "plan": self.plan, "models": self.models, "error": self.error,
                "started": self.started, "ended": self.ended}

    def follow(self, line: dict[str, Any]) -> None:
        """Take in one JSON line of the installer (``done`` and ``error`` are kept for :meth:`end`)."""
        event = line.get("event")
        if event == "plan":
            self.plan = {k: v for k, v in line.items() if k != "event"}
            self.total = int(line.get("bytes") or 0)
        elif event == "progress":
            self.bytes, self.total = int(line["bytes"]), int(line["total"])
        elif event == "done":
            self.models = list(line.get("models") or [])
            self.outcome = "done"
        elif event == "error":
            self.error = {k: v for k, v in line.items() if k != "event"}
            self.outcome = "cancelled" if line.get("type") == "cancelled" else "failed"

    def end(self, code: int, log_file: Path) -> None:
        """The installer exited with ``code``: the outcome its last line told, else a failure.
        Only now, so that an install shown as ended has let go of the store."""
        if self.outcome is None and code == -signal.SIGTERM:  # stopped before it could say so
            self.outcome = "cancelled"
            self.error = {"error": "the install was stopped; nothing was changed", "code": code,
                          "type": "cancelled", "field": None}
        if self.outcome is None:
            self.error = {"error": f"the installer exited with status {code} without saying why; see "
                                   f"{log_file}", "code": code, "type": "error", "field": None}
        self.state, self.ended = self.outcome or "failed", time.time()


class Installs:
    """The installs of one pennello home, one at a time."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self._lock = threading.Lock()
        self._last: dict[str, Install] = {}  # model name -> its latest install
        self._current: Install | None = None
        self._process: subprocess.Popen[str] | None = None
        # An installer left running after the daemon exits would go on writing the store unseen.
        atexit.register(self.stop)

    def plan(self, name: str) -> dict[str, Any]:
        """What installing ``name`` would download: the installer's ``plan`` line.

        Raises:
            PennelloError: the installer's own error (404 not in the catalog, 403 refused
                manifest, 502 source unreachable, …), rebuilt from its ``error`` line.
        """
        try:
            with self._log() as stderr:
                done = subprocess.run(self._command(name, "--plan"), env=self._env(), text=True,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=stderr, timeout=PLAN_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            raise _bad_gateway(f"planning the install of {name} took over {PLAN_TIMEOUT_S:.0f} s; "
                               f"is its source reachable?") from e
        lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        for line in lines:
            if line.get("event") == "error":
                raise error_from(line)
            if line.get("event") == "plan":
                return {k: v for k, v in line.items() if k != "event"}
        raise PennelloError(f"`pennello install {name} --plan` gave no plan (exit {done.returncode}); "
                            f"see {self.paths.log_dir / LOG_FILE}")

    def start(self, name: str, first_fetch: bool = False) -> Install:
        """Start installing ``name`` (consent given; ``first_fetch``: also to recording its hashes
        as the files first arrive, where the plan said only that is possible); 409 while another
        install runs."""
        with self._lock:
            if self._current is not None and self._current.state == "running":
                raise ConflictError(f"{self._current.name} is being installed; one install at a time: try "
                                    f"again when it is done, or cancel it", field="name")
            install = self._current = self._last[name] = Install(name)
            with self._log() as stderr:
                self._process = process = subprocess.Popen(
                    self._command(name, "--yes", *(["--first-fetch"] if first_fetch else [])), env=self._env(), text=True, stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=stderr)
        log.info("installing %s for the owner (pid %d)", name, process.pid)
        threading.Thread(target=self._follow, args=(install, process), name=f"install-{name}",
                         daemon=True).start()
        return install

    def get(self, name: str) -> Install:
        """The latest install of ``name`` this daemon started (404 when none)."""
        install = self._last.get(name)
        if install is None:
            raise NotFoundError(f"no install of {name!r} was started here; POST to start one", field="name")
        return install

    def cancel(self, name: str) -> Install:
        """Stop the running install of ``name`` (it answers as ``cancelled`` shortly after)."""
        install = self.get(name)
        with self._lock:
            if install.state == "running" and self._process is not None:
                self._process.send_signal(signal.SIGTERM)
        return install

    def stop(self, timeout: float = 10.0) -> None:
        """Stop a running install and wait for it to end (the daemon is exiting); the installer
        leaves the store as it was, as for a cancel."""
        with self._lock:
            process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("the installer (pid %d) did not stop within %.0f s; killing it", process.pid, timeout)
            process.kill()

    def _follow(self, install: Install, process: subprocess.Popen[str]) -> None:
        """Read the installer's lines until it exits; a silent exit is a failure too."""
        assert process.stdout is not None
        for raw in process.stdout:
            try:
                install.follow(json.loads(raw))
            except (ValueError, KeyError, TypeError):
                log.warning("install %s: not a line of the installer: %r", install.name, raw[:200])
        install.end(process.wait(), self.paths.log_dir / LOG_FILE)
        log.info("install of %s ended: %s", install.name, install.state)

    def _command(self, name: str, *flags: str) -> list[str]:
        # "--" ends the options: a name that looks like one stays a name.
        return python_command("-m", "pennello", "install", "--json", *flags, "--", name)

    def _env(self) -> dict[str, str]:
        """The daemon's environment, with its home named so the installer writes the same store."""
        env = dict(os.environ)
        home = self.paths.runtime_dir.parent
        if get_paths() != self.paths and get_paths(home) == self.paths:
            env[HOME_ENV] = str(home)
        return env

    def _log(self) -> IO[str]:
        """The installer's stderr: the caller closes its copy once the process has started."""
        self.paths.log_dir.mkdir(parents=True, exist_ok=True)
        return open(self.paths.log_dir / LOG_FILE, "a", encoding="utf-8")


def error_from(line: dict[str, Any]) -> PennelloError:
    """The installer's error line as the exception it was, so it answers with the same status."""
    kinds: dict[str, type[PennelloError]] = {}
    pending = [PennelloError]
    while pending:
        cls = pending.pop()
        kinds.setdefault(cls.kind, cls)
        pending.extend(cls.__subclasses__())
    cls = kinds.get(str(line.get("type")), PennelloError)
    message = str(line.get("error"))
    if issubclass(cls, FetchError):  # the model's source failed, not this daemon
        return _bad_gateway(message)
    try:
        return cls(message, field=line.get("field")) if line.get("field") else cls(message)
    except TypeError:  # an error class that takes other arguments
        return PennelloError(message)


def _bad_gateway(message: str) -> FetchError:
    error = FetchError(message)
    error.http_status = 502
    return error
