"""Who may use the daemon: this machine's user with the owner token, everyone else with a paired one.

Being on loopback proves nothing (every account and program on the computer is), so the owner is
whoever holds the *owner token* (:mod:`pennello.owner_token`, a 0600 file only this OS user can
read) and, on this machine only, a browser that came in through a one-time *login link*
(:mod:`pennello.daemon.owner_login`; ``pennello open`` makes one). Everyone else, on loopback or on the LAN, must
carry ``Authorization: Bearer <token>`` of a paired device. A device gets its token by *pairing*: the
owner runs ``pennello pair`` on the host, which shows a one-time 8-character code (and a QR code);
the device sends that code with a name and receives a token it keeps. Tokens are stored only as
SHA-256 hashes, so the token file is useless to whoever reads it.

Every token has a *scope*: ``device`` (what pairing gives: make pictures, see its own),
``owner`` (everything the host's owner may do, issued on purpose with ``pennello tokens issue
--admin``) or ``node`` (a box of the owner's cluster, paired with ``pennello pair --node``: it may
only fetch the cluster token, docs/cluster.md). Records written before scopes existed read as
``device``.

    >>> store = TokenStore(Path(getfixture("tmp_path")) / "tokens.json")
    >>> pairing = Pairing(store)
    >>> offer = pairing.new_code()
    >>> token, record = pairing.redeem(offer.code, "kitchen tablet", client="192.0.2.7")
    >>> store.verify(token).name
    'kitchen tablet'

This module has no HTTP in it; :mod:`pennello.daemon.http.routes.auth` puts it behind Flask.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, get_args

import filelock

from pennello.errors import AuthError, BusyError, NotFoundError, RequestError, StoreError
from pennello.files import write_atomic

log = logging.getLogger(__name__)

TOKENS_FILE = "tokens.json"
# No 0/O, 1/I/L: a code is read off a screen and typed on a phone.
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
CODE_LENGTH = 8
CODE_TTL_S = 300.0
TOKEN_BYTES = 32
MAX_NAME_CHARS = 64
MAX_FAILURES = 5  # failed pairing attempts per window and client address (an IPv6 /64 counts as one)
FAILURE_WINDOW_S = 60.0
# Wrong guesses one code survives, from all addresses together. A shared failure budget let any
# device lock the owner out; retiring the code instead bounds what many addresses can guess
# (10 tries against 31**8 codes) while the owner only has to run `pennello pair` again.
MAX_CODE_GUESSES = 10
_LAST_USED_WRITE_S = 60.0  # last_used is written back at most this often per token
DEVICE_OWNER_PREFIX = "device:"
TokenScope = Literal["device", "owner", "node"]
TOKEN_SCOPES: tuple[TokenScope, ...] = get_args(TokenScope)


def is_loopback(remote_addr: str | None) -> bool:
    """Whether an address is this machine's loopback (IPv4-mapped IPv6 included)."""
    try:
        address = ipaddress.ip_address((remote_addr or "").split("%", 1)[0])
    except ValueError:
        return False  # unknown or malformed: treat as remote, the safe side
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def needs_token(remote_addr: str | None, trust_loopback: bool = False) -> bool:
    """Whether a caller at ``remote_addr`` must prove who it is (owner token, login session or a
    paired token): everyone does, unless the owner set ``server.trust_loopback`` (a single-user
    computer), which lets anything on loopback act as the owner."""
    return not (trust_loopback and is_loopback(remote_addr))


def owner_of(record: "TokenRecord") -> str:
    """The owner name a paired device's jobs and pictures are filed under."""
    return f"{DEVICE_OWNER_PREFIX}{record.id}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TokenRecord:
    """One paired device as stored: never the token itself, only its hash."""

    id: str
    name: str
    sha256: str
    created: float
    last_used: float | None = None
    scope: TokenScope = "device"  # what pairing gives unless the code was made for a node

    def public(self) -> dict[str, Any]:
        """What may be shown (CLI, API): everything but the hash."""
        data = asdict(self)
        del data["sha256"]
        return data


