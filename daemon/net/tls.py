"""TLS for LAN mode: a self-signed certificate whose fingerprint is the daemon's identity.

The first LAN start makes an ECDSA P-256 key and certificate (what browsers, requests and phones
all accept) under ``data_dir/tls/``; later starts reuse them, so paired clients keep their pin.
Waitress cannot serve TLS, so LAN mode serves with cheroot, behind the same small interface as
the waitress server (``url``, ``run``, ``stop_accepting``, ``drain``, ``stop``, ``close``).

    >>> from pennello.daemon.net.tls import ensure_certificate, make_tls_server
    >>> files = ensure_certificate(paths)  # doctest: +SKIP
    >>> files.fingerprint  # doctest: +SKIP
    'sha256:3b1f…'
    >>> server = make_tls_server(app, "0.0.0.0", 8420, files.cert_path, files.key_path)  # doctest: +SKIP
    >>> server.run(until=stop_event.is_set)  # doctest: +SKIP

Deleting ``data_dir/tls/`` makes a new identity: every client then has to pair again.

cheroot does the TLS handshake in its accept loop, so one device that connects and stays silent
used to stop every other connection for up to a minute. Here the accept loop only wraps the socket
(:class:`_DeferredHandshake`); a new connection waits in cheroot's selector until it has bytes to
read, and the handshake then runs on a worker thread with a short deadline (:class:`_Connection`).
A stalled request still holds its worker thread until the read timeout, so one address may hold
at most half of them (``per_address``); loopback (the owner) is never capped.
"""

from __future__ import annotations

import collections
import datetime
import ipaddress
import logging
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import ifaddr
from cheroot import server as cheroot_server, wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pennello.lan import fingerprint as der_fingerprint
from ..auth import is_loopback
from pennello.config import ServerConfig
from pennello.errors import ConfigError
from pennello.files import write_atomic
from pennello.paths import Paths

log = logging.getLogger(__name__)

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
VALIDITY_DAYS = 3650  # the pin, not the expiry date, is what clients check
_POLL_S = 0.2
HANDSHAKE_S = 5.0  # a real client finishes in milliseconds once its first bytes arrived
_READ_TIMEOUT_S = 20  # silence allowed inside a request; a silent socket holds one worker this long
# A peer gone mid-TLS: EOF without close_notify, a clean close, a reset or a broken pipe.
_HANG_UPS = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError)


@dataclass(frozen=True)
class TlsFiles:
    cert_path: Path
    key_path: Path
    fingerprint: str  # "sha256:<hex>" of the certificate's DER


def tls_dir(paths: Paths) -> Path:
    return paths.data_dir / "tls"


def fingerprint(cert: x509.Certificate) -> str:
    """``"sha256:<hex>"`` of the certificate's DER encoding (what clients pin)."""
    return der_fingerprint(cert.public_bytes(serialization.Encoding.DER))


def load_fingerprint(cert_path: Path) -> str:
    """Raises:
        ConfigError: the file is missing or not a PEM certificate.
    """
    try:
        return fingerprint(x509.load_pem_x509_certificate(cert_path.read_bytes()))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the TLS certificate {cert_path}: {e}") from e


def ensure_certificate(paths: Paths, hostname: str | None = None,
                       addresses: Iterable[str] | None = None) -> TlsFiles:
    """Return the daemon's certificate and key, making them on first use.

    Args:
        hostname: for the SANs; defaults to this machine's host name.
        addresses: IP addresses for the SANs; default: every address of every interface.
    """
    directory = tls_dir(paths)
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    if cert_path.exists() and key_path.exists():
        return TlsFiles(cert_path, key_path, load_fingerprint(cert_path))
    started = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    hostname = hostname or socket.gethostname()
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _self_signed(key, hostname, local_addresses() if addresses is None else addresses)
    # Key first: a certificate on disk always has its key next to it.
    write_atomic(key_path, key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()), mode=0o600)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    files = TlsFiles(cert_path, key_path, fingerprint(cert))
    log.info("made a TLS certificate for %s: %s", hostname, files.fingerprint)
    log.debug("tls certificate made in %.1fms", (time.perf_counter() - started) * 1000)
    return files


def local_addresses() -> list[str]:
    """Every IP address of every interface (IPv6 ones without their scope)."""
    return sorted({ip.ip if ip.is_IPv4 else ip.ip[0]
                   for adapter in ifaddr.get_adapters() for ip in adapter.ips})


def _self_signed(key: ec.EllipticCurvePrivateKey, hostname: str,
                 addresses: Iterable[str]) -> x509.Certificate:
    names = dict.fromkeys([hostname, f"{hostname}.local", "localhost"])
    ips = dict.fromkeys([ipaddress.ip_address("127.0.0.1"),
                         *(ipaddress.ip_address(a.split("%")[0]) for a in addresses)])
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Pennello on {hostname}"[:64])])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate small clock skew
            .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in names] + [x509.IPAddress(ip) for ip in ips]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(key, hashes.SHA256()))


