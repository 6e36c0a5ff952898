"""Finding pennello daemons on the local network, and talking to one whose certificate is pinned.

A daemon in LAN mode advertises ``_pennello._tcp.local.`` over mDNS/DNS-SD. Its TXT record says
what it offers and, when it serves TLS, the sha256 fingerprint of its self-signed certificate.
That fingerprint is the daemon's identity (as a Syncthing device ID is): a client pins it at
pairing time and refuses any other certificate afterwards, without trusting any CA.

    >>> from pennello.discover import browse, pinned_session
    >>> services = browse(timeout=2.0)  # doctest: +SKIP
    >>> s = services[0]; s.name, s.url, s.fingerprint  # doctest: +SKIP
    ('Pennello on studio', 'https://192.168.1.20:8420', 'sha256:3b1f…')
    >>> session = pinned_session(s.fingerprint)  # doctest: +SKIP
    >>> session.get(s.url + "/api/health").json()["ready"]  # doctest: +SKIP
    True

TXT keys (each ``key=value`` at most 255 bytes, RFC 6763): ``v`` API version, ``id`` stable
instance id, ``path`` API root, ``apis`` comma list, ``auth`` and ``tls`` (``0``/``1``), ``fp``
certificate fingerprint, ``models`` comma list of installed models (``mt=1`` when it was cut
short to fit; ask ``/api/models`` for all of them), ``loaded`` comma list of the models loaded
warm right now (``lt=1`` when cut short). The daemon re-announces the record when a model is
loaded or unloaded, or one is installed or removed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import queue
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import ifaddr
import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool
from zeroconf import IPVersion, ServiceBrowser, ServiceListener, Zeroconf
from zeroconf import InterfaceChoice

from pennello.errors import TrustError

log = logging.getLogger(__name__)

SERVICE_TYPE = "_pennello._tcp.local."
API_VERSION = "1"
TXT_MAX_BYTES = 255  # one TXT string: a length byte, then at most 255 bytes of ``key=value``
_FINGERPRINT_RE = re.compile(r"sha256:[0-9a-f]{64}")
_ID_RE = re.compile(r"[0-9a-f]{32}")
_RESOLVE_MS = 1500  # per service: how long to wait for its SRV/TXT/address records


# --- fingerprints and pinning -----------------------------------------------------------------

def fingerprint(der: bytes) -> str:
    """The identity of a certificate: ``"sha256:<hex>"`` of its DER bytes."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


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
    if not _FINGERPRINT_RE.fullmatch(pinned.lower()):
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


# --- TXT record -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Service:
    """One pennello daemon found on the network."""

    name: str  # "Pennello on studio"
    id: str  # stable instance id (32 hex digits): the same daemon under a new name or address
    addresses: tuple[str, ...]  # IPv4 first; IPv6 link-local ones carry "%scope"
    port: int
    path: str = "/api"
    apis: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    models_truncated: bool = False
    loaded: tuple[str, ...] = ()  # models warm right now: a picture from these starts at once
    auth: bool = True
    tls: bool = False
    fingerprint: str | None = None

    @property
    def url(self) -> str:
        """Base URL on the first address (``https://`` when the daemon serves TLS)."""
        host = self.addresses[0]
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


def encode_txt(instance_id: str, fingerprint: str | None, models: Sequence[str], tls: bool,
               auth_required: bool, apis: Sequence[str] = ("native", "openai", "a1111"),
               path: str = "/api", loaded: Sequence[str] = ()) -> dict[str, str]:
    """The TXT properties a daemon advertises; ``models`` and ``loaded`` are cut to fit one TXT
    string each."""
    txt = {"v": API_VERSION, "id": instance_id, "path": path, "apis": ",".join(apis),
           "auth": "1" if auth_required else "0", "tls": "1" if tls else "0"}
    if fingerprint:
        txt["fp"] = fingerprint
    for key, flag, names in (("models", "mt", models), ("loaded", "lt", loaded)):
        kept: list[str] = []
        for name in names:
            if len(f"{key}={','.join([*kept, name])}".encode()) > TXT_MAX_BYTES:
                txt[flag] = "1"
                break
            kept.append(name)
        txt[key] = ",".join(kept)
    too_long = [key for key, value in txt.items() if len(f"{key}={value}".encode()) > TXT_MAX_BYTES]
    if too_long:
        raise ValueError(f"TXT value(s) longer than {TXT_MAX_BYTES} bytes: {', '.join(too_long)}")
    return txt


