"""Pennello: a private image-generation appliance that never sends prompts or pictures away.

The package root holds the small shared core: paths, config, errors, logging, the CLI entry,
``daemon.json`` (:mod:`pennello.runtime`) and the LAN record (:mod:`pennello.lan`). The parts live
in subpackages: ``pennello.installer`` (signed manifests, verified store, bundles),
``pennello.daemon`` (warm models and the HTTP API), ``pennello.client`` (talking to a daemon over
HTTP, finding and pairing with one on the LAN) and ``pennello.tray`` (the tray icon). The doors
are one-way: the installer imports nothing of the others, the daemon's serving code never imports the client,
and the tray and client reach the daemon over HTTP only.

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
