"""The HTTP surface's rules: which routes need which scope, and which Host and Origin headers to trust.

Every request passes three checks before its route runs (:mod:`pennello.daemon.http.routes.auth`
applies them; this module only decides, it has no Flask in it):

1. **Host** (against DNS rebinding): the ``Host`` header must name this machine: a loopback name
   or address (``localhost``, ``*.localhost``, ``127.0.0.1``, ``[::1]``), its host name,
   ``<hostname>.local``, the mDNS name it advertises, one of its interface addresses, or a name
   listed in ``server.allowed_hosts``. Any port is accepted: the name is what a rebinding page
   controls. Anything else is answered 421 ``host_not_allowed``.
2. **Origin** (against cross-site requests): a state-changing request (POST, PUT, PATCH, DELETE)
   carrying an ``Origin`` must come from the daemon's own origin or one listed in
   ``server.cors_origins``; ``Sec-Fetch-Site: cross-site`` is refused the same way (403
   ``origin_not_allowed``).
3. **Scope**: :data:`ENDPOINT_SCOPES` says what each route needs: ``public`` (anyone),
   ``device`` (a paired device's token, or more) or ``owner`` (the host's owner, with the owner
   token or the owner's login session, or an owner token issued for another device). docs/security-scopes.md shows the same table; a test keeps the two equal.

    >>> policy = HostPolicy(allowed=("studio.lan",), hostname="studio", mdns_name=None,
    ...                     addresses=lambda: ["192.168.1.20"])
    >>> [policy.allows(h) for h in ("localhost:8420", "studio.local", "192.168.1.20:8420",
    ...                             "studio.lan", "evil.example:8420")]
    [True, True, True, True, False]
    >>> origin_allowed("http://127.0.0.1:8420", "http", "127.0.0.1:8420", ())
    True
    >>> origin_allowed("https://evil.example", "http", "127.0.0.1:8420", ())
    False
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Literal, get_args
from urllib.parse import urlsplit

from pennello.errors import HostNotAllowedError, OriginNotAllowedError

Scope = Literal["public", "device", "owner"]
SCOPES: tuple[Scope, ...] = get_args(Scope)

#: The one table of who may call what, by Flask endpoint (every method of a route shares its
#: endpoint's scope). ``device`` routes show a device only its own jobs, pictures and progress.
ENDPOINT_SCOPES: Mapping[str, Scope] = {
    # anyone: the health probe, pairing itself, the API description, the page and its files
    "native.health": "public",
    "auth.pair": "public",
    "auth.pair_status": "public",
    "cluster.join": "public",  # the pairing code or a node token is the credential, checked there
    "login.login": "public",  # the one-time token in the link is the credential
    "openapi.spec": "public",
    "web.index": "public",
    "web.static": "public",
    "static": "public",
    # a paired device: make pictures, see its own
    "native.generate": "device",
    "native.list_jobs": "device",
    "native.get_job": "device",
    "native.cancel_job": "device",
    "native.job_events": "device",
    "native.job_preview": "device",
    "native.image": "device",
    "native.outputs": "device",
    "native.models": "device",
    "native.ps": "device",
    "native.progress": "device",
    "openai.generate_images": "device",
    "openai.edit_images": "device",
    "openai.list_models": "device",
    "openai.get_model": "device",
    "a1111.txt2img": "device",
    "a1111.img2img": "device",
    "a1111.sd_models": "device",
    "a1111.progress": "device",
    # A1111's settings (per caller) and catalogues, which A1111 front-ends read before generating
    "a1111.settings.cmd_flags": "device",
    "a1111.lists.embeddings": "device",
    "a1111.extras.extra_batch_images": "device",
    "a1111.extras.extra_single_image": "device",
    "a1111.lists.face_restorers": "device",
    "a1111.lists.hypernetworks": "device",
    "a1111.settings.interrupt": "device",
    "a1111.lists.latent_upscale_modes": "device",
    "a1111.lists.loras": "device",
    "a1111.settings.memory": "device",
    "a1111.settings.get_options": "device",
    "a1111.settings.set_options": "device",
    "a1111.lists.png_info": "device",
    "a1111.lists.prompt_styles": "device",
    "a1111.lists.realesrgan_models": "device",
    "a1111.settings.refresh_checkpoints": "device",
    "a1111.lists.samplers": "device",
    "a1111.lists.schedulers": "device",
    "a1111.lists.scripts": "device",
    "a1111.lists.sd_modules": "device",
    "a1111.lists.sd_vae": "device",
    "a1111.settings.skip": "device",
    "a1111.lists.upscalers": "device",
    "tools.enhance": "device",
    "tools.upscale": "device",
    "tools.edit": "device",
    "tools.batch": "device",
    "tools.styles": "device",
    "tools.copyright_check": "device",
    "tools.list_pipelines": "device",
    "tools.run_pipeline": "device",
    # the owner: devices, models in memory, the machine's state, the config
    "auth.new_code": "owner",
    "auth.login_link": "owner",
    "auth.qr_png": "owner",
    "auth.list_tokens": "owner",
    "auth.issue_token": "owner",
    "auth.revoke_token": "owner",
    "native.load_model": "owner",
    "native.unload_model": "owner",
    "installs.install": "owner",
    "manage.shutdown": "owner",
    "offline.offline_status": "owner",
    "tools.save_pipeline": "owner",
    "tools.delete_pipeline": "owner",
    "tools.copyright_status": "owner",
}

STATE_CHANGING: frozenset[str] = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: The header the web page sends its per-run secret in (see :mod:`pennello.daemon.http.routes.web`).
PAGE_HEADER = "X-Pennello-Page"
_BROWSER_HEADERS = ("Origin", "Sec-Fetch-Site", "Sec-Fetch-Mode")
_NOT_IN_HOST = re.compile(r"[@/?#\\\s]")
_ADDRESS_TTL_S = 5.0  # interface addresses are re-read at most this often (DHCP may change them)


def scope_of(endpoint: str | None) -> Scope:
    """What ``endpoint`` needs. No endpoint (no such route) needs a device, so an unpaired caller
    learns nothing about what exists; an endpoint missing from the table needs the owner."""
    if endpoint is None:
        return "device"
    return ENDPOINT_SCOPES.get(endpoint, "owner")


def host_name(host_header: str) -> str | None:
    """The name or address in a Host header, lower case, without port, brackets or final dot;
    None when it is malformed (bad port, empty)."""
    host_header = host_header.strip()
    if _NOT_IN_HOST.search(host_header):  # userinfo, paths, spaces: not a Host, whatever parses it
        return None
    try:
        parts = urlsplit(f"//{host_header}")
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        return None
    name = (parts.hostname or "").rstrip(".")
    return name or None


def is_loopback_name(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    address = _address(name)
    return address is not None and address.is_loopback


class HostPolicy:
    """Which Host headers name this daemon.

    Args:
        allowed: extra names or addresses (``server.allowed_hosts``).
        hostname: this machine's host name (``<hostname>`` and ``<hostname>.local`` are ours).
        mdns_name: the name the daemon advertises as its mDNS SRV target, or None.
        addresses: this machine's interface addresses, read again when a Host names an address
            not seen before (at most every few seconds).
    """

    def __init__(self, allowed: Iterable[str] = (), hostname: str | None = None,
                 mdns_name: str | None = None, addresses: Callable[[], Iterable[str]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        hostname = (hostname if hostname is not None else socket.gethostname()).lower().rstrip(".")
        short = hostname.split(".")[0]
        names = {hostname, short, f"{short}.local", (mdns_name or "").lower().rstrip(".")}
        names.update(_listed_name(item) for item in allowed)
        self.names = frozenset(name for name in names if name)
        self._addresses = addresses or _interface_addresses
        self._clock = clock
        self._lock = threading.Lock()
        self._known: frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address] = frozenset()
        self._read_at: float | None = None

    def allows(self, host_header: str | None) -> bool:
        name = host_name(host_header or "")
        if name is None:
            return False
        if is_loopback_name(name) or name in self.names:
            return True
        address = _address(name)
        if address is None:
            return False
        return str(address) in self.names or address in self._known or address in self._reread()

    def _reread(self) -> frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        with self._lock:
            now = self._clock()
            if self._read_at is None or now - self._read_at >= _ADDRESS_TTL_S:
                parsed = (_address(a) for a in self._addresses())
                self._known = frozenset(a for a in parsed if a is not None)
                self._read_at = now
            return self._known


def normalize_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` in lower case with the scheme's default port dropped; None for
    ``null`` or anything that is not an http(s) origin."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower().rstrip(".")
    host = f"[{host}]" if ":" in host else host
    default = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def origin_allowed(origin: str, scheme: str, host_header: str, cors_origins: Iterable[str]) -> bool:
    """Whether a page at ``origin`` may change things here: it is this daemon's own origin (the
    request's scheme and Host) or listed in ``server.cors_origins`` (``"*"`` lists every one)."""
    listed = list(cors_origins)
    if "*" in listed:
        return True
    mine = normalize_origin(origin)
    if mine is None:
        return False
    own = normalize_origin(f"{scheme}://{host_header}")
    return mine == own or mine in {normalize_origin(o) for o in listed}


