"""Isolation as real processes: ``pennello serve`` with the model worker in its own network
namespace, the HTTP server in front of it forwarding over a Unix socket.

Proofs, all against the kernel's own view (``/proc``), not the daemon's word alone: the worker's
network namespace differs from the server's and holds only ``lo``; a connect from inside that
namespace to an address the server answers on fails while the same connect from outside works;
generation, progress events (arriving while the job still runs), cancel and cancel-on-disconnect
work through the proxy; the real client address reaches the worker (a LAN caller is asked for a
token, a spoofed X-Forwarded-For changes nothing); SIGTERM stops both processes cleanly; a dead
server takes the worker down, a worker that keeps dying takes the server down. ``offline.isolation = "off"`` runs one process, as before.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from pennello.config import load_config
from pennello.daemon.net import mdns as advertise
from pennello.daemon.net import isolation, supervisor
from pennello.errors import ConfigError, DaemonError
from pennello.paths import Paths, get_paths

from _fixtures_lan import ServedProcess

DAEMON_EXIT = 8
pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
_UNAVAILABLE = isolation.probe()
needs_namespace = pytest.mark.skipif(_UNAVAILABLE is not None,
                                     reason=f"no network namespace for the worker here: {_UNAVAILABLE}")


class Serve(ServedProcess):
    """``pennello serve --port 0`` in a subprocess, with its URL and its worker's pid."""

    def __init__(self, home: Paths, lan: bool = False, **env: str) -> None:
        self.home = home
        self.log = home.runtime_dir.parent / "serve.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pennello", "serve", "--port", "0", *(["--lan"] if lan else [])],
            stdout=subprocess.PIPE,
            stderr=open(self.log, "w"), text=True,
            env={**os.environ, "PENNELLO_HOME": str(home.runtime_dir.parent), "OMP_NUM_THREADS": "1", **env})
        line = self.process.stdout.readline()  # blocks until serving, or EOF if it died
        match = re.match(r"pennello is serving on (https?://\S+)", line)
        assert match, f"serve did not start: {line!r}\n{self.log_text()}"
        self.serving(match.group(1))
        self.http = requests.Session()
        self.http.verify = False  # LAN mode's self-signed certificate; pinning is tested elsewhere
        self.http.trust_env = False  # else REQUESTS_CA_BUNDLE would override verify

    def api(self, path: str) -> str:
        return f"{self.url}/api{path}"

    def workers(self) -> list[int]:
        """Pids of the server's child processes, whichever of its threads started them (a
        restarted worker is the supervisor thread's child)."""
        tasks = Path(f"/proc/{self.process.pid}/task").glob("*/children")
        return sorted(int(pid) for children in tasks for pid in children.read_text().split())


def _home(root: Path) -> Paths:
    return get_paths(root).ensure()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _alive(pid)


def _interfaces_in(pid: int) -> list[str]:
    """Interface names in ``pid``'s network namespace, as the kernel lists them."""
    lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    return sorted(line.split(":", 1)[0].strip() for line in lines)


