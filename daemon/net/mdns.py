"""Advertising a LAN daemon over mDNS/DNS-SD, so phones and PCs find it without typing an address.

While ``pennello serve --lan`` runs, it publishes one ``_pennello._tcp.local.`` service named
"Pennello on <hostname>" whose TXT record is described in :mod:`pennello.lan` (version,
stable instance id, API root and families, whether a token and TLS are needed, the certificate
fingerprint, installed and loaded models). The record is re-announced when a model is loaded or
unloaded (the engine calls :meth:`Advertiser.refresh`) and, checked every 30 s, when models are
installed or removed or the machine's addresses change. Stopping sends goodbye packets, so
browsers drop the service at once instead of when its TTL runs out.

    >>> advertiser = Advertiser(paths, port=8420, fingerprint=files.fingerprint,
    ...                         models=engine_models(engine))  # doctest: +SKIP
    >>> advertiser.start()  # probes for name conflicts first (about 0.9 s)  # doctest: +SKIP
    'Pennello on studio'
    >>> advertiser.stop()  # doctest: +SKIP

Names: before announcing, the advertiser probes for its name as RFC 6762 §8.1 says; when another
daemon already answers to it (two on one machine, or two machines with the same host name) ours
becomes "Pennello on studio-2" (then -3…). The instance id in the TXT record, not the name, is
what paired clients follow. Addresses are those of the chosen interfaces (IPv4 and IPv6, loopback
left out); ``server.interfaces`` limits advertising to some of them. The SRV target is
``pennello-<id prefix>.local.`` rather than the host's own ``<hostname>.local.``, so it never
competes with the address records Avahi or Bonjour already publish for the host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import re
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import ifaddr
from zeroconf import (DNSOutgoing, DNSQuestion, DNSQuestionType, IPVersion, ServiceBrowser, ServiceInfo,
                      Zeroconf)

from pennello.lan import SERVICE_TYPE, encode_txt, zeroconf_interfaces
from pennello.errors import ConfigError
from pennello.paths import Paths

if TYPE_CHECKING:
    from ..engine.engine import Engine

log = logging.getLogger(__name__)

INSTANCE_ID_FILE = "instance-id"
REFRESH_S = 30.0  # how often installed models and addresses are checked for changes
_ID_RE = re.compile(r"[0-9a-f]{32}")
_MAX_LABEL_BYTES = 63  # one DNS label: the instance name
_REGISTER_TIMEOUT_S = 20.0  # probing takes about 1 s; more means zeroconf's loop is stuck
_PROBES, _PROBE_S = 3, 0.250  # RFC 6762 §8.1
# DNS wire constants for a probe (RFC 1035 §3.2.2-4, RFC 6762 §18.2 and §5.4).
_FLAGS_AA, _TYPE_PTR, _CLASS_IN, _QU_BIT = 0x0400, 12, 1, 0x8000

#: ``() -> (installed model names, loaded model names)``
ModelsFn = Callable[[], tuple[Sequence[str], Sequence[str]]]


def instance_id(paths: Paths) -> str:
    """This installation's stable id (32 hex digits), made once and kept in the state directory.

    It survives renames and address changes, so a paired client finds "its" daemon again.
    """
    path = paths.state_dir / INSTANCE_ID_FILE
    try:
        existing = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        existing = ""
    if _ID_RE.fullmatch(existing):
        return existing
    new = secrets.token_hex(16)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(new + "\n", encoding="ascii")
    tmp.replace(path)
    log.info("made instance id %s", new)
    return new


def instance_name(hostname: str | None = None) -> str:
    """``"Pennello on <short host name>"``, cut to fit one DNS label."""
    host = (hostname or socket.gethostname()).split(".")[0] or "this computer"
    name = f"Pennello on {host}"
    while len(name.encode()) > _MAX_LABEL_BYTES:
        name = name[:-1]
    return name


def srv_target(instance: str) -> str:
    """The host name the SRV record points at (``pennello-<id prefix>.local.``); the daemon also
    answers to it in the Host header (:mod:`pennello.daemon.http.surface`)."""
    return f"pennello-{instance[:12]}.local."


def engine_models(engine: "Engine") -> ModelsFn:
    """What to advertise for ``engine``: its installed models and the loaded ones."""

    def models() -> tuple[list[str], list[str]]:
        listed = engine.models()
        return [m["name"] for m in listed], [m["name"] for m in listed if m["loaded"]]

    return models


def interface_addresses(interfaces: Sequence[str] = (), ipv6: bool = True) -> list[str]:
    """Non-loopback addresses of the chosen interfaces (all when empty), IPv4 first.

    Raises:
        ConfigError: an interface name or address that this machine does not have.
    """
    adapters = ifaddr.get_adapters()
    names = {adapter.nice_name for adapter in adapters}
    all_addresses: set[str] = set()
    chosen: set[str] = set()
    for adapter in adapters:
        for ip in adapter.ips:
            address = ip.ip if ip.is_IPv4 else ip.ip[0]
            all_addresses.add(address)
            if not interfaces or adapter.nice_name in interfaces or address in interfaces:
                chosen.add(address)
    unknown = [item for item in interfaces if item not in names and item not in all_addresses]
    if unknown:
        raise ConfigError(f"server.interfaces: {', '.join(unknown)} is not an interface or address of "
                          f"this machine (interfaces: {', '.join(sorted(names))})")
    parsed = [ipaddress.ip_address(a) for a in chosen]
    kept = [a for a in parsed if not a.is_loopback and (ipv6 or a.version == 4)]
    return [str(a) for a in sorted(kept, key=lambda a: (a.version, a.is_link_local, a))]


def lan_address(interfaces: Sequence[str] = ()) -> str | None:
    """The address other devices most likely reach this machine at, found without a socket: an
    IPv4 address of the default route's interface (Linux), else the first private IPv4 one, else
    the first of any kind."""
    addresses = interface_addresses(interfaces)
    default_iface = _default_route_interface()
    if default_iface and (not interfaces or default_iface in interfaces):
        on_default = interface_addresses((default_iface,), ipv6=False)
        if on_default:
            return on_default[0]
    private = [a for a in addresses if ipaddress.ip_address(a).version == 4
               and not ipaddress.ip_address(a).is_link_local
               and any(ipaddress.ip_address(a) in net for net in _PRIVATE_V4)]
    return (private or addresses or [None])[0]


_PRIVATE_V4 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))


def _default_route_interface() -> str | None:
    try:
        lines = Path("/proc/net/route").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000":
            return fields[0]
    return None


class Advertiser:
    """Publishes one daemon on the LAN for as long as it runs.

    Args:
        paths: for the stable instance id.
        port: the port the daemon serves on.
        fingerprint: the TLS certificate's ``sha256:…`` fingerprint; None when not serving TLS.
        models: see :data:`ModelsFn` (:func:`engine_models` for a real engine).
        interfaces: names or addresses to advertise on; empty means every interface.
        ipv6: also advertise (and answer on) IPv6; off when the server listens on IPv4 only.
        auth: whether LAN clients need a paired token (they always do today).
        hostname: for the instance name; defaults to this machine's.
        refresh_s: how often to check for changes nobody announced.
    """

    def __init__(self, paths: Paths, port: int, fingerprint: str | None, models: ModelsFn,
                 interfaces: Sequence[str] = (), ipv6: bool = True, auth: bool = True,
                 hostname: str | None = None, refresh_s: float = REFRESH_S) -> None:
        self.instance_id = instance_id(paths)
        self.name = instance_name(hostname)
        self.port, self.fingerprint, self.auth = port, fingerprint, auth
        self.interfaces, self.ipv6, self.refresh_s = tuple(interfaces), ipv6, refresh_s
        self._models = models
        self._server = srv_target(self.instance_id)
        self._zc: Zeroconf | None = None
        self._published: tuple[dict[str, str], list[str]] | None = None
        self._info: ServiceInfo | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.announcements = 0  # how many times the record was (re)published
        self.registered_at: float | None = None  # time.monotonic() when probing ended (benchmarks)

    @property
    def service_name(self) -> str:
        """The full DNS-SD name: ``"Pennello on studio._pennello._tcp.local."``."""
        return f"{self.name}.{SERVICE_TYPE}"

    def start(self) -> str:
        """Probe for name conflicts, then announce. Returns the name it got.

        Raises:
            ConfigError: ``interfaces`` names something this machine does not have.
        """
        started = time.perf_counter()
        txt, addresses = self._current()  # checks the interface names first
        choice, ip_version = self._interface_choice()
        self._zc = Zeroconf(interfaces=choice, ip_version=ip_version)
        info = self._service_info(txt, addresses)
        # zeroconf's probe asks for unicast answers, which another responder on this same host
        # may never see (two sockets share port 5353); a multicast query while probing fills our
        # cache with every daemon's name, so the probe renames ours on a clash.
        browser = ServiceBrowser(self._zc, SERVICE_TYPE, handlers=[_ignore],
                                 question_type=DNSQuestionType.QM)
        try:
            registering = asyncio.run_coroutine_threadsafe(self._register(info), self._zc.loop)
            registering.result(timeout=_REGISTER_TIMEOUT_S)
        except BaseException:
            browser.cancel()
            self._zc.close()
            self._zc = None
            raise
        browser.cancel()
        self.name = info.name.removesuffix("." + SERVICE_TYPE)
        self._info, self._published = info, (txt, addresses)
        self.announcements = 1
        self._thread = threading.Thread(target=self._run, name="pennello-mdns", daemon=True)
        self._thread.start()
        log.info("advertising %r (%s) on %s port %d", self.name, SERVICE_TYPE,
                 ", ".join(addresses) or "no address yet", self.port)
        log.debug("mdns registration took %.0fms", (time.perf_counter() - started) * 1000)
        return self.name

    async def _register(self, info: ServiceInfo) -> None:
        """Probe (RFC 6762 §8.1), rename on a conflict, then register; the three announcements go
        out in the background.

        zeroconf probes by itself too, but 500 ms apart where the RFC says 250 ms, and it stops
        listening for a defence as soon as the third probe is out. This follows the RFC: a random
        0–250 ms delay, three probes 250 ms apart, 250 ms more for answers — about 0.9 s in all.
        """
        assert self._zc is not None
        zc, loop = self._zc, asyncio.get_running_loop()
        base, suffix = self.name, 2
        await asyncio.sleep(random.uniform(0, _PROBE_S))
        probes, next_at = 0, loop.time()
        while True:
            if zc.cache.current_entry_with_name_and_alias(SERVICE_TYPE, info.name):
                log.info("the name %r is taken on this network; trying %r", info.name,
                         f"{base}-{suffix}")
                info.name = f"{base}-{suffix}.{SERVICE_TYPE}"
                suffix += 1
                probes, next_at = 0, loop.time()
                continue
            wait = next_at - loop.time()
            if wait > 0:
                await zc.async_wait(wait * 1000)  # wakes early when an answer lands in the cache
                continue
            if probes == _PROBES:
                break
            zc.async_send(_probe(info, unicast_answer=probes == 0))
            probes, next_at = probes + 1, next_at + _PROBE_S
        await zc.async_register_service(info, cooperating_responders=True)  # probed above
        self.registered_at = time.monotonic()

    def refresh(self) -> None:
        """Re-announce soon if the models or addresses changed. Never blocks (safe from the engine's
        worker thread); bursts are coalesced."""
        self._wake.set()

    def stop(self) -> None:
        """Send goodbye packets and close the sockets. Idempotent."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        zc, self._zc = self._zc, None
        if zc is None:
            return
        try:
            if self._info is not None:
                zc.unregister_service(self._info)
        except Exception as e:  # a failed goodbye must not stop the daemon from stopping
            log.warning("could not withdraw %r from the LAN: %s", self.name, e)
        finally:
            zc.close()
        log.info("stopped advertising %r", self.name)

    # --- internals -------------------------------------------------------------------------------

    def _current(self) -> tuple[dict[str, str], list[str]]:
        installed, loaded = self._models()
        txt = encode_txt(self.instance_id, self.fingerprint, sorted(installed),
                         tls=self.fingerprint is not None, auth_required=self.auth, loaded=sorted(loaded))
        return txt, interface_addresses(self.interfaces, self.ipv6)

    def _interface_choice(self) -> tuple[Any, IPVersion]:
        choice, ip_version = zeroconf_interfaces(self.interfaces)
        if not self.ipv6:
            ip_version = IPVersion.V4Only
            if isinstance(choice, list):
                choice = [entry for entry in choice if isinstance(entry, str) and ":" not in entry]
        return choice, ip_version

    def _service_info(self, txt: dict[str, str], addresses: list[str]) -> ServiceInfo:
        return ServiceInfo(SERVICE_TYPE, self.service_name, port=self.port, properties=txt,
                           server=self._server, parsed_addresses=addresses)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.refresh_s)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self._publish_if_changed()
            except Exception:  # keep advertising what we had; the next change tries again
                log.exception("could not update the mDNS record of %r", self.name)

    def _publish_if_changed(self) -> None:
        current = self._current()
        if current == self._published or self._zc is None:
            return
        info = self._service_info(*current)
        started = time.perf_counter()
        if self._published is not None and current[1] != self._published[1]:
            self._zc.update_interfaces(self._interface_choice()[0])  # e.g. a new Wi-Fi address
        self._zc.update_service(info)
        self._info, self._published = info, current
        self.announcements += 1
        log.info("re-announced %r: models=%s loaded=%s", self.name, current[0].get("models"),
                 current[0].get("loaded"))
        log.debug("mdns update took %.0fms", (time.perf_counter() - started) * 1000)


