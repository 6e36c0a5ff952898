"""The catalog: the manifests ``pennello install NAME`` can install by name.

Two places, each holding ``<name>.json`` signed envelopes:

* the shipped catalog, package data of ``pennello.manifests`` (signed with the release key);
* the user catalog, ``<config dir>/manifests/`` (where ``pennello manifest lock`` writes the
  locked copy of a shipped entry, and where an office drops its own signed manifests).

When both hold a model, the higher ``version`` wins and the user's copy wins a tie (the locked
copy of an unlocked shipped entry keeps its version). Entries are parsed here but *not trusted*:
the installer verifies the chosen envelope with the trust policy before using it.

    >>> from pennello.paths import get_paths
    >>> Catalog(get_paths()).get("pennello-tiny").manifest.source.kind
    'embedded'
"""

from __future__ import annotations

import importlib.resources
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pennello.errors import ManifestFormatError, ModelNotFoundError, PennelloError
from pennello.installer.manifest import Manifest, parse_envelope
from pennello.files import write_atomic
from pennello.paths import Paths

log = logging.getLogger(__name__)

Origin = Literal["shipped", "user"]


@dataclass(frozen=True)
class CatalogEntry:
    """One catalog manifest: its exact bytes and what they say (not yet verified)."""

    manifest: Manifest
    raw: bytes
    origin: Origin
    location: str


class Catalog:
    """The shipped and user catalogs of one pennello home."""

    def __init__(self, paths: Paths) -> None:
        self.user_dir = paths.config_dir / "manifests"

    def entries(self) -> dict[str, CatalogEntry]:
        """Every usable entry by name; unreadable files are logged and skipped."""
        chosen: dict[str, CatalogEntry] = {}
        for _, entry in self._read_all():
            if isinstance(entry, PennelloError):
                log.warning("catalog: %s", entry)
                continue
            old = chosen.get(entry.manifest.name)
            if old is None or entry.manifest.version >= old.manifest.version:
                chosen[entry.manifest.name] = entry
        return dict(sorted(chosen.items()))

    def get(self, name: str) -> CatalogEntry:
        """The catalog entry for ``name``.

        Raises:
            ModelNotFoundError: no catalog holds it (the message lists the names that exist).
            ManifestFormatError: the only file for ``name`` is not a valid manifest.
        """
        entries = self.entries()
        if name in entries:
            return entries[name]
        for stem, error in self._read_all():
            if stem == name and isinstance(error, PennelloError):
                raise error
        raise ModelNotFoundError(f"model {name!r} is not in the catalog; known models: "
                                 f"{', '.join(entries) or 'none'}")

    def write_user(self, name: str, raw: bytes) -> Path:
        """Store a signed envelope as the user's catalog entry for ``name``."""
        path = self.user_dir / f"{name}.json"
        write_atomic(path, raw)
        return path

    def _read_all(self) -> list[tuple[str, CatalogEntry | PennelloError]]:
        """(file name without .json, entry or why it is unusable) for every catalog file."""
        shipped = importlib.resources.files("pennello.manifests")
        found: list[tuple[str, CatalogEntry | PennelloError]] = []
        sources: list[tuple[Origin, list]] = [
            ("shipped", sorted((p for p in shipped.iterdir() if p.name.endswith(".json")), key=lambda p: p.name)),
            ("user", sorted(self.user_dir.glob("*.json")) if self.user_dir.is_dir() else []),
        ]
        for origin, files in sources:
            for file in files:
                stem = file.name[:-len(".json")]
                found.append((stem, _read_entry(file.read_bytes(), origin, f"{origin} catalog {file.name}", stem)))
        return found


def _read_entry(raw: bytes, origin: Origin, location: str, stem: str) -> CatalogEntry | PennelloError:
    try:
        manifest = Manifest.from_signed(parse_envelope(raw)[0])
    except ManifestFormatError as e:
        return ManifestFormatError(f"{location}: {e}")
    if manifest.name != stem:
        return ManifestFormatError(f"{location} describes model {manifest.name!r}; the file must be "
                                   f"named {manifest.name}.json")
    return CatalogEntry(manifest, raw, origin, location)