class TlsServer:
    """A cheroot HTTPS server with the waitress server's stop protocol.

    cheroot has no "stop accepting but finish open requests" switch, so a thin WSGI wrapper
    answers 503 to requests that arrive after :meth:`stop_accepting` and counts the open ones
    so :meth:`drain` knows when they are answered.
    """

    def __init__(self, app: Any, host: str, port: int, cert_path: Path, key_path: Path,
                 threads: int = ServerConfig.threads) -> None:
        self._accepting = True
        self._open = 0
        self._lock = threading.Lock()
        self.per_address = threads // 2  # worker threads one non-loopback address may hold at once
        self._server = _Server((host, port), self._wsgi(app), numthreads=threads, per_address=self.per_address,
                               server_name="pennello", timeout=_READ_TIMEOUT_S, shutdown_timeout=5)
        self._server.ssl_adapter = _DeferredHandshake(str(cert_path), str(key_path))
        self._server.prepare()  # binds now, so the real port is known before run()
        self.host, self.port = host, int(self._server.bind_addr[1])
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"https://{host}:{self.port}"

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Serve until :meth:`stop` is called or ``until()`` is true (checked every 0.2 s)."""
        self._thread = threading.Thread(target=self._server.serve, name="pennello-https", daemon=True)
        self._thread.start()
        while not self._stop.wait(_POLL_S) and not (until and until()):
            pass

    def stop_accepting(self) -> None:
        self._accepting = False

    def drain(self, busy: Callable[[], bool], timeout: float) -> None:
        """Keep answering open requests while ``busy()``; then until they are answered."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (busy() or self._open):
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._server.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _wsgi(self, app: Any) -> Callable[..., Any]:
        def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            if not self._accepting:
                start_response("503 Service Unavailable", [("Content-Type", "application/json"),
                                                           ("Retry-After", "5")])
                return [_SHUTTING_DOWN]
            self._count(+1)
            try:
                return _Closing(app(environ, start_response), lambda: self._count(-1))
            except BaseException:
                self._count(-1)
                raise

        return application

    def _count(self, delta: int) -> None:
        with self._lock:
            self._open += delta


class _DeferredHandshake(BuiltinSSLAdapter):
    """Wraps accepted sockets without the handshake, so the accept loop never waits on a peer."""

    def wrap(self, sock: socket.socket) -> tuple[ssl.SSLSocket, dict[str, Any]]:
        wrapped = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return wrapped, {"wsgi.url_scheme": "https", "HTTPS": "on"}


class _Connection(cheroot_server.HTTPConnection):
    """A connection whose first turn on a worker thread is the TLS handshake, under a deadline."""

    handshaken = False

    def communicate(self) -> bool:
        address = getattr(self, "remote_addr", None)
        if not self.server.claim(address):
            log.info("closing a connection from %s: it already holds %d workers", address, self.server.per_address)
            return False
        try:
            return self._communicate()
        finally:
            self.server.release(address)

    def _communicate(self) -> bool:
        if not self.handshaken:
            try:
                self.socket.settimeout(HANDSHAKE_S)
                self.socket.do_handshake()
                self.socket.settimeout(self.server.timeout)
            except (OSError, ValueError) as e:  # ssl.SSLError and socket.timeout are OSErrors
                log.debug("TLS handshake with %s failed: %s", getattr(self, "remote_addr", "?"), e)
                return False  # cheroot then closes the connection
            self.handshaken = True
            self.ssl_env = {**self.ssl_env, **self.server.ssl_adapter.get_environ(self.socket)}
        try:
            return bool(super().communicate())
        except _HANG_UPS as e:  # cheroot answering a broken request to a peer that has gone
            log.debug("%s hung up mid-request: %r", getattr(self, "remote_addr", "?"), e)
            return False


class _Server(wsgi.Server):
    """cheroot's server, but a new connection waits in the selector until it sends something,
    instead of taking a worker thread straight away (16 silent sockets would take them all)."""

    ConnectionClass = _Connection

    def __init__(self, *args: Any, per_address: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.per_address = per_address
        self._held: collections.Counter[str] = collections.Counter()
        self._held_lock = threading.Lock()

    def claim(self, address: str | None) -> bool:
        """Take a worker for ``address``; False when it already holds its share."""
        if is_loopback(address):
            return True
        with self._held_lock:
            if self._held[address or "?"] >= self.per_address:
                return False
            self._held[address or "?"] += 1
        return True

    def release(self, address: str | None) -> None:
        if is_loopback(address):
            return
        with self._held_lock:
            self._held[address or "?"] -= 1
            self._held += collections.Counter()  # drops the addresses that hold nothing now

    def error_log(self, msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
        """cheroot's messages, into our log instead of bare stderr; a peer that hung up is
        normal on a LAN (a phone locking, a scanner probing), so that is a debug line."""
        if isinstance(sys.exc_info()[1], _HANG_UPS):
            log.debug("a client hung up: %s (%r)", msg, sys.exc_info()[1])
            return
        log.log(level, "%s", msg, exc_info=traceback)

    def process_conn(self, conn: Any) -> None:
        if not conn.handshaken and not getattr(conn, "waited", False):
            conn.waited = True  # the selector hands it back once bytes arrive
            self._connections.put(conn)
            return
        super().process_conn(conn)


_SHUTTING_DOWN = b'{"error": {"type": "daemon", "message": "pennello is shutting down", "field": null}}'


class _Closing:
    """A WSGI response body that calls ``on_close`` once the server closes it (PEP 3333)."""

    def __init__(self, body: Iterable[bytes], on_close: Callable[[], None]) -> None:
        self._body, self._on_close = body, on_close

    def __iter__(self) -> Any:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._on_close()


def make_tls_server(app: Any, host: str, port: int, cert_path: Path, key_path: Path,
                    threads: int = ServerConfig.threads) -> TlsServer:
    """An HTTPS server for ``app`` bound to ``host:port`` (port 0 picks a free one)."""
    return TlsServer(app, host, port, cert_path, key_path, threads)
