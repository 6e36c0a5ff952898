"""A hostile LAN and bad input must not hurt other callers: silent sockets on the HTTPS port,
pairing guesses from one device, malformed uploads and ids, and a checkout that shadows the
isolated worker's package. Each test reproduces what once went wrong, against real parts."""

from __future__ import annotations

import contextlib
import io
import logging
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest
import requests
from PIL import Image, PngImagePlugin

from pennello.config import Config
from pennello.client.discover import pinned_session
from pennello.daemon.auth import MAX_FAILURES
from pennello.daemon.engine.outputs import _PENNELLO_NS
from pennello.daemon.http.app import create_app
from pennello.daemon.net import isolation, tls as server_tls
from pennello.daemon.server import make_lan_server, start_background_server

from _fixtures_api import api_engine, lan_address  # noqa: F401
from _fixtures_lan import cli_env


@pytest.fixture
def lan_server(api_engine):  # noqa: F811
    """What ``serve --lan`` listens with: the dual-stack HTTPS server over a real app."""
    app = create_app(Config().replace("server", lan=True), api_engine, api_engine.paths)
    server, fingerprint, _ = make_lan_server(app, api_engine.paths, 0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield server, fingerprint
    server.stop()
    thread.join()
    server.close()


def _answers_quickly(server, fingerprint: str) -> None:
    """A pinned HTTPS request, as a paired device makes it, answers /api/health within 2 s."""
    time.sleep(0.3)  # let the server accept whatever the test opened before
    started = time.monotonic()
    assert pinned_session(fingerprint).get(server.url + "/api/health", timeout=10).json()["ready"]
    assert time.monotonic() - started < 2.0


# --- silent and slow sockets on the HTTPS port -----------------------------------------------------

def test_silent_sockets_do_not_block_other_clients(lan_server):
    """The handshake ran in cheroot's accept loop: one silent socket stopped everyone for 60 s."""
    server, fingerprint = lan_server
    with contextlib.ExitStack() as held:
        for _ in range(20):
            held.enter_context(socket.create_connection(("127.0.0.1", server.port)))
        _answers_quickly(server, fingerprint)


def test_half_sent_handshakes_and_requests_do_not_block_other_clients(lan_server):
    server, fingerprint = lan_server
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with contextlib.ExitStack() as held:
        for _ in range(3):  # a few bytes of a ClientHello, then nothing
            raw = held.enter_context(socket.create_connection(("127.0.0.1", server.port)))
            raw.sendall(b"\x16\x03\x01\x00")
        for _ in range(3):  # a finished handshake, then half a request
            tls = held.enter_context(context.wrap_socket(socket.create_connection(("127.0.0.1", server.port))))
            tls.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        _answers_quickly(server, fingerprint)


def test_plain_http_into_the_https_port_is_refused_and_the_server_goes_on(lan_server):
    server, fingerprint = lan_server
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b'"ready"' not in s.recv(4096)  # nothing answered in the clear
    _answers_quickly(server, fingerprint)


# --- pairing guesses from one device ---------------------------------------------------------------

def test_one_guessing_device_does_not_keep_pairing_closed_for_the_owner(api_engine):  # noqa: F811
    """Five wrong guesses from anyone used to give the owner's device 429 with the right code."""
    app = create_app(Config().replace("server", lan=True), api_engine, api_engine.paths)
    owner, attacker, device = (app.test_client() for _ in range(3))
    code = owner.post("/api/pair/code", environ_base={"REMOTE_ADDR": "127.0.0.1"}).get_json()["code"]
    guess = {"environ_base": {"REMOTE_ADDR": "192.0.2.66"}, "json": {"code": "ZZZZZZZZ", "name": "x"}}
    for _ in range(MAX_FAILURES):
        assert attacker.post("/api/pair", **guess).status_code == 401
    refused = attacker.post("/api/pair", **guess)
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "too many failed pairing attempts" in refused.get_json()["error"]["message"]
    paired = device.post("/api/pair", environ_base={"REMOTE_ADDR": "192.0.2.7"},
                         json={"code": code, "name": "owner's phone"})
    assert paired.status_code == 201, paired.get_json()


# --- bad input that once made a 500 ----------------------------------------------------------------

def _png_with_xmp(xmp: bytes) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8", "replace"))
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "gray").save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


@pytest.mark.parametrize("xmp", [
    b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><unclosed></x:xmpmeta>",  # not XML
    b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><p:record xmlns:p='" + _PENNELLO_NS.encode()
    + b"'>{not json</p:record></x:xmpmeta>",  # a record that is not JSON
])
def test_an_upload_with_malformed_xmp_is_treated_as_having_no_record(api_engine, xmp):  # noqa: F811
    app = create_app(Config(), api_engine, api_engine.paths)
    response = app.test_client().post("/api/enhance", data={"image": (io.BytesIO(_png_with_xmp(xmp)), "x.png")})
    assert response.status_code == 200, response.get_json()
    saved = app.test_client().get(response.get_json()["image"]["url"])
    assert saved.status_code == 200


def test_json_nested_too_deep_is_a_400_naming_the_problem(api_engine):  # noqa: F811
    app = create_app(Config(), api_engine, api_engine.paths)
    deep = "[" * 100_000 + "]" * 100_000
    for path, method in (("/api/generate", "post"), ("/api/pipelines/deep", "put"), ("/v1/images/generations", "post"),
                         ("/sdapi/v1/txt2img", "post"), ("/sdapi/v1/options", "post")):
        response = getattr(app.test_client(), method)(path, data=deep, content_type="application/json")
        assert response.status_code == 400, (path, response.status_code)
        assert "nested too deeply" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("image_id", ["20261399-000000-000000-abcdef01", "20260230-250000-000000-abcdef01"])
