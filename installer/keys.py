"""Ed25519 keys: make them, load them, sign with them, and keep this machine's own trusted keys.

A key is named by its *key id*: the sha256 (hex) of its raw 32-byte public key, so the same key
has the same id everywhere and a publisher can read it out over the phone. Keys come from two
places:

* the publisher's, listed in the signed trusted root (:mod:`pennello.installer.root`: the
  release key ships there, and signed root updates rotate them);
* *user* ones, PEM files (``SubjectPublicKeyInfo``) in ``paths.trusted_keys_dir``, added on
  this machine by ``pennello keys trust``/``generate``; this module keeps those.

Revoked key ids are listed in ``paths.state_dir/revoked-keys.json``; a revoked key stays
revoked even if its file comes back (say, in a bundle). Which manifests those keys may sign is
decided by :mod:`pennello.installer.trust`.

    >>> from pennello.paths import get_paths
    >>> paths = get_paths("/tmp/pennello-doc").ensure()  # doctest: +SKIP
    >>> key = generate_key(paths, "office")  # doctest: +SKIP
    >>> signature = sign_signed({"hello": 1}, load_private_key("office", paths))  # doctest: +SKIP
    >>> signature["keyid"] == key.keyid  # doctest: +SKIP
    True
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Mapping

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pennello.errors import RevokedKeyError, TrustError
from pennello.installer.manifest import Manifest, dump_envelope, format_time, parse_envelope, canonical_json
from pennello.files import write_atomic
from pennello.paths import Paths

KeyOrigin = Literal["root", "user"]  # listed in the trusted root, or added on this machine

PUBLIC_SUFFIX = ".pub"
PRIVATE_SUFFIX = ".key"
REVOKED_FILE = "revoked-keys.json"
KEYID_PREFIX_MIN = 8  # shortest key id prefix accepted where a user types one

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class TrustedKey:
    """A public key this machine accepts signatures from."""

    keyid: str
    name: str  # the file name without .pub; for people only, never used to decide trust
    public_key: Ed25519PublicKey
    origin: KeyOrigin

    def pem(self) -> bytes:
        return public_pem(self.public_key)


def key_id(public_key: Ed25519PublicKey) -> str:
    """sha256 hex of the raw 32-byte public key."""
    return hashlib.sha256(raw_public_bytes(public_key)).hexdigest()


def raw_public_bytes(public_key: Ed25519PublicKey) -> bytes:
    """The 32 bytes of an Ed25519 public key (RFC 8032), as a root lists them (in hex)."""
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key_pem(data: bytes, what: str = "public key") -> Ed25519PublicKey:
    """Parse a PEM public key, accepting only Ed25519.

    Args:
        what: names the key in error messages (a file name, say).

    Raises:
        TrustError: not a PEM public key, or a key of another algorithm.
    """
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise TrustError(f"{what} is not a PEM public key (-----BEGIN PUBLIC KEY-----): {e}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise TrustError(f"{what} is a {type(key).__name__.removeprefix('_')} key; "
                         f"pennello only trusts Ed25519 keys")
    return key


def check_key_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise TrustError(f"key name {name!r} must be 1-64 letters, digits, '.', '_' or '-', "
                         f"starting with a letter or digit")
    return name


def generate_key(paths: Paths, name: str) -> TrustedKey:
    """Make a new signing key: private part in ``private_keys_dir/NAME.key`` (mode 0600), public
    part in ``trusted_keys_dir/NAME.pub`` so this machine trusts what it signs.

    Raises:
        TrustError: a bad name, or a key of that name exists already (it is never overwritten).
    """
    check_key_name(name)
    private_path = paths.private_keys_dir / f"{name}{PRIVATE_SUFFIX}"
    public_path = paths.trusted_keys_dir / f"{name}{PUBLIC_SUFFIX}"
    for path in (private_path, public_path):
        if path.exists():
            raise TrustError(f"a key named {name!r} exists already ({path}); pick another name")
    paths.private_keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    private_key = Ed25519PrivateKey.generate()
    pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    # O_EXCL: two concurrent `generate` calls cannot both believe they made the key.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    write_atomic(public_path, public_pem(private_key.public_key()))
    return TrustedKey(key_id(private_key.public_key()), name, private_key.public_key(), "user")


def load_private_key(path_or_name: str | Path, paths: Paths) -> Ed25519PrivateKey:
    """Load a signing key: a PEM file path, or the name of a key made by :func:`generate_key`.

    Raises:
        TrustError: no such file or key name, not a PEM private key, encrypted, or not Ed25519.
    """
    path = Path(path_or_name)
    if not path.is_file():
        named = paths.private_keys_dir / f"{path_or_name}{PRIVATE_SUFFIX}"
        if isinstance(path_or_name, Path) or not named.is_file():
            raise TrustError(f"no signing key {str(path_or_name)!r}: it is neither a file nor a key "
                             f"made by `pennello keys generate` (in {paths.private_keys_dir})")
        path = named
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except TypeError as e:  # the file is password-protected
        raise TrustError(f"{path} is encrypted; pennello signs only with unencrypted PKCS#8 keys") from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise TrustError(f"{path} is not a PEM private key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise TrustError(f"{path} is not an Ed25519 key; pennello signs only with Ed25519")
    return key


def sign_signed(signed: dict[str, Any], private_key: Ed25519PrivateKey) -> dict[str, str]:
    """One signature entry, ``{"keyid", "sig"}``, over :func:`canonical_json` of ``signed``."""
    return {"keyid": key_id(private_key.public_key()),
            "sig": private_key.sign(canonical_json(signed)).hex()}


def add_signature(envelope_bytes: bytes, private_key: Ed25519PrivateKey) -> bytes:
    """Sign an envelope: replace this key's earlier signature, keep everyone else's.

    Raises:
        ManifestFormatError: the envelope or its manifest is not valid (nothing invalid is signed).
    """
    signed, signatures = parse_envelope(envelope_bytes)
    Manifest.from_signed(signed)
    new = sign_signed(signed, private_key)
    kept = [s for s in signatures if s["keyid"] != new["keyid"]]
    return dump_envelope(signed, kept + [new])


def user_keys(paths: Paths) -> list[TrustedKey]:
    """The public keys added on this machine.

    Raises:
        TrustError: a file there is not an Ed25519 public key (it names the file to fix).
    """
    files = sorted(paths.trusted_keys_dir.glob(f"*{PUBLIC_SUFFIX}"))
    return [_trusted(f.read_bytes(), str(f), "user") for f in files]


def _trusted(pem: bytes, file_name: str, origin: KeyOrigin) -> TrustedKey:
    public_key = load_public_key_pem(pem, f"trusted key file {file_name}")
    return TrustedKey(key_id(public_key), Path(file_name).name.removesuffix(PUBLIC_SUFFIX), public_key, origin)


def trust_key(paths: Paths, source: Path | bytes, name: str | None = None,
              unrevoke: bool = False, known: Mapping[str, TrustedKey] | None = None) -> TrustedKey:
    """Add a public key (a ``.pub`` file or its PEM bytes) to this machine's trusted keys.

    Trusting a key that is trusted already changes nothing and returns it.

    Args:
        name: the file name to keep it under; defaults to the source file's name.
        unrevoke: trust it again even though it was revoked here.
        known: keys trusted already by other means (the trusted root's), by key id.

    Raises:
        TrustError: not an Ed25519 public key, no name, or the name is taken by another key.
        RevokedKeyError: the key was revoked and ``unrevoke`` is False.
    """
    if isinstance(source, Path):
        name = name or source.name.removesuffix(PUBLIC_SUFFIX)
        pem = source.read_bytes()
    else:
        pem = source
    if not name:
        raise TrustError("a trusted key needs a name")
    public_key = load_public_key_pem(pem, str(source) if isinstance(source, Path) else "public key")
    keyid = key_id(public_key)
    revoked = load_revoked(paths)
    if keyid in revoked and not unrevoke:
        raise RevokedKeyError(f"key {keyid} was revoked on {revoked[keyid]}; trust it again only if "
                              f"you are sure it is safe (`pennello keys trust --unrevoke`)")
    if keyid in revoked:
        _save_revoked(paths, {k: v for k, v in revoked.items() if k != keyid})
    found = (known or {}).get(keyid) or next((k for k in user_keys(paths) if k.keyid == keyid), None)
    if found is not None:
        return found
    path = paths.trusted_keys_dir / f"{check_key_name(name)}{PUBLIC_SUFFIX}"
    if path.exists():
        raise TrustError(f"another key is trusted under the name {name!r} ({path}); choose another name")
    write_atomic(path, public_pem(public_key))
    return TrustedKey(keyid, name, public_key, "user")


def load_revoked(paths: Paths) -> dict[str, str]:
    """Revoked key ids and when they were revoked (``2026-01-31T12:00:00Z``).

    Raises:
        TrustError: the file exists but is damaged (revocations must never be silently lost).
    """
    path = paths.state_dir / REVOKED_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise TrustError(f"{path} is unreadable ({e}); restore it from a backup") from e
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise TrustError(f"{path} is damaged; restore it from a backup")
    return data


def revoke(paths: Paths, keyid: str) -> None:
    """Persist that ``keyid`` is no longer trusted (kept even if its key file comes back)."""
    revoked = load_revoked(paths)
    revoked.setdefault(keyid, format_time(datetime.now(timezone.utc)))
    _save_revoked(paths, revoked)


def _save_revoked(paths: Paths, revoked: dict[str, str]) -> None:
    write_atomic(paths.state_dir / REVOKED_FILE,
                 (json.dumps(revoked, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def delete_user_key_files(paths: Paths, keyid: str) -> list[Path]:
    """Delete every user ``.pub`` file holding ``keyid``; returns the deleted paths."""
    deleted = []
    for path in sorted(paths.trusted_keys_dir.glob(f"*{PUBLIC_SUFFIX}")):
        if _trusted(path.read_bytes(), str(path), "user").keyid == keyid:
            path.unlink()
            deleted.append(path)
    return deleted
