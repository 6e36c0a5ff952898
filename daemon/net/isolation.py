"""Isolation: model work runs in a worker process that has no network at all (Linux).

``pennello serve`` splits at the HTTP boundary when it can. The **worker** — started with
:class:`Worker` as ``python -m pennello.daemon.worker`` (:mod:`.worker`) — first calls ``unshare(2)`` to enter
a new, empty network namespace (just ``CLONE_NEWNET`` as root; ``CLONE_NEWUSER|CLONE_NEWNET``
otherwise, mapping its own uid and gid to themselves so files keep their owner), *then* imports
torch and diffusers, loads the models and serves the whole Flask app on a Unix socket (path
sockets work across network namespaces). Its only interface is a down ``lo``: no route, no DNS,
no address, so even native code (hf_xet, C extensions) that the audit hook never sees cannot
reach anything. It keeps the in-process guard too, as a second wall.

The **server** (the parent) keeps what needs the network: the listening TCP sockets (loopback,
or LAN with TLS), mDNS advertising and signal handling, and forwards every request over the
Unix socket (:mod:`pennello.daemon.net.proxy`). It runs the in-process guard as well.

When the namespace is not available (not Linux; ``unshare`` refused, as under Ubuntu's AppArmor
user-namespace restriction or in many containers) or ``offline.isolation = "off"``, everything
runs in one process with the in-process guard, as before; ``"namespace"`` refuses to start
instead. ``pennello offline status`` says which is active and why.

    >>> decide(Config())  # doctest: +SKIP
    Decision(namespace=True, reason='network namespace (net): the model worker has only lo')
    >>> worker = Worker.start(config, paths, socket_path)  # doctest: +SKIP
    >>> worker.info["interfaces"]  # doctest: +SKIP
    ['lo']

Nothing heavy is imported at module level: the worker must still be single-threaded when it
calls ``unshare`` (the kernel refuses ``CLONE_NEWUSER`` to threaded processes). This module
imports neither the server nor the worker's serving code, so each of them can import it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pennello.config import Config
from pennello.errors import DaemonError
from pennello.launch import python_command
from pennello.paths import Paths

log = logging.getLogger(__name__)

Isolation = Literal["network-namespace", "in-process-guard", "none"]

#: Environment of the worker: its job as JSON (config, socket path) and the fd it reports on.
WORKER_ENV = "PENNELLO_WORKER_SPEC"
READY_FD_ENV = "PENNELLO_WORKER_READY_FD"
#: The file in which the server keeps what the worker cannot see from its namespace: this
#: machine's interface addresses (Host checks) and its LAN address (pairing URLs).
NETWORK_FILE_ENV = "PENNELLO_WORKER_NETWORK_FILE"
NETWORK_FILE = "server-network.json"
_NETWORK_REFRESH_S = 5.0  # the server re-reads its addresses this often (DHCP, a new Wi-Fi)
SOCKET_NAME = "worker.sock"
_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes; leave room
_CLONE_NEWNET = 0x40000000
_CLONE_NEWUSER = 0x10000000
_PROBE_TIMEOUT_S = 20.0


class IsolationUnavailable(OSError):
    """The kernel (or a policy in front of it) will not give this process a network namespace."""


@dataclass(frozen=True)
class Decision:
    """Whether ``serve`` runs the model worker in a network namespace, and why (for status)."""

    namespace: bool
    reason: str
    warning: str | None = None  # set when Linux was expected to isolate and could not


# --- entering the namespace ----------------------------------------------------------------------

def enter_network_namespace() -> str:
    """Move this process into a new network namespace with only a down ``lo``.

    Returns:
        which namespaces were made: ``"net"`` (as root) or ``"user+net"``.

    Raises:
        IsolationUnavailable: not Linux, or the kernel refused (the message says what it said).
    """
    if sys.platform != "linux":
        raise IsolationUnavailable(errno.ENOSYS, f"network namespaces are Linux-only (this is {sys.platform})")
    libc = ctypes.CDLL(None, use_errno=True)
    failures: list[str] = []
    if os.geteuid() == 0:
        if libc.unshare(_CLONE_NEWNET) == 0:
            return "net"
        failures.append(f"unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())}")
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) == 0:
        # Map our own ids to themselves, so what we write keeps its owner; setgroups must be
        # denied before an unprivileged process may write gid_map.
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
        return "user+net"
    code = ctypes.get_errno()
    failures.append(f"unshare(CLONE_NEWUSER|CLONE_NEWNET): {os.strerror(code)}")
    raise IsolationUnavailable(code, "; ".join(failures))


def probe() -> str | None:
    """Whether a fresh process may enter a network namespace here; None when it may, else why not.

    Runs :func:`enter_network_namespace` in a throwaway interpreter, so this process is untouched.
    """
    if sys.platform != "linux":
        return f"network namespaces are Linux-only (this is {sys.platform})"
    code = ("import sys\nfrom pennello.daemon.net.isolation import enter_network_namespace as enter\n"
            "try:\n    enter()\nexcept OSError as e:\n    print(e.strerror or e); sys.exit(3)\n")
    try:
        result = subprocess.run(python_command("-c", code), capture_output=True, text=True,
                                timeout=_PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"could not run the probe: {e}"
    if result.returncode == 0:
        return None
    lines = (result.stdout.strip() or result.stderr.strip()).splitlines()
    return lines[-1] if lines else f"the probe exited with code {result.returncode}"


def decide(config: Config) -> Decision:
    """Pick the process layout ``serve`` uses from ``offline.isolation`` and what the OS allows.

    Raises:
        DaemonError: ``offline.isolation = "namespace"`` but no namespace can be made.
    """
    mode = config.offline.isolation
    if not config.offline.enabled:
        return Decision(False, "no-network mode is off (offline.enabled = false)")
    if mode == "off":
        return Decision(False, 'offline.isolation = "off"')
    why_not = probe()
    if why_not is None:
        return Decision(True, "the model worker runs in its own network namespace")
    if mode == "namespace":
        raise DaemonError(f'offline.isolation = "namespace", but this system gives no network namespace '
                          f'({why_not}); allow unprivileged user namespaces, run under the systemd unit, '
                          f'or set offline.isolation = "auto" to fall back to the in-process guard')
    # Expected on macOS and Windows; on Linux it means a policy said no, worth a warning.
    if sys.platform != "linux":
        log.info("no network namespace for the model worker (%s); using the in-process guard only", why_not)
        return Decision(False, f"network namespace unavailable: {why_not}")
    warning = (f"isolation failed: the model worker could not get its own network namespace ({why_not}); "
               f"only the in-process guard keeps the network out")
    log.warning("%s", warning)
    return Decision(False, f"network namespace unavailable: {why_not}", warning)


def interfaces() -> list[str]:
    """This process's network interfaces, by name (inside the worker: ``["lo"]``)."""
    return sorted(name for _, name in socket.if_nameindex())


