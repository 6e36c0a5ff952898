"""The server's half of an isolated daemon: a streaming reverse proxy to the model worker's Unix socket.

With isolation (:mod:`pennello.daemon.net.isolation`), ``serve`` keeps the TCP listeners and hands
every request to the worker, which runs the real app on a Unix socket. :class:`WorkerProxy` is
that hand-off as a WSGI app:

* method, path, query, headers and body go through unchanged — ``Host`` and ``Origin`` included,
  so the worker's checks see what the browser sent; the body is streamed, not buffered;
* ``X-Forwarded-For`` and ``X-Forwarded-Proto`` are set to the real client address and scheme,
  replacing whatever the client sent (the worker trusts them because only this process can reach
  its socket: mode 0600, and the worker has no network);
* the response is passed on as it arrives (server-sent progress events, large pictures); when the
  client goes away, the worker's connection is closed, so the worker sees the disconnect too
  (a queued job whose stream was abandoned is cancelled, as without isolation);
* ``/api/offline`` and ``/api/health`` get what only this process knows added: its own guard's
  refusals and what it may reach (the worker can reach nothing);
* a tool call that waits in the worker's memory and is not journaled (upscale, enhance, A1111's
  extras; :data:`RETRIED`) outlives a worker that dies under it: its body is kept here, and once
  the supervisor's new worker listens it is sent once more, so the caller gets its answer as if
  nothing happened; a second death is the usual 503 JSON error. Each such call carries a call id
  (:data:`CALL_ID_HEADER`) from which the worker derives the id its picture is saved under, so a
  worker that died after saving but before answering leaves one picture, which the re-sent call
  replaces, never a second one.

    >>> proxy = WorkerProxy(Path("run/worker.sock"), guard)  # doctest: +SKIP
    >>> WaitressServer(proxy, "127.0.0.1", 8420).run()  # doctest: +SKIP
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Callable, Generator, Iterable, Iterator
from urllib.parse import quote

from .offline import NetworkGuard

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]

# Hop-by-hop headers (RFC 9110 §7.6.1) belong to one connection, not the message.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                         "te", "trailer", "transfer-encoding", "upgrade", "proxy-connection",
                         "expect"})  # 100-continue was this server's business with the client
# The id of a call that may be sent twice (:data:`RETRIED`): ``"<unix time in ns>-<8 hex digits>"``.
CALL_ID_HEADER = "X-Pennello-Call-Id"
# What a client might send to pose as another address or scheme, or to pick a picture's id; the proxy sets its own.
_SPOOFABLE = frozenset({"forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                        "x-forwarded-port", "x-forwarded-prefix", "x-real-ip", CALL_ID_HEADER.lower()})
_CALL_ID_KEY = "pennello.proxy.call_id"  # where __call__ keeps a retried call's id for each try
_MERGED_PATHS = frozenset({"/api/offline", "/api/health"})
_CHUNK = 64 * 1024
_KEPT_ATTEMPTS = 50
_RESUME_S = 300.0  # the supervisor's longest back-off and a slow start, several times over
_RESUME_POLL_S = 1.0
# Calls sent once more to a restarted worker when theirs died before answering. Each is
# idempotent (same body, same answer), is not journaled (generate and edit jobs are, and are re-run
# by the new worker under the same id), and answers in one response (an event stream goes on by
# itself). Upscale and enhance save their result under the id their call id names, so one that
# died after saving is saved again in the same place; A1111's extras and the copyright check save
# nothing.
RETRIED = frozenset({("POST", "/api/upscale"), ("POST", "/api/enhance"), ("POST", "/api/copyright/check"),
                     ("POST", "/sdapi/v1/extra-single-image"), ("POST", "/sdapi/v1/extra-batch-images")})


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over a Unix socket (the host name only fills the Host header)."""

    def __init__(self, path: Path, timeout: float | None = None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


class WorkerProxy:
    """The WSGI app the isolated server runs: forwards to the worker at ``socket_path``.

    Args:
        socket_path: the worker's Unix socket.
        guard: this process's no-network guard; its report is merged into the worker's.
        owner_token: sent with the server's own requests (:meth:`request`), which ask as the owner.
    """

    def __init__(self, socket_path: Path, guard: NetworkGuard | None, owner_token: str | None = None) -> None:
        self.socket_path, self.guard, self.owner_token = socket_path, guard, owner_token

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        retried = (environ["REQUEST_METHOD"], environ.get("PATH_INFO")) in RETRIED
        if retried:  # kept whole here, to be sent again (with the same call id) if the worker dies under it
            environ = {**_buffered(environ), _CALL_ID_KEY: f"{time.time_ns()}-{secrets.token_hex(4)}"}
        answered = self._answer(environ, retried)
        if answered is None:
            # The supervisor restarts a worker that died, so this is usually a brief gap, not a shutdown.
            body = json.dumps({"error": {"type": "daemon", "message": "the model worker is not reachable "
                                         "(restarting after a crash, or the daemon is stopping); try again "
                                         "shortly", "field": None}}).encode()
            start_response("503 Service Unavailable", [("Content-Type", "application/json"),
                                                       ("Content-Length", str(len(body)))])
            return [body]
        response, connection = answered
        headers = [(name, value) for name, value in response.getheaders()
                   if name.lower() not in _HOP_BY_HOP]
        status = f"{response.status} {response.reason}"
        if environ.get("PATH_INFO") in _MERGED_PATHS and environ["REQUEST_METHOD"] == "GET" \
                and response.status == 200 and self.guard is not None:
            body = self._merged(environ["PATH_INFO"], response.read())
            connection.close()
            headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
            start_response(status, [*headers, ("Content-Length", str(len(body)))])
            return [body]
        start_response(status, headers)
        if response.getheader("Content-Type", "").startswith("text/event-stream"):
            return _EventStream(response, connection, self, list(_request_headers(environ)))
        return _Body(response, connection)

    def _answer(self, environ: dict[str, Any],
                retried: bool) -> tuple[http.client.HTTPResponse, UnixHTTPConnection] | None:
        """The worker's response, or None when it is gone (for a retried call: gone again, or not
        back in time)."""
        connection = UnixHTTPConnection(self.socket_path)  # no timeout: generation may take minutes
        try:
            return self._forward(connection, environ), connection
        except (OSError, http.client.HTTPException) as e:  # the worker is gone or restarting
            connection.close()
            method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO")
            log.error("model worker unreachable for %s %s: %s", method, path, e)
        if not retried or not self._worker_back():
            return None
        log.warning("sending %s %s again, to the restarted model worker", method, path)
        environ["wsgi.input"].seek(0)
        return self._answer(environ, retried=False)

    def _worker_back(self) -> bool:
        """Whether a worker listens again within the event stream's deadline (a new worker that
        still loads queues the connection until it accepts)."""
        deadline = time.monotonic() + _RESUME_S
        while time.monotonic() < deadline:
            time.sleep(_RESUME_POLL_S)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(self.socket_path))
                    return True
                except OSError:
                    continue
        return False

    def request(self, method: str, path: str) -> Any:
        """A request of the server's own to the worker, as the owner (e.g. the models to advertise)."""
        connection = UnixHTTPConnection(self.socket_path, timeout=30)
        try:
            headers = {"X-Forwarded-For": "127.0.0.1", "X-Forwarded-Proto": "http"}
            if self.owner_token:  # loopback alone makes nobody the owner
                headers["Authorization"] = f"Bearer {self.owner_token}"
            connection.request(method, path, headers=headers)
            response = connection.getresponse()
            return json.loads(response.read())
        finally:
            connection.close()

    def job_events(self, job_id: str, headers: list[tuple[str, str]]) -> tuple[Any, UnixHTTPConnection] | None:
        """The response of the worker's ``/api/jobs/<id>/events`` for the same caller (the headers
        it sent), once a worker answers; None while none does, or while every waiting slot of
        the new one is taken (429: the job is there, the stream only has to wait its turn)."""
        connection = UnixHTTPConnection(self.socket_path)
        try:
            connection.putrequest("GET", f"/api/jobs/{quote(job_id)}/events", skip_host=True,
                                  skip_accept_encoding=True)
            for name, value in headers:
                if name.lower() not in ("content-type", "content-length"):
                    connection.putheader(name, value)
            connection.endheaders()
            response = connection.getresponse()
            if response.status == 429:
                connection.close()
                return None
            return response, connection
        except (OSError, http.client.HTTPException):
            connection.close()
            return None

    def _forward(self, connection: UnixHTTPConnection, environ: dict[str, Any]) -> http.client.HTTPResponse:
        # PATH_INFO is already percent-decoded and holds the raw bytes as latin-1 (PEP 3333):
        # encode it back exactly, '%' included, or "%252e" would reach the worker as "." .
        path = quote((environ.get("PATH_INFO", "") or "/").encode("latin-1"), safe="/:@!$&'()*+,;=-._~")
        if environ.get("QUERY_STRING"):
            path += "?" + environ["QUERY_STRING"]
        stream, length = environ["wsgi.input"], int(environ.get("CONTENT_LENGTH") or 0)
        if not length and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            # cheroot (LAN mode) hands chunked bodies on undecoded in length; read it whole
            # (its max_request_body_size bounds it) and send it with a length.
            body = stream.read()
            stream, length = io.BytesIO(body), len(body)
            environ = {**environ, "CONTENT_LENGTH": str(length)}
        connection.putrequest(environ["REQUEST_METHOD"], path, skip_host=True, skip_accept_encoding=True)
        for name, value in _request_headers(environ):
            connection.putheader(name, value)
        connection.endheaders()
        try:
            _send_body(connection, stream, length)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the worker answered early (e.g. 413 too large); its answer is still readable
        return connection.getresponse()

    def _merged(self, path: str, raw: bytes) -> bytes:
        report = json.loads(raw)
        if path == "/api/health":
            if isinstance(report.get("offline"), dict):
                report["offline"] = merge_reports(report["offline"], self.guard.summary())
        else:
            report = merge_reports(report, self.guard.status())
        return json.dumps(report).encode()


