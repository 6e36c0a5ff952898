"""A locked, signed wheelhouse: pennello's own code carried in a bundle, checked before pip runs.

``pennello bundle export --with-wheels --key KEYNAME`` fills ``wheels/`` with wheels only (no
source distributions: nothing is built, so no build script runs on the target) and writes:

* ``lock.txt``: a pip requirements file pinning every wheel, ``name==version --hash=sha256:…``;
* ``bundle.json``: a signed *bundle manifest* (the envelope of model manifests, ``_type``
  ``pennello-bundle``) listing path, sha256 and size of ``lock.txt``, every wheel,
  ``install.sh`` and ``README.txt``, signed with a local key as ``pennello manifest lock`` signs.

On the target, :func:`verify_bundle` (``pennello bundle verify DIR``, which ``install.sh`` runs
before pip) checks ``bundle.json`` with *that* machine's trust policy (the same root, keys,
thresholds and revocations as model manifests: one trust root for weights and code), then every
file it lists, and refuses files in ``wheels/`` it does not list. Only then does ``install.sh``
run ``pip install --no-index --require-hashes --only-binary=:all: -r lock.txt``, so a changed
byte in a wheel is refused twice: by this check, and by pip's own hashes.

    >>> from pennello.config import Config
    >>> from pennello.paths import get_paths
    >>> verify_bundle(get_paths(), Config(), Path("/media/usb/bundle")).signers  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pennello.config import Config
from pennello.errors import (ExpiredManifestError, FetchError, IntegrityError, ManifestFormatError,
                             TrustError, UnsignedManifestError)
from pennello.installer.keys import TrustedKey, key_id, load_private_key, sign_signed
from pennello.installer.manifest import FileEntry, dump_envelope, format_time, parse_envelope, parse_time
from pennello.files import write_atomic
from pennello.installer.store import file_sha256
from pennello.installer.trust import MAX_MANIFEST_BYTES, TrustPolicy
from pennello.paths import Paths

BUNDLE_TYPE = "pennello-bundle"
SPEC_VERSION = 1
BUNDLE_MANIFEST = "bundle.json"
LOCK_FILE = "lock.txt"
WHEELS_DIR = "wheels"
# Listed too when present: what the admin runs (install.sh hands over to the one-click installer) and reads.
SIGNED_EXTRAS = ("install.sh", "README.txt", "packaging/install.sh", "packaging/systemd/pennello.service")
VALIDITY = timedelta(days=365)  # like the catalog: an old wheelhouse is a freeze, bounded by this
LABEL = "bundle manifest"
PIP_INSTALL = ("--no-index", "--require-hashes", "--only-binary=:all:")

# name-version(-build)?-python-abi-platform.whl (PEP 427)
_WHEEL_RE = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[A-Za-z0-9_.!+]+)(-\d[^-]*)?"
                       r"-[^-]+-[^-]+-[^-]+\.whl$")


@dataclass(frozen=True)
class BundleManifest:
    """What a bundle's ``bundle.json`` signs: when, until when, and which files."""

    created: datetime
    expires: datetime
    files: tuple[FileEntry, ...]

    def to_signed(self) -> dict[str, Any]:
        return {"_type": BUNDLE_TYPE, "spec_version": SPEC_VERSION, "created": format_time(self.created),
                "expires": format_time(self.expires), "files": [f.to_dict() for f in self.files]}

    @classmethod
    def from_signed(cls, data: Any) -> "BundleManifest":
        """Raises ManifestFormatError: a member missing, unknown or of the wrong type."""
        members = {"_type", "spec_version", "created", "expires", "files"}
        if not isinstance(data, dict) or data.get("_type") != BUNDLE_TYPE:
            raise ManifestFormatError(f"not a pennello bundle manifest (_type must be {BUNDLE_TYPE!r})")
        if set(data) != members or data["spec_version"] != SPEC_VERSION:
            raise ManifestFormatError(f"a bundle manifest has exactly {sorted(members)}, spec_version "
                                      f"{SPEC_VERSION}")
        if not isinstance(data["files"], list) or not data["files"]:
            raise ManifestFormatError("bundle manifest: files must be a non-empty list")
        files = tuple(FileEntry.from_dict(f) for f in data["files"])
        if len({f.path for f in files}) != len(files):
            raise ManifestFormatError("bundle manifest lists a path twice")
        return cls(parse_time(data["created"], "created"), parse_time(data["expires"], "expires"), files)


