"""A1111's leniency, which the clients written against it rely on, for the ``/sdapi`` routes only.

AUTOMATIC1111 ignores request fields it does not know (SillyTavern sends its own ``url`` and
``auth`` along, Forge-only ``hr_additional_modules``, SD.Next's ``clip_skip``), and its pydantic
models take ``0``/``1`` for a flag, and its 0-or-1 integers (:data:`FLAG_INTEGERS`) take
``true``/``false`` (its own API tests send ``inpainting_mask_invert: false``). :func:`a1111_body` does the same: unknown fields are
dropped and logged once per client and field, so a typo is still visible in the log; a known
field of the wrong type is still a 400 naming it. pennello's native and OpenAI routes keep
refusing unknown fields (:func:`..request.json_body`).

    >>> _coerced("restore_faces", 1, bool), _coerced("inpainting_mask_invert", False, int)
    (True, 0)
    >>> _coerced("restore_faces", 2, bool), _coerced("steps", True, int)  # left for the type check
    (2, True)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from flask import request

from pennello.errors import RequestError

from ...context import current_owner
from ...request import FieldType, check_type, json_object

log = logging.getLogger(__name__)

_MAX_NOTED = 4096  # (client, field) pairs remembered; beyond that the memory starts over
_noted: set[tuple[str, str]] = set()
_noted_lock = threading.Lock()
FLAG_INTEGERS = frozenset({"inpainting_mask_invert"})  # integers A1111 documents as 0 or 1


def note_once(field: str, what: str) -> None:
    """Log ``what`` about ``field`` the first time this client sends it (not on every request)."""
    key = (f"{current_owner()}@{request.remote_addr}", field)
    with _noted_lock:
        if key in _noted:
            return
        if len(_noted) >= _MAX_NOTED:  # a client sending random names cannot grow this for ever
            _noted.clear()
        _noted.add(key)
    log.info("%s from %s: %s", field, key[0], what)


def _coerced(name: str, value: Any, kind: FieldType) -> Any:
    """A 0/1 integer for a flag, or a flag for a 0-or-1 integer, as A1111's models convert them."""
    if kind is bool and type(value) is int and value in (0, 1):
        return bool(value)
    if name in FLAG_INTEGERS and isinstance(value, bool):
        return int(value)
    return value


def a1111_body(fields: Mapping[str, FieldType], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The request's JSON object checked against ``fields`` as A1111 would: unknown fields ignored
    (and logged once per client), flags and 0/1 integers interchangeable.

    Raises:
        RequestError: not a JSON object, a missing field, or a known field of the wrong type.
    """
    data = json_object()  # the one parser: refuses non-objects and too-deep nesting with a 400
    body = {}
    for name, value in data.items():
        if name not in fields:
            note_once(name, "not an A1111 field pennello knows; ignored, as A1111 does")
        elif value is not None:
            body[name] = _coerced(name, value, fields[name])
    missing = [name for name in required if name not in body]
    if missing:
        raise RequestError(f"{missing[0]} is required", field=missing[0])
    for name, value in body.items():
        check_type(name, value, fields[name])
    return body
