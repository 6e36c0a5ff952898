"""The device loop: the one thread that owns the device (not to be confused with the model
worker *process* of :mod:`pennello.daemon.worker`, inside which this thread runs when isolated).

It sleeps until there is work, then takes, in this order: a control action (load or unload a
model, or any call that must run where the device is, see :meth:`DeviceLoop.call`), else the next
batch from the queue, which the runner makes. Between jobs it does the housekeeping: idle models
are unloaded once their keep-alive runs out, and old outputs pruned once a day. It returns once
the engine is stopping and nothing is left for it.

    >>> loop = DeviceLoop(cond, queue, runner, residency, outputs, config)  # doctest: +SKIP
    >>> loop.start()  # doctest: +SKIP
    >>> loop.call(torch.get_num_threads)  # runs on the device thread, returns its result  # doctest: +SKIP
    1
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable

from pennello.config import Config
from pennello.errors import DaemonError

from .outputs import Outputs
from .queue import JobQueue
from .residency import Residency
from .runner import Runner

log = logging.getLogger(__name__)

_PRUNE_EVERY_S = 24 * 3600


class DeviceLoop:
    """The device thread and the control actions waiting for it (guarded by ``cond``)."""

    def __init__(self, cond: threading.Condition, queue: JobQueue, runner: Runner, residency: Residency,
                 outputs: Outputs, config: Config) -> None:
        self.cond, self.queue, self.runner, self.residency = cond, queue, runner, residency
        self.outputs, self.config = outputs, config
        self._control: deque[tuple[Callable[[], Any], Future]] = deque()
        self._thread: threading.Thread | None = None
        self._next_prune = 0.0

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Open the queue and start the thread."""
        self.queue.open()
        self._thread = threading.Thread(target=self._loop, name="pennello-engine", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; returns whether it is still running after ``timeout``."""
        if self._thread is None:
            return False
        self._thread.join(timeout)
        return self._thread.is_alive()

    def call(self, action: Callable[[], Any]) -> Any:
        """Run ``action`` on the device thread (it owns the device) and wait for its result.

        Raises:
            DaemonError: the engine is stopping or was never started.
            Exception: whatever ``action`` raised.
        """
        future: Future = Future()
        with self.cond:
            if not self.queue.accepting:
                raise DaemonError("the engine is not running (shutting down or not started)")
            self._control.append((action, future))
            self.cond.notify_all()
        return future.result()

    def _loop(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.queue or self._control or self.queue.stopping,
                                   timeout=self._idle_wait())
                control = self._control.popleft() if self._control else None
                slots = self.queue.take_batch() if control is None and self.queue else None
                if control is None and slots is None and self.queue.stopping:
                    break
            if control is not None:
                _run_control(*control)
            elif slots:
                self.runner.run(slots)
            try:
                self._housekeeping()
            except Exception:  # e.g. outputs on a vanished disk; retried later, never fatal
                log.exception("housekeeping failed")
        self.runner.drain()

    def _idle_wait(self) -> float:
        """Seconds until the next model expiry or outputs pruning is due."""
        if not self._next_prune:
            return 0.05
        expiry = self.residency.next_expiry()
        due = self._next_prune if expiry is None else min(self._next_prune, expiry)
        return max(0.05, due - time.monotonic())

    def _housekeeping(self) -> None:
        """Unload idle non-default models; prune old outputs once a day."""
        self.residency.evict_idle()
        now = time.monotonic()
        if now >= self._next_prune:
            self._next_prune = now + _PRUNE_EVERY_S
            self.outputs.prune(self.config.outputs.retention_days)


def _run_control(action: Callable[[], Any], future: Future) -> None:
    try:
        future.set_result(action())
    except Exception as e:  # handed to the caller, never fatal to the device thread
        future.set_exception(e)