class TokenStore:
    """``tokens.json`` in the state directory, shared by the daemon and ``pennello tokens``.

    Every change is a read-modify-write under a file lock, written atomically (temp file,
    fsync, rename). The daemon re-reads the file when it changed on disk, so a token revoked
    from the command line stops working at once.
    """

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._file_lock = filelock.FileLock(str(path.with_name(path.name + ".lock")))
        self._records: list[TokenRecord] = []
        self._stamp: tuple[int, int] | None = None

    def issue(self, name: str, scope: TokenScope = "device") -> tuple[str, TokenRecord]:
        """Make a new token for a device.

        Args:
            scope: ``device`` (a paired device), ``owner`` (an admin token: everything) or
                ``node`` (a cluster node: only the cluster token).

        Returns:
            the token (shown once, never stored) and its record.

        Raises:
            RequestError: the name is empty or too long, or the scope unknown.
        """
        name = check_device_name(name)
        if scope not in TOKEN_SCOPES:
            raise RequestError(f"scope must be one of {', '.join(TOKEN_SCOPES)}", field="scope")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        with self._editing() as records:
            taken = {r.id for r in records}
            token_id = next(i for i in iter(lambda: secrets.token_hex(4), None) if i not in taken)
            record = TokenRecord(token_id, name, hash_token(token), round(self._clock(), 3), scope=scope)
            records.append(record)
        log.info("issued %s token %s for %r", scope, record.id, name)
        return token, record

    def verify(self, token: str) -> TokenRecord | None:
        """The record of a valid token, or None. Compares hashes in constant time."""
        digest = hash_token(token)
        with self._lock:
            self._refresh()
            match = next((r for r in self._records if hmac.compare_digest(r.sha256, digest)), None)
        if match is not None and (match.last_used is None
                                  or self._clock() - match.last_used >= _LAST_USED_WRITE_S):
            self._touch(match.id)
        return match

    def list(self) -> list[TokenRecord]:
        with self._lock:
            self._refresh()
            return list(self._records)

    def revoke(self, token_id: str) -> TokenRecord:
        """Remove a token; the device must pair again.

        Raises:
            NotFoundError: no token with that id.
        """
        with self._editing() as records:
            found = next((r for r in records if r.id == token_id), None)
            if found is None:
                raise NotFoundError(f"no token with id {token_id!r}; `pennello tokens list` shows them",
                                    field="id")
            records.remove(found)
        log.info("revoked token %s (%s)", found.id, found.name)
        return found

    def _touch(self, token_id: str) -> None:
        now = round(self._clock(), 3)
        with self._editing() as records:
            for i, record in enumerate(records):
                if record.id == token_id:
                    records[i] = replace(record, last_used=now)

    # --- the file ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _editing(self) -> Iterator[list[TokenRecord]]:
        """Read the newest records under both locks; write them back if the block succeeds."""
        with self._lock, self._file_lock:
            self._stamp = None  # another process may have written since we last looked
            self._refresh()
            records = list(self._records)
            yield records
            self._write(records)
            self._records, self._stamp = records, None

    def _refresh(self) -> None:
        """Re-read the file if it changed on disk (lock held)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._records, self._stamp = [], None
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._records, self._stamp = self._read(), stamp

    def _read(self) -> list[TokenRecord]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            records = [TokenRecord(**entry) for entry in data["tokens"]]
            unknown = {r.scope for r in records} - set(TOKEN_SCOPES)
            if unknown:
                raise ValueError(f"unknown token scope {min(unknown)!r}")
            return records
        except (OSError, ValueError, KeyError, TypeError) as e:
            # Refusing every device beats guessing; the owner can fix or delete the file.
            raise StoreError(f"{self.path} is unreadable ({e}); fix it, or delete it and pair "
                             f"devices again") from e

    def _write(self, records: list[TokenRecord]) -> None:
        data = json.dumps({"version": 1, "tokens": [asdict(r) for r in records]}, indent=1)
        write_atomic(self.path, data.encode("utf-8"), mode=0o600)


def check_device_name(name: Any) -> str:
    """Raises:
        RequestError: naming ``name`` unless it is 1..64 printable characters.
    """
    if not isinstance(name, str) or not name.strip():
        raise RequestError("name must be a non-empty string naming the device", field="name")
    name = name.strip()
    if len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise RequestError(f"name must be at most {MAX_NAME_CHARS} printable characters", field="name")
    return name


class RateLimiter:
    """Counts failures in a sliding window per key; refuses a key while it is over the limit.

    Only the failing key waits: other clients are never refused because of someone else's guesses.
    """

    def __init__(self, limit: int = MAX_FAILURES, window_s: float = FAILURE_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window_s, self._clock = limit, window_s, clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        """Raises:
            BusyError: ``key`` failed ``limit`` times within the window; ``retry_after`` says
                when the oldest of those failures leaves the window.
        """
        with self._lock:
            wait = self._wait(key, self._clock())
        if wait > 0:
            raise BusyError(f"too many failed pairing attempts; try again in {wait} s", retry_after=wait)

    def fail(self, key: str) -> None:
        with self._lock:
            self._failures.setdefault(key, deque()).append(self._clock())

    def _wait(self, key: str, now: float) -> int:
        times = self._failures.get(key)
        if not times:
            return 0
        while times and now - times[0] >= self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]  # keeps memory bounded by recent failures only
            return 0
        if len(times) < self.limit:
            return 0
        return max(1, int(times[0] + self.window_s - now + 0.999))


@dataclass(frozen=True)
class PairingCode:
    code: str
    expires_at: float  # on the pairing clock (monotonic by default)
    expires_in_s: float
    scope: TokenScope = "device"  # what the token it is traded for may do


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def client_key(address: str) -> str:
    """The rate-limit key for an address: IPv6 hosts get a whole /64, so they are counted per
    network rather than per one of the addresses they can pick freely."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def normalize_code(code: str) -> str:
    """What a person typed, as issued: case and separators do not matter."""
    return "".join(ch for ch in code.upper() if ch.isalnum())


