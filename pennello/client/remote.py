"""Using a pennello daemon on another machine: find it on the LAN, pair once, then talk to it over
TLS pinned to the certificate seen at pairing, with the token pairing gave.

    >>> from pennello.client.remote import pair, connect
    >>> pair("Pennello on studio", code="K7M2QX9P", device_name="laptop")  # doctest: +SKIP
    Remote(name='Pennello on studio', id='3f9a…', fingerprint='sha256:…', …)
    >>> client = connect("auto")  # the one paired daemon that answers  # doctest: +SKIP
    >>> client.generate("a lighthouse at dusk", seed=7)[0]["seed"]  # doctest: +SKIP
    7

Pairings live in ``state_dir/remotes.json`` (mode 0600: it holds the tokens). A daemon is
recognised by its instance id, so a rename or a new address does not matter; a new certificate
does — :func:`connect` then refuses with :class:`~pennello.errors.TrustError` until you pair again.

Trust at pairing time is "trust on first use" of the fingerprint the daemon advertises, unless
you pass the one ``pennello pair`` prints on the daemon's screen (``fingerprint=``), which
rules out an impostor that answered first.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import socket
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import filelock

from pennello.client.api import Client
from pennello.client.discover import browse
from pennello.errors import DaemonError, RequestError, StoreError, TrustError
from pennello.files import write_atomic
from pennello.lan import Service
from pennello.paths import Paths, get_paths

REMOTES_FILE = "remotes.json"
AUTO = "auto"
BROWSE_S = 3.0  # how long to look for daemons by default


@dataclass(frozen=True)
class Remote:
    """A daemon this machine paired with."""

    name: str  # as advertised when paired ("Pennello on studio")
    id: str  # the daemon's instance id: what identifies it from then on
    fingerprint: str  # the pinned certificate
    token: str  # this device's token on that daemon
    token_id: str
    device_name: str  # what the daemon calls this device
    paired_at: float
    last_url: str | None = None  # where it answered last; tried when discovery finds nothing


class RemoteStore:
    """``remotes.json``: one record per paired daemon, written atomically under a file lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file_lock = filelock.FileLock(str(path.with_name(path.name + ".lock")))

    @classmethod
    def default(cls, paths: Paths | None = None) -> "RemoteStore":
        return cls((paths or get_paths()).ensure().state_dir / REMOTES_FILE)

    def list(self) -> list[Remote]:
        with self._lock:
            return self._read()

    def find(self, selector: str) -> Remote | None:
        """The pairing whose name (any case) or id (or an id prefix of 8+ digits) is ``selector``."""
        return _select(self.list(), selector, lambda r: (r.name, r.id))

    def save(self, remote: Remote) -> None:
        """Add or replace (by instance id) a pairing."""
        with self._editing() as remotes:
            remotes[:] = [r for r in remotes if r.id != remote.id] + [remote]

    def forget(self, remote_id: str) -> None:
        with self._editing() as remotes:
            remotes[:] = [r for r in remotes if r.id != remote_id]

    @contextlib.contextmanager
    def _editing(self) -> Iterator[list[Remote]]:
        with self._lock, self._file_lock:
            remotes = self._read()
            yield remotes
            self._write(remotes)

    def _read(self) -> list[Remote]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return [Remote(**entry) for entry in data["remotes"]]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StoreError(f"{self.path} is unreadable ({e}); delete it and pair again") from e

    def _write(self, remotes: list[Remote]) -> None:
        data = json.dumps({"version": 1, "remotes": [asdict(r) for r in remotes]}, indent=1)
        write_atomic(self.path, data.encode("utf-8"), mode=0o600)


def _select(items: Sequence[Any], selector: str, keys: Any) -> Any:
    wanted = selector.strip().lower()
    for item in items:
        name, item_id = keys(item)
        if name.lower() == wanted or item_id == wanted or (len(wanted) >= 8 and item_id.startswith(wanted)):
            return item
    return None


