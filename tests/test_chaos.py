"""The chaos suite: a hostile LAN, floods, crashes and full disks against a real ``pennello serve``.

Every scenario runs against real processes on loopback and this machine's own LAN address (no
packet leaves it), is bounded (about 30 s at most) and ends with the same checks:

* the owner, on loopback, still gets ``/api/health`` within 2 s;
* no answer was a 5xx, except the documented 503 with ``Retry-After`` while the worker restarts;
* nothing accepted is lost: every accepted job ends with its pictures, or with an error its
  caller was told;
* ``pennello verify`` still passes.

One daemon serves each group of scenarios (starting one costs seconds on a loaded machine): the
LAN group shares ``pennello serve --lan``; the disk group shares one on a small tmpfs (root only)
and ends by stopping it with SIGTERM in the middle of a job. Scenarios elsewhere: disk full
during install (tests/test_disk_full.py), TLS handshakes and per-address caps (tests/test_hostile.py),
a worker dying in many ways (tests/test_crash_only.py).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from pennello.client import sse_events
from pennello.paths import Paths, get_paths
from _fixtures_lan import run_cli
from test_isolation import Serve, needs_namespace

pytestmark = [needs_namespace,
              pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")]

HEALTH_S = 2.0  # the owner's health check must answer within this, whatever else goes on
ENDED = ("done", "failed", "cancelled")


# --- the checks every scenario ends with ---------------------------------------------------------

def owner_reaches_health(daemon: Serve) -> None:
    started = time.monotonic()
    response = daemon.http.get(daemon.api("/health"), timeout=HEALTH_S)
    assert response.status_code == 200 and response.json()["ready"], response.text
    assert time.monotonic() - started < HEALTH_S


def no_server_error(response: requests.Response) -> None:
    """A 5xx is a defect, except the 503 of a restarting worker, which says when to come back."""
    if response.status_code == 503:
        assert int(response.headers["Retry-After"]) >= 1, response.headers
        assert "restarting" in response.json()["error"]["message"], response.text
    else:
        assert response.status_code < 500, (response.status_code, response.text)


def ends_well(daemon: Serve, job_ids: list[str], timeout: float = 90) -> list[dict]:
    """Every accepted job ends: with its pictures, or failed with an error that says why."""
    ended = []
    deadline = time.monotonic() + timeout
    for job_id in job_ids:
        while True:
            response = daemon.http.get(daemon.api(f"/jobs/{job_id}"), timeout=10)
            no_server_error(response)
            job = response.json() if response.status_code == 200 else {}
            if job.get("status") in ENDED:
                break
            assert response.status_code in (200, 503), response.text  # 404 would be a lost job
            assert time.monotonic() < deadline, (job, daemon.log_text()[-3000:])
            time.sleep(0.2)
        if job["status"] == "done":
            assert len(job["images"]) == job["n"], job
        else:
            assert job["error"], job
        ended.append(job)
    return ended


def verify_passes(home: Paths) -> None:
    result = run_cli(home, "verify")
    assert result.returncode == 0, result.stdout + result.stderr


def generate(daemon: Serve, **fields) -> str:
    body = {"prompt": "a kite", "steps": 2, "width": 64, "height": 64, **fields}
    response = daemon.http.post(daemon.api("/generate"), json=body, timeout=30)
    no_server_error(response)
    assert response.status_code in (200, 202), response.text
    return response.json()["id"]


# --- a hostile LAN: one daemon in LAN mode ------------------------------------------------------

@pytest.fixture(scope="module")
def lan_daemon(tmp_path_factory) -> Iterator[Serve]:
    home = get_paths(tmp_path_factory.mktemp("chaos-lan") / "home").ensure()
    # Half the default threads and waiting calls: overfilling them takes 30 callers, not 50.
    daemon = Serve(home, lan=True, PENNELLO_SERVER_THREADS="24", PENNELLO_SERVER_MAX_WAITING="16")
    yield daemon
    try:
        assert daemon.terminate() == 0, daemon.log_text()
        verify_passes(home)
    finally:
        daemon.kill()


def _cpu_ticks(pid: int) -> dict[str, int]:
    """Each thread's CPU time so far (utime + stime, in clock ticks)."""
    ticks = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            ticks[task.name] = int(fields[11]) + int(fields[12])
    return ticks


