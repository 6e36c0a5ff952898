"""Request parsing and streaming helpers shared by every route module.

Each route declares the JSON fields it accepts with their types; anything else is refused with a
400 that names the field, so a typo never silently falls back to a default:

    >>> body = json_body({"prompt": str, "n": int}, required=("prompt",))  # doctest: +SKIP

``int`` fields refuse booleans; ``float`` fields accept integers. ``null`` counts as absent.
Bodies go through :func:`json_object`, which also turns JSON nested deeper than Python's parser
can recurse (any device can send ``[[[[…``) into a 400 instead of a 500.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Iterator, Mapping

from flask import Response, request, stream_with_context

from pennello.errors import RequestError

from ..engine.jobs import Job

log = logging.getLogger(__name__)

FieldType = type | tuple[type, ...]
SSE_PING_S = 0.5  # a comment line this often lets a gone client be noticed while a job waits
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               list: "a list", dict: "an object"}


def json_body(fields: Mapping[str, FieldType], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The request's JSON object, checked against ``fields`` (name -> type); absent fields omitted.

    Raises:
        RequestError: not a JSON object, unknown or missing fields, or a field of the wrong type.
    """
    data = json_object()
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise RequestError(f"unknown field(s): {', '.join(unknown)}; accepted: {', '.join(fields)}",
                           field=unknown[0])
    body = {key: value for key, value in data.items() if value is not None}
    for name in required:
        if name not in body:
            raise RequestError(f"{name} is required", field=name)
    for name, value in body.items():
        check_type(name, value, fields[name])
    return body


def json_object() -> dict[str, Any]:
    """The request's body as a JSON object.

    Raises:
        RequestError: the body is not JSON, not an object, or nested too deeply to parse.
    """
    try:
        data = request.get_json(silent=True)
    except RecursionError:  # Flask's silent only covers ValueError
        raise RequestError("the JSON body is nested too deeply") from None
    if not isinstance(data, dict):
        raise RequestError("the body must be a JSON object (Content-Type: application/json)")
    return data


def check_type(name: str, value: Any, expected: FieldType) -> None:
    """Raises RequestError naming ``name`` unless ``value`` is of the ``expected`` JSON type."""
    types = expected if isinstance(expected, tuple) else (expected,)
    accepted = types + ((int,) if float in types else ())
    if isinstance(value, bool) and bool not in types or not isinstance(value, accepted):
        wanted = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
        raise RequestError(f"{name} must be {wanted}", field=name)


def query_int(name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high]; raises RequestError naming it otherwise."""
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise RequestError(f"{name} must be an integer", field=name) from None
    if not low <= value <= high:
        raise RequestError(f"{name} must be from {low} to {high}", field=name)
    return value


def query_bool(name: str) -> bool:
    """A yes/no query parameter (``true``/``false``, ``1``/``0``…), false when absent; raises
    RequestError naming it otherwise."""
    raw = request.args.get(name, "false").lower()
    if raw not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise RequestError(f"{name} must be true or false", field=name)
    return raw in ("1", "true", "yes", "on")


def sse_event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


def job_event_stream(job: Job, on_abandon: Callable[[Job], None],
                     render: Callable[[str, dict[str, Any]], str | None] | None = None) -> Response:
    """Server-sent events for one job: ``job`` (the job as it is now), ``progress``…, then one of
    ``done``, ``failed`` or ``cancelled``.

    Args:
        on_abandon: called if the client goes away before the job ended (e.g. to cancel it).
        render: turns an event into SSE text (None skips it); defaults to :func:`sse_event`.
    """
    render = render or sse_event

    def stream() -> Iterator[str]:
        finished = False
        try:
            first = render("job", job.to_dict())
            if first:
                yield first
            for name, data in job.events(timeout=SSE_PING_S):
                text = ": ping\n\n" if name == "ping" else render(name, data)
                if text:
                    yield text
            finished = True
        finally:
            if not finished and not job.done:
                log.info("client left the event stream of job %s", job.id)
                on_abandon(job)

    return Response(stream_with_context(stream()), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
