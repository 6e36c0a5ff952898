"""The job journal: text-to-image jobs kept on disk until they end, so a crash loses none of them.

Each generate job the engine accepts is written to ``state_dir/jobs/<id>.json`` (mode 0600: it
holds the prompt) and removed when the job ends, however it ends. Only a process that dies
leaves files behind (an orderly stop ends every job, cancelling what it does not finish): the
next engine start queues those jobs again under their own ids and owners (:meth:`Journal.recover`),
so a client polling ``GET /api/jobs/<id>`` across a model worker's crash sees its job finish.
A job whose pictures were partly saved when the process died is made again whole. Edits and
upscales are not journaled: their uploaded pictures live in memory only.

The files are not fsynced: they must outlive the process, not the machine (a power cut also
ends every client's wait).

    >>> journal = Journal(paths.state_dir / "jobs")  # doctest: +SKIP
    >>> journal.add(job)  # removed again once the job ends  # doctest: +SKIP
    >>> [job.id for job in journal.recover()]  # after a crash  # doctest: +SKIP
    ['4f0c…']
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pennello.files import write_atomic

from .jobs import GenerateRequest, Job
from .params import values

log = logging.getLogger(__name__)


class Journal:
    """The files of the generate jobs that have not ended, in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def add(self, job: Job) -> None:
        """Keep ``job`` on disk until it ends (when the disk refuses, it runs all the same)."""
        record = {"id": job.id, "owner": job.request.owner, "request": values(job.request),
                  "seeds": job.seeds, "created": job.created}
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(self._path(job.id), json.dumps(record).encode(), mode=0o600, durable=False)
        except OSError as e:  # e.g. a full disk: the job is only not crash-proof
            log.warning("job %s is not journaled, a crash would lose it: %s", job.id, e)
            return
        job.on_end(lambda: self._path(job.id).unlink(missing_ok=True))

    def recover(self) -> list[Job]:
        """The jobs a process that died left unfinished, oldest first, their files removed (the
        caller journals those it queues again). A file that does not read is logged and dropped."""
        jobs = []
        for path in self.directory.glob("*.json") if self.directory.is_dir() else ():
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                if record["id"] != path.stem:  # the id names the file it is removed as
                    raise ValueError(f"the id {record['id']!r} does not match the file name")
                request = GenerateRequest(**record["request"], owner=record["owner"])
                jobs.append(Job(request, list(record["seeds"]), id=record["id"], created=record["created"]))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("dropping the unreadable journaled job %s: %s", path.name, e)
            path.unlink(missing_ok=True)
        return sorted(jobs, key=lambda job: job.created)

    def _path(self, job_id: str) -> Path:
        return self.directory / f"{job_id}.json"
