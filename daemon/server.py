"""Running the daemon: one instance per pennello home, no-network mode, LAN mode, and a clean shutdown.

``serve`` holds an exclusive lock on ``runtime_dir/daemon.lock`` for its whole life and
publishes where it listens in ``runtime_dir/daemon.json`` (``{pid, url, fingerprint, started,
version}``), which clients read to find it. Before anything else is imported it turns on
no-network mode when ``offline.enabled`` (see :mod:`pennello.daemon.net.offline`). On Linux the
models then run in a worker process with its own, empty network namespace and this process
forwards requests to it (:mod:`pennello.daemon.net.isolation`, :mod:`pennello.daemon.net.proxy`;
``offline.isolation``); elsewhere everything runs in this process. On loopback it
serves plain HTTP with waitress. In LAN mode (``server.lan``) it serves HTTPS with its
self-signed certificate on every address, IPv4 and IPv6 (:mod:`pennello.daemon.net.tls`), and
advertises itself over mDNS (:mod:`pennello.daemon.net.mdns`). On SIGTERM or Ctrl-C it
withdraws the mDNS record, stops accepting connections, cancels the jobs not yet begun, lets the
running ones finish, every image of them (cancelling them after a grace period), waits for
pictures to be saved, answers the requests still open, and removes ``daemon.json``.

Tests run the same server in a thread:

    >>> thread, url, stop = start_background_server(app, "127.0.0.1", 0)  # doctest: +SKIP
    >>> requests.get(url + "/api/health").json()["ready"]  # doctest: +SKIP
    True
    >>> stop()  # doctest: +SKIP

and with TLS, as LAN mode does: ``start_background_server(app, "::", 0, tls=ensure_certificate(paths))``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import filelock
import waitress
from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher

from pennello import __version__
from pennello.config import Config, ServerConfig
from pennello.errors import DaemonError
from pennello.owner_token import ensure_owner_token
from pennello.paths import Paths
from pennello.runtime import read_daemon_info, write_daemon_info


if TYPE_CHECKING:
    from .net.mdns import Advertiser, ModelsFn
    from .net.tls import TlsFiles, TlsServer

log = logging.getLogger(__name__)

LOCK_FILE = "daemon.lock"
SHUTDOWN_GRACE_S = 30.0  # how long a running batch may take to finish before it is cancelled
_POLL_S = 0.2


class StopFlag:
    """Set by SIGTERM/SIGINT, polled by the serve loops.

    Not a threading.Event: a handler runs between any two bytecodes of the main thread, also
    inside Event.set() holding its lock, and a second signal there deadlocked the worker.
    """

    def __init__(self) -> None:
        self.requested = False

    def set(self, *_: Any) -> None:
        self.requested = True

    def is_set(self) -> bool:
        return self.requested


class WaitressServer:
    """A waitress server whose event loop we drive, so it can be stopped in an orderly way."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, unix_socket: Path | None = None,
                 threads: int = ServerConfig.threads) -> None:
        if unix_socket is not None:
            # The isolated worker: only the server process reaches this socket (mode 0600), so the
            # X-Forwarded-For/-Proto it sets are kept for the app's ProxyFix rather than cleared.
            self._server = waitress.create_server(app, unix_socket=str(unix_socket), unix_socket_perms="600",
                                                  threads=threads, ident="pennello", channel_timeout=60,
                                                  clear_untrusted_proxy_headers=False)
            self.host, self.port = str(unix_socket), 0
        else:
            self._server = _tcp_server(app, host, port, threads)
            self.host, self.port = host, int(self._server.effective_port)
        self._stop = threading.Event()

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Serve until :meth:`stop` is called or ``until()`` is true (checked every 0.2 s)."""
        while not self._stop.is_set() and not (until and until()):
            wasyncore.loop(timeout=_POLL_S, map=self._server._map, count=1)

    def stop_accepting(self) -> None:
        self._server.accepting = False  # waitress' listener then stops being readable

    def drain(self, busy: Callable[[], bool], timeout: float) -> None:
        """Keep answering open requests while ``busy()``; then until they are answered."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (busy() or self._has_open_requests()):
            wasyncore.loop(timeout=0.05, map=self._server._map, count=1)

    def _has_open_requests(self) -> bool:
        return any(getattr(channel, "requests", None) or getattr(channel, "total_outbufs_len", 0)
                   for channel in list(self._server._map.values()) if channel is not self._server)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._server.task_dispatcher.shutdown(timeout=2)
        wasyncore.close_all(self._server._map)