def test_an_id_with_an_impossible_date_is_a_404(api_engine, image_id):  # noqa: F811
    app = create_app(Config(), api_engine, api_engine.paths)
    response = app.test_client().get(f"/api/images/{image_id}")
    assert response.status_code == 404 and response.get_json()["error"]["field"] == "id"


# --- a checkout in the current directory must not weaken isolation ---------------------------------

_NO_NAMESPACE = isolation.probe()


@pytest.fixture
def decoy_cwd(tmp_path, monkeypatch):
    """A current directory holding a ``pennello/`` folder that fails to import, as a source
    checkout next to a normal install does."""
    (tmp_path / "pennello").mkdir()
    (tmp_path / "pennello" / "__init__.py").write_text("raise ImportError('the decoy was imported')\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.skipif(_NO_NAMESPACE is not None, reason=f"no network namespace for the worker here: {_NO_NAMESPACE}")
def test_a_pennello_folder_in_the_current_directory_does_not_shadow_the_worker(home, decoy_cwd):
    """``python -m`` / ``-c`` put the current directory first on sys.path: the probe imported the
    decoy, failed, and serve quietly fell back to the in-process guard."""
    from pennello.installer import ensure_embedded_default

    assert isolation.probe() is None
    config = Config()
    assert isolation.decide(config).namespace
    ensure_embedded_default(home, config)
    worker = isolation.Worker.start(config, home, isolation.socket_path(home))
    try:
        assert worker.info["interfaces"] == ["lo"]
    finally:
        worker.stop()
        assert worker.wait(timeout=60) == 0


def test_a_failed_isolation_is_a_warning_in_the_log_the_api_and_the_cli(home, api_engine, monkeypatch,  # noqa: F811
                                                                         caplog):
    from click.testing import CliRunner

    from pennello.cli import cli
    from pennello.daemon.net.offline import NetworkGuard
    from pennello.runtime import write_daemon_info

    monkeypatch.setattr(isolation, "probe", lambda: "unshare(CLONE_NEWUSER|CLONE_NEWNET): Operation not permitted")
    monkeypatch.setattr(sys, "platform", "linux")
    decision = isolation.decide(Config())
    assert not decision.namespace
    assert any(r.levelname == "WARNING" and "isolation failed" in r.getMessage() for r in caplog.records)
    guard = NetworkGuard(lan=False)
    guard.isolation_report = lambda: isolation.guard_only_report(decision.reason, decision.warning)
    _, url, stop = start_background_server(create_app(Config(), api_engine, home, guard=guard))
    try:
        report = requests.get(url + "/api/offline", timeout=10).json()
        assert report["isolation"] == "in-process-guard" and "Operation not permitted" in report["isolation_warning"]
        write_daemon_info(home.runtime_dir, url)
        status = CliRunner().invoke(cli, ["offline", "status"])
        assert "WARNING: isolation failed" in status.output, status.output
    finally:
        stop()


def test_one_lan_address_cannot_hold_every_worker_with_stalled_requests(lan_server, lan_address):
    """Each stalled request holds a worker until the read timeout; 16 of them from one device
    used to take all 16, so even the owner on loopback waited."""
    server, fingerprint = lan_server
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    refused = 0
    with contextlib.ExitStack() as held:
        for _ in range(server.per_address + 8):  # more than the share of one address
            raw = held.enter_context(socket.create_connection((lan_address, server.port), timeout=10))
            try:
                held.enter_context(context.wrap_socket(raw)).sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            except OSError:  # closed by the server: that address holds its share already
                refused += 1
        assert refused == 8
        _answers_quickly(server, fingerprint)


@pytest.mark.parametrize("request_bytes", [
    b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nBroken",  # no CRLF: cheroot answers 400
    b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 9\r\n\r\n{",  # body cut short
])
def test_a_peer_hanging_up_mid_request_is_a_debug_line_not_an_error(lan_server, capfd, caplog, request_bytes):
    """cheroot wrote 'socket.error 8' and an ERROR 'Unhandled error' with an SSLEOFError traceback
    to stderr each time a LAN device sent a broken request and hung up without closing TLS."""
    server, fingerprint = lan_server
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with caplog.at_level("DEBUG", logger="pennello.daemon.net.tls"):
        for _ in range(3):
            tls = context.wrap_socket(socket.create_connection(("127.0.0.1", server.port), timeout=10))
            tls.sendall(request_bytes)
            time.sleep(0.2)  # the server has read it and is answering into a closing socket
            tls.shutdown(socket.SHUT_RDWR)  # TCP FIN without TLS close_notify: as a device that goes
            tls.close()
        _answers_quickly(server, fingerprint)
    stderr = capfd.readouterr().err
    assert "SSLEOFError" not in stderr and "Traceback" not in stderr, stderr
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "hung up" in caplog.text


def test_serve_on_a_lan_address_without_lan_mode_starts(home, lan_address):  # noqa: F811
    """`serve --host <LAN address>` exited at start: waitress named its bound address with
    getnameinfo, which no-network mode took for a reverse lookup and refused."""
    log_path = home.runtime_dir.parent / "serve.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "pennello", "serve", "--host", lan_address, "--port", "0"],
                                   stdout=subprocess.PIPE, stderr=log_file, text=True,
                                   env={**cli_env(home), "PENNELLO_OFFLINE_ISOLATION": "off"})
    try:
        line = process.stdout.readline()
        assert line.startswith(f"pennello is serving on http://{lan_address}:"), log_path.read_text()
        url = line.split()[-1]
        health = requests.get(f"{url}/api/health", timeout=30).json()
        assert health["offline"]["mode"] == "on" and health["offline"]["refused"] == 0, health
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
