"""The systemd units' IP allow-list for a cluster: a drop-in that adds the cluster's boxes.

``packaging/systemd/pennello.service`` lets its processes reach only loopback, link-local, the
mDNS groups and the private LAN ranges; ``pennello-node.service`` (``pennello node``, so every
Ray process of the box) only loopback. On a cluster each box must also reach the others, and
for Ray that list is the real wall: its C++ parts never pass pennello's Python guard
(:mod:`.offline`). The boxes come from the same setting the guard reads, ``[cluster] head`` and
``peers`` (:meth:`pennello.config.ClusterConfig.peer_networks`), so the three lists never differ.

    >>> print(dropin(ClusterConfig(head="192.168.1.20:6379", peers=("192.168.1.21",))))  # doctest: +ELLIPSIS
    # Written by `pennello offline unit --write` ...
    [Service]
    IPAddressAllow=192.168.1.20/32 192.168.1.21/32
    <BLANKLINE>

``pennello offline unit`` prints it; ``--write`` puts it beside both user units, as
``UNIT.d/cluster.conf`` (systemd reads drop-ins after the unit, and ``IPAddressAllow=`` lines add up).
"""

from __future__ import annotations

from pathlib import Path

from pennello.config import ClusterConfig
from pennello.errors import ConfigError
from pennello.files import write_atomic

UNITS = ("pennello.service", "pennello-node.service")
DROPIN = "cluster.conf"


def dropin(cluster: ClusterConfig) -> str:
    """The drop-in's text for ``cluster``.

    Raises:
        ConfigError: no cluster is configured (no ``[cluster] head`` or ``peers``), or an entry is
            not an address or network.
    """
    networks = cluster.peer_networks()
    if not networks:
        raise ConfigError("no cluster is configured: set `head` and `peers` under [cluster] in config.toml "
                          "(docs/cluster.md)")
    return ("# Written by `pennello offline unit --write` from [cluster] head and peers in config.toml:\n"
            "# the cluster's boxes, the only addresses besides the unit's own list this service may reach.\n"
            f"[Service]\nIPAddressAllow={' '.join(networks)}\n")


def write_dropins(unit_dir: Path, cluster: ClusterConfig) -> list[Path]:
    """Write :func:`dropin` as ``UNIT.d/cluster.conf`` under ``unit_dir`` for each of :data:`UNITS`."""
    text = dropin(cluster).encode()
    written = []
    for unit in UNITS:
        path = unit_dir / f"{unit}.d" / DROPIN
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text)
        written.append(path)
    return written
