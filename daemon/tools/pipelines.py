"""Saved pipelines: generate → enhance → upscale → copyright check, by name.

A saved pipeline is stored as one table of ``<config dir>/pipelines.toml``; its prompt may hold a
``{subject}`` slot filled in when it runs::

    [poster]
    prompt = "{subject}, art nouveau poster"
    n = 2
    seed = 7
    enhance = true
    upscale = 4          # 2, 4 or 8; absent: no upscaling
    check = true         # require the copyright check and report its flags

Stages run in that fixed order: the model draws, auto-enhance corrects each picture before it
is saved, the upscaler enlarges it (saved again, with a record naming the picture it came from),
and every saved picture passes the copyright post-step when ``[copyright] reference_dir`` is set.
(:class:`SavedPipeline` in the code, so it is not taken for a diffusers pipeline.)

    >>> pipeline = SavedPipeline.from_dict("poster", {"prompt": "{subject}, poster", "upscale": 2})
    >>> pipeline.render_prompt("a fox")
    'a fox, poster'
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from pennello.errors import ConfigError, NotFoundError, PennelloError, RequestError
from pennello.files import write_atomic

from ..engine.jobs import GenerateRequest
from ..engine.params import IMAGE_FORMATS, GenerationParams, check, field_types, values
from .upscale import SCALES, upscale, upscalers

PIPELINES_FILE = "pipelines.toml"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass(frozen=True, kw_only=True)
class SavedPipeline(GenerationParams):
    """A saved pipeline: the generation parameters (its prompt may contain ``{subject}``) and the
    stages after generating."""

    name: str
    upscale: int | None = None  # 2, 4 or 8
    upscale_method: str = "lanczos"
    check: bool = False

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> "SavedPipeline":
        """Raises:
            RequestError: naming the offending field (bad name, unknown key, wrong type or value).
        """
        if not _NAME_RE.match(name):
            raise RequestError("a pipeline name is 1-64 lower-case letters, digits, - or _", field="name")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "name"}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise RequestError(f"unknown field(s): {', '.join(unknown)}; accepted: {', '.join(fields)}",
                               field=unknown[0])
        types: dict[str, Any] = {**field_types(), "upscale": int, "upscale_method": str, "check": bool}
        for key, value in data.items():
            expected = (int, float) if types[key] is float else types[key]
            if value is not None and (not isinstance(value, expected)
                                      or (isinstance(value, bool) and expected is not bool)):
                raise RequestError(f"{key} has the wrong type ({type(value).__name__})", field=key)
        if not isinstance(data.get("prompt"), str) or not data["prompt"].strip():
            raise RequestError("prompt is required", field="prompt")
        if data.get("decoder") is not None:
            check("decoder", data["decoder"])  # a choice of two: a saved typo would fail every run
        if data.get("format", "png") not in IMAGE_FORMATS:
            raise RequestError(f"format must be one of {', '.join(IMAGE_FORMATS)}", field="format")
        if data.get("upscale") is not None and data["upscale"] not in SCALES:
            raise RequestError(f"upscale must be one of {', '.join(map(str, SCALES))}", field="upscale")
        if data.get("upscale_method", "lanczos") not in upscalers():
            raise RequestError(f"upscale_method must be one of {', '.join(upscalers())}", field="upscale_method")
        return cls(name=name, **{key: value for key, value in data.items() if value is not None})

    def to_dict(self) -> dict[str, Any]:
        """The stored fields (defaults left out), plus the name."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return {"name": self.name, **{key: value for key, value in dataclasses.asdict(self).items()
                                      if key != "name" and value != defaults[key]}}

    def render_prompt(self, subject: str | None) -> str:
        if "{subject}" in self.prompt:
            if not subject or not subject.strip():
                raise RequestError(f"pipeline {self.name!r} has a {{subject}} in its prompt; give a subject",
                                   field="subject")
            return self.prompt.replace("{subject}", subject.strip())
        return self.prompt


