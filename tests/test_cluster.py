"""Several boxes behind one pennello (docs/cluster.md): a real two-node Ray cluster on loopback.

One cluster for the module, as separate processes, the way an office runs it: ``pennello node
--head`` and ``pennello node --join`` each with its own pennello home and store (127.0.0.2 and
127.0.0.3 stand for two boxes), and ``pennello serve --cluster`` on the head's box. The pictures
are drawn by the embedded model on the nodes' Serve replicas, through pennello's own HTTP API and
client; a node with the wrong token is refused. Needs ``pip install 'pennello[cluster]'``.
"""

from __future__ import annotations

import io
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import requests
from PIL import Image

pytest.importorskip("ray", reason="the cluster extra is not installed (pip install 'pennello[cluster]')")

from pennello.client import Client  # noqa: E402 - after the skip: nothing to test without Ray

pytestmark = pytest.mark.slow

HEAD_IP, NODE_IP, STRANGER_IP = "127.0.0.2", "127.0.0.3", "127.0.0.4"
START_TIMEOUT_S = 300  # three Ray processes trees and two model loads on a loaded 2-core runner


def _free_base(ip: str, span: int = 60) -> int:
    """A port number from which ``span`` ports are free on ``ip`` (Ray's ports are pinned)."""
    for _ in range(50):
        base = random.randrange(20000, 60000 - span)
        try:
            for port in range(base, base + span):
                with socket.socket() as probe:
                    probe.bind((ip, port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {span} free ports on {ip}")


def _pennello(home: Path, *args: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PENNELLO_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-m", "pennello", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=open(log, "w"))


def _install(home: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pennello", "install", "pennello-tiny"], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PENNELLO_HOME": str(home)})
    assert result.returncode == 0, result.stderr


def _wait_port(ip: str, port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited {process.returncode}:\n{log.read_text()[-3000:]}"
        with socket.socket() as probe:
            if probe.connect_ex((ip, port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"nothing listens on {ip}:{port} after {START_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")


def _serving(front: subprocess.Popen) -> re.Match | None:
    """The front's "serving on URL" line; Ray may print its own lines first. None if it died."""
    for line in front.stdout:  # blocks until a line, or EOF when it died
        match = re.match(r"pennello is serving on (http://\S+)", line)
        if match:  # keep reading, so Ray's later lines never fill the pipe and block the front
            threading.Thread(target=front.stdout.read, daemon=True).start()
            return match
    return None


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Cluster:
    head: str  # HOST:PORT of the head
    url: str  # the front's HTTP API
    token_file: Path
    tmp: Path
    node_ports: dict[str, int]  # node ip -> its node-manager port, to find its processes


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    head_home, node_home = tmp / "head", tmp / "node"
    _install(head_home)
    _install(node_home)
    head_port, head_base, node_base = _free_base(HEAD_IP, 1), _free_base(HEAD_IP), _free_base(NODE_IP)
    head_address = f"{HEAD_IP}:{head_port}"
    processes = []
    try:
        head = _pennello(head_home, "node", "--head", "--ip", HEAD_IP, "--port", str(head_port),
                         "--port-base", str(head_base), log=tmp / "head.log")
        processes.append(head)
        _wait_port(HEAD_IP, head_port, head, tmp / "head.log")
        token_file = head_home / "data" / "state" / "cluster-token"
        node = _pennello(node_home, "node", "--join", head_address, "--ip", NODE_IP, "--port-base",
                         str(node_base), "--token-file", str(token_file), log=tmp / "node.log")
        processes.append(node)
        _wait_port(NODE_IP, node_base + 1, node, tmp / "node.log")  # its raylet
        front = _pennello(head_home, "serve", "--port", "0", "--cluster", head_address, log=tmp / "front.log")
        processes.append(front)
        match = _serving(front)
        assert match, f"serve --cluster did not start:\n{(tmp / 'front.log').read_text()[-3000:]}"
        yield Cluster(head_address, match.group(1), token_file, tmp,
                      {HEAD_IP: head_base + 1, NODE_IP: node_base + 1})
    finally:
        for process in reversed(processes):
            _stop(process)


def _by_node(url: str) -> dict[str, int]:
    models = requests.get(f"{url}/api/ps", timeout=30).json()["models"]
    (tiny,) = [model for model in models if model["name"] == "pennello-tiny"]
    assert tiny["device"] == "cluster" and tiny["cluster"]["replicas"] == 2, tiny
    return tiny["cluster"]["pictures_by_node"]


def test_pictures_are_drawn_on_both_nodes_through_the_front(cluster: Cluster) -> None:
    client = Client(cluster.url)
    before = sum(_by_node(cluster.url).values())
    seen: list[bytes] = []
    # Serve picks between idle replicas at random: 12 batches all on one node is 1 chance in 2048.
    for seed in range(12):
        (image,) = client.generate("a red kite over a beach", seed=seed)
        assert image["seed"] == seed and image["bytes"].startswith(b"\x89PNG")
        seen.append(image["bytes"])
    by_node = _by_node(cluster.url)
    assert sum(by_node.values()) == before + 12
    assert len(by_node) == 2 and all(count > 0 for count in by_node.values()), by_node
    # The same seed draws the same picture whichever node draws it (the files differ: job ids).
    (again,) = client.generate("a red kite over a beach", seed=0)
    assert _pixels(again["bytes"]) == _pixels(seen[0])


def _pixels(png: bytes) -> bytes:
    return Image.open(io.BytesIO(png)).convert("RGB").tobytes()


def test_a_node_with_the_wrong_token_is_refused(cluster: Cluster) -> None:
    wrong = cluster.tmp / "wrong-token"
    wrong.write_text("0" * 64 + "\n")
    stranger_home = cluster.tmp / "stranger"
    _install(stranger_home)
    stranger = _pennello(stranger_home, "node", "--join", cluster.head, "--ip", STRANGER_IP, "--port-base",
                         str(_free_base(STRANGER_IP)), "--token-file", str(wrong), log=cluster.tmp / "stranger.log")
    try:
        code = stranger.wait(timeout=180)
    finally:
        _stop(stranger)
    log = (cluster.tmp / "stranger.log").read_text()
    assert code != 0, log[-3000:]
    assert "InvalidAuthToken" in log and "Ray stopped" in log, log[-3000:]  # refused for its token
    assert _by_node(cluster.url) is not None  # the front still answers with its two replicas


def test_an_edit_on_the_front_is_refused_with_a_clear_400(cluster: Cluster) -> None:
    picture = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(picture, format="PNG")
    answer = requests.post(f"{cluster.url}/api/edit", data={"prompt": "in watercolour"},
                           files={"image": ("red.png", picture.getvalue(), "image/png")}, timeout=60)
    assert answer.status_code == 400, answer.text
    assert "not available on a cluster front" in answer.json()["error"]["message"]


@pytest.mark.parametrize(("args", "message"), [
    (["node", "--ip", HEAD_IP], "say either --head or --join"),
    (["node", "--join", "127.0.0.2:6379", "--ip", NODE_IP, "--token-file", "missing-token"],
     "cannot read the cluster token file"),
    (["node", "--head", "--ip", HEAD_IP, "--port-base", "80"], "the cluster port base must be between"),
    (["serve", "--port", "0", "--cluster", "127.0.0.2:6379"], "no pennello node runs on this box"),
])
def test_cluster_commands_say_what_is_wrong(tmp_path: Path, args: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pennello", *args], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path, env={**os.environ, "PENNELLO_HOME": str(tmp_path / "home")})
    assert result.returncode != 0 and message in result.stderr, result.stderr
