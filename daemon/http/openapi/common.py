"""Building blocks of the OpenAPI description: schema shorthands and operations.

Every other module of this package builds on these; none of them imports another module of the
package, so the parts assemble in :func:`..openapi.build_spec` without an import circle.

    >>> obj({"id": STR}, ("id",))["required"]
    ['id']
"""

from __future__ import annotations

from typing import Any, Mapping

Schema = dict[str, Any]
STR, INT, NUM, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}
IGNORED = {"description": "Accepted for compatibility; ignored."}
# One server-sent event as SSE-aware tools parse a stream (its `data` is JSON text).
SSE_EVENT = {"type": "object", "properties": {"event": STR, "data": STR, "id": STR, "retry": INT},
             "additionalProperties": True}
ERROR_TEXT = {"400": "Invalid request; `field`/`param` names the input", "401": "A token is needed "
              "(non-loopback caller) or it is not valid", "403": "Only the owner may do this",
              "404": "Not found", "409": "The job was cancelled", "413": "Over a size limit "
              "(server.max_body_bytes or [images] in the config)", "429": "Busy (the queue is "
              "full, or server.max_waiting calls wait for pictures) or rate limited; see Retry-After",
              "500": "The job failed"}
#: ``keep_alive`` as the native API takes it (daemon/engine/residency.py parses it).
KEEP_ALIVE: Schema = {"type": ["string", "number", "null"], "examples": ["10m", "1h30m", 300, 0, -1],
                      "description": "How long the model stays loaded after this request, as in Ollama: a "
                                     "duration ('10m', '1h30m', '45s') or seconds; 0: unload once idle; "
                                     "negative: keep loaded until unloaded. Absent: the model's current "
                                     "choice (the default model stays, others engine.keep_alive_s)."}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: Mapping[str, Schema], required: tuple[str, ...] = (), extra: bool = False,
        description: str | None = None) -> Schema:
    """An object schema; ``extra``: whether properties not listed are allowed."""
    schema: Schema = {"type": "object", "properties": dict(properties), "additionalProperties": extra}
    if required:
        schema["required"] = list(required)
    if description:
        schema["description"] = description
    return schema


def nullable(kind: str, **more: Any) -> Schema:
    return {"type": [kind, "null"], **more}


def or_null(schema: Schema) -> Schema:
    """``schema`` that also takes null: request bodies treat null as absent."""
    schema = dict(schema)
    if "type" in schema:
        schema["type"] = [schema["type"], "null"]
    if "enum" in schema:
        schema["enum"] = [*schema["enum"], None]
    return schema


def fields(table: Mapping[str, Any], notes: Mapping[str, Schema]) -> dict[str, Schema]:
    """A route's field table (name -> Python type) as JSON Schema properties; null means absent."""
    return {name: {"type": [*dict.fromkeys(_JSON_TYPES[k] for k in (kind if isinstance(kind, tuple) else (kind,))),
                            "null"], **notes.get(name, {})} for name, kind in table.items()}


def reply(schema: Schema, description: str = "OK") -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def op(summary: str, tag: str, ok: Schema | None = None, status: str = "200", body: str | None = None,
       errors: tuple[str, ...] = (), public: bool = False, error_schema: str = "Error",
       params: tuple[Schema, ...] = (), responses: Mapping[str, Schema] | None = None) -> Schema:
    """One operation: its responses (``ok`` under ``status``, or ``responses``), the error codes
    it may answer, its JSON request body ``body`` (a schema name) and its parameters."""
    operation: Schema = {"summary": summary, "tags": [tag],
                         "responses": dict(responses or {status: ok or reply({"type": "object"})})}
    # A body over server.max_body_bytes is refused before any route sees it.
    for code in (*(errors if public else ("401", *errors)), *(("413",) if body else ())):
        operation["responses"][code] = reply(ref(error_schema), ERROR_TEXT[code])
    if body:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(body)}}}
    if params:
        operation["parameters"] = list(params)
    if public:
        operation["security"] = []
    return operation


def path_param(name: str, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": STR, "description": description}