@dataclass(frozen=True)
class VerifiedBundle:
    manifest: BundleManifest
    signers: tuple[TrustedKey, ...]


def wheel_requirement(filename: str) -> tuple[str, str]:
    """(normalised project name, version) of a wheel file name.

        >>> wheel_requirement("Pillow-10.4.0-cp311-cp311-manylinux_2_28_x86_64.whl")
        ('pillow', '10.4.0')

    Raises:
        FetchError: not a wheel file name.
    """
    match = _WHEEL_RE.match(filename)
    if not match:
        raise FetchError(f"{filename} is not a wheel; bundles carry wheels only (binary, nothing "
                         f"is built on the target)")
    return re.sub(r"[-_.]+", "-", match["name"]).lower(), match["version"]


def collect_wheels(source: Path, dest: Path) -> None:
    """Copy the wheels of a wheelhouse the exporter built (``--wheels-from DIR``) into ``dest``.

    Raises:
        FetchError: ``source`` holds no wheels, or something else than wheels (an sdist).
    """
    files = sorted(p for p in source.iterdir() if not p.name.startswith("."))
    for path in files:
        if not path.is_file():
            raise FetchError(f"{path} is not a file; --wheels-from takes a directory of wheels")
        wheel_requirement(path.name)
    if not files:
        raise FetchError(f"{source} holds no wheels")
    dest.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copyfile(path, dest / path.name)


def write_lock(directory: Path) -> Path:
    """Write ``directory/lock.txt``: every wheel in ``wheels/`` pinned by version and sha256.

    Several wheels of one version (other platforms) share a line; two versions of one project
    are refused, since pip would install only one of them.

    Raises:
        FetchError: a file in ``wheels/`` is not a wheel, or a project comes in two versions.
    """
    hashes: dict[tuple[str, str], list[str]] = defaultdict(list)
    versions: dict[str, str] = {}
    for wheel in sorted((directory / WHEELS_DIR).iterdir()):
        name, version = wheel_requirement(wheel.name)
        if versions.setdefault(name, version) != version:
            raise FetchError(f"wheels/ holds {name} {versions[name]} and {version}; keep one version")
        hashes[(name, version)].append(file_sha256(wheel))
    lines = ["# Every wheel in wheels/, pinned by sha256 (written by `pennello bundle export`). Install with",
             "#   pip install " + " ".join(PIP_INSTALL) + " --find-links wheels -r lock.txt"]
    for (name, version), digests in sorted(hashes.items()):
        lines.append(f"{name}=={version} \\")
        lines += [f"    --hash=sha256:{d}" + (" \\" if i < len(digests) - 1 else "")
                  for i, d in enumerate(sorted(digests))]
    path = directory / LOCK_FILE
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def signing_key(paths: Paths, config: Config, key_name: str) -> TrustedKey:
    """The trusted key ``key_name`` stands for, checked before anything is downloaded.

    Raises:
        TrustError: no such private key, or its public key is not trusted here (what this
            machine would not accept, no other machine should be asked to).
    """
    private_key = load_private_key(key_name, paths)
    keyid = key_id(private_key.public_key())
    policy = TrustPolicy.load(paths, config.trust)
    if policy.public_key_pem(keyid) is None:
        raise TrustError(f"key {key_name!r} ({keyid}) is not trusted here; sign bundles with a key this "
                         f"machine trusts (`pennello keys generate NAME` makes one)")
    return next(k for k in policy.keys() if k.keyid == keyid)


