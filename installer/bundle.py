"""Air-gapped bundles: installed models (and optionally pennello's wheels) in one directory.

``pennello bundle export MODEL... --out DIR`` writes::

    DIR/manifests/<name>.json      the signed envelopes, byte for byte as installed
    DIR/blobs/sha256/<ab>/<hash>   every file once, named by its sha256 (shared files stored once)
    DIR/keys/<keyid>.pub           public keys that signed those manifests (for the admin to review)
    DIR/commits/<name>.pack        for a manifest that pins a commit and lists no files: that
                                   commit's git objects, from which the hashes are derived again
    DIR/wheels/                    with --with-wheels: wheels of pennello, its dependencies and its
                                   CPU backend (OpenVINO: the target may have no CUDA GPU)
    DIR/lock.txt  DIR/bundle.json  with --with-wheels: the hash lock, and the signed list of the
                                   code files (see :mod:`pennello.installer.wheelhouse`)
    DIR/README.txt  DIR/install.sh
    DIR/packaging/                 with --with-wheels: the one-click installer install.sh hands over to

On the air-gapped machine ``pennello install --from DIR`` verifies every manifest with the
*local* trust policy: a bundle's keys are not trusted because they came with it. The admin
trusts them first (``pennello keys trust DIR/keys/<keyid>.pub``) or passes
``--trust-bundle-keys``, which trusts them and prints each key id so it can be checked against
the publisher's. Every manifest is verified before any file is read, every file is checked
before it is used, and no model changes unless all of them arrive intact. ``install.sh``
installs the wheels only after ``pennello bundle verify`` accepted them (or, on a first
install, after the lock's sha256 matched the one the admin was given): it hands over to the
one-click installer, ``DIR/packaging/install.sh --from DIR`` (written from package data, so
every install can export it), which installs in ``--require-hashes`` mode and sets up the menu
entry, start at login (asked) and the tray, as from a checkout.

    $ pennello bundle export pennello-tiny sd-turbo --out /media/usb/pennello
    $ pennello install --from /media/usb/pennello          # on the other machine
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from pennello.config import Config, TrustConfig
from pennello.errors import FetchError, StoreError, TrustError
from pennello.installer.backend_packages import CPU_EXTRA, extra_requirements
from pennello.installer.install import Installer, check_disk_space
from pennello.installer.keys import TrustedKey
from pennello.installer.manifest import MANIFEST_FILENAME, parse_envelope
from pennello.installer.ownwheel import own_wheel
from pennello.installer.store import COMMIT_PACK, InstalledModel, Store, check_file, file_sha256, remove_tree
from pennello.installer.trust import TrustPolicy
from pennello.installer.wheelhouse import (LOCK_FILE, collect_wheels, sign_bundle, signing_key,
                                           write_lock)
from pennello.paths import Paths

log = logging.getLogger(__name__)

README = """\
Pennello offline bundle
=======================

Models: {models}

This directory installs the models above on a machine without network access.
Every file is checked against its signed manifest before it is used.

1. Check the key ids in keys/ against the ones your publisher announced:
       {keyids}
   A key is never trusted because it came in a bundle: trust the ones you checked,
       pennello keys trust keys/<keyid>.pub
2. If pennello is installed, run:
       pennello install --from {dirname}
{wheels}"""

README_WHEELS = """\
3. To install or upgrade pennello itself from wheels/ (no network), run:   sh install.sh
   It checks bundle.json (signed by key {signer}) with the pennello already on this machine
   (`pennello bundle verify`), then hands over to the one-click installer in packaging/, which
   installs only the wheels lock.txt pins by sha256 (with uv where wheels/ has it, else pip),
   the models, a menu entry, the tray, and start at login if you agree (it asks). Its options
   pass through (see bash packaging/install.sh --help); PENNELLO_VENV chooses where the
   environment goes.
   First install (no pennello here yet to check the signature with): get the sha256 of
   lock.txt from whoever exported this bundle, over another channel than this medium, and run
       PENNELLO_LOCK_SHA256=<that sha256> sh install.sh
   (at export it was {lock_sha256}; a copy written here proves nothing by itself).