_WRONG_KIND: dict[str, str] = {
    "device": "that code pairs a node of the cluster (`pennello node --join HEAD --pair CODE`), "
              "not a device; run `pennello pair` for a device's code",
    "node": "that code pairs a device, not a node; run `pennello pair --node` on the front for a node's code",
}


class Pairing:
    """Short-lived one-time codes, exchanged for tokens; failed attempts are rate limited.

    Only one code is valid at a time: making a new one invalidates the previous one.
    """

    def __init__(self, store: TokenStore, ttl_s: float = CODE_TTL_S,
                 clock: Callable[[], float] = time.monotonic, limiter: RateLimiter | None = None) -> None:
        self.store, self.ttl_s, self._clock = store, ttl_s, clock
        self.limiter = limiter or RateLimiter(clock=clock)
        self._current: PairingCode | None = None
        self._wrong_guesses = 0  # against the current code, from everyone
        self._lock = threading.Lock()

    def new_code(self, scope: TokenScope = "device") -> PairingCode:
        """A code for a device, or (``scope`` ``node``) for a node of the owner's cluster."""
        with self._lock:
            self._current = PairingCode(new_code(), self._clock() + self.ttl_s, self.ttl_s, scope)
            self._wrong_guesses = 0
            return self._current

    def active_code(self) -> PairingCode | None:
        """The code that can be redeemed now, with its remaining lifetime; None if none."""
        with self._lock:
            current = self._current
        if current is None:
            return None
        left = current.expires_at - self._clock()
        return replace(current, expires_in_s=round(left, 1)) if left > 0 else None

    def redeem(self, code: Any, name: Any, client: str, scope: TokenScope = "device") -> tuple[str, TokenRecord]:
        """Exchange a code for a token.

        Args:
            client: the caller's address, for per-client rate limiting.
            scope: what the caller pairs as; a code made for the other kind is refused and
                stays valid (a node's code typed into a phone must not become a device token).

        Raises:
            BusyError: too many recent failures from this client (nothing is checked).
            RequestError: the code or name is missing or malformed.
            AuthError: the code is wrong, expired, already used, or was retired after
                :data:`MAX_CODE_GUESSES` wrong guesses.
        """
        key = client_key(client)
        self.limiter.check(key)
        if not isinstance(code, str) or not code.strip():
            raise RequestError("code is required: the 8 characters `pennello pair` shows", field="code")
        name = check_device_name(name)
        given = normalize_code(code).encode()
        with self._lock:
            current = self._current
            valid = current is not None and hmac.compare_digest(given, current.code.encode())
            if valid and current.scope != scope:  # type: ignore[union-attr]
                raise AuthError(_WRONG_KIND[scope], field="code")
            expired = valid and self._clock() >= current.expires_at  # type: ignore[union-attr]
            if valid:
                self._current = None  # single use, even when it turns out expired
            else:
                self._count_wrong_guess()
        if not valid or expired:
            self.limiter.fail(key)
            log.warning("failed pairing attempt from %s (%s)", client, "expired code" if expired else "wrong code")
            raise AuthError("that pairing code has expired; run `pennello pair` again" if expired else
                            "wrong or already used pairing code; run `pennello pair` on the host for a new one",
                            field="code")
        return self.store.issue(name, scope)

    def _count_wrong_guess(self) -> None:
        """Retire the current code once it has had too many wrong guesses (holding the lock)."""
        if self._current is None:
            return
        self._wrong_guesses += 1
        if self._wrong_guesses >= MAX_CODE_GUESSES:
            log.warning("pairing code retired after %d wrong guesses; run `pennello pair` for a new one",
                        self._wrong_guesses)
            self._current = None
