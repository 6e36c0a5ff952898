"""Pennello's own HTTP API under ``/api``. Each route parses, calls the engine, and serializes.

    $ curl -s localhost:8420/api/generate -d '{"prompt": "a red kite", "wait": true}' \\
        -H 'Content-Type: application/json'
    {"id": "…", "status": "done", "images": [{"id": "…", "url": "/api/images/…", "seed": 1234…}], …}

``POST /api/generate`` answers 202 with the queued job; ``"wait": true`` answers when the job
ended (200 done, 500 failed, 409 cancelled); ``"stream": true`` answers with server-sent events
(``job``, ``progress``…, then ``done``/``failed``/``cancelled``). Errors are
``{"error": {"type", "message", "field"}}`` with a 4xx status for anything the client can fix.
"""

from __future__ import annotations

import base64
from typing import Any, Callable

from flask import Blueprint, Response, jsonify, request, send_file

from ..request import job_event_stream, json_body, query_bool, query_int
from ..waiting import hold_while_waiting
from ..context import current_engine, current_owner, owner_filter
from ...engine.jobs import GenerateRequest, Job
from ...engine.engine import Engine
from ...engine.outputs import content_type
from ...engine.params import field_types
from ...engine.residency import parse_keep_alive
from .manage import machine_report
from .offline import offline_summary

bp = Blueprint("native", __name__, url_prefix="/api")

KEEP_ALIVE_FIELD: dict[str, Any] = {"keep_alive": (str, float)}
GENERATE_FIELDS: dict[str, Any] = {**field_types(), "stream": bool, "wait": bool, **KEEP_ALIVE_FIELD}
_STATUS_HTTP = {"done": 200, "failed": 500, "cancelled": 409}


@bp.post("/generate")
def generate() -> Any:
    body = json_body(GENERATE_FIELDS, required=("prompt",))
    stream, wait = body.pop("stream", False), body.pop("wait", False)
    keep_alive = body.pop("keep_alive", None)
    keep_s = None if keep_alive is None else parse_keep_alive(keep_alive)  # checked before queueing
    if stream or wait:
        hold_while_waiting()
    job = current_engine().submit(GenerateRequest(**body, owner=current_owner()))
    if keep_alive is not None:  # once queued: a request refused changes nothing
        current_engine().set_keep_alive(job.request.model, keep_s)
    if stream:
        return job_event_stream(job, abandon_queued(current_engine()))
    if wait:
        job.wait()
        return jsonify(job.to_dict()), _STATUS_HTTP[job.status]
    return jsonify(job.to_dict()), 202, {"Location": f"/api/jobs/{job.id}"}


def abandon_queued(engine: Engine) -> Callable[[Job], None]:
    """What to do when a streaming client leaves: a job that has not started is no longer
    wanted, so it is cancelled; running work is kept (its pictures stay in the gallery)."""

    def abandon(job: Job) -> None:
        if job.status == "queued":
            engine.cancel(job.id)

    return abandon


@bp.get("/jobs")
def list_jobs() -> Any:
    # ?mine=true: only the caller's own jobs, also for the owner, who otherwise sees every device's.
    owner = current_owner() if query_bool("mine") else owner_filter()
    return jsonify({"jobs": [job.to_dict() for job in current_engine().jobs(owner)]})


@bp.get("/jobs/<job_id>")
def get_job(job_id: str) -> Any:
    return jsonify(current_engine().get_job(job_id, owner_filter()).to_dict())


@bp.delete("/jobs/<job_id>")
def cancel_job(job_id: str) -> Any:
    return jsonify(current_engine().cancel(job_id, owner_filter()).to_dict())


@bp.get("/jobs/<job_id>/preview")
def job_preview(job_id: str) -> Any:
    """The picture a running job has drawn so far, as PNG, for its own device or the owner (404
    for anyone else, as for the job itself). 204 while there is none: queued, ended, before its
    first step, or latents its VAE cannot decode. Decoded at most once per step however often
    it is polled (:class:`...engine.preview.Preview`)."""
    engine = current_engine()
    job = engine.get_job(job_id, owner_filter())
    png = engine.runner.preview.png([job.id]) if job.status == "running" else None
    if png is None:
        return Response(status=204)
    return Response(base64.b64decode(png), mimetype="image/png", headers={"Cache-Control": "no-store"})


@bp.get("/jobs/<job_id>/events")
def job_events(job_id: str) -> Response:
    engine = current_engine()
    job = engine.get_job(job_id, owner_filter())
    hold_while_waiting()
    return job_event_stream(job, abandon_queued(engine))


# GET and DELETE share one endpoint, and so one scope: a device reaches only its own pictures
# (someone else's answer 404, as missing ones do), the owner every picture.
@bp.route("/images/<image_id>", methods=["GET", "DELETE"])
def image(image_id: str) -> Any:
    outputs = current_engine().outputs
    if request.method == "DELETE":
        outputs.delete(image_id, owner_filter())
        return jsonify({"id": image_id, "deleted": True})
    path = outputs.find(image_id, owner_filter())
    return send_file(path, mimetype=content_type(path), max_age=31536000, etag=True)


@bp.get("/outputs")
def outputs() -> Any:
    limit = query_int("limit", 50, 1, 500)
    offset = query_int("offset", 0, 0, 10**9)
    images = current_engine().outputs.gallery(owner_filter(), limit=limit, offset=offset)
    return jsonify({"images": images, "limit": limit, "offset": offset,
                    "next_offset": offset + len(images) if len(images) == limit else None})


@bp.get("/models")
def models() -> Any:
    engine = current_engine()
    # How each model's files were verified, as the installer recorded it in the store.
    how = {model.name: model.verification for model in engine.store.installed()}
    return jsonify({"models": [{**model, "verification": how.get(model["name"])} for model in engine.models()]})


@bp.post("/models/<name>/load")
def load_model(name: str) -> Any:
    engine = current_engine()
    keep_alive = (json_body(KEEP_ALIVE_FIELD) if request.content_length else {}).get("keep_alive")
    keep_s = None if keep_alive is None else parse_keep_alive(keep_alive)
    described = engine.load(name)
    if keep_alive is not None:
        engine.set_keep_alive(name, keep_s)
        described = next((m for m in engine.ps() if m["name"] == name), described)
    return jsonify(described)


@bp.post("/models/<name>/unload")
def unload_model(name: str) -> Any:
    return jsonify(current_engine().unload(name))


@bp.get("/ps")
def ps() -> Any:
    return jsonify(machine_report(current_engine()))


@bp.get("/progress")
def progress() -> Any:
    return jsonify(visible_progress(current_engine()))


def visible_progress(engine: Engine) -> dict[str, Any]:
    """The device's progress as the caller may see it: a paired device sees that the device is
    busy and how far the batch is, but only its own job ids (never whose or what the others are)."""
    now = engine.progress()
    owner = owner_filter()
    if owner is not None:
        mine = {job.id for job in engine.jobs(owner)}
        now["jobs"] = [job_id for job_id in now["jobs"] if job_id in mine]
    return now


@bp.get("/health")
def health() -> Any:
    return jsonify({**current_engine().health(), "offline": offline_summary()})
