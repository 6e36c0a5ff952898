"""Waiting calls and the threads they leave free (daemon/http/waiting.py), in one process.

The whole daemon under 30 waiting callers is a chaos scenario (tests/test_chaos.py); here the
parts: a slot comes back however a waiting call ends, and an event stream that outlived its
worker waits for a free slot in the new one instead of calling its job lost.
"""

from __future__ import annotations

import threading
import time

import requests

from pennello.daemon.net.proxy import WorkerProxy
from pennello.daemon.server import WaitressServer


def _events(url: str, job_id: str) -> requests.Response:
    return requests.get(f"{url}/api/jobs/{job_id}/events", stream=True, timeout=30)


def test_a_slot_comes_back_when_a_call_ends_however_it_ends(api_server):
    url = api_server(max_waiting=2)
    body = {"prompt": "a kite", "steps": 2, "width": 64, "height": 64, "wait": True}
    for _ in range(3):  # more calls than slots, one after another: each gave its slot back
        assert requests.post(f"{url}/api/generate", json=body, timeout=60).status_code == 200
    assert requests.post(f"{url}/api/generate", json={**body, "steps": 0}, timeout=60).status_code == 400
    job = requests.post(f"{url}/api/generate", json={**body, "wait": False}, timeout=60).json()
    for _ in range(3):  # the streams of an ended job: replayed to their end
        with _events(url, job["id"]) as stream:
            assert stream.status_code == 200 and b"event: done" in stream.content
    deadline = time.monotonic() + 5  # the server closes a stream a moment after its last byte
    while (answer := requests.post(f"{url}/api/generate", json=body, timeout=60)).status_code == 429:
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.1)
    assert answer.status_code == 200, answer.text


def test_streams_over_the_cap_are_refused_with_429_and_retry_after(api_server, api_engine):
    from pennello.daemon.engine.jobs import GenerateRequest

    url = api_server(max_waiting=2)
    job = api_engine.submit(GenerateRequest(prompt="a slow kite", steps=100, seed=1))
    try:
        held = [_events(url, job.id) for _ in range(2)]
        refused = _events(url, job.id)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["type"] == "busy"
        assert "max_waiting" in refused.json()["error"]["message"]
        assert requests.get(f"{url}/api/health", timeout=2).status_code == 200  # a thread was left
    finally:
        api_engine.cancel(job.id)
    for stream in held:
        stream.close()


def test_a_resumed_event_stream_waits_while_the_new_worker_refuses_it(tmp_path):
    """A stream that outlived its worker asks the new one for the job's events; a 429 there
    (its slots taken) was read as the job being lost."""
    answers = iter([("429 Too Many Requests", b"{}"), ("200 OK", b"event: done\ndata: {}\n\n")])

    def worker(environ, start_response):
        status, body = next(answers)
        start_response(status, [("Content-Type", "text/event-stream"), ("Content-Length", str(len(body)))])
        return [body]

    socket_path = tmp_path / "worker.sock"
    server = WaitressServer(worker, unix_socket=socket_path)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        proxy = WorkerProxy(socket_path, guard=None)
        assert proxy.job_events("a-job", []) is None  # not yet: the stream pings and asks again
        response, connection = proxy.job_events("a-job", [])
        assert response.status == 200 and response.read() == b"event: done\ndata: {}\n\n"
        connection.close()
    finally:
        server.stop()
        thread.join()
        server.close()