def _nice(pid: int, task: int | None = None) -> int:
    stat = Path(f"/proc/{pid}" + (f"/task/{task}" if task else "") + "/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])  # field 19, nice


def test_the_model_worker_draws_below_the_servers_cpu_priority(lan_daemon):
    """Seen in bench/bench_load.py: the worker's drawing threads, at the server's priority, took
    the cores the server needed to answer, and the owner's health check waited seconds. Its
    HTTP threads keep the server's priority, so the health check does not wait behind drawing."""
    server, (worker,) = lan_daemon.process.pid, lan_daemon.workers()
    before = _cpu_ticks(worker)
    ends_well(lan_daemon, [generate(lan_daemon, steps=20)])
    drew = max(_cpu_ticks(worker).items(), key=lambda tick: tick[1] - before.get(tick[0], 0))[0]
    nice = {task: _nice(worker, int(task)) for task in _cpu_ticks(worker)}
    assert nice[drew] == _nice(server) + 10, nice  # the device thread
    assert nice[str(worker)] == _nice(server)  # the main thread, which started the HTTP threads
    assert sum(value == _nice(server) for value in nice.values()) > 24, nice  # and those 24


def _tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


def test_idle_sockets(lan_daemon, lan_address):
    port = int(lan_daemon.url.rsplit(":", 1)[1])
    with contextlib.ExitStack() as held:
        for host in [lan_address] * 30 + ["127.0.0.1"] * 10:  # connect, then say nothing
            held.enter_context(socket.create_connection((host, port), timeout=10))
        time.sleep(0.5)
        owner_reaches_health(lan_daemon)
        job = generate(lan_daemon)
        owner_reaches_health(lan_daemon)
    ends_well(lan_daemon, [job])
    verify_passes(lan_daemon.home)


def _dribble(host: str, port: int, stop: threading.Event) -> None:
    """Slowloris: a TLS connection sending its request's headers one byte a second."""
    request = b"GET /api/health HTTP/1.1\r\nHost: pennello\r\nX-Padding: " + b"a" * 200
    with contextlib.suppress(OSError):
        with _tls_context().wrap_socket(socket.create_connection((host, port), timeout=10)) as tls:
            for byte in request:
                if stop.wait(1.0):
                    return
                tls.sendall(bytes([byte]))


def test_slowloris(lan_daemon, lan_address):
    port = int(lan_daemon.url.rsplit(":", 1)[1])
    stop = threading.Event()
    threads = [threading.Thread(target=_dribble, args=(lan_address, port, stop), daemon=True) for _ in range(24)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(3)  # every dribbler is connected and sending
        for _ in range(5):
            owner_reaches_health(lan_daemon)
            time.sleep(1)
        ends_well(lan_daemon, [generate(lan_daemon)])
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
    verify_passes(lan_daemon.home)


def _flood_one(daemon: Serve, index: int, lan_url: str) -> tuple[str, requests.Response | Exception]:
    """One of the flood's requests: most from a LAN device that has no token, some of the owner's
    generate calls, each on its own connection as separate clients would."""
    session = requests.Session()
    session.verify, session.trust_env = False, False
    try:
        if index % 10 == 0:
            body = {"prompt": f"kite {index}", "steps": 2, "width": 64, "height": 64, "seed": index}
            return "generate", session.post(daemon.api("/generate"), json=body, timeout=60)
        return "lan", session.get(f"{lan_url}/api/health", timeout=60)
    except requests.ConnectionError as e:  # a LAN device over its share of threads is closed on
        return "lan", e
    finally:
        session.close()


def test_a_flood_of_200_concurrent_requests(lan_daemon, lan_address):
    lan_url = lan_daemon.url.replace("127.0.0.1", lan_address)
    with concurrent.futures.ThreadPoolExecutor(max_workers=200) as pool:
        flood = [pool.submit(_flood_one, lan_daemon, i, lan_url) for i in range(200)]
        time.sleep(0.5)
        owner_reaches_health(lan_daemon)  # while the flood is on
        answers = [future.result() for future in flood]
    accepted = []
    for who, answer in answers:
        if isinstance(answer, Exception):
            assert who == "lan", answer  # only the LAN device's surplus connections are closed
            continue
        no_server_error(answer)
        if who == "generate" and answer.status_code in (200, 202):
            accepted.append(answer.json()["id"])
    assert len(accepted) >= 10  # the queue (32) takes every one of the owner's 20
    ends_well(lan_daemon, accepted)
    owner_reaches_health(lan_daemon)
    verify_passes(lan_daemon.home)


def _waiting_call(daemon: Serve, index: int) -> requests.Response:
    """A caller that waits for its picture (``"wait": true``) on a connection of its own."""
    body = {"prompt": f"a slow kite {index}", "steps": 100, "width": 64, "height": 64, "seed": index,
            "wait": True}
    with requests.Session() as session:
        session.verify, session.trust_env = False, False
        return session.post(daemon.api("/generate"), json=body, timeout=120)


def test_calls_waiting_for_pictures_leave_threads_for_the_owner(lan_daemon):
    """Seen in bench/bench_load.py: every call waiting for its pictures held one of the server's
    threads, so with as many callers as threads the owner's health check queued behind them for
    seconds. Now at most server.max_waiting (16 here) calls wait; the others are refused with 429."""
    callers = 30  # more than the 24 threads each server has here
    with concurrent.futures.ThreadPoolExecutor(max_workers=callers) as pool:
        calls = [pool.submit(_waiting_call, lan_daemon, i) for i in range(callers)]
        deadline = time.monotonic() + 15
        while sum(call.done() for call in calls) < callers - 16 and time.monotonic() < deadline:
            time.sleep(0.1)  # the refused ones are answered at once, the others wait
        for _ in range(3):  # while 16 calls wait on the device
            owner_reaches_health(lan_daemon)
            time.sleep(0.3)
        jobs = lan_daemon.http.get(lan_daemon.api("/jobs"), timeout=HEALTH_S).json()["jobs"]
        for job in jobs:  # the owner can still cancel, and so ends the test early
            if job["status"] not in ENDED:
                assert lan_daemon.http.delete(lan_daemon.api(f"/jobs/{job['id']}"), timeout=HEALTH_S).ok
        answers = [call.result() for call in calls]
    for answer in answers:
        no_server_error(answer)
    refused = [a for a in answers if a.status_code == 429]
    assert refused and all(a.json()["error"]["type"] == "busy" and int(a.headers["Retry-After"]) >= 1
                           for a in refused), [a.text for a in refused]
    told = {a.json()["id"]: a.json()["status"] for a in answers if a.status_code != 429}
    assert {a.status_code for a in answers} <= {200, 409, 429} and told, [a.text for a in answers]
    assert set(told.values()) <= {"done", "cancelled"}, told
    listed = lan_daemon.http.get(lan_daemon.api("/jobs"), timeout=10).json()["jobs"]
    accepted = {job["id"] for job in listed if job["prompt"].startswith("a slow kite")}
    assert accepted == set(told), (accepted, told)  # none queued for a refused caller, none lost
    verify_passes(lan_daemon.home)


def test_worker_kill_mid_batch(lan_daemon):
    worker = lan_daemon.workers()[0]
    jobs = [generate(lan_daemon, prompt=f"kite {i}", steps=12, seed=i) for i in range(3)]
    stream = lan_daemon.http.get(lan_daemon.api(f"/jobs/{jobs[0]}/events"), stream=True, timeout=60)
    events = sse_events(stream)
    while next(events)[0] != "progress":  # the batch is on the device
        pass
    os.kill(worker, signal.SIGKILL)
    seen = []
    deadline = time.monotonic() + 60
    while True:  # the health checks while it restarts: a documented 503, then 200 again
        response = lan_daemon.http.get(lan_daemon.api("/health"), timeout=HEALTH_S)
        no_server_error(response)
        seen.append(response.status_code)
        if response.status_code == 200 and lan_daemon.workers() not in ([], [worker]):
            break
        assert time.monotonic() < deadline, lan_daemon.log_text()[-3000:]
        time.sleep(0.2)
    names = [name for name, _ in events if name != "progress"]  # the open stream carried on
    stream.close()
    assert "restarting" in names and names[-1] == "done", names
    assert all(job["status"] == "done" for job in ends_well(lan_daemon, jobs))
    owner_reaches_health(lan_daemon)
    verify_passes(lan_daemon.home)


# --- a full disk, then SIGTERM: one daemon on a small tmpfs ---------------------------------------

def _mount_tmpfs(where: Path, size: str) -> str | None:
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, text=True)
    return None if mounted.returncode == 0 else f"mount -t tmpfs failed: {mounted.stderr.strip()}"


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory) -> Iterator[tuple[Serve, Path]]:
    """A daemon whose home is on a 64 MB tmpfs, and the path of a filler file next to it."""
    mount = tmp_path_factory.mktemp("chaos-disk") / "disk"
    why = _mount_tmpfs(mount, "64m")
    if why:
        pytest.skip(why)
    daemon = None
    try:
        home = get_paths(mount / "home").ensure()
        daemon = Serve(home)
        yield daemon, mount / "filler"
    finally:
        if daemon is not None:
            daemon.kill()
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(filler: Path) -> None:
    with open(filler, "wb") as out:
        with contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 65536)
                out.flush()


