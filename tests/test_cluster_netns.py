"""No-network mode covers the cluster (docs/cluster.md): proofs with a real Ray cluster in network
namespaces, and the guard's cluster peers.

Two "boxes", each its own network stack: the head and the front in one namespace, a node in
another, on one LAN (a bridge), and both with their default route and DNS server on a pretend
internet host (tests/_internet_host.py). Only the node has the model, so every picture is drawn
on the remote node. While the cluster starts, deploys and draws through the front, the internet
host receives zero packets, counted by the kernel on its cables and by its listeners; a control
packet shows the counters work. Needs root, iproute2 and ``pip install 'pennello[cluster]'``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pennello.config import ClusterConfig, load_config
from pennello.daemon.net.offline import NetworkGuard
from pennello.errors import ConfigError, OfflineViolationError

from _fixtures_netns import Namespaces, netns_unavailable, stop

TESTS = Path(__file__).resolve().parent
HEAD, NODE = "10.79.0.1", "10.79.0.2"  # the LAN
INTERNET = "203.0.113.2"  # TEST-NET-3: the pretend internet host, the boxes' default route and DNS
START_TIMEOUT_S = 240


def _why_not() -> str | None:
    if importlib.util.find_spec("ray") is None:  # not imported here: a second's collection time
        return "the cluster extra is not installed (pip install 'pennello[cluster]')"
    return netns_unavailable()


_UNAVAILABLE = _why_not()


# --- the guard's cluster peers (no root, no Ray) --------------------------------------------------


def test_the_guard_lets_exactly_the_cluster_peers_through_and_refuses_a_neighbour(caplog) -> None:
    cluster = ClusterConfig(head="198.51.100.7:6379", peers=("198.51.100.8", "10.80.0.0/24"))
    guard = NetworkGuard(lan=False, peers=cluster.peer_networks())
    assert {"198.51.100.7/32 (cluster peer)", "198.51.100.8/32 (cluster peer)",
            "10.80.0.0/24 (cluster peer)"} <= set(guard.allowed())
    assert guard.address_allowed("198.51.100.7", 6379) and guard.address_allowed("10.80.0.9", 6401)
    guard.install()
    try:
        with caplog.at_level(logging.WARNING), pytest.raises(OfflineViolationError, match="198.51.100.9:6379"):
            with socket.socket() as sock:
                sock.connect(("198.51.100.9", 6379))  # the head's neighbour
    finally:
        guard.uninstall()
    assert guard.refused == 1 and "refused socket.connect to 198.51.100.9:6379" in caplog.text
    assert not NetworkGuard(lan=False).address_allowed("198.51.100.7", 6379)  # no cluster: no peer


def test_cluster_settings_are_read_and_bad_ones_named(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[cluster]\nhead = "192.168.1.20:6379"\npeers = ["192.168.1.21", "10.0.8.0/24"]\n')
    assert load_config(config, {}).cluster.peer_networks() == ("192.168.1.20/32", "192.168.1.21/32", "10.0.8.0/24")
    env = {"PENNELLO_CLUSTER_PEERS": "192.168.1.22"}
    assert load_config(config, env).cluster.peers == ("192.168.1.22",)
    config.write_text('[cluster]\npeers = ["nas.local"]\n')
    with pytest.raises(ConfigError, match="cluster.peers: 'nas.local' is not an IP address or network"):
        load_config(config, {})
    with pytest.raises(ConfigError, match="expected HOST:PORT"):
        ClusterConfig(head="192.168.1.20")
    # A head given by name works with no-network mode off; with it on, its address is asked for.
    with pytest.raises(ConfigError, match="cluster.head: 'head.lan' is not an IP address"):
        ClusterConfig(head="head.lan:6379").peer_networks()


@pytest.mark.parametrize("where", ["flag", "config"])
def test_serve_refuses_a_head_given_by_name_in_no_network_mode(tmp_path: Path, where: str) -> None:
    flag = ["--cluster", "head.lan:6379"] if where == "flag" else []
    if where == "config":  # `serve` alone draws on [cluster] head
        (tmp_path / "config").mkdir()
        (tmp_path / "config" / "config.toml").write_text('[cluster]\nhead = "head.lan:6379"\n')
    result = subprocess.run([sys.executable, "-m", "pennello", "serve", "--port", "0", *flag],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PENNELLO_HOME": str(tmp_path)})
    assert result.returncode != 0 and "cluster.head: 'head.lan' is not an IP address" in result.stderr, result.stderr


# --- the proof: a cluster in namespaces sends nothing to the internet ------------------------------


def _pennello(ns: Namespaces, where: str, home: Path, *args: str, log: Path, piped: bool = False) -> subprocess.Popen:
    """``pennello ARGS`` in namespace ``where``; its output goes to ``log`` (stdout to a pipe if ``piped``)."""
    output = open(log, "w")
    return subprocess.Popen([*ns.exec(where), sys.executable, "-m", "pennello", *args], text=True,
                            env={**os.environ, "PENNELLO_HOME": str(home), "HOME": str(home)},
                            stdout=subprocess.PIPE if piped else output, stderr=output)


def _wait_port(ns: Namespaces, where: str, ip: str, port: int, process: subprocess.Popen, log: Path) -> None:
    """Until something listens on ip:port inside ``where`` (one polling process there)."""
    poll = (f"import socket, time\ndeadline = time.monotonic() + {START_TIMEOUT_S}\n"
            f"while socket.socket().connect_ex(('{ip}', {port})) and time.monotonic() < deadline:\n"
            f"    time.sleep(0.3)\n")
    waiter = subprocess.Popen([*ns.exec(where), sys.executable, "-c", poll])
    while waiter.poll() is None:
        if process.poll() is not None:
            waiter.kill()
            raise AssertionError(f"exited {process.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)


def _counted(ns: Namespaces, internet_ns: str) -> int:
    return sum(ns.rx_packets(internet_ns, dev) for dev in ns.devices[internet_ns])


def _boxes(ns: Namespaces) -> tuple[str, str, str]:
    """The head's box, the node's box and the internet host, wired (see the module's docstring)."""
    head_ns, node_ns, internet_ns, switch = ns.add("head"), ns.add("node"), ns.add("inet"), ns.add("lan")
    ns.bridge(switch)
    ns.plug(switch, head_ns, f"{HEAD}/24")
    ns.plug(switch, node_ns, f"{NODE}/24")
    for box, wan, gateway in ((head_ns, "203.0.113.1/24", f"{INTERNET}/24"),
                              (node_ns, "198.51.100.1/24", "198.51.100.2/24")):
        ns.link(box, wan, internet_ns, gateway, ipv6=False)
        ns.default_route(box, gateway.split("/")[0])  # everything off the LAN goes to "the internet"
        ns.resolv_conf(box, INTERNET)  # and so does every DNS query
    return head_ns, node_ns, internet_ns


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.skipif(_UNAVAILABLE is not None, reason=f"cluster in namespaces: {_UNAVAILABLE}")
def test_a_cluster_draws_on_its_remote_node_and_sends_nothing_to_the_internet(tmp_path: Path) -> None:
    ns = Namespaces()
    processes: list[subprocess.Popen] = []
    head_home, node_home = tmp_path / "head", tmp_path / "node"
    (head_home / "config").mkdir(parents=True)
    # offline.enabled is the default: only the node is added to what the front may reach
    (head_home / "config" / "config.toml").write_text(f'[cluster]\npeers = ["{NODE}"]\n')
    node_install = _install(node_home)  # while the boxes are wired and the head starts
    try:
        head_ns, node_ns, internet_ns = _boxes(ns)
        internet = subprocess.Popen([*ns.exec(internet_ns), sys.executable, str(TESTS / "_internet_host.py")],
                                    stdout=subprocess.PIPE, text=True)
        processes.append(internet)
        assert internet.stdout.readline().strip() == "listening"
        before = _counted(ns, internet_ns)
        front = _start_cluster(ns, head_ns, node_ns, head_home, node_home, node_install, processes, tmp_path)
        _draw_through_the_front(ns, head_ns, head_home, front, tmp_path)
        for box in (head_ns, node_ns):
            _only_pinned_ports_between_boxes(ns, box)
        after = _counted(ns, internet_ns)
        # Control: a packet sent from the head's box without pennello is seen.
        subprocess.run([*ns.exec(head_ns), sys.executable, "-c", "import socket; socket.socket(socket.AF_INET, "
                        f"socket.SOCK_DGRAM).sendto(b'x', ('{INTERNET}', 53))"], check=True)
        time.sleep(0.5)
        control = _counted(ns, internet_ns)
    finally:
        node_install.kill()  # a no-op once it finished
        for process in reversed(processes[1:]):
            stop(process)
        if processes:
            processes[0].send_signal(signal.SIGTERM)
            counts = json.loads(processes[0].stdout.readline() or "{}")
            processes[0].wait(timeout=10)
        ns.close()
    assert after == before, (before, after, counts)
    assert control > after and counts == {"udp": 1, "tcp": 0}, (control, counts)  # its ARP request, its packet


def _install(home: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pennello", "install", "pennello-tiny"], text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PENNELLO_HOME": str(home)})


