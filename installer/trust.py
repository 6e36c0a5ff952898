"""The trust policy: whether a signed manifest may be used, and the memory that stops rollbacks.

Two sets of keys are trusted: the publisher's, listed in the ``manifests`` role of the trusted
root (:mod:`pennello.installer.root`, rotated by signed root updates), and the ones the admin
added on this machine (``pennello keys trust``/``generate``). A key revoked here
(``pennello keys untrust``) or dropped by a root update counts for neither. Signatures are
accepted when both rules hold:

* **this machine's rule**: at least ``trust.threshold`` distinct trusted keys signed (keys of
  either set count);
* **the publisher's rule**: unless a key added here signed, the signers from the root's
  ``manifests`` role reach that role's threshold, and the root has not expired.

:meth:`TrustPolicy.verify` checks one envelope in a fixed order and raises the first
:class:`~pennello.errors.TrustError` subclass that applies, with a message naming the model,
its version and the reason:

1. well formed, safe paths (``ManifestFormatError``, ``UnsafePathError``);
2. signed at all (``UnsignedManifestError``);
3. no signature by a trusted key fails to verify (``BadSignatureError``: changed after signing);
4. the two rules above (``ThresholdError``), else why no signature counted: only the keys of
   an expired root (``ExpiredManifestError``), only revoked or dropped signers
   (``RevokedKeyError``) or only unknown ones (``UntrustedKeyError``);
5. ``created`` not after ``expires``, every file within ``trust.max_file_bytes``;
6. not expired at ``now`` (``ExpiredManifestError``: a freeze attack, or a stale mirror);
7. not older than the highest version seen for that model, and not a *different* manifest
   under the version seen (``RollbackError``).

:meth:`TrustPolicy.record` remembers the version and digest once the model is installed, in
``paths.state_dir/versions.json``; it never lowers a version.

    >>> from pennello.config import Config
    >>> from pennello.paths import get_paths
    >>> policy = TrustPolicy.load(get_paths(), Config().trust)  # doctest: +SKIP
    >>> manifest = policy.verify(open("manifests/pennello-tiny.json", "rb").read())  # doctest: +SKIP
    >>> policy.record(manifest)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cryptography.exceptions import InvalidSignature
from filelock import FileLock

from pennello.config import TrustConfig
from pennello.errors import (BadSignatureError, ConfigError, ExpiredManifestError, ManifestFormatError,
                             RevokedKeyError, RollbackError, ThresholdError, TrustError,
                             UnsignedManifestError, UntrustedKeyError)
from pennello.installer import keys as keyring
from pennello.installer import root as rootring
from pennello.installer.keys import KEYID_PREFIX_MIN, TrustedKey, load_public_key_pem
from pennello.installer.manifest import Manifest, canonical_json, format_time, parse_envelope
from pennello.installer.root import TrustedRoot
from pennello.files import write_atomic
from pennello.paths import Paths

log = logging.getLogger(__name__)

VERSIONS_FILE = "versions.json"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # a manifest listing ~100k files; more is endless data
_HEX_RE = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class VerifiedManifest:
    """A manifest the policy accepted, and the trusted keys whose signatures counted."""

    manifest: Manifest
    signers: tuple[TrustedKey, ...]


@dataclass(frozen=True)
class _Seen:
    version: int
    digest: str
    tofu: bool  # locked on a machine (trust on first use), not by the publisher


class TrustPolicy:
    """The trusted root, this machine's keys, revocations and versions seen, and the rules that use them.

    Build it with :meth:`load`; it reads its files once, and writes through on every change.
    """

    def __init__(self, paths: Paths, config: TrustConfig, keys: list[TrustedKey],
                 revoked: dict[str, str], root: TrustedRoot) -> None:
        """
        Args:
            keys: the keys added on this machine (origin "user").
            revoked: key ids revoked here, and when.
            root: the trusted root; its ``manifests`` keys are the publisher's.
        """
        if config.threshold < 1:
            raise ConfigError(f"trust.threshold must be at least 1, not {config.threshold}")
        self.paths = paths
        self.config = config
        self.root = root
        self._publisher = frozenset(root.root.roles["manifests"].keyids)
        self._local = frozenset(k.keyid for k in keys)
        self._keys: dict[str, TrustedKey] = {k.keyid: k for k in root.root.role_keys("manifests")}
        for key in keys:  # a key of the root stays "root" even if a user copy of it exists
            self._keys.setdefault(key.keyid, key)
        self.revoked = dict(revoked)  # keyid -> when it was revoked here
        # keyid -> the root version that dropped it (a later root listing it again wins)
        self.retired = {k: r for k, r in root.retired.items() if k not in root.root.keys}

    @classmethod
    def load(cls, paths: Paths, config: TrustConfig) -> "TrustPolicy":
        """Read the trusted root, this machine's keys and the revocations.

        Raises:
            TrustError: the root, a trusted key file or a revocation file is damaged.
            ConfigError: ``trust.threshold`` is below 1.
        """
        return cls(paths, config, keyring.user_keys(paths), keyring.load_revoked(paths),
                   rootring.load_trusted_root(paths))

    # --- keys ---------------------------------------------------------------------------------

    def keys(self) -> list[TrustedKey]:
        """Every key that may sign manifests (revoked ones too: see :meth:`is_revoked`), the root's first."""
        return sorted(self._keys.values(), key=lambda k: (k.origin != "root", k.name, k.keyid))

    def is_revoked(self, keyid: str) -> bool:
        """Revoked here, or dropped by a root update."""
        return keyid in self.revoked or keyid in self.retired

    def public_key_pem(self, keyid: str) -> bytes | None:
        """The PEM of a trusted, unrevoked key, or None."""
        key = self._keys.get(keyid)
        return key.pem() if key is not None and not self.is_revoked(keyid) else None

    def trust(self, pem: bytes, name: str, unrevoke: bool = False) -> TrustedKey:
        """Add a public key to the user's trusted keys (see :func:`keys.trust_key`).

        Raises:
            RevokedKeyError: it was revoked here or dropped by a root update, and not ``unrevoke``.
        """
        keyid = keyring.key_id(load_public_key_pem(pem))
        if keyid in self.retired and not unrevoke:
            raise RevokedKeyError(f"key {keyid} was dropped by the trusted root v{self.retired[keyid].version} "
                                  f"(revoked by its publisher); trust it again only if you are sure it is "
                                  f"safe (`pennello keys trust --unrevoke`)")
        key = keyring.trust_key(self.paths, pem, name, unrevoke=unrevoke, known=self._keys)
        if self.retired.pop(keyid, None) is not None:
            rootring.forget_retired(self.paths, keyid)
        self._keys.setdefault(key.keyid, key)
        if key.origin == "user":
            self._local |= {key.keyid}
        self.revoked.pop(key.keyid, None)
        return key

    def untrust(self, keyid: str) -> None:
        """Stop trusting a key: revoke it (persisted), and delete its file if the user added it.

        ``keyid`` may be a unique prefix of at least 8 hex digits. A full key id that is not
        known here is revoked anyway, so a key announced as compromised can be refused in advance.

        Raises:
            TrustError: the prefix matches no known key, or several.
        """
        keyid = self.resolve_keyid(keyid)
        keyring.delete_user_key_files(self.paths, keyid)
        keyring.revoke(self.paths, keyid)
        self.revoked = keyring.load_revoked(self.paths)
        key = self._keys.get(keyid)
        if key is not None and key.origin == "user":
            del self._keys[keyid]
        self._local -= {keyid}
        log.info("revoked key %s", keyid)

    def resolve_keyid(self, prefix: str) -> str:
        """The full key id a typed prefix stands for.

        Raises:
            TrustError: not hex, shorter than 8 digits, or matching no known key or several.
        """
        prefix = prefix.lower()
        if not _HEX_RE.match(prefix) or not KEYID_PREFIX_MIN <= len(prefix) <= 64:
            raise TrustError(f"{prefix!r} is not a key id: give at least {KEYID_PREFIX_MIN} of its "
                             f"hex digits (see `pennello keys list`)")
        if len(prefix) == 64:
            return prefix
        known = {*self._keys, *self.root.root.keys, *self.revoked, *self.retired}
        matches = sorted(k for k in known if k.startswith(prefix))
        if len(matches) != 1:
            found = "no known key" if not matches else f"{len(matches)} keys ({', '.join(matches)})"
            raise TrustError(f"key id prefix {prefix!r} matches {found}; see `pennello keys list`")
        return matches[0]

    # --- manifests ----------------------------------------------------------------------------

    def verify(self, raw: bytes, *, now: datetime | None = None) -> Manifest:
        """Check a manifest envelope completely; nothing is recorded.

        Raises:
            TrustError: the specific subclass of the first check that failed (see module doc).
        """
        return self.verify_detailed(raw, now=now).manifest

    def verify_and_record(self, raw: bytes, *, now: datetime | None = None) -> Manifest:
        manifest = self.verify(raw, now=now)
        self.record(manifest)
        return manifest

    def verify_detailed(self, raw: bytes, *, now: datetime | None = None) -> VerifiedManifest:
        """:meth:`verify`, also returning which trusted keys signed."""
        now = now or datetime.now(timezone.utc)  # one reference time for every check
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ManifestFormatError(f"manifest is {len(raw)} bytes, more than the "
                                      f"{MAX_MANIFEST_BYTES} a manifest may have")
        signed, signatures = parse_envelope(raw)
        manifest = Manifest.from_signed(signed)
        label = _label(manifest)
        if not signatures:
            raise UnsignedManifestError(f"{label} is not signed; only signed manifests are used "
                                        f"(a publisher signs with `pennello manifest sign`)")
        signers = self.check_signatures(label, signed, signatures, now)
        self._check_content(manifest)
        self._check_fresh(manifest, now)
        self._check_not_rolled_back(manifest)
        return VerifiedManifest(manifest, signers)

    def record(self, manifest: Manifest) -> None:
        """Remember ``manifest`` as the newest version seen of its model (never lowers it)."""
        path = self.paths.state_dir / VERSIONS_FILE
        with FileLock(f"{path}.lock"):
            seen = self._load_seen()
            old = seen.get(manifest.name)
            if old is not None and old.version > manifest.version:
                return
            seen[manifest.name] = _Seen(manifest.version, manifest.digest, manifest.trust_on_first_use)
            data = {name: vars(s) for name, s in sorted(seen.items())}
            write_atomic(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))

    def seen_version(self, name: str) -> int | None:
        """The highest version recorded for model ``name``, or None."""
        seen = self._load_seen().get(name)
        return seen.version if seen else None

    def check_signatures(self, label: str, signed: dict[str, Any], signatures: list[dict[str, str]],
                         now: datetime) -> tuple[TrustedKey, ...]:
        """The trusted keys whose signatures over ``signed`` count, if they satisfy both rules.

        Used for model manifests and for bundle manifests alike (one trust root for weights and
        code). ``label`` starts every message.

        Raises:
            BadSignatureError, ThresholdError, ExpiredManifestError, RevokedKeyError,
            UntrustedKeyError: see the module docstring.
        """
        message = canonical_json(signed)
        valid: dict[str, TrustedKey] = {}  # keyed by keyid: one key counts once
        revoked: set[str] = set()
        unknown: set[str] = set()
        for signature in signatures:
            keyid = signature["keyid"]
            key = self._keys.get(keyid)
            if self.is_revoked(keyid):
                revoked.add(keyid)
            elif key is None:
                unknown.add(keyid)
            elif _verifies(key, signature["sig"], message):
                valid[keyid] = key
            else:
                raise BadSignatureError(
                    f"{label}: the signature by trusted key {keyid} ({key.name}) does not match; "
                    f"the manifest was changed after it was signed (tampered or damaged)")
        root = self.root.root
        role = root.roles["manifests"]
        root_expired = root.is_expired(now)
        local = {k for k in valid if k in self._local}
        publisher = {k for k in valid if k in self._publisher} if not root_expired else set()
        counted = local | publisher
        if len(counted) >= self.config.threshold and (local or len(publisher) >= role.threshold):
            return tuple(valid[k] for k in sorted(counted, key=list(valid).index))
        ignored = [f"revoked {k}" for k in sorted(revoked)] + [f"untrusted {k}" for k in sorted(unknown)]
        not_counted = f" (not counted: {', '.join(ignored)})" if ignored else ""
        if not counted and valid:  # only the keys of an expired root signed
            raise ExpiredManifestError(
                f"{label} is signed by the publisher's keys of the trusted root v{root.version}, which "
                f"expired on {format_time(root.expires)}; apply a newer root (`pennello keys root "
                f"update FILE`) or check this machine's clock")
        if not counted and revoked:
            raise RevokedKeyError(self._revoked_message(label, sorted(revoked)[0]))
        if not counted:
            raise UntrustedKeyError(f"{label} is signed only by keys not trusted here: "
                                    f"{', '.join(sorted(unknown))}; if you trust its publisher, "
                                    f"confirm the key id with them and `pennello keys trust FILE.pub`")
        if len(counted) < self.config.threshold:
            raise ThresholdError(f"{label} needs {self.config.threshold} signatures from trusted keys, "
                                 f"has {len(counted)}" + not_counted)
        raise ThresholdError(f"{label} needs {role.threshold} signatures from the publisher's keys "
                             f"(the manifests role of trusted root v{root.version}), has "
                             f"{len(publisher)}" + not_counted)

    def _revoked_message(self, label: str, keyid: str) -> str:
        if keyid in self.revoked:
            return (f"{label} is signed by revoked key {keyid} ({self._name(keyid)}revoked "
                    f"{self.revoked[keyid]}); ask the publisher for one signed with a current key")
        retired = self.retired[keyid]
        return (f"{label} is signed by key {keyid} ({retired.name}), which the trusted root "
                f"v{retired.version} dropped (revoked by its publisher); ask the publisher for one "
                f"signed with a current key")

    def _check_content(self, manifest: Manifest) -> None:
        label = _label(manifest)
        if manifest.created > manifest.expires:
            raise ManifestFormatError(f"{label} expires ({format_time(manifest.expires)}) before it "
                                      f"was created ({format_time(manifest.created)})")
        limit = self.config.max_file_bytes
        for entry in manifest.files:
            if entry.size > limit:
                raise TrustError(f"{label}: file {entry.path!r} is {entry.size} bytes, over the "
                                 f"{limit}-byte limit (trust.max_file_bytes); refusing endless data")

    @staticmethod
    def _check_fresh(manifest: Manifest, now: datetime) -> None:
        if manifest.expires <= now:
            raise ExpiredManifestError(f"{_label(manifest)} expired on {format_time(manifest.expires)}; "
                                       f"ask the publisher for a fresh one or check this machine's clock")

    def _check_not_rolled_back(self, manifest: Manifest) -> None:
        seen = self._load_seen().get(manifest.name)
        if seen is None or manifest.version > seen.version:
            return
        if manifest.version < seen.version:
            raise RollbackError(f"{_label(manifest)} is older than v{seen.version} already seen; "
                                f"refusing a rollback")
        # Same version, other bytes: a publisher equivocating, or parts of two releases mixed.
        # A machine-locked (TOFU) record was never the publisher's word, so it may be replaced.
        if manifest.digest != seen.digest and not seen.tofu:
            raise RollbackError(f"{_label(manifest)} differs from the v{seen.version} already seen "
                                f"(digest {manifest.digest[:16]}… vs {seen.digest[:16]}…); one version "
                                f"must name one manifest, refusing a mix-and-match")

    def _load_seen(self) -> dict[str, _Seen]:
        path = self.paths.state_dir / VERSIONS_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return {name: _Seen(int(s["version"]), str(s["digest"]), bool(s["tofu"]))
                    for name, s in data.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            # Starting afresh would silently re-open every rollback; make a person decide.
            raise TrustError(f"{path} is damaged ({e}); restore it from a backup, or delete it to "
                             f"forget which versions were seen (re-enables rollbacks once)") from e

    def _name(self, keyid: str) -> str:
        key = self._keys.get(keyid)
        return f"{key.name}, " if key else ""


def _label(manifest: Manifest) -> str:
    return f"manifest {manifest.name!r} v{manifest.version}"


def _verifies(key: TrustedKey, sig_hex: str, message: bytes) -> bool:
    try:
        key.public_key.verify(bytes.fromhex(sig_hex), message)
    except InvalidSignature:
        return False
    return True