class _Body:
    """The worker's response body, passed on as it arrives; closing it closes the worker's side."""

    def __init__(self, response: http.client.HTTPResponse, connection: UnixHTTPConnection) -> None:
        self.response, self.connection = response, connection

    def __iter__(self) -> Iterator[bytes]:
        while True:
            chunk = self.response.read1(_CHUNK)  # what has arrived, without waiting for a full block
            if not chunk:
                return
            yield chunk

    def close(self) -> None:
        # Called by the WSGI server when the response is done or the client disconnected.
        self.response.close()
        self.connection.close()


class _EventStream(_Body):
    """A job's event stream that outlives the model worker.

    When the worker dies mid-stream, the client gets ``event: restarting`` (``{"id", "message"}``)
    instead of a broken connection, then ``: ping`` comments while a new worker starts; that worker
    queued the job again under its id (the journal), so its events follow from ``job`` on, as on
    ``GET /api/jobs/<id>/events``. A job the new worker does not know ends the stream with
    ``failed``; a stream that never named its job ends after ``restarting``.
    """

    def __init__(self, response: http.client.HTTPResponse, connection: UnixHTTPConnection,
                 proxy: WorkerProxy, headers: list[tuple[str, str]]) -> None:
        super().__init__(response, connection)
        self.proxy, self.headers = proxy, headers
        self.job_id: str | None = None
        self._head = b""  # the stream's first bytes, until the first event (``job``) named the id

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                yield from self._relay()
                return
            except (OSError, http.client.HTTPException) as e:  # the worker died mid-stream
                log.warning("model worker gone during the event stream of job %s: %r", self.job_id, e)
                self.close()
            yield _sse("restarting", {"id": self.job_id, "message": "the model worker stopped unexpectedly "
                                      "and is restarting; this job's events go on once it serves"})
            if not self.job_id:
                return
            answered = yield from self._reconnect()
            if not answered or self.response.status != 200:
                self.close()
                yield _sse("failed", {"id": self.job_id, "status": "failed",
                                      "error": "the job was lost when the model worker stopped"})
                return

    def _relay(self) -> Iterator[bytes]:
        for chunk in super().__iter__():
            if self.job_id is None:
                self._head += chunk
                self.job_id = _first_event_id(self._head)
            yield chunk

    def _reconnect(self) -> Generator[bytes, None, bool]:
        """Pings until a worker answers for the job; False when none did in time (the
        supervisor gave up: the server is stopping)."""
        deadline = time.monotonic() + _RESUME_S
        while (answer := self.proxy.job_events(self.job_id or "", self.headers)) is None:
            if time.monotonic() > deadline:
                return False
            yield b": ping\n\n"
            time.sleep(_RESUME_POLL_S)
        self.response, self.connection = answer
        return True