def _installed(install: subprocess.Popen) -> None:
    _, errors = install.communicate(timeout=300)
    assert install.returncode == 0, errors


def _start_cluster(ns: Namespaces, head_ns: str, node_ns: str, head_home: Path, node_home: Path,
                   node_install: subprocess.Popen, processes: list[subprocess.Popen],
                   tmp_path: Path) -> subprocess.Popen:
    """The head (no model), the node (the model) and the front; returns the front."""
    head = _pennello(ns, head_ns, head_home, "node", "--head", "--ip", HEAD, log=tmp_path / "head.log")
    processes.append(head)
    _wait_port(ns, head_ns, HEAD, 6379, head, tmp_path / "head.log")
    assert "models: none verified" in (tmp_path / "head.log").read_text()  # so the node draws
    # Without it Ray's head asks cloud metadata servers which cloud it is on (7 packets out).
    assert "type: local" in (head_home / "ray_bootstrap_config.yaml").read_text()
    head_install = _install(head_home)  # the front's own copy, which its head does not offer
    _installed(node_install)
    node = _pennello(ns, node_ns, node_home, "node", "--join", f"{HEAD}:6379", "--ip", NODE, "--token-file",
                     str(head_home / "data" / "state" / "cluster-token"), log=tmp_path / "node.log")
    processes.append(node)
    _wait_port(ns, node_ns, NODE, 6401, node, tmp_path / "node.log")  # its raylet
    _installed(head_install)
    front = _pennello(ns, head_ns, head_home, "serve", "--port", "0", "--cluster", f"{HEAD}:6379",
                      log=tmp_path / "front.log", piped=True)
    processes.append(front)
    return front


