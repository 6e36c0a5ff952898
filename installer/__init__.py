"""The installer: signed model manifests, a trusted root that rotates keys, a verified
content-addressed store, and bundles (models, and pennello's own wheels locked and signed).

It depends on nothing else of pennello's but the shared core (paths, config, errors). The daemon
reads the verified store through ``Store`` and never fetches: nothing here runs in the
background, and importing ``Store`` does not even import the fetching modules.

    >>> from pennello.config import Config
    >>> from pennello.paths import get_paths
    >>> from pennello.installer import Installer, Store
    >>> paths = get_paths().ensure()  # doctest: +SKIP
    >>> Installer(paths, Config()).install("pennello-tiny")  # doctest: +SKIP
    >>> Store(paths).get("pennello-tiny").path  # doctest: +SKIP
"""

import importlib
from typing import Any

# name -> module. Imported on first use, so that reading the store (what the daemon does) never
# imports the code that installs or downloads (install, sources), and installing the embedded
# model (what `pennello serve` does) never imports the code that downloads (sources):
# tests/test_consent.py checks both.
_EXPORTS: dict[str, str] = {
    "Catalog": "catalog",
    "FileEntry": "manifest",
    "InstalledModel": "store",
    "Installer": "install",
    "Manifest": "manifest",
    "Store": "store",
    "TrustPolicy": "trust",
    "TrustedRoot": "root",
    "ensure_embedded_default": "install",
    "load_trusted_root": "root",
    "update_root": "root",
    "verify_bundle": "wheelhouse",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
