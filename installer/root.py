"""The trusted root: the publisher's keys and thresholds, rotated by signed updates as in TUF.

A root is a signed envelope (the same ``{"signed", "signatures"}`` shape and canonical bytes
as a manifest) whose ``signed`` part lists Ed25519 keys and two roles:

* ``root``: the keys, and how many of them, that must sign the *next* root;
* ``manifests``: the keys, and how many of them, that must sign a model manifest or a bundle.

Version 1 ships inside pennello (``installer/embedded/root.json``, signed with the release key).
A newer root is accepted only as TUF's client workflow (spec §5.3) accepts one: its version is
exactly the trusted one's plus 1, and it is signed by the threshold of the trusted root's
``root`` keys *and* by the threshold of its own. An intermediate root may have expired; the last
one of a chain may not. At most :data:`MAX_ROOT_UPDATES` are applied at once. Each accepted
root is written to ``paths.state_dir/root.json`` before the next is checked, so the version
never goes down (rollback) and a later bad link keeps the good ones. A key that a new root
drops is remembered in ``root-retired.json``: it stays refused even where it was trusted locally
too, until an admin says otherwise (``pennello keys trust FILE --unrevoke``).

Keys the admin trusts on this machine (``pennello keys trust``) are not in the root; how the two
combine is decided by :mod:`pennello.installer.trust`; making and signing a new root is
:mod:`pennello.installer.root_drafts`.

    >>> from pennello.paths import get_paths
    >>> paths = get_paths("/tmp/pennello-doc").ensure()  # doctest: +SKIP
    >>> load_trusted_root(paths).root.version  # doctest: +SKIP
    1
    >>> [r.version for r in update_root(paths, [open("root-2.json", "rb").read()])]  # doctest: +SKIP
    [2]
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import re
import typing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Literal, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from filelock import FileLock

from pennello.errors import (BadSignatureError, ExpiredManifestError, ManifestFormatError, RollbackError,
                             ThresholdError, TrustError)
from pennello.installer.keys import TrustedKey, check_key_name, key_id, raw_public_bytes
from pennello.installer.manifest import canonical_json, format_time, parse_envelope, parse_time
from pennello.files import write_atomic
from pennello.paths import Paths

log = logging.getLogger(__name__)

RoleName = Literal["root", "manifests"]
ROLE_NAMES: tuple[str, ...] = typing.get_args(RoleName)
ROOT_TYPE = "pennello-root"
SPEC_VERSION = 1
ROOT_FILE = "root.json"  # in paths.state_dir: the newest root accepted on this machine
RETIRED_FILE = "root-retired.json"  # in paths.state_dir: keys a root update dropped
SHIPPED_ROOT = ("pennello.installer", "embedded/root.json")  # package, path: version 1 and on
MAX_ROOT_BYTES = 1024 * 1024  # a root with 64 keys is ~10 KB; more is endless data
MAX_ROOT_KEYS = 64
MAX_ROOT_UPDATES = 32  # roots applied by one update; python-tuf caps its chain the same way

_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Role:
    """Which keys may sign for a role, and how many distinct ones must."""

    keyids: tuple[str, ...]
    threshold: int

    def to_dict(self) -> dict[str, Any]:
        return {"keyids": list(self.keyids), "threshold": self.threshold}


@dataclass(frozen=True)
class Root:
    """One version of the trusted root (the ``signed`` part of ``root.json``)."""

    version: int
    expires: datetime
    keys: Mapping[str, TrustedKey]  # keyid -> key (origin "root")
    roles: Mapping[str, Role]  # every name of ROLE_NAMES

    def role_keys(self, role: RoleName) -> list[TrustedKey]:
        return [self.keys[k] for k in self.roles[role].keyids]

    def is_expired(self, now: datetime) -> bool:
        return self.expires <= now

    @property
    def digest(self) -> str:
        """sha256 of the canonical signed bytes."""
        return hashlib.sha256(canonical_json(self.to_signed())).hexdigest()

    def to_signed(self) -> dict[str, Any]:
        return {
            "_type": ROOT_TYPE,
            "spec_version": SPEC_VERSION,
            "version": self.version,
            "expires": format_time(self.expires),
            "keys": {k.keyid: {"keytype": "ed25519", "public": raw_public_bytes(k.public_key).hex(),
                               "name": k.name} for k in self.keys.values()},
            "roles": {name: self.roles[name].to_dict() for name in ROLE_NAMES},
        }

    @classmethod
    def from_signed(cls, data: Any) -> "Root":
        """Validate the ``signed`` part of a root envelope.

        Raises:
            ManifestFormatError: a member missing, unknown or of the wrong type; a key whose id is
                not the sha256 of its bytes; a role naming an unknown key or a threshold it
                cannot reach; a key in no role.
        """
        members = {"_type", "spec_version", "version", "expires", "keys", "roles"}
        if not isinstance(data, dict) or data.get("_type") != ROOT_TYPE:
            raise ManifestFormatError(f"not a pennello root (_type must be {ROOT_TYPE!r})")
        if set(data) != members:
            raise ManifestFormatError(f"root must have exactly {sorted(members)}; "
                                      f"it has {sorted(data)}")
        if data["spec_version"] != SPEC_VERSION:
            raise ManifestFormatError(f"unsupported root spec_version {data['spec_version']!r}; "
                                      f"this pennello reads {SPEC_VERSION}")
        version = data["version"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ManifestFormatError("root version must be a positive integer")
        keys = _parse_keys(data["keys"], version)
        roles = data["roles"]
        if not isinstance(roles, dict) or set(roles) != set(ROLE_NAMES):
            raise ManifestFormatError(f"root v{version}: roles must be exactly {list(ROLE_NAMES)}")
        parsed = {name: _parse_role(roles[name], name, keys, version) for name in ROLE_NAMES}
        unused = set(keys) - {k for role in parsed.values() for k in role.keyids}
        if unused:
            raise ManifestFormatError(f"root v{version}: key(s) {sorted(unused)} are in no role")
        return cls(version, parse_time(data["expires"], "root expires"), keys, parsed)


def _parse_keys(data: Any, version: int) -> dict[str, TrustedKey]:
    if not isinstance(data, dict) or not 1 <= len(data) <= MAX_ROOT_KEYS:
        raise ManifestFormatError(f"root v{version}: keys must be an object of 1 to {MAX_ROOT_KEYS} keys")
    keys = {}
    for keyid, entry in data.items():
        if not isinstance(entry, dict) or set(entry) != {"keytype", "public", "name"} \
                or entry["keytype"] != "ed25519":
            raise ManifestFormatError(f"root v{version}: key {keyid[:16]}… must be exactly "
                                      f'{{"keytype": "ed25519", "public": <64 hex>, "name": <name>}}')
        public = entry["public"]
        if not isinstance(public, str) or not _HEX64_RE.match(public):
            raise ManifestFormatError(f"root v{version}: key {keyid[:16]}…: public must be 64 lowercase "
                                      f"hex digits (the raw Ed25519 key)")
        try:
            public_key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public))
        except ValueError as e:
            raise ManifestFormatError(f"root v{version}: key {keyid[:16]}… is not an Ed25519 key") from e
        if key_id(public_key) != keyid:
            raise ManifestFormatError(f"root v{version}: key id {keyid[:16]}… is not the sha256 of its "
                                      f"public key ({key_id(public_key)[:16]}…)")
        if not isinstance(entry["name"], str):
            raise ManifestFormatError(f"root v{version}: key {keyid[:16]}…: name must be a string")
        keys[keyid] = TrustedKey(keyid, check_key_name(entry["name"]), public_key, "root")
    return keys


def _parse_role(data: Any, name: str, keys: Mapping[str, TrustedKey], version: int) -> Role:
    if not isinstance(data, dict) or set(data) != {"keyids", "threshold"}:
        raise ManifestFormatError(f"root v{version}: role {name!r} must be exactly {{keyids, threshold}}")
    keyids, threshold = data["keyids"], data["threshold"]
    if not isinstance(keyids, list) or not keyids or len(set(map(str, keyids))) != len(keyids):
        raise ManifestFormatError(f"root v{version}: role {name!r} needs a list of distinct key ids")
    missing = [k for k in keyids if k not in keys]
    if missing:
        raise ManifestFormatError(f"root v{version}: role {name!r} names key(s) not in keys: {missing}")
    if not isinstance(threshold, int) or isinstance(threshold, bool) or not 1 <= threshold <= len(keyids):
        raise ManifestFormatError(f"root v{version}: role {name!r} threshold must be 1 to {len(keyids)} "
                                  f"(its number of keys), not {threshold!r}")
    return Role(tuple(keyids), threshold)


def parse_root(raw: bytes) -> tuple[Root, dict[str, Any], list[dict[str, str]]]:
    """Parse root file bytes (nothing is verified): the root, its signed dict, its signatures.

    Raises:
        ManifestFormatError: too large, not an envelope, or not a valid root.
    """
    if len(raw) > MAX_ROOT_BYTES:
        raise ManifestFormatError(f"root file is {len(raw)} bytes, more than the {MAX_ROOT_BYTES} a "
                                  f"root may have")
    signed, signatures = parse_envelope(raw, "root file")
    return Root.from_signed(signed), signed, signatures


@dataclass(frozen=True)
class Retired:
    """A key a root update dropped: refused from then on."""

    version: int  # the first root without it
    name: str


@dataclass(frozen=True)
class TrustedRoot:
    """The root this machine trusts now, where it came from, and the keys roots have dropped."""

    root: Root
    raw: bytes
    origin: Literal["shipped", "updated"]  # the package's own, or one `update_root` accepted here
    retired: Mapping[str, Retired] = field(default_factory=dict)


def shipped_root_raw() -> bytes:
    """The root that ships with pennello (version 1, or a later one a release carries)."""
    package, path = SHIPPED_ROOT
    return (importlib.resources.files(package) / path).read_bytes()


def load_trusted_root(paths: Paths) -> TrustedRoot:
    """The newest of the shipped root and the one last accepted here (never an older one).

    Both are anchors (the package and this account's state are trusted), but each must still
    be signed by the threshold of its own root keys: anything else is damage.

    Raises:
        TrustError: the shipped root or the stored one is damaged.
    """
    try:
        shipped_raw = shipped_root_raw()
        shipped = _anchor(shipped_raw)
    except (OSError, TrustError) as e:
        raise TrustError(f"the root shipped with pennello is unusable ({e}); reinstall pennello") from e
    path = paths.state_dir / ROOT_FILE
    try:
        raw = path.read_bytes()
        stored = _anchor(raw)
    except FileNotFoundError:
        return TrustedRoot(shipped, shipped_raw, "shipped", _load_retired(paths))
    except (OSError, TrustError) as e:
        # Falling back to the shipped root silently would re-open every rotation since: a person decides.
        raise TrustError(f"{path} is damaged ({e}); restore it from a backup, or delete it to fall "
                         f"back to the shipped root v{shipped.version} and apply root updates again") from e
    if shipped.version > stored.version:  # a newer pennello carries a newer root
        return TrustedRoot(shipped, shipped_raw, "shipped", _load_retired(paths))
    return TrustedRoot(stored, raw, "updated", _load_retired(paths))


def _anchor(raw: bytes) -> Root:
    root, signed, signatures = parse_root(raw)
    valid = _valid_signers(root.roles["root"], root.keys, signed, signatures, f"root v{root.version}")
    if len(valid) < root.roles["root"].threshold:
        raise ThresholdError(f"root v{root.version} is not signed by {root.roles['root'].threshold} of its "
                             f"own root keys")
    return root


def verify_next(trusted: Root, raw: bytes) -> Root:
    """Check that ``raw`` is a valid successor of ``trusted`` (expiry is not checked here).

    Raises:
        ManifestFormatError: not a valid root.
        RollbackError: its version is not newer than the trusted one.
        TrustError: its version skips one (only ``trusted.version + 1`` follows).
        BadSignatureError: a root key's signature does not match (changed after signing).
        ThresholdError: too few signatures by the trusted root's root keys, or by its own.
    """
    new, signed, signatures = parse_root(raw)
    label = f"root v{new.version}"
    if new.version <= trusted.version:
        raise RollbackError(f"{label} is not newer than the trusted root v{trusted.version}; "
                            f"refusing a rollback")
    if new.version != trusted.version + 1:
        raise TrustError(f"{label} does not follow the trusted root v{trusted.version}: the next root "
                         f"must be v{trusted.version + 1}; give every root in between, in order")
    old_role, new_role = trusted.roles["root"], new.roles["root"]
    by_old = _valid_signers(old_role, trusted.keys, signed, signatures, label)
    if len(by_old) < old_role.threshold:
        raise ThresholdError(f"{label} has {len(by_old)} of the {old_role.threshold} signature(s) it "
                             f"needs by root keys of the trusted root v{trusted.version}; a new root "
                             f"must be signed by the old root's keys and by its own")
    by_new = _valid_signers(new_role, new.keys, signed, signatures, label)
    if len(by_new) < new_role.threshold:
        raise ThresholdError(f"{label} has {len(by_new)} of the {new_role.threshold} signature(s) it "
                             f"needs by its own root keys; a new root must be signed by the old "
                             f"root's keys and by its own")
    return new


def _valid_signers(role: Role, keys: Mapping[str, TrustedKey], signed: dict[str, Any],
                   signatures: list[dict[str, str]], label: str) -> set[str]:
    """Distinct keys of ``role`` whose signature verifies; a bad one refuses the root outright."""
    message = canonical_json(signed)
    valid: set[str] = set()
    for signature in signatures:
        keyid = signature["keyid"]
        if keyid not in role.keyids:
            continue
        try:
            keys[keyid].public_key.verify(bytes.fromhex(signature["sig"]), message)
        except InvalidSignature as e:
            raise BadSignatureError(f"{label}: the signature by root key {keyid} ({keys[keyid].name}) "
                                    f"does not match; the root was changed after it was signed "
                                    f"(tampered or damaged)") from e
        valid.add(keyid)
    return valid


def update_root(paths: Paths, raws: list[bytes], *, now: datetime | None = None,
                max_updates: int = MAX_ROOT_UPDATES,
                applied: Callable[[Root], None] | None = None) -> list[Root]:
    """Apply a chain of root files (any order) to this machine's trusted root.

    Roots no newer than the trusted one are skipped when newer ones are given (a directory of
    every root ever published can be passed as it is). Each accepted root is persisted before
    the next one is checked, as TUF does: a bad link stops the chain but keeps what came before.

    Args:
        now: the reference time for the final root's expiry.
        applied: called with each root as it becomes the trusted one.

    Returns:
        the roots applied, oldest first (empty: the trusted root was already the newest given).

    Raises:
        TrustError: more than ``max_updates`` files; two different roots claiming one version;
            a root refused by :func:`verify_next` (the subclass says why); only older roots
            given (``RollbackError``); or the final root has expired (``ExpiredManifestError``,
            raised after it was recorded: a newer root must follow it).
    """
    now = now or datetime.now(timezone.utc)
    candidates = _by_version(raws, max_updates)
    done: list[Root] = []
    with FileLock(str(paths.state_dir / f"{ROOT_FILE}.lock")):
        trusted = load_trusted_root(paths)
        current = trusted.root
        chain = [raw for version, (_, raw) in sorted(candidates.items()) if version > current.version]
        if not chain and _is_trusted_already(current, candidates):
            return []
        retired = dict(trusted.retired)
        for raw in chain:
            current = _apply_next(paths, current, raw, retired)
            done.append(current)
            if applied is not None:
                applied(current)
    if current.is_expired(now):
        raise ExpiredManifestError(
            f"root v{current.version} expired on {format_time(current.expires)}; it is now the trusted "
            f"root (a newer one must follow it), but nothing signed by the publisher's keys is used "
            f"until `pennello keys root update` applies a newer root (or this machine's clock is fixed)")
    return done


def _by_version(raws: list[bytes], max_updates: int) -> dict[int, tuple[Root, bytes]]:
    """Each given root under its version; two different roots claiming one version refuse both."""
    if len(raws) > max_updates:
        raise TrustError(f"{len(raws)} roots given; at most {max_updates} root updates are applied at "
                         f"once (a longer chain is refused as endless data): apply them in steps")
    candidates: dict[int, tuple[Root, bytes]] = {}
    for raw in raws:
        root, _, _ = parse_root(raw)
        other = candidates.get(root.version)
        if other is not None and other[0].digest != root.digest:
            raise TrustError(f"two different roots claim version {root.version}; refusing both "
                             f"(ask the publisher which one is genuine)")
        candidates[root.version] = (root, raw)
    return candidates


def _is_trusted_already(current: Root, candidates: dict[int, tuple[Root, bytes]]) -> bool:
    """With nothing newer given: True when the newest given is the trusted root itself; an older
    root, or another root of the trusted version, is refused as a rollback."""
    newest, raw = candidates[max(candidates)]
    if newest.version == current.version and newest.digest == current.digest:
        return True
    if newest.version == current.version:
        raise RollbackError(f"root v{newest.version} differs from the trusted root v{current.version}; "
                            f"one version must name one root, refusing it")
    verify_next(current, raw)  # raises the rollback refusal
    return False


def _apply_next(paths: Paths, current: Root, raw: bytes, retired: dict[str, Retired]) -> Root:
    """Verify ``raw`` against ``current`` and make it the trusted root, recording in ``retired``
    the keys it drops (and forgetting those it brings back)."""
    new = verify_next(current, raw)
    for keyid in set(current.keys) - set(new.keys):
        retired.setdefault(keyid, Retired(new.version, current.keys[keyid].name))
    for keyid in set(new.keys) & set(retired):  # a root may bring a dropped key back
        del retired[keyid]
    _save_retired(paths, retired)  # before the root: a crash between leaves an extra entry only
    write_atomic(paths.state_dir / ROOT_FILE, raw)
    log.info("trusted root is now v%d", new.version)
    return new


def _load_retired(paths: Paths) -> dict[str, Retired]:
    path = paths.state_dir / RETIRED_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {k: Retired(int(v["version"]), str(v["name"])) for k, v in data.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise TrustError(f"{path} is damaged ({e}); restore it from a backup (it lists keys that root "
                         f"updates revoked)") from e


def _save_retired(paths: Paths, retired: Mapping[str, Retired]) -> None:
    data = {k: {"version": v.version, "name": v.name} for k, v in sorted(retired.items())}
    write_atomic(paths.state_dir / RETIRED_FILE, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def forget_retired(paths: Paths, keyid: str) -> None:
    """Stop refusing a key a root dropped (an admin's ``keys trust --unrevoke``)."""
    retired = _load_retired(paths)
    if retired.pop(keyid, None) is not None:
        _save_retired(paths, retired)