def _first_event_id(head: bytes) -> str | None:
    """The ``id`` in the first event's JSON data, once that event is complete; "" if it has none."""
    event, separator, _ = head.partition(b"\n\n")
    if not separator:
        return None
    data = b"".join(line[5:] for line in event.splitlines() if line.startswith(b"data:"))
    try:
        found = json.loads(data).get("id") if data else None
    except (ValueError, AttributeError):
        found = None
    return found if isinstance(found, str) else ""


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def _buffered(environ: dict[str, Any]) -> dict[str, Any]:
    """``environ`` with its body read into memory (the server's body limit bounds it)."""
    stream, length = environ["wsgi.input"], int(environ.get("CONTENT_LENGTH") or 0)
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    body = stream.read(length) if length else stream.read() if chunked else b""
    return {**environ, "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body))}


def _request_headers(environ: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for key, value in environ.items():
        if not key.startswith("HTTP_"):
            continue
        name = key[5:].replace("_", "-").title()
        if name.lower() in _HOP_BY_HOP or name.lower() in _SPOOFABLE:
            continue
        yield name, value
    for key, name in (("CONTENT_TYPE", "Content-Type"), ("CONTENT_LENGTH", "Content-Length"),
                      (_CALL_ID_KEY, CALL_ID_HEADER)):
        if environ.get(key):
            yield name, environ[key]
    yield "X-Forwarded-For", environ.get("REMOTE_ADDR", "")
    yield "X-Forwarded-Proto", environ.get("wsgi.url_scheme", "http")


def _send_body(connection: UnixHTTPConnection, stream: Any, length: int) -> None:
    while length > 0:
        chunk = stream.read(min(_CHUNK, length))
        if not chunk:
            return
        connection.send(chunk)
        length -= len(chunk)


def merge_reports(worker: dict[str, Any], server: dict[str, Any]) -> dict[str, Any]:
    """One no-network report for the daemon from the worker's and the server's.

    What may be reached is the server's list (the worker reaches nothing); refusals of both
    processes are added up; the isolation fields are the worker's.
    """
    merged = {**worker, "mode": server["mode"] if worker.get("mode") == "on" else worker.get("mode"),
              "lan": server.get("lan"), "allowed": server["allowed"],
              "refused": worker.get("refused", 0) + server.get("refused", 0)}
    if "refused_by_destination" in server:
        counts = dict(worker.get("refused_by_destination", {}))
        for destination, count in server["refused_by_destination"].items():
            counts[destination] = counts.get(destination, 0) + count
        merged["refused_by_destination"] = dict(sorted(counts.items(), key=lambda kv: -kv[1]))
        attempts = [*worker.get("attempts", []), *server.get("attempts", [])]
        merged["attempts"] = sorted(attempts, key=lambda a: -a["time"])[:_KEPT_ATTEMPTS]
        merged["since"] = server.get("since")
    return merged
