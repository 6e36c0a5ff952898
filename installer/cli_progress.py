"""``pennello install --json``: the install told as JSON lines, for a program that runs it.

The daemon's web page installs a model by running ``pennello install NAME --json`` as a separate
process (the daemon never loads code that fetches) and reading its stdout, one JSON object a
line, each with an ``event``:

* ``plan``: what would be downloaded, before anything is: ``files`` and ``bytes`` (files already
  on this machine left out), ``sources`` and each model's ``name``, ``version`` and ``license``;
  with ``--plan`` it is the last line and nothing changes. ``first_fetch`` is null, or why the
  files' hashes can only be recorded as they first arrive (then ``files`` and ``bytes`` are null
  with ``--plan``: known only by downloading; installing needs ``--first-fetch``);
* ``progress``: ``bytes`` arrived so far of ``total``, at most every 0.2 s and at the end;
* ``done``: ``models`` installed, each with ``name``, ``version``, ``size_bytes``;
* ``error``: what ``--json`` prints for an error anywhere (``error``, ``code``, ``type``,
  ``field``), with the command's exit status; SIGTERM ends an install as a failure does (the
  store is left as it was) with ``type`` ``cancelled`` and exit status 130.

    {"event": "plan", "files": 7, "bytes": 4949836, "sources": ["https://mirror.example/tiny"],
     "models": [{"name": "tiny", "version": 2, "license": "Apache-2.0"}], "first_fetch": null}
    {"event": "progress", "bytes": 1048576, "total": 4949836}
    {"event": "done", "models": [{"name": "tiny", "version": 2, "size_bytes": 4949836}]}
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from typing import Any, Iterator

import click

from pennello.cli_output import error_document
from pennello.errors import PennelloError

__all__ = ["JsonLines", "CANCELLED_EXIT", "stopped_by_sigterm"]

CANCELLED_EXIT = 130  # as a shell reports a command ended by a signal
_EVERY_S = 0.2  # progress lines at most this often: a reader polls, it need not see every chunk


class JsonLines:
    """Writes the events of one install on stdout, one compact JSON object a line."""

    def __init__(self) -> None:
        self.total, self.arrived, self._last = 0, 0, 0.0

    def event(self, kind: str, **fields: Any) -> None:
        click.echo(json.dumps({"event": kind, **fields}, default=str))

    def plan(self, files: int | None, size: int | None, sources: list[str], models: list[dict[str, Any]],
             first_fetch: str | None = None) -> None:
        self.total = size or 0
        self.event("plan", files=files, bytes=size, sources=sources, models=models, first_fetch=first_fetch)

    def advance(self, n: int) -> None:
        """``n`` more bytes arrived (the installer's ``on_bytes``)."""
        self.arrived += n
        now = time.monotonic()
        if now - self._last >= _EVERY_S or 0 < self.total <= self.arrived:
            self._last = now
            # Files that came with a commit's objects are written, not downloaded: not in the plan.
            self.event("progress", bytes=self.arrived, total=max(self.total, self.arrived))

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """An error (or SIGTERM) in the block becomes the ``error`` line and the exit status."""
        try:
            yield
        except PennelloError as e:
            self.event("error", **error_document(e))
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            self.event("error", error="the install was stopped; nothing was changed", code=CANCELLED_EXIT,
                       type="cancelled", field=None)
            sys.exit(CANCELLED_EXIT)


@contextlib.contextmanager
def stopped_by_sigterm() -> Iterator[None]:
    """SIGTERM in the block raises KeyboardInterrupt, so an install stopped by the program that
    started it cleans up as on Ctrl-C (the blobs it added are set aside) instead of dying midway."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
