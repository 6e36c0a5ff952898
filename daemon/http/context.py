"""The request context: what a route may ask about the app it runs in and the caller it serves.

Flask's ``current_app`` and ``g`` carry them; this module names them, so route modules import
these accessors instead of the app factory (as Flask's own ``globals.py`` does):

    >>> from pennello.daemon.http.context import current_engine  # doctest: +SKIP
    >>> current_engine().progress()  # inside a request  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from flask import current_app, g, request

from ..engine.outputs import image_id_for_call

if TYPE_CHECKING:
    from pennello.config import Config
    from pennello.paths import Paths

    from ..engine.engine import Engine
    from ..net.offline import NetworkGuard

LOCAL_OWNER = "local"
EXTENSION = "pennello"  # the key of app.extensions that holds engine, config, paths, guard, network
# The environ key holding the call id the isolated server's proxy gave a call it may send twice
# (set by the worker, which trusts only its server; a single-process daemon never sets it).
CALL_ID_ENVIRON = "pennello.call_id"


@dataclass(frozen=True)
class MachineNetwork:
    """This machine's addresses, for an app that cannot read them itself: the isolated model
    worker sees only loopback, so the server reads them for it. Without one (``None``), the app
    reads this process's interfaces."""

    addresses: Callable[[], list[str]]  # every interface address, read live (Host checks)
    lan_address: Callable[[], str | None]  # where other devices reach this machine (pairing URLs)


def call_image_id() -> str | None:
    """The picture id this call saves under, the same if its dead worker's successor gets it
    again (so a re-sent upscale replaces its first picture rather than adding one); None: a new id."""
    call_id = request.environ.get(CALL_ID_ENVIRON)
    return image_id_for_call(call_id) if call_id else None


def current_engine() -> Engine:
    return current_app.extensions[EXTENSION]["engine"]


def current_config() -> Config:
    return current_app.extensions[EXTENSION]["config"]


def current_paths() -> Paths:
    return current_app.extensions[EXTENSION]["paths"]


def current_guard() -> NetworkGuard | None:
    return current_app.extensions[EXTENSION]["guard"]


def current_network() -> MachineNetwork | None:
    return current_app.extensions[EXTENSION]["network"]


def current_owner() -> str:
    """Who is asking: ``"local"``, or the paired device the auth module identified."""
    return g.get("pennello_owner", LOCAL_OWNER)


def owner_filter() -> str | None:
    """The owner whose jobs and pictures the caller may see; None means all of them (the owner,
    by owner token or login session, or with an issued owner token; the auth module sets
    ``g.pennello_sees_all``)."""
    owner = current_owner()
    return None if g.get("pennello_sees_all", owner == LOCAL_OWNER) else owner
