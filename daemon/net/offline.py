"""No-network mode: once set up, the daemon talks only to this machine and the LAN it serves.

Three layers, each catching what the one before it misses (docs/no-network.md has the OS side):

1. **Environment.** :func:`apply_offline_env` sets ``HF_HUB_OFFLINE`` (which diffusers and
   transformers read through huggingface_hub), ``TRANSFORMERS_OFFLINE``, ``HF_DATASETS_OFFLINE``,
   turns telemetry and update checks off and disables ``hf_xet`` — whose downloads run in native
   code that no Python hook can see. Set before those libraries are imported; the flags of ones
   already imported are patched too. Well-behaved libraries then never try.
2. **An audit hook** (PEP 578) on ``socket.connect``, ``socket.sendto``, ``socket.sendmsg`` and
   name lookups (``getaddrinfo``, ``gethostbyname``, ``gethostbyaddr``, ``getnameinfo``): every
   Python-level attempt to *start* talking to another host passes through
   :meth:`NetworkGuard.check`. Answering LAN clients needs no permission: accepting a connection
   and replying on it start nothing. Allowed:

   * loopback, the unspecified address (it means this host) and this machine's own addresses;
   * mDNS: 224.0.0.251 and ff02::fb, port 5353;
   * the cluster's boxes, LAN mode or not: the head's address and ``[cluster] peers``
     (:meth:`pennello.config.ClusterConfig.peer_networks`), so a front or node reaches exactly
     its cluster;
   * in LAN mode only: the *private* networks on the served interfaces (RFC 1918, IPv4 and IPv6
     link-local, IPv6 unique-local — never an on-link public network) and ``offline.allow``;
   * name lookups only of IP literals and ``localhost`` (a lookup is a packet to a resolver).

   Anything else raises :class:`~pennello.errors.OfflineViolationError` (a ``PermissionError``,
   so libraries handle it as an unreachable network), is logged once per destination with the
   stack that tried, and is counted; ``GET /api/offline`` and ``pennello offline status`` show it.
3. **The OS**: on Linux the model worker runs in a network namespace with only loopback
   (:mod:`pennello.daemon.net.isolation`; ``summary()`` says whether it does), and the systemd unit's ``IPAddressDeny=any`` + ``IPAddressAllow=…``, which also
   covers native code (hf_xet, C extensions) that audit hooks never see.

    >>> guard = NetworkGuard(lan=False).install()  # doctest: +SKIP
    >>> socket.create_connection(("192.0.2.1", 443))  # doctest: +SKIP
    Traceback (most recent call last):
    pennello.errors.OfflineViolationError: no-network mode refused socket.connect to 192.0.2.1:443 …
    >>> guard.status()["refused"]  # doctest: +SKIP
    1

Audit hooks cannot be removed, so :meth:`NetworkGuard.install` adds one process-wide hook the
first time and then only swaps which guard it consults; :meth:`NetworkGuard.uninstall` makes it
let everything through again (tests use this; the daemon keeps its guard for life).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import ifaddr

from pennello.errors import ConfigError, OfflineViolationError

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: What :func:`apply_offline_env` sets. HF_HUB_OFFLINE is also what diffusers consults.
OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "HF_HUB_DISABLE_XET": "1",
    "DIFFUSERS_DISABLE_REMOTE_CODE": "1",
}
# Module-level flags libraries copy from the environment at import time.
_PATCHED_FLAGS = ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "HF_HUB_DISABLE_XET",
                  "HF_HUB_DISABLE_UPDATE_CHECK", "HF_HUB_DISABLE_IMPLICIT_TOKEN")
_PATCHED_PACKAGES = ("huggingface_hub", "diffusers", "transformers")

MDNS_GROUPS: dict[str, int] = {"224.0.0.251": 5353, "ff02::fb": 5353}
#: Networks that can be a LAN. Python's ``is_private`` is not used: it also says yes to the
#: documentation ranges (192.0.2.0/24…) and others that are routed on real networks.
LAN_RANGES: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "fc00::/7", "fe80::/10"))
_LINK_LOCAL = tuple(ipaddress.ip_network(n) for n in ("169.254.0.0/16", "fe80::/10"))
_LOCAL_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost", "ip6-loopback"})
_EVENTS = frozenset({"socket.connect", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
                     "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo"})
_KEPT_ATTEMPTS = 50
_REFRESH_S = 5.0  # at most this often, re-read interface addresses before refusing (DHCP changes)
_STACK_FRAMES = 30


def apply_offline_env(environ: Any = None) -> None:
    """Tell the model libraries not to use the network (the first layer).

    Sets :data:`OFFLINE_ENV` in ``environ`` (``os.environ``) and, for huggingface_hub, diffusers and
    transformers modules already imported, the module-level flags they copied from it.
    """
    environ = os.environ if environ is None else environ
    environ.update(OFFLINE_ENV)
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(_PATCHED_PACKAGES):
            continue
        for flag in _PATCHED_FLAGS:
            if isinstance(getattr(module, flag, None), bool):
                setattr(module, flag, True)


@dataclass(frozen=True)
class Attempt:
    """One refused attempt to reach the network."""

    event: str  # the audit event, e.g. "socket.connect"
    destination: str  # "192.0.2.1:443", "huggingface.co", "[2001:db8::1]:443"
    time: float  # Unix time
    thread: str
    where: str  # the innermost frame outside the socket machinery: "file.py:12 in fetch"
    stack: str  # the formatted stack that tried


@dataclass(frozen=True)
class _Rule:
    network: IPNetwork
    why: str  # "eth0", "offline.allow", "link-local"


class NetworkGuard:
    """Decides, for every connection attempt and name lookup in this process, whether it may go.

    Args:
        lan: serving LAN clients; without it only loopback, mDNS and ``peers`` are allowed.
        interfaces: names or addresses of the served interfaces; empty means all of them.
        allow: extra networks (CIDR strings) that LAN mode may reach (``offline.allow``).
        peers: the cluster's boxes (CIDR strings, ``ClusterConfig.peer_networks``), reachable
            with or without LAN mode.

    Raises:
        ConfigError: an ``allow`` or ``peers`` entry is not a network.
    """

    def __init__(self, lan: bool = False, interfaces: Sequence[str] = (), allow: Sequence[str] = (),
                 peers: Sequence[str] = ()) -> None:
        self.lan = lan
        self.interfaces = tuple(interfaces)
        self._extra = _rules(allow, "offline.allow", setting="offline.allow")
        self._peers = _rules(peers, "cluster peer", setting="cluster.peers")
        self._lock = threading.Lock()
        self._local = threading.local()
        self._rules: tuple[_Rule, ...] = ()
        self._own: frozenset[IPAddress] = frozenset()
        self._refreshed = 0.0
        self._attempts: deque[Attempt] = deque(maxlen=_KEPT_ATTEMPTS)
        self._by_destination: dict[str, int] = {}
        self.refused = 0
        self.installed_at: float | None = None
        # Set by ``serve``: which process layout keeps the network out (see isolation.py).
        self.isolation_report: Callable[[], dict[str, Any]] | None = None
        self.refresh()

    # --- lifecycle -------------------------------------------------------------------------------

    def install(self) -> "NetworkGuard":
        """Make this the guard every socket operation of the process is checked against."""
        global _active, _hooked
        with _install_lock:
            if not _hooked:
                sys.addaudithook(_audit)
                _hooked = True
            _active = self
        self.installed_at = time.time()
        log.info("no-network mode on: allowed %s", "; ".join(self.allowed()))
        return self

    def uninstall(self) -> None:
        """Stop checking (the process-wide hook stays, but lets everything through)."""
        global _active
        with _install_lock:
            if _active is self:
                _active = None
        self.installed_at = None

    @property
    def active(self) -> bool:
        return _active is self

    def refresh(self) -> None:
        """Re-read the interfaces' addresses and networks."""
        own: set[IPAddress] = set()
        rules: list[_Rule] = []
        wanted = set(self.interfaces)
        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                address = ip.ip if ip.is_IPv4 else ip.ip[0]
                try:
                    parsed = ipaddress.ip_address(address.split("%")[0])
                except ValueError:
                    continue
                own.add(parsed)
                served = not wanted or adapter.nice_name in wanted or address in wanted
                if not (self.lan and served) or parsed.is_loopback:
                    continue
                network = ipaddress.ip_network(f"{parsed}/{ip.network_prefix}", strict=False)
                if any(network.version == lan.version and network.subnet_of(lan) for lan in LAN_RANGES):
                    rules.append(_Rule(network, adapter.nice_name))
        if self.lan:
            rules += [_Rule(network, "link-local") for network in _LINK_LOCAL]
            rules += self._extra
        rules += self._peers
        unique = {(rule.network, rule.why): rule for rule in rules}
        with self._lock:
            self._own = frozenset(own)
            self._rules = tuple(unique.values())
            self._refreshed = time.monotonic()

    # --- the decision ----------------------------------------------------------------------------

    def allowed(self) -> list[str]:
        """What may be reached, in words (for status pages and logs)."""
        with self._lock:
            rules = self._rules
        return ["loopback and this machine's own addresses",
                *(f"mDNS {_endpoint(group, port)}" for group, port in MDNS_GROUPS.items()),
                *(f"{rule.network} ({rule.why})" for rule in rules),
                "name lookups: IP literals and localhost only"]

    def address_allowed(self, host: str, port: int | None = None) -> bool:
        """Whether a connection or datagram to ``host`` (an IP literal) may go."""
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        mapped = getattr(address, "ipv4_mapped", None)
        address = mapped or address
        if address.is_loopback or address.is_unspecified:
            return True
        if MDNS_GROUPS.get(str(address)) == port:
            return True
        if self._matches(address):
            return True
        if time.monotonic() - self._refreshed > _REFRESH_S:
            self.refresh()
            return self._matches(address)
        return False

    def _matches(self, address: IPAddress) -> bool:
        with self._lock:
            if address in self._own:
                return True
            return any(address.version == rule.network.version and address in rule.network
                       for rule in self._rules)

    def lookup_allowed(self, name: Any) -> bool:
        """Whether a name lookup may run: IP literals and localhost only."""
        if name is None:
            return True
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        name = str(name)
        if name.lower() in _LOCAL_NAMES or name.lower().endswith(".localhost"):
            return True
        try:
            ipaddress.ip_address(name.split("%", 1)[0])
        except ValueError:
            return False
        return True

    def check(self, event: str, args: tuple[Any, ...]) -> None:
        """The audit hook's work for one socket event.

        Raises:
            OfflineViolationError: the event would reach a host that is not allowed.
        """
        if getattr(self._local, "busy", False):
            return  # our own logging; it never opens network connections of its own
        self._local.busy = True
        try:
            destination = self._refused_destination(event, args)
            if destination is not None:
                self._refuse(event, destination)
        finally:
            self._local.busy = False

    def _refused_destination(self, event: str, args: tuple[Any, ...]) -> str | None:
        """The destination in words when ``event`` is refused; None when it may go."""
        if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
            sock, address = args[0], args[1]
            if address is None or getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
                return None  # a connected socket's sendmsg, or Unix/netlink sockets: not the network
            host, port = str(address[0]), address[1]
            if self.lookup_allowed(host) and not _is_literal(host):
                return None  # "localhost"
            return None if self.address_allowed(host, port) else _endpoint(host, port)
        if event == "socket.getaddrinfo":
            host, port = args[0], args[1]
            if not self.lookup_allowed(host):
                return str(host if not isinstance(host, bytes) else host.decode("ascii", "replace"))
            if host is None or not _is_literal(str(host)):
                return None
            return None if self.address_allowed(str(host), _port(port)) else _endpoint(str(host), _port(port))
        if event == "socket.gethostbyname":
            return None if self.lookup_allowed(args[0]) else str(args[0])
        if event in ("socket.gethostbyaddr", "socket.getnameinfo"):
            # A reverse lookup asks a resolver; only loopback is answered locally.
            target = args[0][0] if isinstance(args[0], tuple) else args[0]
            try:
                if ipaddress.ip_address(str(target).split("%", 1)[0]).is_loopback:
                    return None
            except ValueError:
                if str(target).lower() in _LOCAL_NAMES:
                    return None
            return f"reverse lookup of {target}"
        return None

    def _refuse(self, event: str, destination: str) -> None:
        frames = traceback.extract_stack(limit=_STACK_FRAMES)[:-3]  # drop _audit, check, _refuse
        where = next((f"{f.filename}:{f.lineno} in {f.name}" for f in reversed(frames)
                      if not f.filename.endswith(("socket.py", "selector_events.py", "base_events.py",
                                                  "connection.py", "_backends/sync.py"))),
                     "?")
        attempt = Attempt(event, destination, time.time(), threading.current_thread().name, where,
                          "".join(traceback.format_list(frames)))
        with self._lock:
            self.refused += 1
            first = destination not in self._by_destination
            self._by_destination[destination] = self._by_destination.get(destination, 0) + 1
            self._attempts.append(attempt)
        message = (f"no-network mode refused {event} to {destination} (from {where}); pennello "
                   f"does not use the internet after setup — `pennello offline status` lists attempts")
        if first:
            log.warning("%s\n%s", message, attempt.stack.rstrip())
        else:
            log.debug("%s", message)
        raise OfflineViolationError(message)

    # --- reporting -------------------------------------------------------------------------------

    def attempts(self) -> list[Attempt]:
        with self._lock:
            return list(self._attempts)

    def summary(self) -> dict[str, Any]:
        """Mode, what is allowed and how many attempts were refused (for ``/api/health``)."""
        isolation = self.isolation_report() if self.isolation_report is not None else \
            {"isolation": "in-process-guard", "isolation_reason": "not started by `pennello serve`"}
        return {"mode": "on" if self.active else "off", "lan": self.lan, "allowed": self.allowed(),
                "refused": self.refused, **isolation}

    def status(self) -> dict[str, Any]:
        """:meth:`summary` plus refusals per destination and the latest attempts with their stacks."""
        with self._lock:
            by_destination = dict(sorted(self._by_destination.items(), key=lambda kv: -kv[1]))
        return {**self.summary(), "since": self.installed_at, "env": dict(OFFLINE_ENV),
                "refused_by_destination": by_destination,
                "attempts": [asdict(a) for a in reversed(self.attempts())]}


