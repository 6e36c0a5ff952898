"""The isolated model worker, from inside: enter the network namespace, then load models and serve.

:class:`pennello.daemon.net.isolation.Worker` starts this module as
``python -m pennello.daemon.worker``. :func:`worker_main` calls ``unshare(2)`` first, while
the process is still single-threaded (the kernel refuses ``CLONE_NEWUSER`` to threaded
processes), so nothing heavy is imported at module level: the server, the app and the engine
are imported by :func:`serve_worker` once the namespace is entered. The worker cannot see this
machine's interfaces from there, so it hands the app the addresses the server writes for it
(:class:`pennello.daemon.net.isolation.ServerNetwork`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from pennello.config import Config
from pennello.errors import PennelloError
from pennello.paths import Paths

from .net.isolation import (READY_FD_ENV, WORKER_ENV, IsolationUnavailable, config_from_json, enter_network_namespace,
                        interfaces, server_addresses, server_lan_address, worker_report)

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """SIGTERM this process when the server dies, so a worker is never orphaned."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the server died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def _worker_logging(paths: Paths) -> None:
    import logging.handlers

    from pennello.logs import FORMAT, setup_logging

    setup_logging(log_dir=None)  # stderr is the server's: its journal or console
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(paths.log_dir / "pennello-worker.log",
                                                   maxBytes=5 * 1024 * 1024, backupCount=3, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    logging.getLogger().addHandler(handler)


def worker_main() -> int:
    """The worker: enter the namespace, then load models and serve (see the module docstring)."""
    spec = json.loads(os.environ.pop(WORKER_ENV))
    ready_fd = int(os.environ.pop(READY_FD_ENV))
    try:
        namespaces = enter_network_namespace()  # first: still one thread, nothing imported
    except IsolationUnavailable as e:
        print(f"pennello worker: no network namespace: {e.strerror or e}", file=sys.stderr)
        return 3
    _die_with_parent()
    from pennello.paths import get_paths

    from .net.offline import apply_offline_env

    apply_offline_env()  # before anything imports huggingface_hub, diffusers or transformers
    paths = get_paths()
    _worker_logging(paths)
    config = config_from_json(spec["config"])

    def ready() -> None:
        os.write(ready_fd, (json.dumps({"pid": os.getpid(), "namespaces": namespaces,
                                        "interfaces": interfaces()}) + "\n").encode())
        os.close(ready_fd)

    try:
        serve_worker(config, paths, Path(spec["socket"]), lambda: worker_report(namespaces), ready)
    except PennelloError as e:  # as the CLI would: one line, its exit code (the server passes it on)
        log.error("%s", e)
        return e.exit_code
    return 0


def serve_worker(config: Config, paths: Paths, unix_socket: Path, report: Callable[[], dict[str, Any]],
                 on_ready: Callable[[], None]) -> None:
    """The isolated worker's life once inside its namespace: the guard, the engine, and the whole
    app on ``unix_socket`` until SIGTERM.

    The client address and scheme come from the server's X-Forwarded-For/-Proto (ProxyFix); Host
    and Origin are the client's own.
    """
    from werkzeug.middleware.proxy_fix import ProxyFix

    from .net import offline
    from .engine.engine import Engine
    from .http.app import create_app
    from .tools import edit  # noqa: F401  (registers how journaled edits come back, before start)
    from .http.context import MachineNetwork
    from .net.proxy import CALL_ID_HEADER
    from .server import StopFlag, WaitressServer, shut_down

    guard = None
    if config.offline.enabled:  # defence in depth: the namespace already has no way out
        guard = offline.enable(config.server.lan, config.server.interfaces, config.offline.allow)
        guard.isolation_report = report
    addresses = server_addresses()
    network = MachineNetwork(addresses, server_lan_address) if addresses is not None else None
    stop_requested = StopFlag()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop_requested.set)
    engine = Engine(config, paths)
    try:
        engine.start()
        _lower_drawing_priority(config.server.worker_nice)
        app = create_app(config, engine, paths, guard=guard, network=network)
        app.wsgi_app = ProxyFix(_call_ids(app.wsgi_app, CALL_ID_HEADER),  # type: ignore[method-assign]
                                x_for=1, x_proto=1, x_host=0, x_port=0, x_prefix=0)
        server = WaitressServer(app, unix_socket=unix_socket, threads=config.server.threads)
        log.info("model worker ready on %s (device %s)", unix_socket, engine.device)
        on_ready()
        server.run(until=stop_requested.is_set)
        log.info("worker shutting down: finishing the jobs that have begun, then saving")
        shut_down(server, engine)
    finally:
        engine.stop(cancel_running=True)
        unix_socket.unlink(missing_ok=True)


def _lower_drawing_priority(steps: int) -> None:
    """Every thread the engine started (the device thread, torch's pool, the saver; the threads
    they start later inherit it) ``steps`` nice steps lower, so drawing, which is batch work, never
    takes a core from the server. This thread and the HTTP threads it starts next keep the
    server's priority: a health check or a job's status must not wait behind the drawing either."""
    this = threading.get_native_id()
    for task in (int(name) for name in os.listdir("/proc/self/task")):
        if task != this:
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                os.setpriority(os.PRIO_PROCESS, task, os.getpriority(os.PRIO_PROCESS, task) + steps)


def _call_ids(app: Callable[..., Any], header: str) -> Callable[..., Any]:
    """``app``, with the server's call id of a call it may send twice (header ``header``) moved to
    where the routes read it (:func:`pennello.daemon.http.context.call_image_id`). Only here, behind
    the server that strips what clients send, may a header choose where a picture is saved."""
    from .http.context import CALL_ID_ENVIRON

    key = "HTTP_" + header.upper().replace("-", "_")

    def with_call_id(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if key in environ:
            environ[CALL_ID_ENVIRON] = environ.pop(key)
        return app(environ, start_response)

    return with_call_id


if __name__ == "__main__":
    # Through the package's module, not this __main__ copy: one module, named loggers.
    from pennello.daemon.worker import worker_main as main

    sys.exit(main())