def test_disk_full_during_save(small_disk):
    """Seen here first: a full disk refused the job's journal file, so the caller got a 507
    although its job had been queued and went on to run under an id it was never told."""
    daemon, filler = small_disk
    _fill(filler)
    try:
        job_id = generate(daemon)  # accepted: the journal is only a safety net
        job, = ends_well(daemon, [job_id])
        assert job["status"] == "failed" and "full" in job["error"], job  # told why, not a crash
        owner_reaches_health(daemon)
        assert daemon.http.get(daemon.api("/jobs"), timeout=10).status_code == 200
    finally:
        filler.unlink()
    ends_well(daemon, [generate(daemon)])  # room again: it saves again
    verify_passes(daemon.home)


def test_sigterm_mid_job(small_disk):
    daemon, _ = small_disk
    body = {"prompt": "four kites", "n": 4, "seed": 1, "steps": 8, "width": 64, "height": 64, "stream": True}
    with daemon.http.post(daemon.api("/generate"), json=body, stream=True, timeout=60) as response:
        events = sse_events(response)
        while next(events)[0] != "progress":
            pass
        daemon.process.send_signal(signal.SIGTERM)
        name, job = next((name, data) for name, data in events if name != "progress")
    assert daemon.process.wait(timeout=60) == 0, daemon.log_text()[-3000:]
    assert name == "done" and len(job["images"]) == 4, job
    verify_passes(daemon.home)


# --- bad files on disk ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, named", [
    ("[server\nport = ", "config.toml"),  # not TOML: the file is named
    ("\udcff\x00garbage = [[[", "config.toml"),  # not even UTF-8
    ("[server]\nport = 99999\n", "server.port"),  # a bad value: its key is named
    ("[engine]\nqueue_size = \"many\"\n", "engine.queue_size"),
    ("[server]\nmax_waiting = 48\n", "server.max_waiting"),  # no thread left for health and status
    ("[server]\nworker_nice = -5\n", "server.worker_nice"),  # the worker may not outrank the server
])
def test_a_corrupt_config_file_is_a_message_not_a_traceback(tmp_path, text, named):
    home = get_paths(tmp_path / "home").ensure()
    home.config_file.write_bytes(text.encode("utf-8", "surrogateescape"))
    result = run_cli(home, "serve", "--port", "0", timeout=60)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and named in result.stderr, result.stderr
    assert not (home.runtime_dir / "daemon.json").exists()
