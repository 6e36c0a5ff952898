"""The client side: everything that talks to a daemon from outside it, over HTTP only.

=============  ==================================================================================
module         what it does
=============  ==================================================================================
``api``        :class:`Client`, one daemon's HTTP API (the CLI's ``status`` and ``generate``,
               the tray); finds the local daemon through ``daemon.json`` (:mod:`pennello.runtime`)
``discover``   browsing the LAN for daemons (mDNS) and HTTPS sessions pinned to a certificate
``remote``     pairing with a daemon on another machine and connecting to it again later
``cli``        ``pennello discover``
=============  ==================================================================================

It shares with the daemon only the core (:mod:`pennello.errors`, :mod:`pennello.runtime`, the
LAN record of :mod:`pennello.lan`); neither side imports the other.

    >>> from pennello.client import Client
    >>> Client().health()["ready"]  # doctest: +SKIP
    True
"""

from pennello.client.api import Client, ProgressCallback, save_images, sse_events

__all__ = ["Client", "ProgressCallback", "save_images", "sse_events"]
