"""Model manifests: what one version of a model is, file by file, in a form that can be signed.

A manifest file on disk is a JSON *envelope*::

    {"signed": {...the manifest...}, "signatures": [{"keyid": "<hex>", "sig": "<hex>"}]}

Signatures cover :func:`canonical_json` of ``signed``: UTF-8 JSON with keys sorted, no
insignificant whitespace, no NaN/Infinity, integers as integers and floats in Python's shortest
round-trip form (``1.0`` keeps its ``.0``, unlike ECMAScript's ``JSON.stringify``; see
docs/manifest-format.md for the exact rules a signer in another language must follow).
Anything outside ``signed`` (signatures, formatting, key order on disk) is not covered, so a
manifest may be re-indented without invalidating it.

    >>> m = Manifest.from_signed(example_signed())
    >>> m.name, m.version, len(m.files)
    ('example', 1, 1)
    >>> len(m.digest)
    64
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from pennello.errors import ManifestFormatError, UnsafePathError

MANIFEST_TYPE = "pennello-model"
SPEC_VERSION = 1
MANIFEST_FILENAME = "manifest.json"  # reserved at the root of every model directory

SourceKind = Literal["huggingface", "mirror", "embedded", "local"]
SOURCE_KINDS: tuple[str, ...] = typing.get_args(SourceKind)

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_HEX_RE = re.compile(r"^[0-9a-f]+$")
_WINDOWS_DEVICE_RE = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\.|$)", re.IGNORECASE)
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_MAX_PATH_CHARS = 255


def is_model_name(name: object) -> bool:
    """Whether ``name`` can name a model: what a manifest may carry, and so a single, plain
    folder name in the store (no path, NUL, surrogate or overlong name reaches the disk)."""
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None


def canonical_json(obj: Any) -> bytes:
    """The exact bytes that signatures cover (see module docstring)."""
    _reject_non_finite(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def _reject_non_finite(obj: Any) -> None:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ManifestFormatError("manifest contains a non-finite number")
    if isinstance(obj, dict):
        for value in obj.values():
            _reject_non_finite(value)
    elif isinstance(obj, list):
        for value in obj:
            _reject_non_finite(value)


def format_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime(_TIME_FORMAT)


def parse_time(text: Any, what: str) -> datetime:
    if not isinstance(text, str):
        raise ManifestFormatError(f"{what} must be a UTC time like 2026-01-31T12:00:00Z")
    try:
        return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError as e:
        raise ManifestFormatError(f"{what} {text!r} is not a UTC time like 2026-01-31T12:00:00Z") from e


def check_relative_path(path: Any) -> str:
    """Return ``path`` if it is a safe relative POSIX path inside a model directory.

    Raises:
        UnsafePathError: absolute, ``..`` or ``.`` components, backslashes, drive letters,
            empty components, control characters, Windows device names, or too long.
    """
    if not isinstance(path, str) or not path:
        raise UnsafePathError("file path must be a non-empty string")
    if len(path) > _MAX_PATH_CHARS:
        raise UnsafePathError(f"file path {path[:40]!r}… is longer than {_MAX_PATH_CHARS} characters")
    if path.startswith("/") or "\\" in path or ":" in path:
        raise UnsafePathError(f"file path {path!r} is absolute or not a POSIX path")
    if any(ord(ch) < 32 or ch == "\x7f" for ch in path):
        raise UnsafePathError(f"file path {path!r} contains control characters")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafePathError(f"file path {path!r} has an empty, '.' or '..' component")
    # Windows opens a device for these names and silently drops a trailing dot or space, so
    # such a path would not land where its entry says on every machine.
    if any(_WINDOWS_DEVICE_RE.match(part) or part[-1] in ". " for part in parts):
        raise UnsafePathError(f"file path {path!r} has a component Windows cannot store as named")
    if path == MANIFEST_FILENAME:
        raise UnsafePathError(f"file path {path!r} is reserved for the manifest itself")
    return path


@dataclass(frozen=True)
class FileEntry:
    """One file of a model: where it goes, and the only bytes accepted there."""

    path: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}

    @classmethod
    def from_dict(cls, data: Any) -> "FileEntry":
        if not isinstance(data, dict) or set(data) != {"path", "sha256", "size"}:
            raise ManifestFormatError("each file entry needs exactly path, sha256 and size")
        path = check_relative_path(data["path"])
        sha = data["sha256"]
        if not isinstance(sha, str) or not _SHA256_RE.match(sha):
            raise ManifestFormatError(f"file {path!r}: sha256 must be 64 lowercase hex digits")
        size = data["size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestFormatError(f"file {path!r}: size must be a non-negative integer")
        return cls(path, sha, size)


@dataclass(frozen=True)
class Source:
    """Where the bytes come from. The bytes are trusted only through the file hashes."""

    kind: SourceKind
    repo: str | None = None  # huggingface: "owner/name"
    revision: str | None = None  # huggingface: a full 40-hex commit, never a branch
    base_url: str | None = None  # mirror: files are at base_url + "/" + path

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in (("kind", self.kind), ("repo", self.repo),
                                  ("revision", self.revision), ("base_url", self.base_url))
                if v is not None}

    @classmethod
    def from_dict(cls, data: Any) -> "Source":
        if not isinstance(data, dict) or data.get("kind") not in SOURCE_KINDS:
            raise ManifestFormatError(f"source.kind must be one of {', '.join(SOURCE_KINDS)}")
        unknown = set(data) - {"kind", "repo", "revision", "base_url"}
        if unknown:
            raise ManifestFormatError(f"source has unknown field(s) {sorted(unknown)}")
        source = cls(**data)
        if source.kind == "huggingface":
            if not isinstance(source.repo, str) or source.repo.count("/") != 1:
                raise ManifestFormatError("source.repo must be 'owner/name' for a huggingface source")
            if not isinstance(source.revision, str) or not re.fullmatch(r"[0-9a-f]{40}", source.revision):
                raise ManifestFormatError("source.revision must be a full 40-hex commit, not a branch or tag")
        if source.kind == "mirror" and not (isinstance(source.base_url, str)
                                            and source.base_url.startswith(("http://", "https://"))):
            raise ManifestFormatError("source.base_url must be an http(s) URL for a mirror source")
        return source


@dataclass(frozen=True)
class PipelineSpec:
    """The diffusers pipeline class that loads the model, its default parameters and, for a
    model trained at one small size, ``max_native_size``: the largest width or height it draws
    well (larger sizes its family allows are drawn at most this big, then enlarged)."""

    cls: str  # e.g. "StableDiffusionPipeline"
    family: str  # a key of the daemon's model-family registry: "sd", "sdxl", "flux", ...
    defaults: dict[str, Any] = field(default_factory=dict)  # steps, guidance, width, height
    max_native_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        # Left out when absent, so manifests without it keep their digest.
        native = {} if self.max_native_size is None else {"max_native_size": self.max_native_size}
        return {"class": self.cls, "family": self.family, "defaults": dict(self.defaults), **native}

    @classmethod
    def from_dict(cls, data: Any) -> "PipelineSpec":
        if not isinstance(data, dict) or not isinstance(data.get("class"), str) \
                or not isinstance(data.get("family"), str):
            raise ManifestFormatError("pipeline needs 'class' and 'family' strings")
        defaults = data.get("defaults", {})
        if not isinstance(defaults, dict):
            raise ManifestFormatError("pipeline.defaults must be an object")
        for key in ("steps", "width", "height"):
            if key in defaults and (not isinstance(defaults[key], int) or defaults[key] <= 0):
                raise ManifestFormatError(f"pipeline.defaults.{key} must be a positive integer")
        native = data.get("max_native_size")
        if native is not None and (isinstance(native, bool) or not isinstance(native, int) or native <= 0):
            raise ManifestFormatError("pipeline.max_native_size must be a positive integer")
        return cls(data["class"], data["family"], defaults, native)


@dataclass(frozen=True)
class Manifest:
    """One signed version of one model. ``files`` is empty for an unlocked catalog entry."""

    name: str
    version: int
    created: datetime
    expires: datetime
    pipeline: PipelineSpec
    license: str
    source: Source
    files: tuple[FileEntry, ...] = ()
    locked: bool = True  # False: pins only repo+commit; `pennello manifest lock` fills in files
    trust_on_first_use: bool = False  # True: digests were recorded at first fetch, not by the publisher
    description: str = ""

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def digest(self) -> str:
        """sha256 of the canonical signed bytes: names this exact manifest everywhere."""
        return hashlib.sha256(canonical_json(self.to_signed())).hexdigest()

    def to_signed(self) -> dict[str, Any]:
        return {
            "_type": MANIFEST_TYPE,
            "spec_version": SPEC_VERSION,
            "name": self.name,
            "version": self.version,
            "created": format_time(self.created),
            "expires": format_time(self.expires),
            "pipeline": self.pipeline.to_dict(),
            "license": self.license,
            "source": self.source.to_dict(),
            "files": [f.to_dict() for f in self.files],
            "locked": self.locked,
            "trust_on_first_use": self.trust_on_first_use,
            "description": self.description,
        }

    @classmethod
    def from_signed(cls, data: Any) -> "Manifest":
        """Validate the ``signed`` part of an envelope and build a Manifest.

        Raises:
            ManifestFormatError: any field missing, of the wrong type, or unsafe.
        """
        if not isinstance(data, dict):
            raise ManifestFormatError("manifest 'signed' must be a JSON object")
        if data.get("_type") != MANIFEST_TYPE:
            raise ManifestFormatError(f"not a pennello model manifest (_type must be {MANIFEST_TYPE!r})")
        if data.get("spec_version") != SPEC_VERSION:
            raise ManifestFormatError(f"unsupported spec_version {data.get('spec_version')!r}; "
                                      f"this pennello reads {SPEC_VERSION}")
        required = {"name", "version", "created", "expires", "pipeline", "license", "source", "files"}
        missing = required - set(data)
        if missing:
            raise ManifestFormatError(f"manifest is missing {sorted(missing)}")
        name = data["name"]
        if not is_model_name(name):
            raise ManifestFormatError(f"model name {name!r} must be lowercase letters, digits, '.', '_' or '-'")
        version = data["version"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ManifestFormatError(f"manifest {name!r}: version must be a positive integer")
        if not isinstance(data["files"], list):
            raise ManifestFormatError(f"manifest {name!r}: files must be a list")
        files = tuple(FileEntry.from_dict(f) for f in data["files"])
        _check_unique_paths(name, files)
        locked = data.get("locked", True)
        if not isinstance(locked, bool) or (locked and not files):
            raise ManifestFormatError(f"manifest {name!r}: a locked manifest must list its files")
        manifest = cls(
            name=name, version=version,
            created=parse_time(data["created"], "created"),
            expires=parse_time(data["expires"], "expires"),
            pipeline=PipelineSpec.from_dict(data["pipeline"]),
            license=_string(data["license"], "license"),
            source=Source.from_dict(data["source"]),
            files=files, locked=locked,
            trust_on_first_use=_boolean(data.get("trust_on_first_use", False), "trust_on_first_use"),
            description=_string(data.get("description", ""), "description"),
        )
        # Anything we do not understand must not silently ride along under a signature.
        if set(data) - set(manifest.to_signed()):
            raise ManifestFormatError(f"manifest {name!r} has unknown field(s) "
                                      f"{sorted(set(data) - set(manifest.to_signed()))}")
        return manifest


def _boolean(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ManifestFormatError(f"{what} must be true or false")
    return value


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ManifestFormatError(f"{what} must be a string")
    return value


def _check_unique_paths(name: str, files: tuple[FileEntry, ...]) -> None:
    seen: dict[str, str] = {}
    for entry in files:
        # Case-insensitive file systems (Windows, macOS) would let two entries overwrite each other.
        key = entry.path.casefold()
        if key in seen:
            raise ManifestFormatError(f"manifest {name!r}: {entry.path!r} and {seen[key]!r} collide")
        seen[key] = entry.path
    prefixes = {p.casefold() for e in files for p in _parents(e.path)}
    clash = [e.path for e in files if e.path.casefold() in prefixes]
    if clash:
        raise ManifestFormatError(f"manifest {name!r}: {clash[0]!r} is both a file and a directory")


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def parse_envelope(raw: bytes, what: str = "manifest") -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Split manifest file bytes into the ``signed`` object and its signature list.

    Duplicate JSON keys are refused: two parsers must never disagree on what was signed. The
    same envelope carries roots and bundle manifests; ``what`` names the file in messages.

    Raises:
        ManifestFormatError: not JSON, not an envelope, or a signature entry that is not
            ``{"keyid": <64 hex>, "sig": <128 hex>}``.
    """
    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) != len(pairs):
            keys = [k for k, _ in pairs]
            raise ManifestFormatError(f"{what} repeats the JSON key {next(k for k in keys if keys.count(k) > 1)!r}")
        return result

    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=unique_keys)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestFormatError(f"{what} is not valid UTF-8 JSON: {e}") from e
    if not isinstance(data, dict) or "signed" not in data or set(data) - {"signed", "signatures"}:
        raise ManifestFormatError(f"{what} must be a JSON object with only 'signed' and 'signatures'")
    signatures = data.get("signatures", [])
    if not isinstance(signatures, list):
        raise ManifestFormatError("'signatures' must be a list of {keyid, sig} objects")
    for number, signature in enumerate(signatures, 1):
        _check_signature_entry(number, signature)
    return data["signed"], signatures