def decode_txt(name: str, addresses: Sequence[str], port: int,
               properties: Mapping[bytes | str, bytes | str | None]) -> Service:
    """Build a :class:`Service` from a resolved record.

    Raises:
        ValueError: the record is not a pennello service this client understands (the message
            says which key is wrong).
    """
    txt = {_text(k): _text(v) for k, v in properties.items()}
    if txt.get("v") != API_VERSION:
        raise ValueError(f"unsupported API version v={txt.get('v')!r}")
    if not _ID_RE.fullmatch(txt.get("id", "")):
        raise ValueError(f"bad instance id {txt.get('id')!r}")
    flags = {key: _flag(txt, key) for key in ("auth", "tls")}
    fp = txt.get("fp") or None
    if fp is not None and not _FINGERPRINT_RE.fullmatch(fp):
        raise ValueError(f"bad fingerprint fp={fp!r}")
    if flags["tls"] and fp is None:
        raise ValueError("tls=1 without a certificate fingerprint")
    if not addresses or not 0 < port < 65536:
        raise ValueError("no address or port")
    return Service(name=name.removesuffix("." + SERVICE_TYPE), id=txt["id"],
                   addresses=tuple(sorted(addresses, key=lambda a: (":" in a, a))), port=port,
                   path=txt.get("path") or "/api", apis=_list(txt.get("apis")),
                   models=_list(txt.get("models")), models_truncated=txt.get("mt") == "1",
                   loaded=_list(txt.get("loaded")),
                   auth=flags["auth"], tls=flags["tls"], fingerprint=fp)


def _text(value: bytes | str | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="strict")
    return value or ""


def _flag(txt: Mapping[str, str], key: str) -> bool:
    if txt.get(key) not in ("0", "1"):
        raise ValueError(f"{key}={txt.get(key)!r}: expected 0 or 1")
    return txt[key] == "1"


def _list(value: str | None) -> tuple[str, ...]:
    return tuple(part for part in (value or "").split(",") if part)


# --- interfaces -------------------------------------------------------------------------------

def zeroconf_interfaces(interfaces: Sequence[str]) -> tuple[Any, IPVersion]:
    """Translate interface names or addresses into python-zeroconf's ``interfaces`` argument.

    Args:
        interfaces: e.g. ``("eth0",)`` or ``("192.168.1.20",)``; empty means every interface but
            loopback (multicast to ff02::fb over ``lo`` fails and zeroconf logs it on every send).

    Returns:
        the ``interfaces`` value and the IP version to use (IPv4 only when no IPv6 address is
        among them).

    Raises:
        ValueError: a name that is neither a local interface nor an IP address.
    """
    adapters = {adapter.nice_name: adapter for adapter in ifaddr.get_adapters()}
    if not interfaces:
        interfaces = [name for name, adapter in adapters.items()
                      if adapter.ips and not all(_loopback(ip) for ip in adapter.ips)]
        if not interfaces:
            return InterfaceChoice.All, IPVersion.All
    chosen: list[Any] = []
    for item in interfaces:
        if item in adapters:
            adapter = adapters[item]
            chosen += [ip.ip for ip in adapter.ips if ip.is_IPv4]
            chosen += [(ip.ip, adapter.index) for ip in adapter.ips if ip.is_IPv6]
            continue
        try:
            ipaddress.ip_address(item.split("%")[0])
        except ValueError:
            raise ValueError(f"{item!r} is neither a network interface ({', '.join(sorted(adapters))}) "
                             f"nor an IP address") from None
        chosen.append(item)
    has_v6 = any(not isinstance(entry, str) or ":" in entry for entry in chosen)
    return chosen, IPVersion.All if has_v6 else IPVersion.V4Only


def _loopback(ip: Any) -> bool:
    address = ip.ip if ip.is_IPv4 else ip.ip[0]
    return ipaddress.ip_address(address.split("%")[0]).is_loopback


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
