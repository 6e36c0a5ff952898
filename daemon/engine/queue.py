"""The job queue: jobs wait here, bounded, until the device thread takes them in compatible batches.

The queue holds at most ``engine.queue_size`` waiting jobs; one more is refused with a
:class:`BusyError` (HTTP 429) whose ``retry_after`` estimates when there will be room, from the
batches ahead and the average seconds of a device call. The device thread takes the oldest job and
fills the rest of a pipeline call with queued jobs that are *compatible* (same model, size, steps
and guidance; prompts and seeds may differ), up to ``engine.max_batch`` images; a job with more
images than that spans several calls. Task jobs (edits, upscales) are taken alone.

Jobs are also remembered after they end (the last 1000), for ``GET /api/jobs/<id>``, each visible
only to its owner:

    >>> queue = JobQueue(threading.Condition(), Config(), seconds_per_call=lambda: 2.0)  # doctest: +SKIP
    >>> queue.open(); queue.submit(job); queue.take_batch()  # doctest: +SKIP
    [(job, 0)]
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict, deque
from typing import Callable

from pennello.config import Config
from pennello.errors import BusyError, DaemonError, NotFoundError

from .jobs import Job, Slot

log = logging.getLogger(__name__)

_KEPT_JOBS = 1000  # finished jobs remembered for GET /api/jobs/<id>


class JobQueue:
    """Waiting jobs and every recent job, guarded by ``cond``, the lock the engine's parts share.

    ``stopping`` is set once, under the lock, and only ever read afterwards: the device thread's wait
    checks it without taking anything else.
    """

    def __init__(self, cond: threading.Condition, config: Config,
                 seconds_per_call: Callable[[], float]) -> None:
        self.cond, self.config, self._seconds_per_call = cond, config, seconds_per_call
        self._waiting: deque[Job] = deque()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._open = False
        self.stopping = False

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def accepting(self) -> bool:
        """Whether new work is taken: the device thread was started and the engine is not stopping."""
        return self._open and not self.stopping

    def open(self) -> None:
        """Start taking jobs (the device thread is about to consume them)."""
        with self.cond:
            self._open = True

    def close(self) -> bool:
        """Stop taking jobs and cancel those that have not begun; False when it was already closed.

        A job with more images than one pipeline call takes stays queued while its first call
        runs: it has begun, so it stays for the device thread to finish (within the shutdown's grace
        period, see :meth:`cancel_all`), and its pictures are kept.
        """
        with self.cond:
            if self.stopping:
                return False
            self.stopping = True
            unstarted = [job for job in self._waiting if not job.begun]
            for job in unstarted:
                self._waiting.remove(job)
            self.cond.notify_all()
        for job in unstarted:
            job.cancel()
        return True

    def cancel_all(self) -> None:
        """Cancel every waiting job, begun or not (the shutdown's grace period ran out)."""
        with self.cond:
            waiting = list(self._waiting)
            self._waiting.clear()
            self.cond.notify_all()
        for job in waiting:
            job.cancel()

    def submit(self, job: Job) -> Job:
        """Queue a job and remember it.

        Raises:
            BusyError: the queue is full.  DaemonError: the engine is stopping or not started.
        """
        with self.cond:
            if not self.accepting:
                raise DaemonError("the engine is not running (shutting down or not started)")
            if len(self._waiting) >= self.config.engine.queue_size:
                raise BusyError(f"the queue is full ({len(self._waiting)} jobs waiting); try again shortly",
                                retry_after=self.retry_after())
            self._waiting.append(job)
            self._remember(job)
            self.cond.notify_all()
        return job

    def get_job(self, job_id: str, owner: str | None = None) -> Job:
        """Raises:
            NotFoundError: no such job, or it belongs to another owner (not told apart on purpose).
        """
        with self.cond:
            job = self._jobs.get(job_id)
        if job is None or (owner is not None and job.request.owner != owner):
            raise NotFoundError(f"no job with id {job_id!r}", field="id")
        return job

    def cancel(self, job_id: str, owner: str | None = None) -> Job:
        """Remove a queued job, or stop a running one at its next denoising step."""
        job = self.get_job(job_id, owner)
        with self.cond:
            if job in self._waiting:
                self._waiting.remove(job)
        if job.cancel():
            log.info("job %s cancelled", job.id)
        return job

    def jobs(self, owner: str | None = None) -> list[Job]:
        """Recent jobs, oldest first; with ``owner``, only theirs."""
        with self.cond:
            return [j for j in self._jobs.values() if owner is None or j.request.owner == owner]

    def retry_after(self) -> int:
        """Seconds until a full queue likely has room: the batches ahead at the average call time."""
        batches_ahead = len(self._waiting) / max(1, self.config.engine.max_batch) + 1
        return max(1, math.ceil(batches_ahead * self._seconds_per_call()))

    def take_batch(self) -> list[Slot]:
        """The head job's images plus compatible queued jobs' images, up to max_batch (``cond`` held)."""
        for job in [job for job in self._waiting if job.done]:  # cancelled via Job.cancel()
            self._waiting.remove(job)
        if not self._waiting:
            return []
        if self._waiting[0].task is not None:  # edits and upscales run alone
            return [(self._waiting.popleft(), 0)]
        key = self._waiting[0].request.batch_key()
        most = self.config.engine.max_batch
        slots: list[Slot] = []
        for job in list(self._waiting):
            if job.task is not None or job.request.batch_key() != key:
                continue
            slots += [(job, index) for index in job.schedule(most - len(slots))]
            if job.fully_scheduled:
                self._waiting.remove(job)
            if len(slots) == most:
                break
        return slots

    def _remember(self, job: Job) -> None:
        self._jobs[job.id] = job
        while len(self._jobs) > _KEPT_JOBS:
            oldest = next(iter(self._jobs.values()))
            if not oldest.done:
                break
            self._jobs.popitem(last=False)
