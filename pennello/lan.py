"""The LAN record: how a daemon in LAN mode is advertised over mDNS/DNS-SD and how its
certificate is named. The daemon writes it (:mod:`pennello.daemon.net.mdns`,
:mod:`pennello.daemon.net.tls`); clients read it (:mod:`pennello.client.discover`). It is the
contract between the two sides, so it lives in the shared core and neither imports the other.

A daemon advertises ``_pennello._tcp.local.``. Its TXT record says what it offers and, when it
serves TLS, the sha256 fingerprint of its self-signed certificate. That fingerprint is the
daemon's identity (as a Syncthing device ID is): a client pins it at pairing time and refuses
any other certificate afterwards, without trusting any CA.

TXT keys (each ``key=value`` at most 255 bytes, RFC 6763): ``v`` API version, ``id`` stable
instance id, ``path`` API root, ``apis`` comma list, ``auth`` and ``tls`` (``0``/``1``), ``fp``
certificate fingerprint, ``models`` comma list of installed models (``mt=1`` when it was cut
short to fit; ask ``/api/models`` for all of them), ``loaded`` comma list of the models loaded
warm right now (``lt=1`` when cut short). The daemon re-announces the record when a model is
loaded or unloaded, or one is installed or removed.

    >>> txt = encode_txt("0" * 32, None, ["pennello-tiny"], tls=False, auth_required=True)
    >>> decode_txt("Pennello on studio." + SERVICE_TYPE, ["192.168.1.20"], 8420, txt).url
    'http://192.168.1.20:8420'
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import ifaddr
from zeroconf import InterfaceChoice, IPVersion

SERVICE_TYPE = "_pennello._tcp.local."
API_VERSION = "1"
TXT_MAX_BYTES = 255  # one TXT string: a length byte, then at most 255 bytes of ``key=value``
FINGERPRINT_RE = re.compile(r"sha256:[0-9a-f]{64}")
_ID_RE = re.compile(r"[0-9a-f]{32}")


def fingerprint(der: bytes) -> str:
    """The identity of a certificate: ``"sha256:<hex>"`` of its DER bytes."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


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
    if fp is not None and not FINGERPRINT_RE.fullmatch(fp):
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