def _only_pinned_ports_between_boxes(ns: Namespaces, box: str) -> None:
    """Every TCP connection between the boxes has at one end a port the firewall rules of
    docs/cluster.md open to the other boxes (the GCS, object manager, raylet, workers), so those
    rules let the cluster work: the agents' ports and the random ones carry nothing between boxes."""
    pinned = {6379, 6400, 6401, *range(6410, 6450)}
    listed = subprocess.run([*ns.exec(box), "ss", "-tnH", "state", "established"], capture_output=True,
                            text=True, check=True).stdout
    between = [line.split()[-2:] for line in listed.splitlines() if line.count("10.79.0.") == 2]
    assert between, listed  # the draw went over the LAN
    for local, peer in between:
        ports = {int(local.rsplit(":", 1)[1]), int(peer.rsplit(":", 1)[1])}
        assert ports & pinned, (local, peer, listed)


def _draw_through_the_front(ns: Namespaces, head_ns: str, head_home: Path, front: subprocess.Popen,
                            tmp_path: Path) -> None:
    """A picture through the front with pennello's client, drawn by the node's replica; the
    front's guard allowed exactly its cluster and refused nothing."""
    line = ""
    for line in front.stdout:  # Ray may print first; EOF when the front died
        if line.startswith("pennello is serving on"):
            break
    assert line.startswith("pennello is serving on"), (tmp_path / "front.log").read_text()[-3000:]
    threading.Thread(target=front.stdout.read, daemon=True).start()  # a full pipe would block the front
    env = {**os.environ, "PENNELLO_HOME": str(head_home)}
    out = tmp_path / "out"
    made = subprocess.run([*ns.exec(head_ns), sys.executable, "-m", "pennello", "generate", "a red kite",
                           "--steps", "2", "--seed", "5", "--out", str(out)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert made.returncode == 0 and len(list(out.iterdir())) == 1, made.stderr + (tmp_path / "front.log").read_text()
    ps = json.loads(subprocess.run([*ns.exec(head_ns), sys.executable, "-m", "pennello", "ps", "--json"],
                                   capture_output=True, text=True, timeout=60, env=env).stdout)
    (tiny,) = [model for model in ps["models"] if model["name"] == "pennello-tiny"]
    assert tiny["cluster"]["replicas"] == 1 and sum(tiny["cluster"]["pictures_by_node"].values()) == 1, tiny
    report = json.loads(subprocess.run([*ns.exec(head_ns), sys.executable, "-m", "pennello", "offline", "status",
                                        "--json"], capture_output=True, text=True, timeout=60, env=env).stdout)
    assert report["mode"] == "on" and report["refused"] == 0, report["refused_by_destination"]
    assert {f"{HEAD}/32 (cluster peer)", f"{NODE}/32 (cluster peer)"} <= set(report["allowed"]), report["allowed"]


# --- the systemd units' allow-list carries the cluster ---------------------------------------------


def test_offline_unit_writes_the_cluster_into_both_units_allow_lists(tmp_path: Path) -> None:
    home, config_home = tmp_path / "home", tmp_path / "xdg"
    env = {**os.environ, "PENNELLO_HOME": str(home), "XDG_CONFIG_HOME": str(config_home)}
    unit = [sys.executable, "-m", "pennello", "offline", "unit"]
    missing = subprocess.run([*unit, "--write"], capture_output=True, text=True, timeout=60, env=env)
    assert missing.returncode != 0 and "no cluster is configured" in missing.stderr, missing.stderr
    (home / "config").mkdir(parents=True, exist_ok=True)
    (home / "config" / "config.toml").write_text('[cluster]\nhead = "192.168.1.20:6379"\npeers = ["10.0.8.0/24"]\n')
    written = subprocess.run([*unit, "--write"], capture_output=True, text=True, timeout=60, env=env)
    assert written.returncode == 0, written.stderr
    unit_dir = config_home / "systemd" / "user"
    for name in ("pennello.service", "pennello-node.service"):
        dropin = (unit_dir / f"{name}.d" / "cluster.conf").read_text()
        assert "IPAddressAllow=192.168.1.20/32 10.0.8.0/24\n" in dropin, dropin
        # The unit as shipped, with its drop-in, is what systemd accepts (an unknown or bad line warns).
        text = (TESTS.parent / "packaging" / "systemd" / name).read_text()
        (unit_dir / name).write_text(text.replace("%h/.local/bin/pennello", "/bin/true"))
        assert "IPAddressDeny=any" in text
        if shutil.which("systemd-analyze"):
            verified = subprocess.run(["systemd-analyze", "verify", "--man=no", name], capture_output=True,
                                      text=True, timeout=60, env={**env, "SYSTEMD_UNIT_PATH": f"{unit_dir}:"})
            assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr
    node_unit = (TESTS.parent / "packaging" / "systemd" / "pennello-node.service").read_text()
    assert "IPAddressAllow=localhost\n" in node_unit  # a node's Ray reaches loopback and the drop-in's boxes only
