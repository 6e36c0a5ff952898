"""Fuzz the daemon's whole HTTP API from its own OpenAPI description, with schemathesis.

    python bench/fuzz_api.py                   # 300 examples per operation and mode, seed 8420
    python bench/fuzz_api.py --examples 20     # a quick pass

Starts a real daemon on 127.0.0.1 (the embedded tiny model, small limits so that what the fuzzer
asks for stays cheap), loads ``/api/openapi.json`` from it, and for every operation generates
``--examples`` requests that follow the description (positive) and as many that break it
(negative). Every response must pass the checks in :data:`CHECKS`: no 5xx, a documented status
code and content type, a body that matches its schema, and invalid input refused with a 4xx.
Writes ``bench/results/fuzz.json`` (operations, test cases, responses by status class, server
errors and other failures found, duration) in the bench format; ``tests/test_fuzz.py`` runs the
same loop with a few examples.

Two things are changed in the fuzzer's copy of the description (:func:`cheap_spec`): sizes
(the description truthfully allows 2048 pixels a side, and a 1024x1024 picture takes minutes on
a small CPU) and uploads (small real pictures, so the tools get past decoding). docs/fuzz.md
has the coverage, the exclusions and the figures of the last full run.
"""

from __future__ import annotations

import argparse
import base64
import copy
import io
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from pennello.config import Config

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection]
# A multipart form carries only strings and files: a "wrong type" (a number or null where a
# string is described) cannot be sent, so the negative case arrives valid or with the field left
# out, and negative_data_rejection would flag requests that were in fact valid.
MULTIPART_CHECKS = [check for check in CHECKS if check is not negative_data_rejection]
# Operations left out, with why. Nothing here stops the daemon or deletes what later cases need:
# revoking, cancelling and unloading act on ids and names the fuzzer makes up (404), and the
# pairing routes' rate limit only ever answers the pairing route itself (a documented 429).
EXCLUDED: dict[str, str] = {}
CHEAP_SIDE = 128  # largest width/height the fuzzer asks for (a 128x128 picture takes ~1 s)
REQUEST_TIMEOUT_S = 120


def fuzz_config() -> Config:
    """Small limits, so that even valid requests stay cheap; the description follows them."""
    config = Config()
    for section, changes in {
        "engine": {"max_steps": 4, "max_n": 2, "queue_size": 16, "max_prompt_chars": 300},
        "images": {"max_upload_bytes": 256 * 1024, "max_upload_pixels": 256 * 256,
                   "max_output_pixels": 1024 * 1024},
        "server": {"max_body_bytes": 1024 * 1024},
    }.items():
        config = config.replace(section, **changes)
    return config


def cheap_spec(spec: dict[str, Any], side: int = CHEAP_SIDE) -> dict[str, Any]:
    """A copy of ``spec`` whose requests ask for pictures at most ``side`` pixels a side
    (``width``/``height`` and OpenAI's ``size``), and whose uploads are mostly real small
    pictures (:func:`pictures`) so that the fuzzer gets past decoding into the tools themselves.
    Response schemas are left as described."""
    spec = copy.deepcopy(spec)
    schemas = list(_request_schemas(spec))
    # schemathesis 4.32 cannot build negative cases for a custom-format file inside an array
    # (OpenAI's image[]); those keep its own file values.
    in_arrays = {id(schema["items"]) for schema in schemas if isinstance(schema.get("items"), dict)}
    for schema in schemas:
        if schema.get("contentMediaType") == "application/octet-stream" and id(schema) not in in_arrays:
            schema["format"] = PICTURE
        elif schema.get("contentEncoding") == "base64":
            schema["format"] = PICTURE_BASE64
        properties = schema.get("properties") or {}
        for name in ("width", "height"):
            if isinstance(properties.get(name), dict):
                properties[name]["maximum"] = min(side, properties[name].get("maximum", side))
        if isinstance(properties.get("size"), dict) and "pattern" in properties["size"]:
            properties["size"]["pattern"] = f"^(auto|(64|{side})x(64|{side}))$"
    return spec