def off_status(reason: str) -> dict[str, Any]:
    """What status pages show when no guard runs."""
    return {"mode": "off", "lan": None, "allowed": ["everything"], "refused": 0, "reason": reason,
            "isolation": "none", "isolation_reason": reason}


def enable(lan: bool, interfaces: Sequence[str] = (), allow: Sequence[str] = (),
           peers: Sequence[str] = ()) -> NetworkGuard:
    """Both in-process layers: the environment, then the audit hook. Returns the installed guard."""
    apply_offline_env()
    return NetworkGuard(lan=lan, interfaces=interfaces, allow=allow, peers=peers).install()


def _rules(networks: Sequence[str], why: str, setting: str) -> tuple[_Rule, ...]:
    try:
        return tuple(_Rule(ipaddress.ip_network(entry, strict=False), why) for entry in networks)
    except ValueError as e:
        raise ConfigError(f"{setting}: {e}; use networks like \"192.168.1.0/24\"") from e


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return True
    except ValueError:
        return False


def _port(port: Any) -> int | None:
    try:
        return int(port)
    except (TypeError, ValueError):
        return None


def _endpoint(host: str, port: int | None) -> str:
    host = f"[{host}]" if ":" in host else host
    return host if port is None else f"{host}:{port}"


# --- the one process-wide hook -------------------------------------------------------------------

_install_lock = threading.Lock()
_active: NetworkGuard | None = None
_hooked = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event in _EVENTS:
        guard = _active
        if guard is not None:
            guard.check(event, args)


def active_guard() -> NetworkGuard | None:
    """The guard installed in this process, if any."""
    return _active

