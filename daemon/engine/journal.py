"""The job journal: jobs kept on disk until they end, so a crash loses none of them.

Each job the engine accepts is written to ``state_dir/jobs/<id>.json`` (mode 0600: it holds the
prompt) and removed when the job ends, however it ends. Only a process that dies leaves files
behind (an orderly stop ends every job, cancelling what it does not finish): the next engine
start queues those jobs again under their own ids and owners (:meth:`Journal.recover`), so a
client polling ``GET /api/jobs/<id>`` across a model worker's crash sees its job finish. A job
whose pictures were partly saved when the process died is made again whole.

Edits carry uploaded pictures: their task (:class:`.runner.Task`) gives a record and its pictures
(``journal_record``), kept as ``<id>.<name>.png`` next to the job (0600, removed with it), and
the tool that made the task registers how to rebuild it (:func:`add_restorer`), since the engine
does not know the tools above it. A task that gives no record (the AI upscaler's pass, whose
caller waits for the picture in memory and is told when the worker is gone) is not journaled.

The files are not fsynced: they must outlive the process, not the machine (a power cut also
ends every client's wait).

    >>> journal = Journal(paths.state_dir / "jobs")  # doctest: +SKIP
    >>> journal.add(job)  # removed again once the job ends  # doctest: +SKIP
    >>> [job.id for job in journal.recover()]  # after a crash  # doctest: +SKIP
    ['4f0c…']
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from pennello.errors import DiskSpaceError
from pennello.files import write_atomic

from .jobs import GenerateRequest, Job
from .params import values

log = logging.getLogger(__name__)

# kind -> rebuilds a task from its journal record and pictures (registered by the tools)
Restore = Callable[[GenerateRequest, dict[str, Any], dict[str, Image.Image]], Any]
_RESTORERS: dict[str, Restore] = {}


def add_restorer(kind: str, restore: Restore) -> None:
    """Tell the journal how jobs of ``kind`` get their task back (a tool, when it is imported)."""
    _RESTORERS[kind] = restore


class Journal:
    """The files of the jobs that have not ended, in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def add(self, job: Job) -> None:
        """Keep ``job`` on disk until it ends (when the disk refuses, it runs all the same)."""
        record: dict[str, Any] = {"id": job.id, "owner": job.request.owner, "request": values(job.request),
                                  "seeds": job.seeds, "created": job.created}
        pictures: dict[str, Image.Image] = {}
        if job.task is not None:
            if not hasattr(job.task, "journal_record") or job.kind not in _RESTORERS:
                return
            task_record, pictures = job.task.journal_record()
            record.update(kind=job.kind, total_steps=job.total_steps, task=task_record, pictures=list(pictures))
        paths = [*(self._picture(job.id, name) for name in pictures), self._path(job.id)]
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            for path, picture in zip(paths, pictures.values()):  # first: a record has its pictures
                write_atomic(path, _png(picture), mode=0o600, durable=False)
            write_atomic(paths[-1], json.dumps(record).encode(), mode=0o600, durable=False)
        except (OSError, DiskSpaceError) as e:  # the job is only not crash-proof (recover drops strays)
            log.warning("job %s is not journaled, a crash would lose it: %s", job.id, e)
            return
        job.on_end(lambda: [path.unlink(missing_ok=True) for path in paths])

    def recover(self) -> list[Job]:
        """The jobs a process that died left unfinished, oldest first, their files removed (the
        caller journals those it queues again). A file that does not read is logged and dropped."""
        jobs = []
        for path in self.directory.glob("*.json") if self.directory.is_dir() else ():
            try:
                jobs.append(self._job(json.loads(path.read_text(encoding="utf-8")), path.stem))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("dropping the unreadable journaled job %s: %s", path.name, e)
            path.unlink(missing_ok=True)
        for path in self.directory.glob("*.png") if self.directory.is_dir() else ():
            path.unlink(missing_ok=True)  # read by now, or left by a job whose record was never written
        return sorted(jobs, key=lambda job: job.created)

    def _job(self, record: dict[str, Any], stem: str) -> Job:
        if record["id"] != stem:  # the id names the file it is removed as
            raise ValueError(f"the id {record['id']!r} does not match the file name")
        request = GenerateRequest(**record["request"], owner=record["owner"])
        kind = record.get("kind", "generate")
        if kind == "generate":
            return Job(request, list(record["seeds"]), id=record["id"], created=record["created"])
        if kind not in _RESTORERS:
            raise ValueError(f"no tool here restores {kind!r} jobs")
        pictures = {}
        for name in record["pictures"]:
            with Image.open(self._picture(record["id"], name)) as picture:
                pictures[name] = picture.copy()  # loaded now: its file goes before the job runs
        task = _RESTORERS[kind](request, record["task"], pictures)
        return Job(request, list(record["seeds"]), id=record["id"], created=record["created"],
                   total_steps=record["total_steps"], kind=kind, task=task)

    def _path(self, job_id: str) -> Path:
        return self.directory / f"{job_id}.json"

    def _picture(self, job_id: str, name: str) -> Path:
        return self.directory / f"{job_id}.{name}.png"


def _png(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    picture.save(out, format="PNG", compress_level=1)  # lossless, and quick: it lives for one job
    return out.getvalue()