class _NumericTcpServer(TcpWSGIServer):
    """waitress' TCP listener, naming its own address without ``getnameinfo``.

    waitress asks ``getnameinfo(..., NI_NUMERICHOST)`` for its bound address, which looks up
    nothing; but the audit event it raises does not carry the flags, so no-network mode must take
    it for a reverse lookup and refused it for any address but loopback (``serve --host <LAN
    address>`` stopped at start). The socket's own address is already numeric.
    """

    def getsockname(self) -> tuple[str, str]:
        address = self.socket.getsockname()
        return str(address[0]), str(address[1])


def _tcp_server(app: Any, host: str, port: int, threads: int) -> TcpWSGIServer:
    """What ``waitress.create_server`` makes for ``host:port``, as a :class:`_NumericTcpServer`
    (on the first address ``host`` names: the serve loop drives one listener)."""
    adj = Adjustments(host=host, port=port, threads=threads, ident="pennello", channel_timeout=60)
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adj.threads)
    return _NumericTcpServer(app, {}, dispatcher=dispatcher, adj=adj, sockinfo=adj.listen[0])


def start_background_server(app: Any, host: str = "127.0.0.1", port: int = 0,
                            tls: "TlsFiles | None" = None) -> tuple[threading.Thread, str, Callable[[], None]]:
    """Serve ``app`` from a thread (for tests and benchmarks); over HTTPS when ``tls`` is given.

    Returns:
        the thread, the base URL (real port when ``port`` is 0), and a function that stops it.
    """
    server: Any
    if tls is not None:
        from .net.tls import make_tls_server

        server = make_tls_server(app, host, port, tls.cert_path, tls.key_path)
    else:
        server = WaitressServer(app, host, port)
    thread = threading.Thread(target=server.run, name="pennello-http", daemon=True)
    thread.start()

    def stop() -> None:
        server.stop()
        thread.join()
        server.close()

    return thread, server.url, stop


