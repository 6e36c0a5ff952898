"""Proofs across network namespaces — separate network stacks on this machine, joined by veth
cables (root only):

1. A client on another "machine" finds a LAN daemon over mDNS, pairs with it and generates over
   TLS pinned at pairing; a changed pin is refused.
2. The daemon's only way out leads to a pretend internet host (its default route and its DNS
   server). During a whole session — start, discover, pair, generate, and a deliberate leak made
   inside the daemon (a huggingface_hub call ignoring HF_HUB_OFFLINE, a raw connect) — that host
   receives zero packets, counted by the kernel on its veth and by its listeners; the leak is
   refused and reported by ``pennello offline status``. A control packet shows the counters work.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pennello.paths import Paths, get_paths

from _fixtures_lan import ServeProcess, host_pairing_code, run_cli
from _fixtures_netns import Namespaces, netns_unavailable

TESTS = Path(__file__).resolve().parent
WRONG_PIN = "sha256:" + "0" * 64
INTERNET = "203.0.113.2"  # TEST-NET-3, on the pretend internet host's veth
_UNAVAILABLE = netns_unavailable()

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(_UNAVAILABLE is not None, reason=f"network namespaces: {_UNAVAILABLE}")]


@pytest.fixture
def namespaces():
    made = Namespaces()
    yield made
    made.close()


def client_session(home: Paths, daemon_ns: str, client: Paths, client_ns: str, daemon: ServeProcess,
                   out: Path) -> dict:
    """discover, pair and generate from ``client_ns``; returns the discovered service."""
    listed = run_cli(client, "discover", "--timeout", "5", "--json", netns=client_ns)
    assert listed.returncode == 0, listed.stderr + daemon.log_text()
    service = next(s for s in json.loads(listed.stdout) if s["id"] == daemon.instance_id)
    assert service["fingerprint"] == daemon.fingerprint and service["tls"] and service["auth"]
    assert service["models"] == ["pennello-tiny"] and service["paired"] is False
    code = host_pairing_code(home, netns=daemon_ns)
    paired = run_cli(client, "pair", service["name"], "--code", code, "--as", "phone in netns",
                     "--fingerprint", daemon.fingerprint, netns=client_ns)
    assert paired.returncode == 0, paired.stderr + daemon.log_text()
    made = run_cli(client, "generate", "a lighthouse", "--remote", "auto", "--steps", "2",
                   "--size", "64x64", "--seed", "11", "--out", str(out), netns=client_ns)
    assert made.returncode == 0, made.stderr + daemon.log_text()
    assert "seed=11" in made.stdout and len(list(out.iterdir())) == 1
    return service


def test_discover_pair_and_generate_from_another_namespace(namespaces, tmp_path):
    daemon_ns, client_ns = namespaces.add("d"), namespaces.add("c")
    lan_dev, _ = namespaces.link(daemon_ns, "10.77.0.1/24", client_ns, "10.77.0.2/24")
    home, client = get_paths(tmp_path / "daemon").ensure(), get_paths(tmp_path / "client").ensure()
    daemon = ServeProcess(home, netns=daemon_ns)
    try:
        service = client_session(home, daemon_ns, client, client_ns, daemon, tmp_path / "out")
        assert service["addresses"][0] == "10.77.0.1" and service["url"].startswith("https://10.77.0.1:")
        devices = json.loads(run_cli(home, "tokens", "list", "--json", netns=daemon_ns).stdout)
        assert [d["name"] for d in devices] == ["phone in netns"] and devices[0]["last_used"]
        remotes = json.loads((client.state_dir / "remotes.json").read_text())["remotes"]
        assert remotes[0]["fingerprint"] == daemon.fingerprint and remotes[0]["id"] == daemon.instance_id
        # Another certificate under the same identity is refused before anything is sent.
        remotes[0]["fingerprint"] = WRONG_PIN
        (client.state_dir / "remotes.json").write_text(json.dumps({"version": 1, "remotes": remotes}))
        refused = run_cli(client, "generate", "a lighthouse", "--remote", service["name"],
                          "--out", str(tmp_path / "no"), netns=client_ns)
        assert refused.returncode == 3 and "pinned" in refused.stderr, refused.stderr
        report = json.loads(run_cli(home, "offline", "status", "--json", netns=daemon_ns).stdout)
        assert report["mode"] == "on" and report["refused"] == 0, report["refused_by_destination"]
        assert f"10.77.0.0/24 ({lan_dev})" in report["allowed"]
    finally:
        code = daemon.terminate()
    assert code == 0, daemon.log_text()


def test_a_whole_session_sends_nothing_to_the_internet(namespaces, tmp_path):
    daemon_ns, client_ns, internet_ns = namespaces.add("d"), namespaces.add("c"), namespaces.add("i")
    lan_dev, _ = namespaces.link(daemon_ns, "10.77.1.1/24", client_ns, "10.77.1.2/24")
    _, wan_dev = namespaces.link(daemon_ns, "203.0.113.1/24", internet_ns, f"{INTERNET}/24", ipv6=False)
    namespaces.default_route(daemon_ns, INTERNET)  # everything not on the LAN goes to "the internet"
    namespaces.resolv_conf(daemon_ns, INTERNET)  # and so does every DNS query
    internet = subprocess.Popen([*namespaces.exec(internet_ns), sys.executable, str(TESTS / "_internet_host.py")],
                                stdout=subprocess.PIPE, text=True)
    assert internet.stdout.readline().strip() == "listening"
    home, client = get_paths(tmp_path / "daemon").ensure(), get_paths(tmp_path / "client").ensure()
    before = namespaces.stats(internet_ns, wan_dev)
    try:
        daemon = ServeProcess(home, netns=daemon_ns, script=TESTS / "_deliberate_leak.py",
                              env={"PENNELLO_SERVER_INTERFACES": lan_dev, "LEAK_TARGET": INTERNET})
        try:
            client_session(home, daemon_ns, client, client_ns, daemon, tmp_path / "out")
            leak_file = home.runtime_dir.parent / "leak.json"
            deadline = time.monotonic() + 60
            while not leak_file.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            leak = json.loads(leak_file.read_text())
            assert "no-network mode refused" in leak["huggingface_hub"], leak
            assert "no-network mode refused" in leak["tcp"], leak
            report = json.loads(run_cli(home, "offline", "status", "--json", netns=daemon_ns).stdout)
            # The deliberate calls, and nothing else pennello did in the whole session.
            assert set(report["refused_by_destination"]) == {"huggingface.co", f"{INTERNET}:443"}, report
            assert all("_deliberate_leak.py" in a["stack"] for a in report["attempts"])
            text = run_cli(home, "offline", "status", netns=daemon_ns).stdout
            assert "x huggingface.co" in text and f"x {INTERNET}:443" in text
        finally:
            code = daemon.terminate()
        assert code == 0, daemon.log_text()
        assert "no-network mode refused socket.getaddrinfo to huggingface.co" in daemon.log_text()
        after = namespaces.stats(internet_ns, wan_dev)
        # Control: a packet sent from the daemon's namespace without pennello is seen.
        subprocess.run([*namespaces.exec(daemon_ns), sys.executable, "-c",
                        f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', "
                        f"('{INTERNET}', 53))"], check=True)
        time.sleep(0.5)
        control = namespaces.stats(internet_ns, wan_dev)
    finally:
        internet.send_signal(signal.SIGTERM)
        counts = json.loads(internet.stdout.readline() or "{}")
        internet.wait(timeout=10)
    assert after["rx_packets"] == before["rx_packets"], (before, after)
    assert control["rx_packets"] > after["rx_packets"] and counts == {"udp": 1, "tcp": 0}, (control, counts)
