"""Supervising the isolated model worker: when it dies, the server stays up and starts another.

The worker (:class:`.isolation.Worker`) holds the models, so it is the process an out-of-memory
kill or a crash in native code takes down. The server in front of it has nothing to lose, so it
keeps listening: while the worker is down, every request is answered ``503`` with a JSON error
and a ``Retry-After`` header (:func:`while_down`), and a new worker is started after a back-off
that doubles with each death (1, 2, 4, 8 s…). A worker that dies :data:`MAX_DEATHS` times within
:data:`DEATH_WINDOW_S` (one that cannot even start counts too) will not be saved by trying again:
the supervisor gives up and ``serve`` stops with an error that says so.

Its generate jobs are not lost: the engine journals them on disk (:mod:`pennello.daemon.engine.journal`) and the
new worker queues again, under their own ids, those the dead one had not finished. What lived
only in its memory is gone: queued edits and upscales. An open event stream says
``restarting`` and goes on with the job's events from the new worker (:mod:`.proxy`).

    >>> supervisor = Supervisor(worker, start=lambda: Worker.start(...), stopping=flag.is_set)  # doctest: +SKIP
    >>> app = while_down(proxy, supervisor)  # 503 + Retry-After while restarting  # doctest: +SKIP
    >>> supervisor.poll()  # from the serve loop: True once it gave up  # doctest: +SKIP
    False
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable

from pennello.errors import DaemonError

from .isolation import Worker

log = logging.getLogger(__name__)

MAX_DEATHS = 5  # this many deaths within DEATH_WINDOW_S: stop restarting
DEATH_WINDOW_S = 300.0  # long enough to hold five restarts of a worker whose models load slowly
_FIRST_BACKOFF_S = 1.0
_MAX_BACKOFF_S = 30.0
_START_GUESS_S = 10.0  # how long a start takes, until one was timed
_SLEEP_STEP_S = 0.1  # how often a back-off looks whether the server is stopping


class Supervisor:
    """Watches the worker from a thread of its own and restarts it when it dies unasked.

    The same thread starts every new worker and lives as long as it does: the worker asks the
    kernel for SIGTERM when its parent goes (``PR_SET_PDEATHSIG``), and the kernel means the
    *thread* that forked it, so a short-lived restarting thread would stop the worker it made.

    Args:
        worker: the running worker.
        start: starts a new worker and returns it once it serves (``Worker.start`` with the
            server's arguments); raises DaemonError when it exits before it is ready.
        stopping: whether the server is shutting down (its StopFlag); a restart then stops.
    """

    def __init__(self, worker: Worker, start: Callable[[], Worker], stopping: Callable[[], bool]) -> None:
        self.worker, self._start, self._stopping = worker, start, stopping
        self.gave_up: str | None = None  # why it stopped restarting; serve stops with this
        self._deaths: deque[float] = deque()
        self._settled = threading.Event()  # set while no restart is under way
        self._settled.set()
        self._next_attempt = 0.0
        self._start_seconds = _START_GUESS_S
        self._thread = threading.Thread(target=self._watch, name="pennello-supervisor", daemon=True)
        self._thread.start()

    @property
    def serving(self) -> bool:
        """The worker is up: not dead, not being restarted."""
        return self._settled.is_set() and self.worker.alive()

    def poll(self) -> bool:
        """Whether the supervisor gave up: the worker kept dying and ``serve`` must stop."""
        return self.gave_up is not None

    def retry_after(self) -> int:
        """Seconds until a restarting worker likely serves: the back-off left, then a start."""
        return max(1, math.ceil(self._next_attempt - time.monotonic() + self._start_seconds))

    def settle(self) -> None:
        """Wait until no restart is under way (one sees the server stopping within a moment)."""
        self._settled.wait()

    def _watch(self) -> None:
        """Until the server stops or gives up: notice a dead worker, then start another."""
        while self.gave_up is None:
            if not self.worker.alive():
                code = self.worker.wait()
                if self._stopping():
                    return  # stopped as asked
                self._settled.clear()
                self._died(f"the model worker (pid {self.worker.pid}) exited with code {code}")
                self._restart()
                self._settled.set()
            time.sleep(_SLEEP_STEP_S)

    def _died(self, what: str) -> None:
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths[0] < now - DEATH_WINDOW_S:
            self._deaths.popleft()
        if len(self._deaths) >= MAX_DEATHS:
            self.gave_up = (f"{what}; the model worker died {len(self._deaths)} times in "
                            f"{DEATH_WINDOW_S:.0f} s, so it is not restarted again: stopping (its log "
                            f"lines above, or pennello-worker.log, say why)")
            log.error("%s", self.gave_up)
            return
        backoff = min(_MAX_BACKOFF_S, _FIRST_BACKOFF_S * 2 ** (len(self._deaths) - 1))
        self._next_attempt = now + backoff
        log.error("%s; starting another in %.0f s (%d of %d deaths allowed in %.0f s)", what, backoff,
                  len(self._deaths), MAX_DEATHS - 1, DEATH_WINDOW_S)

    def _restart(self) -> None:
        """Back off, start a worker; again after each start that fails, until one serves or
        the supervisor gives up or the server stops."""
        while self.gave_up is None:
            while time.monotonic() < self._next_attempt:
                if self._stopping():
                    return
                time.sleep(_SLEEP_STEP_S)
            started = time.monotonic()
            try:
                worker = self._start()
            except DaemonError as e:
                if self._stopping():
                    return
                self._died(str(e))
                continue
            self._start_seconds = time.monotonic() - started
            self.worker = worker
            log.warning("model worker restarted: pid %d serves again (started in %.1f s)", worker.pid,
                        self._start_seconds)
            return


def while_down(app: Callable[..., Iterable[bytes]], supervisor: Supervisor) -> Callable[..., Iterable[bytes]]:
    """``app`` (the proxy) while the worker serves; a 503 JSON error with Retry-After while not."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def with_retry_after(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            # A worker dying while it was forwarded to: the proxy's 503 says when to come back too.
            if status.startswith("503") and not any(name.lower() == "retry-after" for name, _ in headers):
                headers = [*headers, ("Retry-After", str(supervisor.retry_after()))]
            return start_response(status, headers, exc_info)

        if supervisor.serving:
            return app(environ, with_retry_after)
        retry_after = supervisor.retry_after()
        body = json.dumps({"error": {"type": "daemon", "field": None, "message":
                                     f"the model worker is restarting after it stopped unexpectedly; "
                                     f"try again in {retry_after} s"}}).encode()
        start_response("503 Service Unavailable", [("Content-Type", "application/json"),
                                                   ("Content-Length", str(len(body))),
                                                   ("Retry-After", str(retry_after))])
        return [body]

    return guarded