def check_origin(method: str, headers: Mapping[str, str], scheme: str, host_header: str,
                 cors_origins: Iterable[str]) -> None:
    """Raises:
        OriginNotAllowedError: a state-changing request from a page of another origin.
    """
    if method.upper() not in STATE_CHANGING:
        return
    listed = tuple(cors_origins)
    origin = headers.get("Origin")
    if origin is not None and not origin_allowed(origin, scheme, host_header, listed):
        raise OriginNotAllowedError(
            f"requests from pages at {origin} may not change anything here; the owner can list "
            f"that origin in server.cors_origins (config.toml) if it is trusted", field="Origin")
    cross_site = headers.get("Sec-Fetch-Site", "").lower() == "cross-site"
    if cross_site and not (origin is not None and origin_allowed(origin, scheme, host_header, listed)):
        raise OriginNotAllowedError(
            "a cross-site page may not change anything here (Sec-Fetch-Site: cross-site); the owner "
            "can list the page's origin in server.cors_origins if it is trusted", field="Origin")


def looks_like_browser(headers: Mapping[str, str]) -> bool:
    """Browsers send these on fetches; curl, requests, the tray and the pennello CLI do not."""
    return any(headers.get(name) for name in _BROWSER_HEADERS)


def host_refusal(host_header: str | None) -> HostNotAllowedError:
    shown = host_header if host_header else "(none)"
    return HostNotAllowedError(
        f"Host {shown!r} does not name this machine, so the request is refused (it may come from a "
        f"DNS-rebinding web page); if you reach pennello by that name, add it to server.allowed_hosts "
        f"in config.toml", field="Host")


def _listed_name(item: str) -> str:
    """A ``server.allowed_hosts`` entry as :meth:`HostPolicy.allows` compares it."""
    address = _address(item.strip().strip("[]"))
    return str(address) if address is not None else (host_name(item) or "")


def _address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def _interface_addresses() -> list[str]:
    from ..net.mdns import interface_addresses

    return interface_addresses()