def worker_report(namespaces: str) -> dict[str, Any]:
    """What the worker says about itself in ``/api/offline`` and ``/api/health`` (read live)."""
    try:
        netns = os.readlink("/proc/self/ns/net")
    except OSError:
        netns = None
    return {"isolation": "network-namespace",
            "isolation_reason": f"model loading and generation run in a worker with its own "
                                f"network namespace ({namespaces}): no interface but loopback",
            "worker": {"pid": os.getpid(), "namespaces": namespaces, "netns": netns,
                       "interfaces": interfaces()}}


def guard_only_report(reason: str, warning: str | None = None) -> dict[str, Any]:
    """What a single-process daemon says about isolation; ``warning`` when isolation was expected
    and failed, so ``/api/offline`` and ``pennello offline status`` show it rather than hide it."""
    if warning is None:
        return {"isolation": "in-process-guard", "isolation_reason": reason}
    return {"isolation": "in-process-guard", "isolation_reason": f"WARNING: {warning}",
            "isolation_warning": warning}


# --- what the worker cannot see: the server's view of the network --------------------------------

class ServerNetwork:
    """The server's side: keeps ``runtime_dir/server-network.json`` up to date for the worker.

    Files cross network namespaces; the worker reads it through :func:`server_addresses` and
    :func:`server_lan_address`.
    """

    def __init__(self, paths: Paths, interfaces: typing.Sequence[str] = ()) -> None:
        self.path, self.interfaces = paths.runtime_dir / NETWORK_FILE, tuple(interfaces)
        self._written: dict[str, Any] | None = None
        self._checked = 0.0

    def refresh(self) -> None:
        """Write the addresses if they changed (at most every few seconds)."""
        from pennello.files import write_atomic

        from .mdns import interface_addresses, lan_address

        now = time.monotonic()
        if self._written is not None and now - self._checked < _NETWORK_REFRESH_S:
            return
        self._checked = now
        try:
            current = {"addresses": interface_addresses(), "lan_address": lan_address(self.interfaces)}
        except Exception as e:  # keep what the worker has; the next refresh tries again
            log.warning("could not read this machine's addresses for the worker: %s", e)
            return
        if current != self._written:
            write_atomic(self.path, json.dumps(current).encode())
            self._written = current

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _server_network() -> dict[str, Any] | None:
    path = os.environ.get(NETWORK_FILE_ENV)
    if not path:
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def server_addresses() -> typing.Callable[[], list[str]] | None:
    """In the isolated worker: a function returning the server's (this machine's) interface
    addresses; None in any other process, where the interfaces can be read directly."""
    if not os.environ.get(NETWORK_FILE_ENV):
        return None
    return lambda: list((_server_network() or {}).get("addresses", []))