class InstanceLock:
    """One daemon per pennello home: an OS file lock that dies with the process."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self._lock = filelock.FileLock(str(paths.runtime_dir / LOCK_FILE))

    def acquire(self) -> None:
        """Raises:
            DaemonError: another pennello holds the lock (the message says where it runs).
        """
        self.paths.runtime_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            info = read_daemon_info(self.paths) or {}
            raise DaemonError(f"pennello is already running at {info.get('url', '?')} "
                              f"(pid {info.get('pid', '?')}); stop it first or use another "
                              f"PENNELLO_HOME") from None

    def release(self) -> None:
        self._lock.release()


def make_lan_server(app: Any, paths: Paths, port: int,
                    threads: int = ServerConfig.threads) -> tuple["TlsServer", str, bool]:
    """The HTTPS server LAN mode uses: dual-stack ``::`` where the machine has IPv6, else 0.0.0.0.

    Returns:
        the bound server, its certificate fingerprint, and whether it accepts IPv6.
    """
    from .net.tls import ensure_certificate, make_tls_server

    files = ensure_certificate(paths)
    try:
        server = make_tls_server(app, "::", port, files.cert_path, files.key_path, threads)
        return server, files.fingerprint, True
    except OSError as e:
        log.info("no IPv6 here (%s); serving the LAN on IPv4 only", e)
        server = make_tls_server(app, "0.0.0.0", port, files.cert_path, files.key_path, threads)
        return server, files.fingerprint, False


def serve(config: Config, paths: Paths, on_ready: Callable[[str], None] | None = None,
          engine_class: type | None = None) -> None:
    """Run the daemon until SIGTERM/SIGINT: the model worker in its own network namespace where the
    OS allows it and no-network mode is on (:mod:`pennello.daemon.net.isolation`), else in this process.

    Args:
        on_ready: called with the base URL once requests are being accepted.
        engine_class: another engine than the single box's (the cluster's front); it runs in
            this process, never in the isolated worker.

    Raises:
        DaemonError: another daemon runs on this pennello home; the model worker died or could not
            start; ``offline.isolation = "namespace"`` and no namespace can be made.
        ModelNotFoundError, StoreError: the default model is missing or does not load.
        ConfigError: ``server.interfaces`` or ``offline.allow`` names something unusable.
    """
    from .net import isolation
    from .net import offline

    paths.ensure()
    lock = InstanceLock(paths)
    lock.acquire()
    stop_requested = StopFlag()
    previous = {sig: signal.signal(sig, stop_requested.set)
                for sig in (signal.SIGTERM, signal.SIGINT)}
    guard = None
    try:
        decision = isolation.decide(config)
        if config.offline.enabled:  # before the model libraries are imported, so they see the env
            guard = offline.enable(config.server.lan, config.server.interfaces, config.offline.allow,
                                   peers=config.cluster.peer_networks())
        if decision.namespace and engine_class is None:
            _serve_isolated(config, paths, guard, stop_requested, on_ready)
        else:
            if guard is not None:
                guard.isolation_report = lambda: isolation.guard_only_report(decision.reason, decision.warning)
            _serve_in_process(config, paths, guard, stop_requested, on_ready, engine_class)
    finally:
        if guard is not None:
            guard.uninstall()
        lock.release()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("pennello stopped")


def _listen(app: Any, config: Config, paths: Paths, models: "ModelsFn | None",
            engine: Any = None, refresh_s: float | None = None) -> tuple[Any, str | None, "Advertiser | None"]:
    """The listening server for ``app`` (LAN: HTTPS and mDNS; else loopback HTTP)."""
    from .net.mdns import Advertiser, advertiser_for

    if not config.server.lan:
        return WaitressServer(app, config.server.host, config.server.port, threads=config.server.threads), None, None
    server, fingerprint, ipv6 = make_lan_server(app, paths, config.server.port, config.server.threads)
    advertiser: Advertiser
    if engine is not None:
        advertiser = advertiser_for(config, paths, engine, server.port, fingerprint, ipv6=ipv6)
    else:
        advertiser = Advertiser(paths, server.port, fingerprint, models, interfaces=config.server.interfaces,
                                ipv6=ipv6, **({"refresh_s": refresh_s} if refresh_s else {}))
    try:
        advertiser.start()
    except BaseException:
        server.close()
        raise
    log.info("LAN clients: https on port %d, certificate %s, advertised as %r",
             server.port, fingerprint, advertiser.name)
    return server, fingerprint, advertiser


def _serve_in_process(config: Config, paths: Paths, guard: Any, stop_requested: StopFlag,
                      on_ready: Callable[[str], None] | None, engine_class: type | None = None) -> None:
    """HTTP server and models in this one process (no namespace; the in-process guard only)."""
    from .http.app import create_app
    from .engine.engine import Engine
    from .tools import edit  # noqa: F401  (registers how journaled edits come back, before start)

    daemon_file: Path | None = None
    advertiser = None
    engine = (engine_class or Engine)(config, paths)
    try:
        engine.start()
        app = create_app(config, engine, paths, guard=guard)
        server, fingerprint, advertiser = _listen(app, config, paths, None, engine=engine)
        daemon_file = write_daemon_info(paths.runtime_dir, server.url, fingerprint)
        log.info("pennello %s serving on %s (device %s)", __version__, server.url, engine.device)
        if on_ready:
            on_ready(server.url)
        server.run(until=stop_requested.is_set)
        log.info("shutting down: finishing the jobs that have begun, then saving")
        if advertiser is not None:
            advertiser.stop()  # goodbye packets first: clients stop choosing this daemon
        shut_down(server, engine)
    finally:
        if advertiser is not None:
            advertiser.stop()
        engine.stop(cancel_running=True)  # no-op after an orderly stop; frees the device on errors
        if daemon_file is not None:
            daemon_file.unlink(missing_ok=True)


def shut_down(server: Any, engine: Any) -> None:
    """Stop accepting, let the engine finish (cancelling after the grace period), answer what is open."""
    server.stop_accepting()
    stopper = threading.Thread(target=engine.stop, kwargs={"timeout": SHUTDOWN_GRACE_S})
    stopper.start()
    server.drain(stopper.is_alive, timeout=SHUTDOWN_GRACE_S + 10)
    stopper.join()
    server.close()


def _serve_isolated(config: Config, paths: Paths, guard: Any, stop_requested: StopFlag,
                    on_ready: Callable[[str], None] | None) -> None:
    """This process listens, advertises and forwards; the worker in its namespace does the rest.
    A worker that dies is restarted (:mod:`.net.supervisor`), answering 503 meanwhile."""
    from .net import isolation
    from .net.proxy import WorkerProxy
    from .net.supervisor import Supervisor, while_down

    socket = isolation.socket_path(paths)
    network = isolation.ServerNetwork(paths, config.server.interfaces)

    def start() -> isolation.Worker:
        return isolation.Worker.start(config, paths, socket, network=network, cancelled=stop_requested)

    try:
        supervisor = Supervisor(start(), start, stop_requested.is_set)
    except DaemonError:
        network.remove()
        if stop_requested.is_set():
            return  # SIGTERM while the models loaded: an orderly stop
        raise
    daemon_file: Path | None = None
    advertiser = None
    try:
        proxy = WorkerProxy(socket, guard, ensure_owner_token(paths))
        guard.isolation_report = lambda: {"isolation": "network-namespace", "worker": {"pid": supervisor.worker.pid}}
        server, fingerprint, advertiser = _listen(while_down(proxy, supervisor), config, paths,
                                                  _worker_models(proxy), refresh_s=_ADVERTISE_REFRESH_S)
        daemon_file = write_daemon_info(paths.runtime_dir, server.url, fingerprint)
        log.info("pennello %s serving on %s; models in worker pid %d", __version__, server.url,
                 supervisor.worker.pid)
        if on_ready:
            on_ready(server.url)

        def done() -> bool:  # checked every 0.2 s
            network.refresh()
            return stop_requested.is_set() or supervisor.poll()

        server.run(until=done)
        if advertiser is not None:
            advertiser.stop()
        server.stop_accepting()
        _stop_worker(server, supervisor)
    finally:
        if advertiser is not None:
            advertiser.stop()
        supervisor.settle()
        if supervisor.worker.alive():
            supervisor.worker.stop()
            supervisor.worker.wait(timeout=SHUTDOWN_GRACE_S + 20)
        if daemon_file is not None:
            daemon_file.unlink(missing_ok=True)
        network.remove()


def _stop_worker(server: Any, supervisor: Any) -> None:
    """After serving: raise why the supervisor gave up, or stop the worker as SIGTERM asks
    (it finishes what has begun, then saves) while answering what is still open."""
    if supervisor.gave_up is not None:
        server.close()
        raise DaemonError(supervisor.gave_up)
    log.info("shutting down: the worker finishes the running jobs, then saves")
    supervisor.settle()  # a restart under way sees the stop and gives up
    worker = supervisor.worker
    if not worker.alive():  # it died and no other was started yet: nothing left to finish
        log.warning("the model worker (pid %d) was not running (exit code %s)", worker.pid, worker.wait())
        server.close()
        return
    worker.stop()
    server.drain(worker.alive, timeout=SHUTDOWN_GRACE_S + 10)
    code = worker.wait(timeout=SHUTDOWN_GRACE_S + 20)
    server.close()
    if code != 0:
        raise DaemonError(f"the model worker (pid {worker.pid}) stopped with code {code}")


_ADVERTISE_REFRESH_S = 5.0  # the worker's model loads reach the mDNS record by polling, not a callback


def _worker_models(proxy: Any) -> "ModelsFn":
    """What to advertise: the worker's installed and loaded models, asked over its socket."""

    def models() -> tuple[list[str], list[str]]:
        listed = proxy.request("GET", "/api/models")["models"]
        return [m["name"] for m in listed], [m["name"] for m in listed if m["loaded"]]

    return models
