"""Network namespaces joined by veth pairs, for proofs that need separate "machines" (root only).

    ns = Namespaces()
    daemon, client = ns.add("d"), ns.add("c")
    ns.link(daemon, "10.77.0.1/24", client, "10.77.0.2/24")
    subprocess.run(ns.exec(client) + ["python", "-c", "..."])
    ns.rx_packets(client, ns.devices[client][0])
    ns.close()                     # deletes the namespaces and so their veths

Several "machines" on one LAN plug into a bridge (a switch) in a namespace of its own:

    switch = ns.add("lan"); ns.bridge(switch)
    ns.plug(switch, head, "10.79.0.1/24"); ns.plug(switch, node, "10.79.0.2/24")

Names carry this process's id so parallel runs do not collide. ``bench/bench_discovery.py``
uses this module too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

NETNS_ETC = Path("/etc/netns")  # `ip netns exec NS` bind-mounts /etc/netns/NS/resolv.conf


def netns_unavailable() -> str | None:
    """Why namespaces cannot be used here (a reason to skip with), or None when they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if not shutil.which("ip"):
        return "needs iproute2's `ip` command"
    probe = f"pn-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


class Namespaces:
    def __init__(self) -> None:
        self.prefix = f"pn-{os.getpid()}"
        self.names: list[str] = []
        self.devices: dict[str, list[str]] = {}
        self._links = 0

    def add(self, name: str) -> str:
        full = f"{self.prefix}-{name}"
        _ip("netns", "add", full)
        self.names.append(full)
        self.devices[full] = []
        _ip("-n", full, "link", "set", "lo", "up")
        return full

    def exec(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def link(self, ns_a: str, address_a: str, ns_b: str, address_b: str, ipv6: bool = True) -> tuple[str, str]:
        """A veth pair between two namespaces with these addresses (CIDR). Without ``ipv6`` the
        link carries no IPv6 at all (no router solicitations, no MLD): a silent wire."""
        self._links += 1
        dev_a, dev_b = f"pn{os.getpid() % 100000}a{self._links}", f"pn{os.getpid() % 100000}b{self._links}"
        _ip("link", "add", dev_a, "type", "veth", "peer", "name", dev_b)
        for ns, dev, address in ((ns_a, dev_a, address_a), (ns_b, dev_b, address_b)):
            _ip("link", "set", dev, "netns", ns)
            conf = "disable_ipv6" if not ipv6 else "accept_dad"  # DAD would hold link-local back ~2 s
            self.sysctl(ns, f"net/ipv6/conf/{dev}/{conf}", "1" if not ipv6 else "0")
            if address:  # a bridge's port has none
                _ip("-n", ns, "addr", "add", address, "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            self.devices[ns].append(dev)
        return dev_a, dev_b

    def bridge(self, ns: str, name: str = "br0") -> str:
        """A bridge (a switch) in ``ns``, up, for :meth:`plug`; returns its name."""
        _ip("-n", ns, "link", "add", name, "type", "bridge")
        _ip("-n", ns, "link", "set", name, "up")
        return name

    def plug(self, switch_ns: str, ns: str, address: str, bridge: str = "br0") -> str:
        """A veth from ``ns`` (with ``address``, CIDR) into ``bridge`` of ``switch_ns``; returns
        the device's name in ``ns``. The switch's end has no address: it only forwards."""
        dev, port = self.link(switch_ns, "", ns, address)
        _ip("-n", switch_ns, "link", "set", dev, "master", bridge)
        return port

    def sysctl(self, ns: str, key: str, value: str) -> None:
        subprocess.run([*self.exec(ns), "sh", "-c", f"echo {value} > /proc/sys/{key}"], check=True,
                       capture_output=True)

    def default_route(self, ns: str, via: str) -> None:
        _ip("-n", ns, "route", "add", "default", "via", via)

    def resolv_conf(self, ns: str, nameserver: str) -> None:
        """What ``ip netns exec`` shows as /etc/resolv.conf inside ``ns``."""
        directory = NETNS_ETC / ns
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "resolv.conf").write_text(f"nameserver {nameserver}\n")

    def stats(self, ns: str, dev: str) -> dict[str, int]:
        """The device's kernel counters: rx/tx packets and bytes."""
        out = subprocess.run(["ip", "-n", ns, "-s", "-j", "link", "show", "dev", dev], capture_output=True,
                             text=True, check=True).stdout
        stats = json.loads(out)[0]["stats64"]
        return {"rx_packets": stats["rx"]["packets"], "tx_packets": stats["tx"]["packets"],
                "rx_bytes": stats["rx"]["bytes"], "tx_bytes": stats["tx"]["bytes"]}

    def rx_packets(self, ns: str, dev: str) -> int:
        return self.stats(ns, dev)["rx_packets"]

    def close(self) -> None:
        for ns in reversed(self.names):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
        self.names.clear()


def stop(process: subprocess.Popen, grace_s: float = 60) -> None:
    """SIGTERM ``process`` (run in a namespace or not), then SIGKILL it after ``grace_s``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