class PipelineBook:
    """The saved pipelines of one pennello home (``<config dir>/pipelines.toml``)."""

    def __init__(self, config_dir: Path) -> None:
        self.path = config_dir / PIPELINES_FILE

    def all(self) -> dict[str, SavedPipeline]:
        """Raises:
            ConfigError: the file is not valid TOML or holds an invalid pipeline.
        """
        if not self.path.exists():
            return {}
        try:
            data = tomllib.loads(self.path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{self.path} is not valid TOML: {e}") from e
        pipelines = {}
        for name, table in data.items():
            try:
                if not isinstance(table, dict):
                    raise RequestError("must be a table")
                pipelines[name] = SavedPipeline.from_dict(name, table)
            except RequestError as e:
                raise ConfigError(f"{self.path}: [{name}]: {e}") from e
        return pipelines

    def get(self, name: str) -> SavedPipeline:
        pipeline = self.all().get(name)
        if pipeline is None:
            raise NotFoundError(f"no saved pipeline named {name!r}; GET /api/pipelines lists them", field="name")
        return pipeline

    def save(self, pipeline: SavedPipeline) -> None:
        """Add or replace one pipeline (the file is rewritten; comments in it are not kept)."""
        pipelines = self.all()
        pipelines[pipeline.name] = pipeline
        self._write(pipelines)

    def delete(self, name: str) -> None:
        pipelines = self.all()
        if name not in pipelines:
            raise NotFoundError(f"no saved pipeline named {name!r}", field="name")
        del pipelines[name]
        self._write(pipelines)

    def _write(self, pipelines: dict[str, SavedPipeline]) -> None:
        """The whole file again: one table per pipeline, named by it."""
        import tomli_w

        data = {name: {k: v for k, v in p.to_dict().items() if k != "name"} for name, p in pipelines.items()}
        write_atomic(self.path, tomli_w.dumps(data).encode("utf-8"))


def run_saved_pipeline(engine: Any, pipeline: SavedPipeline, subject: str | None = None, seed: int | None = None,
               owner: str = "local") -> dict[str, Any]:
    """Run every stage and wait; returns the job, the final pictures and the copyright summary.

    Raises:
        RequestError / ModelNotFoundError: from any stage, before anything is generated where
            they can be known in advance (prompt, upscaler, copyright check configured).
        PennelloError: the generation failed.
    """
    if pipeline.check:
        from ..pictures.copyright import index_for

        index_for(engine)  # 404 now when the check is off
    if pipeline.upscale:
        from .upscale import check_request

        check_request(engine, (1, 1), pipeline.upscale, pipeline.upscale_method)  # method and model
    job = engine.submit(GenerateRequest(**{
        **values(pipeline), "prompt": pipeline.render_prompt(subject), "seed": seed if seed is not None else pipeline.seed,
        "guidance": float(pipeline.guidance) if pipeline.guidance is not None else None}, owner=owner))
    job.wait()
    if job.status != "done":
        raise PennelloError(f"pipeline {pipeline.name!r}: generation {job.status}: {job.error or 'no pictures'}")
    finals = list(job.images)
    if pipeline.upscale:
        finals = []
        for image in job.images:
            with Image.open(image.path) as picture:
                source = picture.convert("RGB")
            bigger, note = upscale(engine, source, pipeline.upscale, pipeline.upscale_method, owner)
            record = {**engine.outputs.read_record(image.id), "tool": "pipeline", "pipeline": pipeline.name,
                      "from_image": image.id, "upscale": note, "width": bigger.width,
                      "height": bigger.height, "size": f"{bigger.width}x{bigger.height}"}
            for key in ("id", "url", "created", "copyright", "format"):
                record.pop(key, None)
            finals.append(engine.save_output(bigger, record, pipeline.format))
    flagged = [image.id for image in finals if image.notes.get("copyright", {}).get("flagged")]
    return {"pipeline": pipeline.name, "status": "done", "job": job.to_dict(),
            "images": [image.to_dict() for image in finals],
            "copyright": {"checked": "copyright" in (finals[0].notes if finals else {}), "flagged": flagged}}