def find_service(selector: str, timeout: float = BROWSE_S, interfaces: Sequence[str] = (),
                 ids: Sequence[str] = ()) -> Service:
    """The daemon on the LAN that ``selector`` names: its name, its instance id, or ``auto``.

    Args:
        ids: with ``auto``, only daemons with these instance ids count (the paired ones); without
            ids, ``auto`` means "the only daemon that answers".

    Raises:
        DaemonError: none matches within ``timeout`` seconds, or ``auto`` is ambiguous.
    """
    if selector == AUTO:
        one = (lambda s: s.id == ids[0]) if len(ids) == 1 else None
        found = [s for s in browse(timeout, interfaces, stop_when=one) if not ids or s.id in ids]
        if len(found) == 1:
            return found[0]
        if not found:
            raise DaemonError(f"no {'paired ' if ids else ''}pennello answered on the LAN within "
                              f"{timeout:g}s; is `pennello serve --lan` running there?")
        raise DaemonError(f"{len(found)} daemons answered ({', '.join(s.name for s in found)}); "
                          f"name the one to use")
    services = browse(timeout, interfaces,
                      stop_when=lambda s: _select([s], selector, lambda x: (x.name, x.id)) is not None)
    service = _select(services, selector, lambda s: (s.name, s.id))
    if service is None:
        seen = ", ".join(repr(s.name) for s in services) or "none"
        raise DaemonError(f"no pennello named {selector!r} answered within {timeout:g}s (found: {seen}); "
                          f"`pennello discover` lists them")
    return service


def pair(selector: str, code: str, device_name: str | None = None, fingerprint: str | None = None,
         timeout: float = BROWSE_S, paths: Paths | None = None,
         interfaces: Sequence[str] = ()) -> Remote:
    """Pair this device with a daemon found on the LAN and remember the pairing.

    Args:
        selector: the daemon's name, instance id, or ``auto`` (the only one that answers).
        code: the code ``pennello pair`` shows on the daemon's machine.
        device_name: how the daemon will list this device (default: this machine's host name).
        fingerprint: the fingerprint ``pennello pair`` printed there; when given, any other is refused.

    Raises:
        DaemonError: not found or not reachable.
        TrustError: it does not serve TLS, or its fingerprint is not ``fingerprint``.
        AuthError: wrong or expired code.
    """
    service = find_service(selector, timeout, interfaces)
    if not service.tls or not service.fingerprint:
        raise TrustError(f"{service.name} does not serve TLS; pairing would send the token in the clear")
    if fingerprint and not hmac.compare_digest(fingerprint.lower(), service.fingerprint):
        raise TrustError(f"{service.name} presents {service.fingerprint}, not the {fingerprint} shown on "
                         f"the daemon's screen; something else may be answering in its name")
    client = Client(service.url, fingerprint=service.fingerprint, timeout=30)
    answer = client.pair(code, device_name or socket.gethostname())
    remote = Remote(name=service.name, id=service.id, fingerprint=service.fingerprint,
                    token=answer["token"], token_id=answer["id"], device_name=answer["name"],
                    paired_at=round(time.time(), 3), last_url=service.url)
    RemoteStore.default(paths).save(remote)
    return remote


def connect(selector: str = AUTO, timeout: float = BROWSE_S, paths: Paths | None = None,
            interfaces: Sequence[str] = ()) -> Client:
    """A :class:`~pennello.client.api.Client` for a paired daemon: found by discovery, pinned, with its token.

    Args:
        selector: a paired daemon's name or instance id, or ``auto`` for the only paired one
            that answers.

    Raises:
        RequestError: nothing paired matches ``selector`` (pair first).
        TrustError: the daemon now advertises another certificate (re-pair if that is expected).
        DaemonError: it did not answer (discovery, then its last known address, were tried).
    """
    store = RemoteStore.default(paths)
    remotes = store.list()
    if not remotes:
        raise RequestError("this device is not paired with any pennello; run `pennello pair NAME`", field="remote")
    if selector == AUTO:
        wanted = remotes
    else:
        remote = store.find(selector)
        if remote is None:
            known = ", ".join(repr(r.name) for r in remotes)
            raise RequestError(f"not paired with {selector!r} (paired: {known}); run `pennello pair "
                               f"{selector}`", field="remote")
        wanted = [remote]
    try:
        service = find_service(AUTO, timeout, interfaces, ids=[r.id for r in wanted])
    except DaemonError:
        if len(wanted) != 1 or wanted[0].last_url is None:
            raise
        # mDNS can be blocked (Wi-Fi client isolation, another subnet): try where it answered last;
        # the pin still decides whether whoever answers there is the daemon.
        return Client(wanted[0].last_url, token=wanted[0].token, fingerprint=wanted[0].fingerprint)
    remote = next(r for r in wanted if r.id == service.id)
    if service.fingerprint != remote.fingerprint:
        raise TrustError(f"{service.name} now presents certificate {service.fingerprint}, not the "
                         f"{remote.fingerprint} pinned when this device paired; if it was reinstalled, "
                         f"pair again (`pennello pair {service.name!r}`)")
    if service.url != remote.last_url or service.name != remote.name:
        store.save(replace(remote, last_url=service.url, name=service.name))
    return Client(service.url, token=remote.token, fingerprint=remote.fingerprint)
