"""Several boxes behind one pennello (docs/cluster.md): a real two-node Ray cluster on loopback.

One cluster for the module, as separate processes, the way an office runs it: ``pennello node
--head`` and ``pennello serve --cluster`` on the head's box, then a second box paired with the
front (``pennello pair --node``, ``pennello node --join --pair``), each with its own pennello home
and store (127.0.0.2 and 127.0.0.3 stand for two boxes). The pictures are drawn by the embedded
model on the nodes' Serve replicas, through pennello's own HTTP API and client; a node with the
wrong token or a revoked pairing is refused. The second node joins after the front deployed on
the head alone, so the front scaling to it without a restart is tested by every draw. The last
tests change the cluster: a node killed mid-batch (its batch goes to the other replica), then the
queue's 429 and cancel on the one node left. Needs ``pip install 'pennello[cluster]'``.
"""

from __future__ import annotations

import io
import json
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
from pennello.paths import get_paths  # noqa: E402

from _fixtures_owner import SERVED  # noqa: E402

pytestmark = pytest.mark.slow

HEAD_IP, NODE_IP, STRANGER_IP, OTHER_IP = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"
# `pennello node` as another pennello version runs it: the same code, another version string.
OTHER_VERSION = "import sys, pennello; pennello.__version__ = '0.0.1'; from pennello.cli import main; main()"
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