"""

ONE_CLICK_FILES = ("install.sh", "systemd/pennello.service")  # under packaging/ in checkouts and bundles

INSTALL_SH = """\
#!/bin/sh
# Install pennello from wheels/ (offline, every wheel pinned by sha256) and the bundled models,
# as the one-click installer does. See README.txt; options (e.g. --trust-bundle-keys, --yes) go
# to packaging/install.sh. Nothing is installed unless the bundle's code checks out first.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if [ -d "$here/wheels" ]; then
    checker=${{PENNELLO_CHECKER:-$(command -v pennello || true)}}
    if [ -n "$checker" ]; then
        # This machine's pennello and trusted keys check the signature and every file.
        "$checker" bundle verify "$here"
    elif [ -n "${{PENNELLO_LOCK_SHA256:-}}" ]; then
        # First install: the lock's sha256, given by the exporter, anchors pip's hashes.
        python3 - "$here/{lock}" "$PENNELLO_LOCK_SHA256" <<'EOF'
import hashlib, sys
digest = hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest()
if digest != sys.argv[2].strip().lower():
    sys.exit(f"error: {lock} has sha256 {{digest}}, not {{sys.argv[2]}}; refusing the bundle")
EOF
    else
        echo "error: no pennello on this machine to check the bundle's signature with; set" >&2
        echo "PENNELLO_LOCK_SHA256 to the sha256 of {lock} the exporter gave you (see README.txt)" >&2
        exit 3
    fi
    # The one-click installer (written here by the export) sets everything up: torch and pennello
    # from wheels/ by lock.txt's hashes, the models, menu entry, start at login (asked), tray.
    exec bash "$here/{oneclick}" --from "$here" "$@"
