"""Pennello: a private image-generation appliance that never sends prompts or pictures away.

The package root holds the small shared core: paths, config, errors, logging and the CLI entry.
The parts live in subpackages: ``pennello.installer`` (signed manifests, verified store, bundles),
``pennello.daemon`` (warm models and the HTTP API) and ``pennello.tray`` (the tray icon).

    >>> import pennello
    >>> pennello.__version__  # doctest: +SKIP
    '0.1.0'
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pennello")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