def _pennello(home: Path, *args: str, log: Path, run: tuple[str, ...] = ("-m", "pennello"),
              **env: str) -> subprocess.Popen:
    env = {**os.environ, **env, "PENNELLO_HOME": str(home)}
    return subprocess.Popen([sys.executable, *run, *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=open(log, "w"))


def _install(*homes: Path) -> None:
    """``pennello install pennello-tiny`` into each home, side by side."""
    installs = [subprocess.Popen([sys.executable, "-m", "pennello", "install", "pennello-tiny"], text=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 env={**os.environ, "PENNELLO_HOME": str(home)}) for home in homes]
    for install in installs:
        _, err = install.communicate(timeout=300)
        assert install.returncode == 0, err


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
    head_node: subprocess.Popen  # its `pennello node --head`
    url: str  # the front's HTTP API
    token_file: Path
    tmp: Path
    head_home: Path
    node_home: Path
    node: subprocess.Popen  # the paired node's `pennello node`
    node_base: int  # its pinned ports start here
    front: subprocess.Popen
    client: Client  # the front's owner
    stranger: subprocess.Popen  # a node with the wrong token
    other: subprocess.Popen  # a node of another pennello version, joined with the right token by hand
    replicas_before_join: int


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    head_home, node_home = tmp / "head", tmp / "node"
    _install(head_home, node_home, tmp / "other")
    processes: list[subprocess.Popen] = []
    try:
        head, head_address, front, url = _start_head_and_front(tmp, head_home, processes)
        SERVED[url] = get_paths(head_home)  # the tests' plain requests go as its owner
        # A box with the wrong token tries to join meanwhile (Ray retries for ~25 s before it gives
        # up, mostly idle: as the cluster forms, not during the tests; one checks how it ended).
        wrong = tmp / "wrong-token"
        wrong.write_text("0" * 64 + "\n")
        stranger = _pennello(tmp / "stranger", "node", "--join", head_address, "--ip", STRANGER_IP, "--port-base",
                             str(_free_base(STRANGER_IP)), "--token-file", str(wrong), log=tmp / "stranger.log")
        processes.append(stranger)
        client = Client(url, paths=get_paths(head_home))
        alone = _tiny(client)["cluster"]["replicas"]  # the front deployed before the node joined
        pair = ("--front", url, "--pair", _node_code(head_home))
        node_base = _free_base(NODE_IP)  # a node that misses Ray's start window starts Ray again itself
        node = _join(cluster_head=head_address, home=node_home, base=node_base, log=tmp / "node.log", pair=pair)
        processes.append(node)
        assert _wait_replicas(client, 2, node), f"the node stopped:\n{(tmp / 'node.log').read_text()[-3000:]}"
        token_file = head_home / "data" / "state" / "cluster-token"
        other = _pennello(tmp / "other", "node", "--join", head_address, "--ip", OTHER_IP, "--port-base",
                          str(_free_base(OTHER_IP)), "--token-file", str(token_file), log=tmp / "other.log",
                          run=("-c", OTHER_VERSION))
        processes.append(other)
        yield Cluster(head_address, head, url, token_file, tmp, head_home, node_home, node, node_base, front, client,
                      stranger, other, alone)
    finally:
        for process in reversed(processes):
            _stop(process)
        SERVED.pop(locals().get("url", ""), None)


def _start_head_and_front(tmp: Path, head_home: Path,
                          processes: list[subprocess.Popen]) -> tuple[subprocess.Popen, str, subprocess.Popen, str]:
    """The head and the front on its box: the head's process and address, the front's process and URL.

    Ray gives a starting node a fixed 30 s to register with its head; on an overloaded machine the
    head can miss it and `pennello node` starts Ray again, while a front that had connected to the
    missed start stops: the front is then started once more."""
    head_port, head_base = _free_base(HEAD_IP, 1), _free_base(HEAD_IP)
    head_address, head_log = f"{HEAD_IP}:{head_port}", tmp / "head.log"
    # The head's GCS checks each node every 1 s instead of 3 s (still 5 misses before it is
    # dead): a node killed by a test is declared dead in about 5 s instead of 15.
    head = _pennello(head_home, "node", "--head", "--ip", HEAD_IP, "--port", str(head_port),
                     "--port-base", str(head_base), log=head_log, RAY_health_check_period_ms="1000")
    processes.append(head)
    for attempt in range(2):
        _wait_port(HEAD_IP, head_port, head, head_log)
        front = _pennello(head_home, "serve", "--port", "0", "--cluster", head_address, log=tmp / "front.log")
        processes.append(front)
        match = _serving(front)
        if match:
            return head, head_address, front, match.group(1)
        assert attempt == 0, (tmp / "front.log").read_text()[-3000:]
        _until(head_log.read_text, lambda log: "starting Ray again" in log, 60)  # or it failed otherwise
    raise AssertionError(f"serve --cluster did not start:\n{(tmp / 'front.log').read_text()[-3000:]}")


def _node_code(head_home: Path) -> str:
    """A node's one-time code, as the owner gets it on the front's box."""
    result = subprocess.run([sys.executable, "-m", "pennello", "pair", "--node"], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PENNELLO_HOME": str(head_home)})
    match = re.search(r"--pair (\S+)", result.stdout)
    assert result.returncode == 0 and match, result.stdout + result.stderr
    return match.group(1)


def _join(cluster_head: str, home: Path, base: int, log: Path, pair: tuple[str, ...] = ()) -> subprocess.Popen:
    """`pennello node --join` as NODE_IP, once its raylet listens."""
    node = _pennello(home, "node", "--join", cluster_head, "--ip", NODE_IP, "--port-base", str(base), *pair, log=log)
    _wait_port(NODE_IP, base + 1, node, log)  # its raylet
    return node


def _wait_replicas(client: Client, replicas: int, node: subprocess.Popen | None = None) -> bool:
    """Until the front's deployment has ``replicas`` replicas (it rescales as nodes come and go);
    False if ``node``, the one awaited, stopped instead."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while _tiny(client)["cluster"]["replicas"] != replicas:
        assert time.monotonic() < deadline, f"not {replicas} replicas after {START_TIMEOUT_S}s: {_tiny(client)}"
        if node is not None and node.poll() is not None:
            return False
        time.sleep(1)
    return True


def _tiny(client: Client) -> dict:
    (tiny,) = [model for model in client.ps()["models"] if model["name"] == "pennello-tiny"]
    assert tiny["device"] == "cluster", tiny
    return tiny


def _by_node(client: Client) -> dict[str, int]:
    tiny = _tiny(client)
    assert tiny["cluster"]["replicas"] == 2, tiny
    return tiny["cluster"]["pictures_by_node"]


def test_pictures_are_drawn_on_both_nodes_through_the_front(cluster: Cluster) -> None:
    client = cluster.client
    before = sum(_by_node(cluster.client).values())
    seen: list[bytes] = []
    # Serve picks between idle replicas at random: 12 batches all on one node is 1 chance in 2048.
    for seed in range(12):
        (image,) = client.generate("a red kite over a beach", seed=seed)
        assert image["seed"] == seed and image["bytes"].startswith(b"\x89PNG")
        seen.append(image["bytes"])
    by_node = _by_node(cluster.client)
    # The second node joined after the front had deployed on the head alone: the front scaled to
    # it in place, without a restart.
    assert cluster.replicas_before_join == 1 and cluster.front.poll() is None
    assert sum(by_node.values()) == before + 12
    assert len(by_node) == 2 and all(count > 0 for count in by_node.values()), by_node
    # The same seed draws the same picture whichever node draws it (the files differ: job ids).
    (again,) = client.generate("a red kite over a beach", seed=0)
    assert _pixels(again["bytes"]) == _pixels(seen[0])


def test_progress_through_the_front_moves_per_step_as_on_one_box(cluster: Cluster) -> None:
    """The replica reports each denoising step while it draws (a streaming answer): the job's
    events and A1111's progress move step by step, as on one box, not once per batch."""
    steps: list[int] = []
    fractions: list[float] = []

    def on_progress(step: int, total: int) -> None:
        steps.append(step)
        if len(fractions) < 3:  # while the replica still draws: 3 of 30 steps
            answer = requests.get(f"{cluster.url}/sdapi/v1/progress?skip_current_image=true", timeout=30)
            fractions.append(answer.json()["progress"])

    cluster.client.generate("a kite, step by step", steps=30, seed=5, on_progress=on_progress)
    assert steps == list(range(1, 31)), steps
    assert any(0 < fraction < 1 for fraction in fractions), fractions


def test_a_node_of_another_version_joined_with_a_copied_token_gets_no_replica(cluster: Cluster) -> None:
    """``--token-file`` skips the front's door; the front still reads the version the node publishes
    (a Ray label), places no replica there although it offers the model, and says why."""
    why = _until(lambda: _tiny(cluster.client)["cluster"]["refused_nodes"].get(OTHER_IP), bool, START_TIMEOUT_S)
    assert why.startswith("this node runs pennello 0.0.1 and the front "), why
    assert _tiny(cluster.client)["cluster"]["replicas"] == 2  # the head and the paired node only
    assert f"node {OTHER_IP} is refused: this node runs pennello 0.0.1" in (cluster.tmp / "front.log").read_text()
    shown = _run(cluster.head_home, "ps")
    assert shown.returncode == 0 and f"cluster node {OTHER_IP} gets no replica: {why}" in shown.stdout, shown
    assert cluster.other.poll() is None, (cluster.tmp / "other.log").read_text()[-3000:]  # it did join
    import psutil

    ray_processes = psutil.Process(cluster.other.pid).children(recursive=True)
    assert not [p for p in ray_processes if "ServeReplica" in " ".join(p.cmdline())]
    _stop(cluster.other)  # done with it: its Ray processes would only slow the tests left


def _pixels(png: bytes) -> bytes:
    return Image.open(io.BytesIO(png)).convert("RGB").tobytes()


def _run(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pennello", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PENNELLO_HOME": str(home)})


def _node_tokens(head_home: Path) -> dict[str, dict]:
    listed = _run(head_home, "tokens", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return {token["name"]: token for token in json.loads(listed.stdout) if token["scope"] == "node"}


def test_a_paired_node_keeps_its_secrets_private_and_a_revoked_one_cannot_join(cluster: Cluster) -> None:
    from pennello.daemon.cluster.membership import CREDENTIAL_FILE, join_through_front
    from pennello.installer import Store

    state = get_paths(cluster.node_home).state_dir
    for secret in ("cluster-token", CREDENTIAL_FILE):
        assert (state / secret).stat().st_mode & 0o777 == 0o600, secret
    assert (state / "cluster-token").read_text() == cluster.token_file.read_text()
    assert f"node {NODE_IP}" in _node_tokens(cluster.head_home)
    # Another box pairs as `pennello node --pair` does, over the front's real API; then the owner
    # revokes it, and its next join is refused before any Ray starts, its copy of the token gone.
    late_home = cluster.tmp / "revoked"
    late = get_paths(late_home).ensure()
    join_through_front(late, Store(late), "node revoked", cluster.url, _node_code(cluster.head_home), None)
    assert (late.state_dir / "cluster-token").read_text() == cluster.token_file.read_text()
    (late.state_dir / "cluster-token").unlink()  # a later join needs no code: its node token gets it
    join_through_front(late, Store(late), "node revoked", None, None, None)
    assert (late.state_dir / "cluster-token").read_text() == cluster.token_file.read_text()
    revoked = _run(cluster.head_home, "tokens", "revoke", _node_tokens(cluster.head_home)["node revoked"]["id"])
    assert revoked.returncode == 0, revoked.stderr
    result = _run(late_home, "node", "--join", cluster.head, "--ip", STRANGER_IP)
    assert result.returncode != 0 and "refused this node" in result.stderr, result.stderr
    assert "pairing was revoked" in result.stderr and "pennello pair --node" in result.stderr
    assert not (late.state_dir / "cluster-token").exists()


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
    (["node", "--join", "127.0.0.2:6379", "--ip", NODE_IP], "this node is not paired with the cluster's front"),
    (["node", "--join", "127.0.0.2:6379", "--ip", NODE_IP, "--pair", "K7M2QX9P"], "--pair needs --front URL"),
    (["node", "--head", "--ip", HEAD_IP, "--port-base", "80"], "the cluster port base must be between"),
    (["serve", "--port", "0", "--cluster", "127.0.0.2:6379"], "no pennello node runs on this box"),
])
def test_cluster_commands_say_what_is_wrong(tmp_path: Path, args: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pennello", *args], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path, env={**os.environ, "PENNELLO_HOME": str(tmp_path / "home")})
    assert result.returncode != 0 and message in result.stderr, result.stderr


# --- last: the stranger (refused meanwhile), then what changes the cluster or keeps it busy ---------

def test_a_node_with_the_wrong_token_is_refused(cluster: Cluster) -> None:
    code = cluster.stranger.wait(timeout=180)
    log = (cluster.tmp / "stranger.log").read_text()
    assert code != 0, log[-3000:]
    assert "InvalidAuthToken" in log and "Ray stopped" in log, log[-3000:]  # refused for its token
    assert _by_node(cluster.client) is not None  # the front still answers with its two replicas


def _kill_node(cluster: Cluster) -> int:
    """SIGKILL every Ray process of the paired node (its raylet, workers, replica), as a power cut
    would; returns how many."""
    import psutil

    tree = psutil.Process(cluster.node.pid).children(recursive=True)
    marks = {f"--node-ip-address={NODE_IP}", f"--node-manager-port={cluster.node_base + 1}"}
    strays = [p for p in psutil.process_iter(["cmdline"]) if marks <= set(p.info["cmdline"] or ())]
    doomed = {p.pid: p for p in [*tree, *strays]}
    for process in doomed.values():
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    return len(doomed)


def _replica(node: subprocess.Popen):  # noqa: ANN202 - a psutil.Process
    """The Serve replica process (a worker of its raylet) of ``node``, a `pennello node`."""
    import psutil

    replicas = [p for p in psutil.Process(node.pid).children(recursive=True) if "ServeReplica" in p.name()
                or "ServeReplica" in " ".join(p.cmdline())]
    assert len(replicas) == 1, replicas
    return replicas[0]


def _job(client: Client, job_id: str) -> dict:
    return client.call("GET", f"/api/jobs/{job_id}")


def _until(what, done, timeout_s: float = START_TIMEOUT_S):  # noqa: ANN001, ANN202 - a test helper
    deadline = time.monotonic() + timeout_s
    while not done(value := what()):
        assert time.monotonic() < deadline, value
        time.sleep(0.2)
    return value


def test_a_node_killed_mid_batch_hands_its_batch_to_the_other_replica(cluster: Cluster) -> None:
    client = cluster.client
    before = _by_node(cluster.client)
    replica = _replica(cluster.node)
    drawn = sum(replica.cpu_times()[:2])
    # Long batches, more than the replicas: a replica takes one at a time, so the node gets one
    # even when Serve's router, slow to hear from it on a loaded machine, first tries the head.
    jobs = [client.call("POST", "/api/generate", json={"prompt": "a slow kite", "n": 4, "steps": 80, "seed": seed})
            for seed in (1, 2, 3)]
    # Kill once the node's replica is drawing (burning CPU), not before it got its batch.
    _until(lambda: sum(replica.cpu_times()[:2]) - drawn, lambda busy: busy > 0.3, 120)
    assert _kill_node(cluster) > 0
    _wait_replicas(cluster.client, 1)  # the front stops counting on the dead node (while the batches run)
    ended = [_until(lambda job=job: _job(client, job["id"]), lambda j: j["status"] not in ("queued", "running"))
             for job in jobs]
    assert [job["status"] for job in ended] == ["done"] * 3, ended
    assert all(len(job["images"]) == 4 for job in ended)
    # Both batches were drawn by the surviving node: the killed one finished none of them.
    after = _tiny(cluster.client)["cluster"]["pictures_by_node"]
    gained = {node: count - before.get(node, 0) for node, count in after.items() if count != before.get(node, 0)}
    assert list(gained.values()) == [12], (before, after)
    # ...because the batch sent to the killed node went to the other replica: Serve's router resends
    # a request whose replica became unreachable, the front one whose replica died under it.
    log = (cluster.tmp / "front.log").read_text()
    assert "a replica was lost mid-batch" in log or "Request failed because Replica" in log, log[-3000:]


def test_the_front_queues_answers_429_when_full_and_cancels_on_the_cluster(cluster: Cluster) -> None:
    client = cluster.client
    # Slow batches of different prompts (no two merged): on the replica, the queue behind them.
    answers = [requests.post(f"{cluster.url}/api/generate", json={"prompt": f"kite {i}", "steps": 100, "n": 4},
                             timeout=60) for i in range(40)]
    busy = [answer for answer in answers if answer.status_code == 429]
    assert busy and all(answer.headers.get("Retry-After") for answer in busy), [a.status_code for a in answers]
    jobs = [answer.json()["id"] for answer in answers if answer.status_code == 202]
    for job_id in jobs:  # cancel every job: queued ones and those a replica is drawing
        client.cancel_job(job_id)
    ended = [_until(lambda job_id=job_id: _job(client, job_id), lambda j: j["status"] in ("done", "cancelled"), 120)
             for job_id in jobs]
    assert sum(job["status"] == "cancelled" for job in ended) >= len(jobs) - 2, [j["status"] for j in ended]
    # ...and the replica stopped drawing the cancelled batch at its next step, not at its end (it
    # went on burning 0.4 CPU-seconds a second on a loaded machine; idle, it burns almost none).
    replica = _replica(cluster.head_node)
    time.sleep(0.5)  # the step it was in
    drawn = sum(replica.cpu_times()[:2])
    time.sleep(1)
    assert sum(replica.cpu_times()[:2]) - drawn < 0.15
