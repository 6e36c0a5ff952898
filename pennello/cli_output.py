"""``--json`` for the commands scripts call: one option, one printer, one error shape.

A command decorated with :func:`json_output` takes ``--json``; under it, the command prints one
JSON document on stdout (the shapes are in docs/usage.md, "Output for scripts"), and an error
becomes ``{"error": message, "code": exit code, "type": kind}`` on stdout with that exit code,
instead of a red line on stderr. It lives in the core because the installer's commands
(``models``, ``verify``) use it as well as the daemon's.

    @click.command()
    @json_output
    def status(as_json: bool) -> None:
        if as_json:
            emit({"running": True})
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable, TypeVar

import click

from pennello.errors import PennelloError

F = TypeVar("F", bound=Callable[..., Any])


def emit(document: Any) -> None:
    """Print ``document`` as JSON on stdout (ASCII-safe, stable key order as built)."""
    click.echo(json.dumps(document, indent=2, default=str))


def error_document(error: PennelloError) -> dict[str, Any]:
    """The shape of an error under ``--json``."""
    return {"error": str(error), "code": error.exit_code, "type": error.kind,
            "field": getattr(error, "field", None)}


def json_output(command: F) -> F:
    """Add ``--json`` (passed as ``as_json``) to a click callback; under it, errors are JSON too."""

    @functools.wraps(command)
    def wrapper(*args: Any, as_json: bool, **kwargs: Any) -> Any:
        try:
            return command(*args, as_json=as_json, **kwargs)
        except PennelloError as e:
            if not as_json:
                raise
            emit(error_document(e))
            sys.exit(e.exit_code)

    option = click.option("--json", "as_json", is_flag=True,
                          help="Print one JSON document on stdout, errors included (docs/usage.md).")
    return option(wrapper)  # type: ignore[return-value]
