"""Finding pennello daemons on the local network, and talking to one whose certificate is pinned.

What a daemon advertises and how its certificate is named is :mod:`pennello.lan`, shared with
the daemon; this module is the client's side: browsing mDNS for those records, and HTTPS
sessions that accept only the pinned certificate.

    >>> from pennello.client.discover import browse, pinned_session
    >>> services = browse(timeout=2.0)  # doctest: +SKIP
    >>> s = services[0]; s.name, s.url, s.fingerprint  # doctest: +SKIP
    ('Pennello on studio', 'https://192.168.1.20:8420', 'sha256:3b1f…')
    >>> session = pinned_session(s.fingerprint)  # doctest: +SKIP
    >>> session.get(s.url + "/api/health").json()["ready"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import hmac
import logging
import queue
import time
from typing import Any, Callable, Sequence

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool
from zeroconf import ServiceBrowser, ServiceListener, Zeroconf

from pennello.errors import TrustError
from pennello.lan import FINGERPRINT_RE, SERVICE_TYPE, Service, decode_txt, fingerprint, zeroconf_interfaces

log = logging.getLogger(__name__)

_RESOLVE_MS = 1500  # per service: how long to wait for its SRV/TXT/address records


# --- fingerprints and pinning -----------------------------------------------------------------

def check_pin(der: bytes, pinned: str) -> None:
    """Raises:
        TrustError: the certificate's fingerprint is not ``pinned``.
    """
    actual = fingerprint(der)
    if not hmac.compare_digest(actual, pinned.lower()):
        raise TrustError(f"certificate fingerprint {actual} does not match the pinned {pinned}; "
                         f"the device may be an impostor or was reinstalled — re-pair")


def pinned_session(pinned: str) -> requests.Session:
    """A requests session whose HTTPS connections accept only the certificate with this fingerprint.

    The CA chain and host name are not checked (the certificate is self-signed; the pin is the
    identity). The check runs right after the TLS handshake, before any request byte is sent,
    so a token never reaches an impostor.

    Raises:
        ValueError: ``pinned`` is not ``sha256:`` followed by 64 hex digits.
    """
    if not FINGERPRINT_RE.fullmatch(pinned.lower()):
        raise ValueError(f"not a certificate fingerprint: {pinned!r} (expected sha256:<64 hex digits>)")
    session = requests.Session()
    session.mount("https://", _PinnedAdapter(pinned.lower()))
    return session


class _PinnedAdapter(HTTPAdapter):
    def __init__(self, pinned: str) -> None:
        self.pinned = pinned
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        pinned = self.pinned

        class PinnedConnection(HTTPSConnection):
            def connect(self) -> None:
                super().connect()
                try:
                    check_pin(self.sock.getpeercert(binary_form=True) or b"", pinned)
                except TrustError:
                    self.close()
                    raise
                self.is_verified = True  # verified by the pin, so urllib3 does not warn

        class PinnedPool(HTTPSConnectionPool):
            ConnectionCls = PinnedConnection

        self.poolmanager.pool_classes_by_scheme = {**self.poolmanager.pool_classes_by_scheme,
                                                   "https": PinnedPool}

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs["verify"] = False  # the pin replaces CA validation, whatever the caller asked
        return super().send(request, *args, **kwargs)


# --- browsing ---------------------------------------------------------------------------------

class _Names(ServiceListener):
    """Collects service names; resolving happens outside zeroconf's event loop thread."""

    def __init__(self) -> None:
        self.names: queue.Queue[str] = queue.Queue()

    def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.names.put(name)

    def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.names.put(name)

    def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        pass


def browse(timeout: float = 2.0, interfaces: Sequence[str] = (),
           stop_when: Callable[[Service], bool] | None = None) -> list[Service]:
    """Look for pennello daemons for ``timeout`` seconds.

    Records that are not pennello services, or whose TXT is malformed, are skipped (with a
    debug log line saying why).

    Args:
        interfaces: interface names or addresses to browse on; empty means all of them.
        stop_when: return as soon as a found service satisfies it (e.g. a known instance id).

    Returns:
        the services found, sorted by name.
    """
    started = time.perf_counter()
    choice, ip_version = zeroconf_interfaces(interfaces)
    zc = Zeroconf(interfaces=choice, ip_version=ip_version)
    found: dict[str, Service] = {}
    try:
        listener = _Names()
        browser = ServiceBrowser(zc, SERVICE_TYPE, listener)
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                name = listener.names.get(timeout=remaining)
            except queue.Empty:
                break
            service = _resolve(zc, name, min(remaining, _RESOLVE_MS / 1000))
            if service is not None:
                found[name] = service
                log.debug("found %s at %s in %.0fms", service.name, service.url,
                          (time.perf_counter() - started) * 1000)
                if stop_when and stop_when(service):
                    break
        browser.cancel()
    finally:
        zc.close()
    return sorted(found.values(), key=lambda s: s.name)


def _resolve(zc: Zeroconf, name: str, timeout_s: float) -> Service | None:
    info = zc.get_service_info(SERVICE_TYPE, name, timeout=int(timeout_s * 1000))
    if info is None:
        log.debug("ignoring %s: no SRV/TXT answer", name)
        return None
    try:
        return decode_txt(name, info.parsed_scoped_addresses(), info.port or 0, info.properties)
    except (ValueError, UnicodeDecodeError) as e:
        log.debug("ignoring %s: %s", name, e)
        return None