def sign_bundle(paths: Paths, config: Config, directory: Path, key_name: str,
                now: datetime | None = None) -> Path:
    """Write ``directory/bundle.json``: lock.txt, every wheel, install.sh and README.txt, signed.

    Raises:
        TrustError: the key is unknown, or the result would not verify here.
    """
    now = (now or datetime.now(timezone.utc)).replace(microsecond=0)
    paths_listed = [LOCK_FILE] + sorted(f"{WHEELS_DIR}/{p.name}" for p in (directory / WHEELS_DIR).iterdir())
    paths_listed += [name for name in SIGNED_EXTRAS if (directory / name).is_file()]
    files = tuple(FileEntry(p, file_sha256(directory / p), (directory / p).stat().st_size) for p in paths_listed)
    signed = BundleManifest(now, now + VALIDITY, files).to_signed()
    raw = dump_envelope(signed, [sign_signed(signed, load_private_key(key_name, paths))])
    path = directory / BUNDLE_MANIFEST
    write_atomic(path, raw)
    verify_bundle(paths, config, directory, now=now)  # what this machine would refuse, none other should get
    return path


def verify_bundle(paths: Paths, config: Config, directory: Path, now: datetime | None = None) -> VerifiedBundle:
    """Check a bundle's ``bundle.json`` with the local trust policy, then every file it lists.

    Raises:
        FetchError: no ``bundle.json`` (no signed wheelhouse in this bundle).
        TrustError: the bundle manifest is malformed, unsigned, not signed by enough trusted
            keys, or expired (the subclass says which; the same rules as model manifests).
        IntegrityError: a listed file is missing, is a link or special file, or differs from
            its entry; or ``wheels/`` holds a file the manifest does not list.
    """
    now = now or datetime.now(timezone.utc)
    path = directory / BUNDLE_MANIFEST
    try:
        if path.is_symlink():
            raise IntegrityError(f"{path} is a symbolic link; refused")
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise FetchError(f"{directory} has no {BUNDLE_MANIFEST}: its wheels are not signed (export with "
                         f"`pennello bundle export --with-wheels --key KEYNAME`)") from e
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestFormatError(f"{BUNDLE_MANIFEST} is {len(raw)} bytes, more than {MAX_MANIFEST_BYTES}")
    signed, signatures = parse_envelope(raw, LABEL)
    manifest = BundleManifest.from_signed(signed)
    if not signatures:
        raise UnsignedManifestError(f"{LABEL} is not signed; nothing in this bundle's wheels/ can be trusted")
    signers = TrustPolicy.load(paths, config.trust).check_signatures(LABEL, signed, signatures, now)
    if manifest.expires <= now:
        raise ExpiredManifestError(f"{LABEL} expired on {format_time(manifest.expires)}; export a fresh "
                                   f"bundle or check this machine's clock")
    listed = {f.path for f in manifest.files}
    if LOCK_FILE not in listed:
        raise IntegrityError(f"{LABEL} does not list {LOCK_FILE}; refused")
    wheels = directory / WHEELS_DIR
    extra = sorted(f"{WHEELS_DIR}/{p.name}" for p in wheels.iterdir()) if wheels.is_dir() else []
    extra = [p for p in extra if p not in listed]
    if extra:
        raise IntegrityError(f"{extra[0]} is not listed in the signed {BUNDLE_MANIFEST}; refused (a wheel "
                             f"nobody signed)")
    for entry in manifest.files:
        problem = _check(directory, entry)
        if problem:
            raise IntegrityError(f"{entry.path}: {problem}; the bundle changed after it was signed, "
                                 f"nothing was installed")
    return VerifiedBundle(manifest, signers)


def _check(directory: Path, entry: FileEntry) -> str | None:
    """None if ``directory/entry.path`` is a regular file (no link on the way) with exactly its bytes."""
    current = directory
    for part in entry.path.split("/"):
        current = current / part
        if current.is_symlink():
            return "is a symbolic link"
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(current, flags)
    except FileNotFoundError:
        return "missing"
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file"
        if info.st_size != entry.size:
            return f"{info.st_size} bytes, {BUNDLE_MANIFEST} says {entry.size}"
        os.set_blocking(f.fileno(), True)
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if digest != entry.sha256:
        return f"sha256 {digest}, {BUNDLE_MANIFEST} says {entry.sha256}"
    return None