PICTURE, PICTURE_BASE64 = "pennello-picture", "pennello-picture-base64"


@st.composite
def _picture(draw: Any) -> bytes:
    width, height = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    fmt, mode = draw(st.sampled_from([("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "L"), ("JPEG", "RGB"),
                                      ("WEBP", "RGB"), ("WEBP", "RGBA")]))
    color = draw(st.tuples(*[st.integers(0, 255)] * len(mode)))
    buffer = io.BytesIO()
    Image.new(mode, (width, height), color if len(color) > 1 else color[0]).save(buffer, fmt)
    return buffer.getvalue()


def pictures() -> st.SearchStrategy[bytes]:
    """Small PNG, JPEG and WebP files; sometimes a corrupt one or random bytes."""
    return st.one_of(_picture(), _picture().map(lambda data: data[: len(data) // 2]), st.binary(max_size=64))


schemathesis.openapi.format(PICTURE, pictures())
schemathesis.openapi.format(PICTURE_BASE64, pictures().map(lambda data: base64.b64encode(data).decode()))


def _request_schemas(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every schema a request body uses, following ``$ref``s into components once each."""
    components = spec.get("components", {}).get("schemas", {})
    todo = [media["schema"] for item in spec["paths"].values() for op in item.values()
            for media in op.get("requestBody", {}).get("content", {}).values()]
    seen: set[int] = set()
    while todo:
        node = todo.pop()
        if isinstance(node, list):
            todo += node
        elif isinstance(node, dict) and id(node) not in seen:
            seen.add(id(node))
            yield node
            ref = node.get("$ref", "")
            if ref.startswith("#/components/schemas/"):
                todo.append(components[ref.rsplit("/", 1)[1]])
            todo += [value for key, value in node.items() if key != "$ref"]


@dataclass
class Tally:
    """What one operation (or a whole run) got: cases sent, statuses, failures found."""

    cases: int = 0
    statuses: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    # The fuzzer itself could not generate a mode's cases (a schemathesis limitation, not a
    # daemon failure); reported so that lost coverage is visible.
    generation_errors: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.cases += other.cases
        self.statuses.update(other.statuses)
        self.failures += other.failures
        self.generation_errors += other.generation_errors

    @property
    def by_class(self) -> dict[str, int]:
        classes: Counter = Counter()
        for status, count in self.statuses.items():
            classes[f"{str(status)[0]}xx" if isinstance(status, int) else status] += count
        return dict(sorted(classes.items()))

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items()
                   if isinstance(status, int) and status >= 500)


def load_schema(base_url: str, side: int = CHEAP_SIDE) -> Any:
    """The daemon's served description, narrowed by :func:`cheap_spec`, as a schemathesis schema."""
    spec = requests.get(f"{base_url}/api/openapi.json", timeout=30).json()
    return schemathesis.openapi.from_dict(cheap_spec(spec, side))


def operations(schema: Any) -> list[Any]:
    ops = [result.ok() for result in schema.get_all_operations()]
    return sorted((op for op in ops if op.label not in EXCLUDED), key=lambda op: op.label)


def fuzz_operation(operation: Any, base_url: str, examples: int, seed: int,
                   modes: tuple[GenerationMode, ...] = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)) -> Tally:
    """Send ``examples`` generated requests per mode to ``operation`` and check each response.

    Failures are collected, not raised, so one run reports every problem it met.
    """
    tally = Tally()
    session = requests.Session()

    def one(case: Any) -> None:
        tally.cases += 1
        try:
            response = case.call(base_url=base_url, session=session, timeout=REQUEST_TIMEOUT_S)
        except requests.RequestException as e:
            tally.statuses["no response"] += 1
            tally.failures.append(f"{operation.label}: no response ({e.__class__.__name__}: {e})\n"
                                  f"  reproduce: {case.as_curl_command()}")
            return
        tally.statuses[response.status_code] += 1
        try:
            multipart = (case.media_type or "").startswith("multipart/")
            case.validate_response(response, checks=MULTIPART_CHECKS if multipart else CHECKS)
        except (FailureGroup, AssertionError) as e:  # one or more checks failed
            tally.failures.append(f"{operation.label} -> {response.status_code}: {_first_lines(e)}\n"
                                  f"  reproduce: {case.as_curl_command()}")

    with session:
        for mode in modes:
            error = _run(mode, operation, one, examples, seed)
            if error:
                tally.generation_errors.append(f"{operation.label} ({mode.value}): {error}")
    return tally


def _run(mode: GenerationMode, operation: Any, one: Callable[[Any], None], examples: int, seed: int) -> str | None:
    """Hypothesis drives ``one`` over ``examples`` cases of ``mode``, reproducibly from ``seed``.

    Returns what stopped generation early, if anything (``one`` itself never raises).
    """
    strategy = operation.as_strategy(generation_mode=mode)
    test = settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate],
                    suppress_health_check=list(HealthCheck))(hypothesis.seed(seed)(hypothesis.given(strategy)(one)))
    try:
        test()
    except hypothesis.errors.Unsatisfiable:
        pass  # nothing negative to generate for this operation (e.g. no parameters)
    except Exception as e:  # e.g. schemathesis 4.32 cannot negate a custom-format file in an array
        return f"{e.__class__.__name__}: {e}"
    return None


def _first_lines(error: BaseException, lines: int = 6) -> str:
    return "\n    ".join(str(error).strip().splitlines()[:lines])


def start_daemon(home: Path, config: Config) -> tuple[str, Callable[[], None]]:
    """A real daemon on 127.0.0.1 over ``home``; returns its URL and a stop function."""
    from pennello.daemon import Engine, create_app, start_background_server
    from pennello.installer import ensure_embedded_default

    from pennello.paths import get_paths

    paths = get_paths(home).ensure()
    ensure_embedded_default(paths, config)
    engine = Engine(config, paths)
    engine.start()
    _, url, stop_server = start_background_server(create_app(config, engine, paths), "127.0.0.1", 0)

    def stop() -> None:
        stop_server()
        engine.stop(cancel_running=True)

    return url, stop


def main() -> None:
    import tempfile

    from _common import row, write_result

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=300, help="generated requests per operation and mode")
    parser.add_argument("--seed", type=int, default=8420)
    parser.add_argument("--no-write", action="store_true", help="print the summary, keep fuzz.json")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pennello-fuzz-") as tmp:
        url, stop = start_daemon(Path(tmp), fuzz_config())
        try:
            ops = operations(load_schema(url))
            total, per_operation = Tally(), {}
            for op in ops:
                tally = fuzz_operation(op, url, args.examples, args.seed)
                per_operation[op.label] = {"cases": tally.cases, "by_status": dict(sorted(
                    (str(k), v) for k, v in tally.statuses.items())), "failures": len(tally.failures)}
                print(f"{op.label:45} {tally.cases:5} cases  {tally.by_class}  failures {len(tally.failures)}",
                      flush=True)
                total.add(tally)
        finally:
            stop()
    seconds = time.perf_counter() - started
    for failure in total.failures + total.generation_errors:
        print(failure)
    summary = {"operations": len(ops), "test_cases": total.cases, "responses_by_class": total.by_class,
               "server_errors": total.server_errors, "check_failures": len(total.failures),
               "generation_errors": total.generation_errors,
               "duration_s": round(seconds, 1), "examples_per_operation_and_mode": args.examples,
               "seed": args.seed, "schemathesis": schemathesis.__version__,
               "checks": [check.__name__ for check in CHECKS], "excluded": EXCLUDED}
    print(json.dumps(summary, indent=2))
    if args.no_write:
        return
    rows = [row("operations fuzzed", len(ops), ""), row("test cases", total.cases, ""),
            row("server errors (5xx)", total.server_errors, "", goal="0"),
            row("check failures", len(total.failures), "", goal="0"),
            row("duration", seconds, "s")]
    write_result("fuzz", rows, **summary, operations_detail=per_operation,
                 failures=total.failures[:50])


if __name__ == "__main__":
    main()
