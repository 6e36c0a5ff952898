"""One caller's failure stays that caller's, and a shutdown or a dying worker loses nothing.

Each test reproduces a failure seen on main with real parts: the engine on the embedded model,
a real waitress server on loopback with ``requests``, and ``pennello serve`` as a real process
that is signalled and whose model worker is killed.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import socketserver
import threading
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from pennello.client import sse_events
from pennello.daemon.net import isolation
from pennello.daemon import GenerateRequest
from pennello.paths import get_paths
from _fixtures_daemon import SLOW_STEPS, config_with, wait_until_running
from test_isolation import Serve, needs_namespace

MARKER = "a prompt the text encoder cannot take"


# --- one caller's prompt must not fail its batch mates -------------------------------------------

@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_text_that_is_not_unicode_is_refused_naming_the_field(server, field):
    # json.dumps writes the lone surrogate as the escape "\ud800", as any JSON client may.
    body = {"prompt": "a red kite", field: "a kite \ud800 in the rain"}
    response = requests.post(server.api("/generate"), json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["field"] == field and "not valid Unicode" in error["message"]
    assert "character 7" in error["message"]
    assert server.engine.jobs() == []


def refuse_marker(engine, monkeypatch) -> None:
    """Make the loaded pipeline's text encoding raise, as a tokenizer does on text it cannot
    take, for any call with a MARKER prompt in it."""
    pipe = engine.residency.loaded["pennello-tiny"].pipe
    encode = pipe.encode_prompt

    def encode_prompt(prompt, *args, **kwargs):
        if any(MARKER in text for text in prompt):
            raise TypeError("TextEncodeInput must be Union[TextInputSequence, Tuple[InputSequence, InputSequence]]")
        return encode(prompt, *args, **kwargs)

    monkeypatch.setattr(pipe, "encode_prompt", encode_prompt)


def test_a_failing_job_in_a_batch_fails_alone(engine, monkeypatch):
    refuse_marker(engine, monkeypatch)
    blocker = engine.submit(GenerateRequest(prompt="busy", steps=SLOW_STEPS))
    wait_until_running(blocker)
    mates = [engine.submit(GenerateRequest(prompt="kite 0", seed=1, owner="phone")),
             engine.submit(GenerateRequest(prompt=MARKER, seed=2, owner="laptop")),
             engine.submit(GenerateRequest(prompt="kites", seed=3, n=2, owner="tablet"))]
    for job in [blocker, *mates]:
        assert job.wait(120), f"job {job.id} did not end"
    good, bad, two = mates
    assert [good.batch_size, bad.batch_size, two.batch_size] == [4, 4, 4]  # they did share a call
    assert bad.status == "failed" and "TextEncodeInput" in bad.error and bad.images == []
    for job in (good, two):
        assert job.status == "done", job.error
        assert len(job.images) == job.request.n and all(image.path.is_file() for image in job.images)
        assert job.step == job.total_steps and job.progress == 1.0
    assert [image.seed for image in two.images] == [3, 4]


def test_a_stop_past_its_grace_period_cancels_the_jobs_awaiting_their_own_call(engine, monkeypatch):
    refuse_marker(engine, monkeypatch)
    blocker = engine.submit(GenerateRequest(prompt="busy", steps=SLOW_STEPS))
    wait_until_running(blocker)
    first, bad, last = [engine.submit(GenerateRequest(prompt=prompt, seed=1, steps=SLOW_STEPS))
                        for prompt in ("kite 0", MARKER, "kite 2")]
    wait_until_running(first)  # the shared call failed; each job is now made alone
    engine.stop(timeout=0.2)
    assert first.status == "cancelled" and bad.status == "cancelled"
    assert last.status == "cancelled" and last.images == []  # not made after the grace period


# --- a shutdown finishes what has begun ----------------------------------------------------------

def test_stop_finishes_every_image_of_a_begun_job(make_engine):
    engine = make_engine(config_with(engine={"max_batch": 2}))
    eight = engine.submit(GenerateRequest(prompt="eight kites", n=8, seed=1, steps=10))
    unstarted = engine.submit(GenerateRequest(prompt="a wide kite", width=128, seed=9, steps=10))
    wait_until_running(eight)  # its first call of 2 runs; 6 images still queued
    calls_before = engine.stats["pipeline_calls"]
    engine.stop(timeout=120)
    assert eight.status == "done", eight.error
    assert [image.seed for image in eight.images] == list(range(1, 9))
    assert all(image.path.is_file() for image in eight.images)
    assert unstarted.status == "cancelled" and unstarted.images == []
    assert engine.stats["pipeline_calls"] - calls_before == 4


@needs_namespace
def test_sigterm_keeps_every_picture_of_a_begun_job(tmp_path):
    """Seen on main: SIGTERM while the first of four calls ran kept 0 of its 8 pictures."""
    home = get_paths(tmp_path / "home").ensure()
    daemon = Serve(home, PENNELLO_ENGINE_MAX_BATCH="2")
    try:
        body = {"prompt": "eight kites", "n": 8, "seed": 1, "steps": 10, "stream": True}
        with daemon.http.post(daemon.api("/generate"), json=body, stream=True, timeout=120) as response:
            events = sse_events(response)
            name, _ = next(events)
            while name != "progress":  # the first call has begun
                name, _ = next(events)
            daemon.process.send_signal(signal.SIGTERM)
            name, job = next((name, data) for name, data in events if name != "progress")
        assert daemon.process.wait(timeout=120) == 0, daemon.log_text()
    finally:
        daemon.kill()
    assert name == "done" and len(job["images"]) == 8, job
    assert len(list(home.outputs_dir.rglob("*.png"))) == 8, daemon.log_text()


# --- a dying model worker is restarted -----------------------------------------------------------

def wait_status(daemon: Serve, job_id: str, status: str, timeout: float = 120) -> dict:
    """The job once it has ``status`` (while the worker restarts, the 503s are waited through)."""
    deadline = time.monotonic() + timeout
    while True:
        response = daemon.http.get(daemon.api(f"/jobs/{job_id}"), timeout=10)
        if response.status_code == 200 and response.json()["status"] == status:
            return response.json()
        assert time.monotonic() < deadline, (response.text, daemon.log_text())
        time.sleep(0.1)


@needs_namespace
def test_a_killed_worker_is_restarted_and_serves_again(tmp_path):
    """Seen on main: kill -9 of the model worker (as the OOM killer does) stopped the daemon and
    lost every job it had."""
    home = get_paths(tmp_path / "home").ensure()
    daemon = Serve(home)
    try:
        first = daemon.workers()[0]
        running, queued = (daemon.http.post(daemon.api("/generate"), json=body, timeout=30).json()
                           for body in ({"prompt": "busy", "steps": SLOW_STEPS, "seed": 1},
                                        {"prompt": "waiting", "steps": 3, "width": 128, "seed": 2}))
        wait_status(daemon, running["id"], "running")
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{first}").exists():  # until the server reaped it: it knows it died
            assert time.monotonic() < deadline
            time.sleep(0.05)
        down = daemon.http.get(daemon.api("/health"), timeout=10)
        assert down.status_code == 503 and int(down.headers["Retry-After"]) >= 1, down.text
        error = down.json()["error"]
        assert error["type"] == "daemon" and "restarting" in error["message"]
        deadline = time.monotonic() + 120
        while daemon.http.get(daemon.api("/health"), timeout=10).status_code != 200:
            assert time.monotonic() < deadline and daemon.process.poll() is None, daemon.log_text()
            time.sleep(0.2)
        assert daemon.workers() not in ([], [first])
        for job in (running, queued):  # journaled: the new worker makes them, same ids
            ended = wait_status(daemon, job["id"], "done")
            assert ended["status"] == "done" and len(ended["images"]) == 1, ended
        job = daemon.http.post(daemon.api("/generate"), json={"prompt": "again", "steps": 3, "wait": True},
                               timeout=120).json()
        assert job.get("status") == "done" and len(job["images"]) == 1, (job, daemon.log_text())
        assert f"the model worker (pid {first}) exited with code -9" in daemon.log_text()
        assert daemon.terminate() == 0, daemon.log_text()
    finally:
        daemon.kill()


def test_a_job_runs_when_the_journal_cannot_be_written(make_engine):
    engine = make_engine()
    engine.journal.directory.parent.mkdir(parents=True, exist_ok=True)
    engine.journal.directory.write_text("a file where the journal's folder should be")
    job = engine.submit(GenerateRequest(prompt="a kite", steps=2, seed=1))
    assert job.wait(60) and job.status == "done", job.error


def test_journaled_jobs_end_without_leaving_files(make_engine):
    engine = make_engine()
    done = engine.submit(GenerateRequest(prompt="a kite", steps=2, seed=1))
    assert done.wait(60) and done.status == "done"
    blocker = engine.submit(GenerateRequest(prompt="busy", steps=SLOW_STEPS))
    wait_until_running(blocker)
    cancelled = engine.submit(GenerateRequest(prompt="never", steps=2))
    assert sorted(path.stem for path in engine.journal.directory.iterdir()) == sorted([blocker.id, cancelled.id])
    engine.stop(cancel_running=True)
    assert list(engine.journal.directory.iterdir()) == []


def test_a_worker_that_is_gone_mid_forward_gets_a_503_that_says_to_try_again(tmp_path):
    # It said "the daemon is stopping", although the supervisor is restarting the worker.
    from werkzeug.test import Client

    from pennello.daemon.net.proxy import WorkerProxy

    response = Client(WorkerProxy(tmp_path / "no-worker.sock", guard=None)).get("/api/health")
    assert response.status_code == 503
    message = response.get_json()["error"]["message"]
    assert "try again shortly" in message and "restarting" in message


@needs_namespace
def test_an_event_stream_tells_of_a_restarting_worker_and_goes_on(tmp_path):
    """Seen on main: kill -9 of the worker broke every open event stream (the client got a
    ChunkedEncodingError); now the stream says `restarting` and carries on with the journaled job."""
    home = get_paths(tmp_path / "home").ensure()
    daemon = Serve(home)
    try:
        first = daemon.workers()[0]
        body = {"prompt": "busy", "steps": SLOW_STEPS, "seed": 1, "stream": True}
        with daemon.http.post(daemon.api("/generate"), json=body, stream=True, timeout=120) as response:
            events = sse_events(response)
            name, job = next(events)
            assert name == "job"
            while name != "progress":  # it runs in the first worker
                name, _ = next(events)
            os.kill(first, signal.SIGKILL)
            names = []
            for name, data in events:
                names.append(name)
                if name in ("done", "failed", "cancelled"):
                    break
        assert names[names.index("restarting") + 1] == "job", names  # the stream starts over
        assert name == "done" and data["id"] == job["id"] and len(data["images"]) == 1, (names, data)
        assert daemon.workers() not in ([], [first])
        assert daemon.terminate() == 0, daemon.log_text()
    finally:
        daemon.kill()


def _png(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def _queue_edit(daemon: Serve) -> dict:
    """An inpainting edit (picture and mask uploaded) queued behind whatever runs; answered 202."""
    picture, mask = Image.new("RGB", (64, 64), "navy"), Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))
    response = daemon.http.post(daemon.api("/edit"), timeout=30, data={
        "prompt": "a lighthouse", "steps": "4", "seed": "5", "wait": "false"},
        files={"image": ("in.png", _png(picture)), "mask": ("mask.png", _png(mask))})
    assert response.status_code == 202, response.text
    return response.json()


@needs_namespace
def test_a_killed_worker_loses_no_queued_edit(tmp_path):
    """Seen on main: edits lived only in the worker's memory, so kill -9 lost every queued one
    (GET /api/jobs/<id> then answered 404)."""
    home = get_paths(tmp_path / "home").ensure()
    daemon = Serve(home)
    try:
        first = daemon.workers()[0]
        running = daemon.http.post(daemon.api("/generate"), json={"prompt": "busy", "steps": SLOW_STEPS, "seed": 1},
                                   timeout=30).json()
        wait_status(daemon, running["id"], "running")
        edit = _queue_edit(daemon)
        journal = home.state_dir / "jobs"
        kept = sorted(path.name for path in journal.iterdir() if path.name.startswith(edit["id"]))
        assert kept == [f"{edit['id']}.json", f"{edit['id']}.mask.png", f"{edit['id']}.picture0.png"]
        assert {oct(path.stat().st_mode & 0o777) for path in journal.iterdir()} == {"0o600"}
        os.kill(first, signal.SIGKILL)
        ended = wait_status(daemon, edit["id"], "done")
        assert ended["kind"] == "edit" and ended["mode"] == "inpaint" and len(ended["images"]) == 1, ended
        assert ended["images"][0]["seed"] == 5
        wait_status(daemon, running["id"], "done")
        assert list(journal.iterdir()) == []  # the pictures went with their job
        assert daemon.terminate() == 0, daemon.log_text()
    finally:
        daemon.kill()


# --- a waiting tool call outlives a dying worker -------------------------------------------------

def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@needs_namespace
def test_an_upscale_outlives_a_killed_worker_and_is_saved_once(tmp_path):
    """Seen on main: kill -9 of the worker mid-upscale answered the caller 503 and lost its call."""
    home = get_paths(tmp_path / "home").ensure()
    daemon = Serve(home)
    try:
        first = daemon.workers()[0]
        noise = _png(Image.effect_noise((1024, 1024), 64).convert("RGB"))  # 4x: seconds of resizing and encoding
        answers: list[requests.Response] = []
        call = threading.Thread(target=lambda: answers.append(daemon.http.post(
            daemon.api("/upscale"), files={"image": ("noise.png", noise)}, data={"scale": "4"}, timeout=300)))
        idle = _cpu_seconds(first)
        call.start()
        deadline = time.monotonic() + 60
        while _cpu_seconds(first) - idle < 0.25:  # busy with it (a 4x resize and save: ~7 s CPU)
            assert time.monotonic() < deadline and call.is_alive(), (answers, daemon.log_text())
            time.sleep(0.02)
        os.kill(first, signal.SIGKILL)
        call.join(300)
        (answer,) = answers
        assert answer.status_code == 200, (answer.text, daemon.log_text())
        assert (answer.json()["image"]["width"], answer.json()["image"]["height"]) == (4096, 4096)
        assert len(list(home.outputs_dir.rglob("*.png"))) == 1  # saved by the second worker only
        assert "POST /api/upscale again, to the restarted model worker" in daemon.log_text()
        assert daemon.workers() not in ([], [first])
        _an_upscale_whose_worker_died_after_saving_is_saved_once(daemon)
        assert daemon.terminate() == 0, daemon.log_text()
    finally:
        daemon.kill()


def _an_upscale_whose_worker_died_after_saving_is_saved_once(daemon: Serve) -> None:
    """Seen on main: a worker that died after saving an upscale but before answering made the
    re-sent call save a second picture. (The same daemon as above: a start costs seconds.)"""
    (worker,) = daemon.workers()
    before = set(daemon.home.outputs_dir.rglob("*.png"))
    with _KillOnAnswer(isolation.socket_path(daemon.home), worker, b"POST /api/upscale "):
        answer = daemon.http.post(daemon.api("/upscale"), data={"scale": "2"}, timeout=300, files={
            "image": ("noise.png", _png(Image.effect_noise((128, 128), 64).convert("RGB")))},
            headers={"X-Pennello-Call-Id": "1000000000000000000-deadbeef"})  # a client's is dropped
    assert answer.status_code == 200, (answer.text, daemon.log_text())
    assert daemon.workers() not in ([], [worker])  # it did die, with its picture saved
    saved = set(daemon.home.outputs_dir.rglob("*.png")) - before
    assert [path.stem for path in saved] == [answer.json()["image"]["id"]]  # once, where the answer says
    assert not answer.json()["image"]["id"].endswith("deadbeef")


class _KillOnAnswer:
    """Stands in the worker's socket: passes calls on to the worker, but when the worker begins
    to answer one whose head starts with ``head`` (so its picture is saved), kills it with
    SIGKILL instead of passing the answer on, and stops standing in (the next worker binds there)."""

    def __init__(self, path: Path, pid: int, head: bytes) -> None:
        assert path.exists(), path
        self.path, self.pid, self.head = path, pid, head
        self.real = path.with_name("worker-real.sock")
        self.killed = threading.Event()

    def __enter__(self) -> "_KillOnAnswer":
        os.rename(self.path, self.real)  # a bound socket keeps working under its new name
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        self.listener.listen()
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        assert self.killed.is_set(), "the call never reached the worker"
        self.real.unlink(missing_ok=True)

    def _accept(self) -> None:
        while not self.killed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed once the worker is killed
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        with client, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as worker:
            worker.connect(str(self.real))
            first = client.recv(65536)  # http.client sends the request's head in one piece
            worker.sendall(first)
            threading.Thread(target=_pump, args=(client, worker), daemon=True).start()
            if not first.startswith(self.head):
                _pump(worker, client)
                return
            worker.recv(1)  # the answer begins: the picture is saved
            os.kill(self.pid, signal.SIGKILL)
            self.path.unlink()  # no stand-in left for the proxy to find
            self.killed.set()
            for held in (self.listener, client):  # shut down, not just closed: the threads
                held.shutdown(socket.SHUT_RDWR)   # blocked on them hold them open otherwise


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            sink.sendall(chunk)
        sink.shutdown(socket.SHUT_WR)


class _DyingWorker(socketserver.ThreadingUnixStreamServer):
    """A worker that dies under every request: it reads the request's head and hangs up."""

    def __init__(self, path: Path) -> None:
        self.paths: list[str] = []

        class Hangup(socketserver.StreamRequestHandler):
            def handle(handler) -> None:
                head = handler.rfile.readline().split()
                if head:  # not the proxy's probe for a listening worker
                    self.paths.append(head[1].decode())
                while handler.rfile.readline() not in (b"\r\n", b""):
                    pass

        super().__init__(str(path), Hangup)


def test_a_worker_that_dies_on_every_try_gets_one_retry_then_the_503(tmp_path, monkeypatch):
    from werkzeug.test import Client

    from pennello.daemon.net import proxy

    monkeypatch.setattr(proxy, "_RESUME_POLL_S", 0.01)
    with _DyingWorker(tmp_path / "worker.sock") as worker:
        threading.Thread(target=worker.serve_forever, daemon=True).start()
        client = Client(proxy.WorkerProxy(tmp_path / "worker.sock", guard=None))
        upscale = client.post("/api/upscale", data={"scale": "2", "image": (io.BytesIO(b"x" * 100_000), "a.png")})
        extras = client.post("/sdapi/v1/extra-single-image", json={"image": "aGk=", "upscaling_resize": 2})
        generate = client.post("/api/generate", json={"prompt": "a kite"})  # journaled: never sent twice
        worker.shutdown()
    for response in (upscale, extras, generate):
        assert response.status_code == 503 and "try again shortly" in response.get_json()["error"]["message"]
    assert worker.paths == ["/api/upscale"] * 2 + ["/sdapi/v1/extra-single-image"] * 2 + ["/api/generate"]
