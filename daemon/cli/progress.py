"""Progress bars for the commands that wait on the daemon, driven by the daemon's own progress.

``generate`` follows its job's server-sent events; the tools (``batch``, ``pipeline run``, ``edit``,
``upscale``, ``enhance``) wait on one long request, so :func:`daemon_progress` asks
``GET /api/progress`` on a second connection while that request runs. Bars are tqdm's, on stderr,
and only for a person: off when stderr is not a terminal or the command prints ``--json``.

    with daemon_progress(client, "editing", as_json):
        result = client.call("POST", "/api/edit", ...)
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import Iterator

from tqdm import tqdm

from pennello.client import Client
from pennello.errors import PennelloError

_POLL_S = 0.25


def progress_bar(desc: str, as_json: bool, total: int = 1, unit: str = "step") -> tqdm:
    """A tqdm bar on stderr, disabled unless a person watches (a TTY, no ``--json``)."""
    return tqdm(total=total, unit=unit, desc=desc, leave=False, file=sys.stderr,
                disable=as_json or not sys.stderr.isatty())


@contextmanager
def daemon_progress(client: Client, desc: str, as_json: bool) -> Iterator[None]:
    """Show the device's progress (percent of the batch on it) while the block runs."""
    with progress_bar(desc, as_json, total=100, unit="%") as bar:
        if bar.disable:
            yield
            return
        done = threading.Event()
        poller = Client(client.base_url, fingerprint=client.fingerprint, timeout=5)
        poller.session.headers.update(client.session.headers)  # the same credentials, own connection
        thread = threading.Thread(target=_follow, args=(poller, bar, done), daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()


def _follow(poller: Client, bar: tqdm, done: threading.Event) -> None:
    while not done.wait(_POLL_S):
        try:
            now = poller.progress()
        except PennelloError:
            continue  # a missed poll only delays the bar
        bar.update(round(100 * now.get("fraction", 0)) - bar.n)
