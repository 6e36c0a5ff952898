"""The installer: signed model manifests, a verified content-addressed store, and bundles.

It depends on nothing else of pennello's but the shared core (paths, config, errors). The daemon
reads the verified store through ``Store`` and never fetches.

    >>> from pennello.config import Config
    >>> from pennello.paths import get_paths
    >>> from pennello.installer import Installer, Store
    >>> paths = get_paths().ensure()  # doctest: +SKIP
    >>> Installer(paths, Config()).install("pennello-tiny")  # doctest: +SKIP
    >>> Store(paths).get("pennello-tiny").path  # doctest: +SKIP
"""

from pennello.installer.catalog import Catalog
from pennello.installer.install import Installer, ensure_embedded_default
from pennello.installer.manifest import FileEntry, Manifest
from pennello.installer.store import InstalledModel, Store
from pennello.installer.trust import TrustPolicy

__all__ = ["Catalog", "FileEntry", "InstalledModel", "Installer", "Manifest", "Store", "TrustPolicy",
           "ensure_embedded_default"]