fi
pennello install --from "$here"
""".format(lock=LOCK_FILE, oneclick="packaging/install.sh")


def export_bundle(paths: Paths, config: Config, names: list[str], out: Path, with_wheels: bool = False,
                  platforms: tuple[str, ...] = (), python_version: str | None = None,
                  progress: bool = True, key_name: str | None = None,
                  wheels_from: Path | None = None, cpu_backend: bool = True) -> Path:
    """Write a bundle of installed models to ``out`` (which must not exist or be empty).

    The bundle is assembled next to ``out`` and renamed into place when complete.

    Args:
        with_wheels: also carry pennello's wheels, locked by hash and signed with ``key_name``.
        key_name: the local signing key for ``bundle.json`` (needed with wheels).
        wheels_from: take the wheels from this directory instead of downloading them.
        cpu_backend: with downloaded wheels, also the CPU backend's (:func:`download_wheels`).

    Raises:
        ModelNotFoundError: a model is not installed.
        IntegrityError: a store file no longer matches its manifest (run ``pennello verify``).
        TrustError: wheels without a signing key, or a key not trusted here.
        FetchError: the wheels could not be had (pip failed, or a file is not a wheel).
        DiskSpaceError, StoreError: ``out`` cannot take the bundle.
    """
    signer: TrustedKey | None = None
    if with_wheels or wheels_from is not None:
        if key_name is None:
            raise TrustError("a bundle with wheels must be signed: give the name of a local signing key "
                             "(`--key KEYNAME`, see `pennello keys generate`)")
        signer = signing_key(paths, config, key_name)  # before any download
    store = Store(paths)
    models = [store.get(name) for name in dict.fromkeys(names)]
    unique = {e.sha256: e for m in models for e in m.manifest.files}
    staging = _staging_dir(out, sum(e.size for e in unique.values()), names)
    try:
        keyids = _write_manifests_and_keys(paths, config, models, staging)
        _copy_blobs(store, list(unique.values()), staging, progress)
        wheels = ""
        if signer is not None and key_name is not None:
            wheels = _add_wheels(staging, signer, keyids, wheels_from, platforms, python_version, cpu_backend)
        _write_instructions(staging, models, keyids, out.name, wheels)
        if signer is not None and key_name is not None:
            sign_bundle(paths, config, staging, key_name)  # last: it lists install.sh and README.txt
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except OSError as e:  # a full or failing disk: a message, not a traceback
        remove_tree(staging)
        raise StoreError(f"writing the bundle to {out} failed ({e}); nothing was left behind") from e
    except BaseException:
        remove_tree(staging)
        raise
    log.info("exported %s to %s", ", ".join(names), out)
    return out


def _staging_dir(out: Path, size: int, names: list[str]) -> Path:
    """A fresh directory beside ``out`` to assemble the bundle in, once ``out`` is known to be free
    and its disk to have room for ``size`` bytes (so one rename publishes the finished bundle)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StoreError(f"{out} already exists and is not an empty directory; give a new directory to --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        check_disk_space(out.parent, size, f"exporting {', '.join(names)}")
        return Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial."))
    except OSError as e:
        raise StoreError(f"cannot write a bundle in {out.parent} ({e.strerror or e}); "
                         f"give --out a directory you can write to") from e


def _add_wheels(staging: Path, signer: TrustedKey, keyids: list[str], wheels_from: Path | None,
                platforms: tuple[str, ...], python_version: str | None, cpu_backend: bool) -> str:
    """Put the wheels and their hash lock in ``staging`` and the signer's public key among the
    bundle's keys (adding it to ``keyids``); returns the README's paragraph about them."""
    if wheels_from is not None:
        collect_wheels(wheels_from, staging / "wheels")
    else:
        download_wheels(staging / "wheels", platforms, python_version, cpu_backend)
    lock = write_lock(staging)
    _write_one_click(staging)
    if signer.keyid not in keyids:
        (staging / "keys" / f"{signer.keyid}.pub").write_bytes(signer.pem())
        keyids.append(signer.keyid)
    return README_WHEELS.format(signer=signer.keyid, lock_sha256=file_sha256(lock))


def _write_one_click(staging: Path) -> None:
    """The one-click installer and its systemd unit, as ``packaging/`` in the bundle: install.sh
    hands over to it (package data, so any install of pennello can export it)."""
    source = importlib.resources.files("pennello.installer") / "oneclick"
    for name in ONE_CLICK_FILES:
        dest = staging / "packaging" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(source.joinpath(*name.split("/")).read_bytes())
    os.chmod(staging / "packaging" / "install.sh", 0o755)


def _write_instructions(staging: Path, models: list[InstalledModel], keyids: list[str], dirname: str,
                        wheels: str) -> None:
    """README.txt for the admin on the other side, and the install.sh it describes."""
    (staging / "README.txt").write_text(README.format(
        models=", ".join(f"{m.name} v{m.version}" for m in models),
        keyids="\n       ".join(keyids), dirname=dirname, wheels=wheels), encoding="utf-8")
    (staging / "install.sh").write_text(INSTALL_SH, encoding="utf-8")
    os.chmod(staging / "install.sh", 0o755)


def _write_manifests_and_keys(paths: Paths, config: Config, models: list[InstalledModel],
                              staging: Path) -> list[str]:
    policy = TrustPolicy.load(paths, config.trust)
    (staging / "manifests").mkdir()
    (staging / "keys").mkdir()
    keyids: list[str] = []
    for model in models:
        raw = (model.path / MANIFEST_FILENAME).read_bytes()
        (staging / "manifests" / f"{model.name}.json").write_bytes(raw)
        if (model.path / COMMIT_PACK).is_file():
            (staging / "commits").mkdir(exist_ok=True)
            shutil.copyfile(model.path / COMMIT_PACK, staging / "commits" / f"{model.name}.pack")
        for signature in parse_envelope(raw)[1]:
            pem = policy.public_key_pem(signature["keyid"])
            if pem is not None and signature["keyid"] not in keyids:
                (staging / "keys" / f"{signature['keyid']}.pub").write_bytes(pem)
                keyids.append(signature["keyid"])
    return keyids


def _copy_blobs(store: Store, entries: list, staging: Path, progress: bool) -> None:
    with tqdm(total=sum(e.size for e in entries), unit="B", unit_scale=True, desc="export",
              disable=None if progress else True) as bar:
        for entry in entries:
            dest = staging / store.blob_path(entry.sha256).relative_to(store.root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(store.blob_path(entry.sha256), dest)
            # Re-read what was written: a bundle travels far from the machine that could fix it.
            problem = check_file(dest, entry)
            if problem:
                raise StoreError(f"exported copy of {entry.path} is wrong ({problem}); "
                                 f"run `pennello verify` and try again")
            bar.update(entry.size)


def download_wheels(dest: Path, platforms: tuple[str, ...], python_version: str | None,
                    cpu_backend: bool = True) -> None:
    """Fill ``dest`` with a wheel of pennello (:mod:`.ownwheel`), wheels of all its dependencies
    and of its CPU backend (:mod:`.backend_packages`) and, where the index has one, uv's (downloaded: needs the package index, or pip's
    ``--find-links`` configuration).

    Raises:
        FetchError: pip failed (its last output lines are in the message).
    """
    dest.mkdir(parents=True, exist_ok=True)
    target = [arg for platform in platforms for arg in ("--platform", platform)]
    if python_version:
        target += ["--python-version", python_version]
    target += ["--only-binary=:all:"]  # wheels only: nothing is built (no setup.py runs) on the target
    requirements = [r for r in importlib.metadata.requires("pennello") or [] if "extra ==" not in r]
    # The CPU backend too, unless left out: an air-gapped office machine is the likeliest to have no
    # CUDA GPU, and the exporting machine cannot tell what the target has (unused where a GPU serves).
    if cpu_backend:
        requirements += extra_requirements(CPU_EXTRA)
    own_wheel(dest)  # pennello is on no index: its wheel is made from the pennello running here
    _pip(["download", "--dest", str(dest), *target, *requirements])
    # uv installs the bundle several times faster than pip (install.sh uses it when lock.txt pins
    # it); a bundle without it still installs, with pip, so an index lacking uv is no failure.
    try:
        _pip(["download", "--dest", str(dest), "--no-deps", *target, "uv"])
    except FetchError as e:
        log.warning("this bundle carries no uv, so it installs with pip (slower): %s", e)


def _pip(args: list[str]) -> None:
    if importlib.util.find_spec("pip") is None:
        # The one-click installer makes its environment without pip when uv installs the packages;
        # `pip download` has no uv counterpart, so Python's own pip is added (ensurepip: no network).
        added = subprocess.run([sys.executable, "-m", "ensurepip", "--default-pip"], capture_output=True, text=True)
        if added.returncode:
            raise FetchError(f"this environment ({sys.prefix}) has no pip, which exporting wheels needs, and "
                             f"ensurepip could not add it: {(added.stderr or added.stdout).strip()[-300:]}")
    result = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if result.returncode:
        tail = "\n".join((result.stderr or result.stdout).splitlines()[-5:])
        raise FetchError(f"pip {args[0]} failed (exit {result.returncode}):\n{tail}")


def trust_bundle_keys(paths: Paths, directory: Path) -> list[str]:
    """Trust every ``keys/*.pub`` of a bundle; returns their key ids so the admin can check them.

    Raises:
        FetchError: the bundle has no keys/ directory with public keys.
        TrustError, RevokedKeyError: a file is not an Ed25519 public key, or one was revoked here.
    """
    pubs = sorted((directory / "keys").glob("*.pub"))
    if not pubs:
        raise FetchError(f"{directory} has no keys/*.pub to trust")
    policy = TrustPolicy.load(paths, TrustConfig())  # the threshold plays no part in trusting keys
    return [policy.trust(pub.read_bytes(), pub.name.removesuffix(".pub")).keyid for pub in pubs]


def import_bundle(paths: Paths, config: Config, directory: Path, progress: bool = True,
                  names: list[str] | None = None) -> list[InstalledModel]:
    """Install every model of a bundle (or of a directory with ``manifests/`` and files).

    Every manifest is verified by the local trust policy before any file is read.

    Args:
        names: install only these models of the bundle (default: all of them).

    Raises:
        FetchError: not a bundle, a file is missing from it, or it lacks a model in ``names``.
        TrustError: a manifest is refused by the local trust policy.
        IntegrityError: a file does not match its manifest; nothing is installed.
    """
    manifests = sorted((directory / "manifests").glob("*.json"))
    if not manifests:
        raise FetchError(f"{directory} has no manifests/*.json; is it a pennello bundle?")
    if names:
        missing = [n for n in names if n not in {m.stem for m in manifests}]
        if missing:
            raise FetchError(f"{directory} has no model {', '.join(map(repr, missing))}; it holds "
                             f"{', '.join(m.stem for m in manifests)}")
        manifests = [m for m in manifests if m.stem in names]
    installer = Installer(paths, config, progress=progress)
    verified = [installer.verify(m.read_bytes(), expected_name=m.stem, local_dir=directory) for m in manifests]
    return installer.install_all(verified)