def _ignore(**_: Any) -> None:
    pass


def advertiser_for(config: Any, paths: Paths, engine: "Engine", port: int, fingerprint: str | None,
                   ipv6: bool = True) -> Advertiser:
    """The advertiser ``serve`` uses: the engine's models, ``server.interfaces``, and a refresh
    whenever the engine loads or unloads a model."""
    advertiser = Advertiser(paths, port, fingerprint, engine_models(engine),
                            interfaces=config.server.interfaces, ipv6=ipv6)
    engine.add_models_listener(advertiser.refresh)
    return advertiser


def _probe(info: ServiceInfo, unicast_answer: bool) -> DNSOutgoing:
    """One probe for ``info``'s name: a question with our record in the authority section.

    RFC 6762 §8.1 asks for "QU" (answer by unicast) on the first probe only. The later ones ask
    for multicast: a defender answers a probe at once, exempt from the one-second rate limit,
    and a unicast answer to another responder on this same host can land on the wrong socket
    (they share port 5353), so only a multicast defence reliably reaches us there.
    """
    out = DNSOutgoing(_FLAGS_AA)  # a query (QR bit clear)
    out.add_question(DNSQuestion(info.type, _TYPE_PTR, _CLASS_IN | (_QU_BIT if unicast_answer else 0)))
    out.add_authorative_answer(info.dns_pointer())
    return out