def _check_signature_entry(number: int, signature: Any) -> None:
    if not isinstance(signature, dict) or set(signature) != {"keyid", "sig"}:
        raise ManifestFormatError(f"signature {number} must be an object with exactly 'keyid' and 'sig'")
    for field_name, digits in (("keyid", 64), ("sig", 128)):
        value = signature[field_name]
        if not isinstance(value, str) or len(value) != digits or not _HEX_RE.match(value):
            raise ManifestFormatError(f"signature {number}: {field_name} must be {digits} lowercase "
                                      f"hex digits, got {str(value)[:20]!r}")


def dump_envelope(signed: dict[str, Any], signatures: list[dict[str, str]]) -> bytes:
    """Manifest file bytes: indented for people; signatures cover only canonical ``signed``."""
    return (json.dumps({"signed": signed, "signatures": signatures}, indent=2, sort_keys=True,
                       ensure_ascii=False) + "\n").encode("utf-8")


def example_signed() -> dict[str, Any]:
    """A small valid ``signed`` object, for docs and tests."""
    return {
        "_type": MANIFEST_TYPE, "spec_version": SPEC_VERSION, "name": "example", "version": 1,
        "created": "2026-01-01T00:00:00Z", "expires": "2030-01-01T00:00:00Z",
        "pipeline": {"class": "StableDiffusionPipeline", "family": "sd",
                     "defaults": {"steps": 4, "guidance": 1.0, "width": 64, "height": 64}},
        "license": "Apache-2.0", "source": {"kind": "embedded"},
        "files": [{"path": "model_index.json", "sha256": "0" * 64, "size": 2}],
        "locked": True, "trust_on_first_use": False, "description": "",
    }