def _wait_status(daemon: Serve, job_id: str, status: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = daemon.http.get(daemon.api(f"/jobs/{job_id}"), timeout=10).json()
        if job["status"] == status or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


# --- without a daemon ----------------------------------------------------------------------------

def test_probe_agrees_with_util_linux_unshare():
    if not shutil.which("unshare"):
        pytest.skip("util-linux `unshare` is not installed to compare with")
    flags = ["--net"] if os.geteuid() == 0 else ["--user", "--map-current-user", "--net"]
    direct = subprocess.run(["unshare", *flags, "true"], capture_output=True, text=True)
    if direct.returncode != 0 and os.geteuid() == 0:  # root without CAP_SYS_ADMIN: a user namespace may do
        direct = subprocess.run(["unshare", "--user", "--map-current-user", "--net", "true"],
                                capture_output=True, text=True)
    assert (isolation.probe() is None) == (direct.returncode == 0), direct.stderr


def test_an_unprivileged_worker_gets_a_user_namespace_and_files_keep_their_owner():
    """The path a desktop user takes: CLONE_NEWUSER|CLONE_NEWNET, own uid mapped to itself."""
    prefix: list[str] = []
    uid = os.geteuid()
    if uid == 0:
        if not shutil.which("setpriv"):
            pytest.skip("root, and no `setpriv` to become an unprivileged user")
        uid = 65534  # nobody
        prefix = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    with tempfile.TemporaryDirectory() as folder:  # not under pytest's root-only tmp
        os.chmod(folder, 0o777)
        _unprivileged_namespace(prefix, uid, Path(folder))


def _unprivileged_namespace(prefix: list[str], uid: int, tmp_path: Path) -> None:
    code = ("import json, os, sys\nfrom pennello.daemon.net.isolation import enter_network_namespace, interfaces\n"
            "try:\n    made = enter_network_namespace()\nexcept OSError as e:\n    print(e); sys.exit(3)\n"
            "open(sys.argv[1], 'w').write('x')\n"
            "print(json.dumps({'made': made, 'interfaces': interfaces(), 'uid': os.geteuid()}))\n")
    written = tmp_path / "written"
    result = subprocess.run([*prefix, sys.executable, "-c", code, str(written)], capture_output=True, text=True)
    if result.returncode == 3:
        pytest.skip(f"unprivileged user namespaces are not allowed here: {result.stdout.strip()}")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == {"made": "user+net", "interfaces": ["lo"], "uid": uid}
    assert written.stat().st_uid == uid


def test_the_isolation_setting_is_checked(tmp_path):
    assert load_config(tmp_path / "none.toml", environ={}).offline.isolation == "auto"
    assert load_config(tmp_path / "none.toml",
                       environ={"PENNELLO_OFFLINE_ISOLATION": "off"}).offline.isolation == "off"
    with pytest.raises(ConfigError, match="offline.isolation"):
        load_config(tmp_path / "none.toml", environ={"PENNELLO_OFFLINE_ISOLATION": "sometimes"})


def test_decide_follows_the_setting_and_the_system(tmp_path):
    def config(**env: str):
        return load_config(tmp_path / "none.toml", environ=env)

    assert not isolation.decide(config(PENNELLO_OFFLINE_ISOLATION="off")).namespace
    off = isolation.decide(config(PENNELLO_OFFLINE_ENABLED="false"))
    assert not off.namespace and "offline.enabled" in off.reason
    auto = isolation.decide(config())
    assert auto.namespace == (_UNAVAILABLE is None)
    if _UNAVAILABLE is None:
        assert isolation.decide(config(PENNELLO_OFFLINE_ISOLATION="namespace")).namespace
    else:
        assert _UNAVAILABLE in auto.reason
        with pytest.raises(DaemonError, match="namespace"):
            isolation.decide(config(PENNELLO_OFFLINE_ISOLATION="namespace"))


def test_config_survives_the_trip_to_the_worker(tmp_path):
    config = load_config(tmp_path / "none.toml", environ={"PENNELLO_SERVER_INTERFACES": "eth0,wlan0",
                                                          "PENNELLO_ENGINE_MAX_BATCH": "3"})
    trip = isolation.config_from_json(json.loads(json.dumps(isolation.config_to_json(config))))
    assert trip == config and trip.server.interfaces == ("eth0", "wlan0")


# --- one isolated daemon for the read-mostly proofs ----------------------------------------------

@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[Serve]:
    if _UNAVAILABLE is not None:
        pytest.skip(f"no network namespace for the worker here: {_UNAVAILABLE}")
    # LAN mode: a client on this machine's LAN address then counts as another device, and the
    # worker's pairing URLs need the LAN address that only the server can see.
    running = Serve(_home(tmp_path_factory.mktemp("isolated")), lan=True)
    yield running
    running.kill()


@needs_namespace
def test_the_worker_has_its_own_namespace_with_only_loopback(daemon):
    report = daemon.http.get(daemon.api("/offline"), timeout=10).json()
    assert report["mode"] == "on" and report["isolation"] == "network-namespace", report
    worker = report["worker"]["pid"]
    assert daemon.workers() == [worker]
    server_ns = os.readlink(f"/proc/{daemon.process.pid}/ns/net")
    worker_ns = os.readlink(f"/proc/{worker}/ns/net")
    assert worker_ns != server_ns and worker_ns == report["worker"]["netns"]
    assert _interfaces_in(worker) == ["lo"] == report["worker"]["interfaces"]
    assert len(_interfaces_in(daemon.process.pid)) > 1  # the server's namespace is the machine's
    health = daemon.http.get(daemon.api("/health"), timeout=10).json()
    assert health["offline"]["isolation"] == "network-namespace" and health["offline"]["worker"]["pid"] == worker


@needs_namespace
def test_a_connect_from_the_workers_namespace_fails_where_the_servers_succeeds(daemon, lan_address):
    """Join the worker's namespace (setns, root) and try to reach the daemon's own port."""
    if os.geteuid() != 0:
        pytest.skip("joining another process's network namespace needs root")
    port = int(daemon.url.rsplit(":", 1)[1])
    worker = daemon.workers()[0]
    code = ("import ctypes, os, socket, sys\n"
            "if len(sys.argv) > 2:\n"
            "    fd = os.open(sys.argv[2], os.O_RDONLY)\n"
            "    assert ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) == 0, ctypes.get_errno()\n"
            "try:\n"
            f"    socket.create_connection(({lan_address!r}, int(sys.argv[1])), timeout=3).close()\n"
            "    print('connected')\n"
            "except OSError as e:\n"
            "    print('refused', e)\n")
    outside = subprocess.run([sys.executable, "-c", code, str(port)], capture_output=True, text=True)
    inside = subprocess.run([sys.executable, "-c", code, str(port), f"/proc/{worker}/ns/net"],
                            capture_output=True, text=True)
    assert outside.stdout.startswith("connected"), outside.stderr  # the control
    assert inside.stdout.startswith("refused") and "unreachable" in inside.stdout, inside.stdout + inside.stderr


@needs_namespace
def test_offline_status_names_the_isolation(daemon):
    env = {**os.environ, "PENNELLO_HOME": str(daemon.home.runtime_dir.parent)}
    text = subprocess.run([sys.executable, "-m", "pennello", "offline", "status"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert text.returncode == 0, text.stderr
    worker = daemon.workers()[0]
    assert f"isolation: network namespace (model worker pid {worker}; its interfaces: lo)" in text.stdout
    report = json.loads(subprocess.run([sys.executable, "-m", "pennello", "offline", "status", "--json"],
                                       capture_output=True, text=True, env=env, timeout=60).stdout)
    assert report["isolation"] == "network-namespace" and report["worker"]["interfaces"] == ["lo"]


@needs_namespace
def test_generate_over_http_through_the_proxy(daemon):
    made = daemon.http.post(daemon.api("/generate"), json={"prompt": "a red kite", "steps": 2, "width": 64,
                                                        "height": 64, "seed": 3, "wait": True}, timeout=120)
    assert made.status_code == 200, made.text
    job = made.json()
    assert job["status"] == "done" and job["images"][0]["seed"] == 3
    picture = daemon.http.get(daemon.url + job["images"][0]["url"], timeout=30)
    assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")


@needs_namespace
def test_bad_input_keeps_the_error_shape_and_big_bodies_are_refused(daemon):
    bad = daemon.http.post(daemon.api("/generate"), json={"prompt": "x", "width": 65}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "width", bad.text
    huge = daemon.http.post(daemon.api("/generate"), data=b"{" + b" " * (17 * 1024 * 1024) + b"}",
                         headers={"Content-Type": "application/json"}, timeout=60)
    assert huge.status_code == 413 and set(huge.json()["error"]) == {"type", "message", "field"}


@needs_namespace
def test_progress_events_arrive_while_the_job_runs(daemon):
    job = daemon.http.post(daemon.api("/generate"), json={"prompt": "slow", "steps": 30, "width": 64,
                                                       "height": 64}, timeout=30).json()
    seen: list[tuple[str, str]] = []
    with daemon.http.get(daemon.api(f"/jobs/{job['id']}/events"), stream=True, timeout=60) as events:
        event = None
        for line in events.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "progress" and not seen:
                # The first progress event is here: the job must still be running.
                seen.append((event, daemon.http.get(daemon.api(f"/jobs/{job['id']}"), timeout=10).json()["status"]))
            elif line.startswith("data: ") and event in ("done", "failed", "cancelled"):
                seen.append((event, ""))
                break
    assert seen[0] == ("progress", "running") and seen[-1][0] == "done", seen


@needs_namespace
def test_cancel_and_cancel_on_disconnect_reach_the_worker(daemon):
    # Eight pictures of 100 steps keep the tiny model busy for tens of seconds, whatever the
    # machine's speed (a larger size no longer does: the tiny model draws 64x64 and enlarges).
    running = daemon.http.post(daemon.api("/generate"), json={"prompt": "long", "steps": 100, "n": 8},
                               timeout=30).json()
    assert _wait_status(daemon, running['id'], "running")["status"] == "running"
    # A streaming client whose job is still queued leaves: the worker must see it go.
    stream = daemon.http.post(daemon.api("/generate"), json={"prompt": "queued", "steps": 2, "stream": True,
                                                          "width": 64, "height": 64}, stream=True, timeout=30)
    lines = stream.iter_lines(decode_unicode=True)
    assert next(lines) == "event: job"
    queued = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
    assert queued["status"] == "queued"
    stream.close()
    assert _wait_status(daemon, queued['id'], "cancelled", 30)["status"] == "cancelled"
    cancelled = daemon.http.delete(daemon.api(f"/jobs/{running['id']}"), timeout=30)
    assert cancelled.status_code == 200
    assert _wait_status(daemon, running['id'], "cancelled", 60)["status"] == "cancelled"


@needs_namespace
def test_paths_reach_the_worker_exactly_as_the_client_sent_them(daemon):
    # An encoded '%' must stay one (else %252e%252e would arrive as ".."), and UTF-8 must stay UTF-8.
    for sent, name in (("%252e%252e", "%2e%2e"), ("caf%C3%A9", "café")):
        response = daemon.http.get(f"{daemon.url}/v1/models/{sent}", timeout=10)
        assert response.status_code == 404
        assert f"the model {name!r} does not exist" in response.json()["error"]["message"]


@needs_namespace
def test_the_real_client_address_reaches_the_worker(daemon, lan_address):
    port = daemon.url.rsplit(":", 1)[1]
    # Owner-only: loopback gets it, whatever it claims to be.
    spoofed = daemon.http.get(daemon.api("/offline"), headers={"X-Forwarded-For": "192.168.1.50"}, timeout=10)
    assert spoofed.status_code == 200
    # A caller on the LAN address is another device: it needs a token, even claiming to be loopback.
    remote = daemon.http.get(f"https://{lan_address}:{port}/api/offline",
                          headers={"X-Forwarded-For": "127.0.0.1", "Forwarded": "for=127.0.0.1"}, timeout=10)
    assert remote.status_code == 401 and remote.json()["error"]["type"], remote.text
    # Pairing URLs name the LAN address the server found: the worker sees only loopback.
    offer = daemon.http.post(daemon.api("/pair/code"), timeout=10).json()
    assert offer["pair_url"] == f"https://{advertise.lan_address()}:{port}/?pair={offer['code']}"


# --- lifecycle: each test its own daemon ---------------------------------------------------------

@needs_namespace
def test_sigterm_lets_the_running_job_finish_and_stops_both(tmp_path):
    home = _home(tmp_path / "home")
    daemon = Serve(home)
    try:
        worker = daemon.workers()[0]
        job = daemon.http.post(daemon.api("/generate"), json={"prompt": "finish", "steps": 40, "width": 64,
                                                           "height": 64}, timeout=30).json()
        assert _wait_status(daemon, job['id'], "running")["status"] == "running"
        assert daemon.terminate() == 0, daemon.log_text()
    finally:
        daemon.kill()
    assert _wait_gone(worker, 5), "the worker outlived the server"
    assert len(list(home.outputs_dir.rglob("*.png"))) == 1
    assert not (home.runtime_dir / "daemon.json").exists() and not (home.runtime_dir / "worker.sock").exists()


@needs_namespace
def test_a_worker_that_keeps_dying_stops_the_server_with_an_error(tmp_path):
    """One death is restarted (tests/test_crash_only.py); a worker killed each time it comes
    back stops the server after supervisor.MAX_DEATHS deaths."""
    home = _home(tmp_path / "home")
    daemon = Serve(home)
    killed: list[int] = []
    try:
        deadline = time.monotonic() + 240
        while daemon.process.poll() is None:
            assert time.monotonic() < deadline, f"still serving after killing {killed}"
            for worker in set(daemon.workers()) - set(killed):
                os.kill(worker, signal.SIGKILL)
                killed.append(worker)
            time.sleep(0.05)
        assert daemon.process.wait(timeout=60) == DAEMON_EXIT
    finally:
        daemon.kill()
    assert len(killed) == supervisor.MAX_DEATHS
    assert f"the model worker (pid {killed[0]}) exited with code -9" in daemon.log_text()
    assert f"the model worker died {supervisor.MAX_DEATHS} times" in daemon.log_text()
    assert not (home.runtime_dir / "daemon.json").exists()


@needs_namespace
def test_a_dead_server_takes_the_worker_with_it(tmp_path):
    daemon = Serve(_home(tmp_path / "home"))
    worker = daemon.workers()[0]
    daemon.kill()  # SIGKILL: no chance to stop the worker itself
    assert _wait_gone(worker, 60), "the worker was orphaned"


def test_isolation_off_runs_one_process_with_the_guard(tmp_path):
    daemon = Serve(_home(tmp_path / "home"), PENNELLO_OFFLINE_ISOLATION="off")
    try:
        report = daemon.http.get(daemon.api("/offline"), timeout=10).json()
        assert report["isolation"] == "in-process-guard" and report["mode"] == "on"
        assert report["isolation_reason"] == 'offline.isolation = "off"' and "worker" not in report
        assert daemon.workers() == []
        assert os.readlink(f"/proc/{daemon.process.pid}/ns/net") == os.readlink("/proc/self/ns/net")
    finally:
        assert daemon.terminate() == 0, daemon.log_text()


@needs_namespace
def test_a_worker_that_cannot_start_fails_serve_as_one_process_would(tmp_path):
    """A device this machine lacks (Apple's MPS, never on Linux): the engine refuses to start, with
    the same exit code and message with and without isolation."""
    results = {}
    for mode in ("namespace", "off"):
        home = _home(tmp_path / mode)
        env = {**os.environ, "PENNELLO_HOME": str(home.runtime_dir.parent), "OMP_NUM_THREADS": "1",
               "PENNELLO_OFFLINE_ISOLATION": mode, "PENNELLO_ENGINE_DEVICE": "mps"}
        results[mode] = subprocess.run([sys.executable, "-m", "pennello", "serve", "--port", "0"],
                                       capture_output=True, text=True, env=env, timeout=180)
        assert not (home.runtime_dir / "daemon.json").exists()
    isolated, single = results["namespace"], results["off"]
    assert single.returncode not in (0, 1) and isolated.returncode == single.returncode, isolated.stderr
    reason = single.stderr.strip().splitlines()[-1].removeprefix("error: ")
    assert "mps" in reason and reason in isolated.stderr and "model worker" in isolated.stderr
