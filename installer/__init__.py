"""The installer: signed model manifests, a trusted root that rotates keys, a verified
content-addressed store, and bundles (models, and pennello's own wheels locked and signed).

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
from pennello.installer.root import TrustedRoot, load_trusted_root, update_root
from pennello.installer.store import InstalledModel, Store
from pennello.installer.trust import TrustPolicy
from pennello.installer.wheelhouse import verify_bundle

__all__ = ["Catalog", "FileEntry", "InstalledModel", "Installer", "Manifest", "Store", "TrustPolicy",
           "TrustedRoot", "ensure_embedded_default", "load_trusted_root", "update_root", "verify_bundle"]