def server_lan_address() -> str | None:
    """In the isolated worker: the LAN address the server found; None elsewhere or unknown."""
    return (_server_network() or {}).get("lan_address")


# --- the worker process, seen from the server ----------------------------------------------------

def socket_path(paths: Paths) -> Path:
    """Where the worker listens: ``runtime_dir/worker.sock``, or a private temporary folder when
    that path is too long for a Unix socket."""
    path = paths.runtime_dir / SOCKET_NAME
    if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
        return path
    import tempfile

    return Path(tempfile.mkdtemp(prefix="pennello-")) / SOCKET_NAME  # mkdtemp: mode 0700


def config_to_json(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_json(data: dict[str, Any]) -> Config:
    """The inverse of :func:`config_to_json` (JSON lists become the tuples the config holds)."""
    hints = typing.get_type_hints(Config)
    sections = {}
    for f in dataclasses.fields(Config):
        values = {key: tuple(value) if isinstance(value, list) else value
                  for key, value in data.get(f.name, {}).items()}
        sections[f.name] = hints[f.name](**values)
    return Config(**sections)


class Worker:
    """The model worker as a child process of the server."""

    def __init__(self, process: subprocess.Popen, socket: Path, info: dict[str, Any]) -> None:
        self.process, self.socket, self.info = process, socket, info

    @classmethod
    def start(cls, config: Config, paths: Paths, path: Path, network: ServerNetwork | None = None,
              cancelled: Any = None) -> Worker:
        """Start the worker and wait until it serves (it loads the default model first).

        Args:
            network: the file the server keeps its addresses in for the worker.
            cancelled: a flag with ``is_set()`` (the server's StopFlag); when it is set while waiting, the worker is stopped.

        Raises:
            DaemonError: the worker exited before it was ready (its log lines say why), or
                ``cancelled`` was set.
        """
        path.unlink(missing_ok=True)
        read_fd, write_fd = os.pipe()
        env = {**os.environ, WORKER_ENV: json.dumps({"config": config_to_json(config), "socket": str(path)}),
               READY_FD_ENV: str(write_fd)}
        if network is not None:
            network.refresh()
            env[NETWORK_FILE_ENV] = str(network.path)
        # stdout=2: the worker's stray prints join its log lines, never the server's own stdout.
        process = subprocess.Popen(python_command("-m", "pennello.daemon.worker"), env=env,
                                   pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stdout=2)
        os.close(write_fd)
        try:
            line = _read_line(read_fd, process, cancelled)
        finally:
            os.close(read_fd)
        if not line:
            if cancelled is not None and cancelled.is_set():  # SIGTERM while the models load
                process.send_signal(signal.SIGTERM)
                process.wait()
                path.unlink(missing_ok=True)
                raise DaemonError("stopped while the model worker was starting")
            code = process.wait()  # its end of the pipe closes a moment before it exits
            path.unlink(missing_ok=True)
            error = DaemonError(f"the model worker (pid {process.pid}) exited with code {code} before "
                                f"it was ready; its log lines above say why")
            if code > 0:
                error.exit_code = code  # the worker's own, e.g. 4 for a model that will not load
            raise error
        worker = cls(process, path, json.loads(line))
        log.info("model worker pid %d serves on %s in its own network namespace (%s); interfaces: %s",
                 process.pid, path, worker.info["namespaces"], ", ".join(worker.info["interfaces"]))
        return worker

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Ask the worker to shut down as ``serve`` does (finish the running batch, save)."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float | None = None) -> int:
        """Reap the worker (killing it after ``timeout``). Returns its exit code."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.error("model worker pid %d did not stop in %.0f s; killing it", self.pid, timeout)
            self.process.kill()
            return self.process.wait()
        finally:
            self.socket.unlink(missing_ok=True)


def _read_line(fd: int, process: subprocess.Popen, cancelled: Any) -> bytes:
    """The worker's one ready line; b"" if it exited or ``cancelled`` was set first."""
    data = b""
    while not data.endswith(b"\n"):
        if cancelled is not None and cancelled.is_set():
            return b""
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return b""
        data += chunk
    return data
