"""Air-gapped bundles end to end: real files and real Ed25519 keys, carried between two homes.

``home`` is the connected machine that installs and exports; ``offline`` is a fresh pennello
home that has never seen the publisher's key. Each attack on a bundle asserts the exact message
an admin reads, and that nothing was installed. The wheelhouse tests build two tiny wheels with
``pip wheel`` (no network) and run pip and ``install.sh`` for real.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from _fixtures_installer import KEY_NAME, TINY_LABEL, make_manifest, write_files
from _fixtures_trust import RELEASE_KEYID
from pennello.config import Config
from pennello.errors import (FetchError, IntegrityError, RevokedKeyError, RollbackError, StoreError,
                             TrustError, UntrustedKeyError)
from pennello.installer import Installer, Store, TrustPolicy, ensure_embedded_default
from pennello.installer.bundle import export_bundle, import_bundle, trust_bundle_keys
from pennello.installer.ownwheel import own_wheel
from pennello.installer.wheelhouse import collect_wheels, verify_bundle
from pennello.installer.keys import load_private_key, key_id
from pennello.paths import Paths, get_paths

SHARED = b"shared tokenizer " * 200
OFFICE = {"model_index.json": b'{"office": 1}', "tokenizer/vocab.json": SHARED,
          "unet/w.bin": b"office weights " * 1000}
LAB = {"model_index.json": b'{"lab": 1}', "tokenizer/vocab.json": SHARED, "unet/w.bin": b"lab weights " * 900}


@pytest.fixture
def offline(tmp_path) -> Paths:
    """The air-gapped machine: a second, fresh pennello home."""
    return get_paths(tmp_path / "offline").ensure()


@pytest.fixture
def install_signed(home, publish, tmp_path):
    """``install_signed(name, files, version=1)``: sign with the test publisher, install in ``home``."""
    def install(name: str, files: dict[str, bytes], version: int = 1):
        source = write_files(tmp_path / f"src-{name}-v{version}", files)
        manifest = make_manifest(name, files, version)
        return Installer(home, Config(), progress=False).install_raw(publish(manifest), local_dir=source)
    return install


def _publisher_keyid(home: Paths) -> str:
    return key_id(load_private_key(KEY_NAME, home).public_key())


def _export(home: Paths, names: list[str], out):
    return export_bundle(home, Config(), names, out, progress=False)


def _import(paths: Paths, bundle, **kwargs):
    return import_bundle(paths, Config(), bundle, progress=False, **kwargs)


def _nothing_installed(paths: Paths) -> bool:
    return Store(paths).names() == [] and not (paths.state_dir / "versions.json").exists()


def test_the_embedded_model_round_trips_through_a_bundle(home, offline, tmp_path):
    installed = ensure_embedded_default(home, Config())
    bundle = _export(home, ["pennello-tiny"], tmp_path / "usb" / "bundle")

    raw = Store(home).raw_manifest("pennello-tiny")
    assert (bundle / "manifests" / "pennello-tiny.json").read_bytes() == raw
    for entry in installed.manifest.files:
        blob = bundle / "blobs" / "sha256" / entry.sha256[:2] / entry.sha256
        assert blob.read_bytes() == (installed.path / entry.path).read_bytes()
    assert sorted(p.name for p in (bundle / "keys").iterdir()) == [f"{RELEASE_KEYID}.pub"]
    readme = (bundle / "README.txt").read_text(encoding="utf-8")
    assert f"Models: {TINY_LABEL}" in readme and RELEASE_KEYID in readme
    assert "pennello install --from bundle" in readme
    script = bundle / "install.sh"
    assert script.stat().st_mode & stat.S_IXUSR
    assert 'pennello install --from "$here"' in script.read_text(encoding="utf-8")
    assert not list(bundle.parent.glob(".bundle.partial.*"))  # the staging directory became the bundle

    [model] = _import(offline, bundle)  # the release key ships trusted: no key step needed
    assert (model.name, model.version, model.digest) == ("pennello-tiny", installed.version, installed.digest)
    assert Store(offline).verify(progress=False) == []
    assert Store(offline).raw_manifest("pennello-tiny") == raw
    assert TrustPolicy.load(offline, Config().trust).seen_version("pennello-tiny") == installed.version


def test_keys_that_came_with_a_bundle_are_not_trusted_until_the_admin_says_so(home, offline, tmp_path,
                                                                              install_signed):
    ensure_embedded_default(home, Config())
    install_signed("office-model", OFFICE)
    bundle = _export(home, ["pennello-tiny", "office-model"], tmp_path / "bundle")
    publisher = _publisher_keyid(home)
    assert sorted(p.name for p in (bundle / "keys").iterdir()) == sorted([f"{RELEASE_KEYID}.pub",
                                                                          f"{publisher}.pub"])

    with pytest.raises(UntrustedKeyError) as e:
        _import(offline, bundle)
    assert str(e.value) == (f"manifest 'office-model' v1 is signed only by keys not trusted here: {publisher}; "
                            f"if you trust its publisher, confirm the key id with them and "
                            f"`pennello keys trust FILE.pub`")
    assert _nothing_installed(offline)  # not even pennello-tiny, whose key was trusted

    assert trust_bundle_keys(offline, bundle) == sorted([RELEASE_KEYID, publisher])
    assert [p.name for p in offline.trusted_keys_dir.iterdir()] == [f"{publisher}.pub"]  # shipped key not copied
    installed = _import(offline, bundle)
    assert [m.name for m in installed] == ["office-model", "pennello-tiny"]
    assert Store(offline).verify(progress=False) == []
    for path, data in OFFICE.items():
        assert (Store(offline).get("office-model").path / path).read_bytes() == data


def test_a_flipped_byte_in_a_bundle_blob_installs_nothing(home, offline, tmp_path, install_signed):
    model = install_signed("office-model", OFFICE)
    ensure_embedded_default(home, Config())
    bundle = _export(home, ["office-model", "pennello-tiny"], tmp_path / "bundle")
    entry = next(e for e in model.manifest.files if e.path == "unet/w.bin")
    blob = bundle / "blobs" / "sha256" / entry.sha256[:2] / entry.sha256
    data = bytearray(blob.read_bytes())
    data[100] ^= 0x01
    blob.write_bytes(bytes(data))
    trust_bundle_keys(offline, bundle)

    with pytest.raises(IntegrityError) as e:
        _import(offline, bundle)
    assert str(e.value) == (f"unet/w.bin: sha256 {hashlib.sha256(data).hexdigest()}, manifest says "
                            f"{entry.sha256}; the file was refused and deleted")
    assert _nothing_installed(offline)
    assert not Store(offline).blob_path(entry.sha256).exists()


def test_a_missing_blob_is_a_fetch_error_naming_it(home, offline, tmp_path, install_signed):
    model = install_signed("office-model", OFFICE)
    bundle = _export(home, ["office-model"], tmp_path / "bundle")
    entry = next(e for e in model.manifest.files if e.path == "tokenizer/vocab.json")
    (bundle / "blobs" / "sha256" / entry.sha256[:2] / entry.sha256).unlink()
    trust_bundle_keys(offline, bundle)

    with pytest.raises(FetchError) as e:
        _import(offline, bundle)
    assert str(e.value) == (f"tokenizer/vocab.json of model 'office-model' is not in {bundle} (looked for "
                            f"blobs/sha256/{entry.sha256[:2]}/{entry.sha256}, office-model/tokenizer/vocab.json, "
                            f"tokenizer/vocab.json)")
    assert _nothing_installed(offline)


def test_a_blob_replaced_by_a_symlink_is_refused(home, offline, tmp_path, install_signed):
    model = install_signed("office-model", OFFICE)
    bundle = _export(home, ["office-model"], tmp_path / "bundle")
    entry = next(e for e in model.manifest.files if e.path == "unet/w.bin")
    blob = bundle / "blobs" / "sha256" / entry.sha256[:2] / entry.sha256
    outside = tmp_path / "outside.bin"
    outside.write_bytes(blob.read_bytes())  # even the right bytes: a link could point anywhere
    blob.unlink()
    blob.symlink_to(outside)
    trust_bundle_keys(offline, bundle)

    with pytest.raises(FetchError) as e:
        _import(offline, bundle)
    assert str(e.value) == (f"{blob}: is a symbolic link; local sources must hold regular files only (refused)")
    assert _nothing_installed(offline)


def test_export_refuses_a_directory_that_is_not_empty_or_not_a_directory(home, tmp_path):
    ensure_embedded_default(home, Config())
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(StoreError) as e:
        _export(home, ["pennello-tiny"], out)
    assert str(e.value) == f"{out} already exists and is not an empty directory; give a new directory to --out"
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    with pytest.raises(StoreError, match="already exists and is not an empty directory"):
        _export(home, ["pennello-tiny"], a_file)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left

    (out / "keep.txt").unlink()  # an empty directory is fine
    assert _export(home, ["pennello-tiny"], out) == out and (out / "manifests").is_dir()


def test_export_of_a_model_that_is_not_installed_is_refused(home, tmp_path):
    with pytest.raises(StoreError, match=r"^model 'nope' is not installed \(installed: none\)"):
        _export(home, ["nope"], tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_files_shared_by_two_models_travel_once(home, offline, tmp_path, install_signed):
    office = install_signed("office-model", OFFICE)
    lab = install_signed("lab-model", LAB)
    bundle = _export(home, ["office-model", "lab-model"], tmp_path / "bundle")
    blobs = sorted(p.name for p in (bundle / "blobs" / "sha256").glob("*/*"))
    unique = {e.sha256 for m in (office, lab) for e in m.manifest.files}
    assert blobs == sorted(unique) and len(blobs) == 5  # 6 files, the tokenizer once

    trust_bundle_keys(offline, bundle)
    _import(offline, bundle)
    store = Store(offline)
    shared = store.blob_path(office.manifest.files[1].sha256)
    assert office.manifest.files[1].path == "tokenizer/vocab.json"
    assert shared.stat().st_nlink == 3  # one blob, a link in each model
    assert len(list(store.blobs_dir.glob("*/*"))) == 5
    assert store.verify(progress=False) == []


def test_a_bundle_can_install_only_the_models_asked_for(home, offline, tmp_path, install_signed):
    install_signed("office-model", OFFICE)
    install_signed("lab-model", LAB)
    bundle = _export(home, ["office-model", "lab-model"], tmp_path / "bundle")
    trust_bundle_keys(offline, bundle)
    with pytest.raises(FetchError) as e:
        _import(offline, bundle, names=["sd-turbo"])
    assert str(e.value) == f"{bundle} has no model 'sd-turbo'; it holds lab-model, office-model"
    assert [m.name for m in _import(offline, bundle, names=["lab-model"])] == ["lab-model"]
    assert Store(offline).names() == ["lab-model"]


def test_a_key_revoked_here_stays_revoked_when_a_bundle_brings_it_back(home, offline, tmp_path, install_signed):
    install_signed("office-model", OFFICE)
    bundle = _export(home, ["office-model"], tmp_path / "bundle")
    publisher = _publisher_keyid(home)
    TrustPolicy.load(offline, Config().trust).untrust(publisher)  # announced as compromised
    revoked_at = json.loads((offline.state_dir / "revoked-keys.json").read_text())[publisher]

    with pytest.raises(RevokedKeyError) as e:
        trust_bundle_keys(offline, bundle)
    assert str(e.value) == (f"key {publisher} was revoked on {revoked_at}; trust it again only if you are "
                            f"sure it is safe (`pennello keys trust --unrevoke`)")
    with pytest.raises(RevokedKeyError, match=f"^manifest 'office-model' v1 is signed by revoked key {publisher} "):
        _import(offline, bundle)
    assert _nothing_installed(offline)


def test_an_older_bundle_is_refused_as_a_rollback(home, offline, tmp_path, install_signed):
    install_signed("office-model", OFFICE)
    old = _export(home, ["office-model"], tmp_path / "old")
    install_signed("office-model", {**OFFICE, "unet/w.bin": b"better weights " * 1000}, version=2)
    new = _export(home, ["office-model"], tmp_path / "new")
    trust_bundle_keys(offline, new)
    assert _import(offline, new)[0].version == 2

    with pytest.raises(RollbackError) as e:
        _import(offline, old)
    assert str(e.value) == "manifest 'office-model' v1 is older than v2 already seen; refusing a rollback"
    assert Store(offline).get("office-model").version == 2


def test_a_manifest_renamed_to_another_model_is_refused(home, offline, tmp_path, install_signed):
    install_signed("office-model", OFFICE)
    bundle = _export(home, ["office-model"], tmp_path / "bundle")
    os.replace(bundle / "manifests" / "office-model.json", bundle / "manifests" / "pennello-tiny.json")
    trust_bundle_keys(offline, bundle)
    with pytest.raises(TrustError) as e:
        _import(offline, bundle)
    assert str(e.value) == "manifest is for model 'office-model', not 'pennello-tiny'; refused"
    assert _nothing_installed(offline)


def test_what_is_not_a_bundle_is_refused(offline, tmp_path):
    with pytest.raises(FetchError) as e:
        _import(offline, tmp_path)
    assert str(e.value) == f"{tmp_path} has no manifests/*.json; is it a pennello bundle?"
    with pytest.raises(FetchError) as e:
        trust_bundle_keys(offline, tmp_path)
    assert str(e.value) == f"{tmp_path} has no keys/*.pub to trust"


# --- the locked, signed wheelhouse ------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_wheels(tmp_path_factory) -> Path:
    """Two real wheels built here by ``pip wheel`` from tiny local projects (tinya needs tinyb)."""
    root = tmp_path_factory.mktemp("wheel-projects")
    for name, deps in (("tinya", ["tinyb==1.0"]), ("tinyb", [])):
        project = root / name
        project.mkdir()
        (project / "pyproject.toml").write_text(
            '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
            f'[project]\nname = "{name}"\nversion = "1.0"\ndependencies = {json.dumps(deps)}\n'
            f'[tool.setuptools]\npy-modules = ["{name}"]\n')
        (project / f"{name}.py").write_text(f"NAME = {name!r}\n")
    out = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(out), str(root / "tinya"), str(root / "tinyb")], check=True, capture_output=True)
    return out


@pytest.fixture
def wheel_bundle(home, offline, tmp_path, install_signed, tiny_wheels):
    """A bundle of one model and the tiny wheelhouse, signed by the test publisher; the offline
    machine trusts that publisher (the admin checked its key id)."""
    install_signed("office-model", OFFICE)
    bundle = export_bundle(home, Config(), ["office-model"], tmp_path / "bundle", with_wheels=True,
                           progress=False, key_name=KEY_NAME, wheels_from=tiny_wheels)
    TrustPolicy.load(offline, Config().trust).trust((bundle / "keys" / f"{_publisher_keyid(home)}.pub").read_bytes(),
                                                    "publisher")
    return bundle


def _flip(path: Path, at: int = 200) -> bytes:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    return bytes(data)


def _pip_install_from(bundle: Path, target: Path) -> subprocess.CompletedProcess:
    """What install.sh runs, into a --target directory instead of a fresh environment."""
    return subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--require-hashes",
                           "--only-binary=:all:", "--find-links", str(bundle / "wheels"), "-r",
                           str(bundle / "lock.txt"), "--target", str(target), "--no-warn-script-location"],
                          capture_output=True, text=True, timeout=300)


def test_wheels_are_locked_by_hash_and_listed_in_a_signed_bundle_manifest(home, offline, wheel_bundle, tiny_wheels):
    wheels = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tiny_wheels.iterdir()}
    assert sorted(p.name for p in (wheel_bundle / "wheels").iterdir()) == sorted(wheels)
    a, b = sorted(wheels)
    assert (wheel_bundle / "lock.txt").read_text().splitlines()[2:] == [
        "tinya==1.0 \\", f"    --hash=sha256:{wheels[a]}", "tinyb==1.0 \\", f"    --hash=sha256:{wheels[b]}"]

    envelope = json.loads((wheel_bundle / "bundle.json").read_bytes())
    assert [f["path"] for f in envelope["signed"]["files"]] == ["lock.txt", f"wheels/{a}", f"wheels/{b}",
                                                                "install.sh", "README.txt", "packaging/install.sh",
                                                                "packaging/systemd/pennello.service"]
    assert [s["keyid"] for s in envelope["signatures"]] == [_publisher_keyid(home)]
    readme = (wheel_bundle / "README.txt").read_text()
    assert f"at export it was {hashlib.sha256((wheel_bundle / 'lock.txt').read_bytes()).hexdigest()}" in readme

    verified = verify_bundle(offline, Config(), wheel_bundle)  # the target's own trusted keys
    assert [k.keyid for k in verified.signers] == [_publisher_keyid(home)]
    installed = _pip_install_from(wheel_bundle, offline.cache_dir / "site")
    assert installed.returncode == 0, installed.stderr
    assert sorted(p.name for p in (offline.cache_dir / "site").glob("tiny*.py")) == ["tinya.py", "tinyb.py"]


def test_a_flipped_byte_in_a_wheel_is_refused_by_our_check_and_by_pip(offline, wheel_bundle):
    wheel = next((wheel_bundle / "wheels").glob("tinyb-*.whl"))
    listed = next(f for f in json.loads((wheel_bundle / "bundle.json").read_bytes())["signed"]["files"]
                  if f["path"] == f"wheels/{wheel.name}")
    flipped = _flip(wheel)

    with pytest.raises(IntegrityError) as e:
        verify_bundle(offline, Config(), wheel_bundle)
    assert str(e.value) == (f"wheels/{wheel.name}: sha256 {hashlib.sha256(flipped).hexdigest()}, bundle.json says "
                            f"{listed['sha256']}; the bundle changed after it was signed, nothing was installed")

    refused = _pip_install_from(wheel_bundle, offline.cache_dir / "site")
    assert refused.returncode != 0
    assert "THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE" in refused.stderr
    assert f"tinyb==1.0 from {(wheel_bundle / 'wheels' / wheel.name).as_uri()}" in refused.stderr
    assert not list((offline.cache_dir / "site").glob("tiny*"))  # pip checks every hash before installing


def test_a_changed_lock_or_an_unlisted_wheel_is_refused(offline, wheel_bundle, tiny_wheels, tmp_path):
    lock = wheel_bundle / "lock.txt"
    original = lock.read_bytes()
    lock.write_bytes(original.replace(b"tinyb==1.0", b"tinyb==1.1"))  # same size, other bytes
    with pytest.raises(IntegrityError, match=r"^lock.txt: sha256 [0-9a-f]{64}, bundle.json says [0-9a-f]{64}; "
                                             r"the bundle changed after it was signed, nothing was installed$"):
        verify_bundle(offline, Config(), wheel_bundle)
    lock.write_bytes(original)

    extra = wheel_bundle / "wheels" / "evil-1.0-py3-none-any.whl"
    extra.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    with pytest.raises(IntegrityError) as e:
        verify_bundle(offline, Config(), wheel_bundle)
    assert str(e.value) == ("wheels/evil-1.0-py3-none-any.whl is not listed in the signed bundle.json; refused "
                            "(a wheel nobody signed)")


def test_a_bundle_signed_by_a_key_the_target_does_not_trust_is_refused(home, wheel_bundle, tmp_path):
    fresh = get_paths(tmp_path / "fresh").ensure()
    with pytest.raises(UntrustedKeyError) as e:
        verify_bundle(fresh, Config(), wheel_bundle)
    assert str(e.value) == (f"bundle manifest is signed only by keys not trusted here: {_publisher_keyid(home)}; "
                            f"if you trust its publisher, confirm the key id with them and "
                            f"`pennello keys trust FILE.pub`")


def test_wheels_need_a_trusted_signing_key_and_nothing_but_wheels(home, tmp_path, install_signed, tiny_wheels):
    install_signed("office-model", OFFICE)
    with pytest.raises(TrustError) as e:
        export_bundle(home, Config(), ["office-model"], tmp_path / "b", with_wheels=True, progress=False)
    assert str(e.value) == ("a bundle with wheels must be signed: give the name of a local signing key "
                            "(`--key KEYNAME`, see `pennello keys generate`)")
    TrustPolicy.load(home, Config().trust).untrust(_publisher_keyid(home))
    with pytest.raises(TrustError, match=f"^key {KEY_NAME!r} \\({_publisher_keyid(home)}\\) is not trusted here; "):
        export_bundle(home, Config(), ["office-model"], tmp_path / "b", progress=False, key_name=KEY_NAME,
                      wheels_from=tiny_wheels)
    sdists = tmp_path / "sdists"
    sdists.mkdir()
    (sdists / "tinya-1.0.tar.gz").write_bytes(b"source")
    with pytest.raises(FetchError) as e:
        collect_wheels(sdists, tmp_path / "w")
    assert str(e.value) == ("tinya-1.0.tar.gz is not a wheel; bundles carry wheels only (binary, nothing is "
                            "built on the target)")
    assert not (tmp_path / "b").exists()


def _sh(bundle: Path, offline: Paths, venv: Path, path: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(bundle / "install.sh"), *args], capture_output=True, text=True, timeout=900,
                          env={"HOME": str(venv.parent), "PATH": path, "PENNELLO_HOME": str(offline.config_dir.parent),
                               "PENNELLO_VENV": str(venv), **env})


def test_install_sh_checks_the_wheels_before_pip_and_installs_nothing_when_one_changed(offline, wheel_bundle, tmp_path):
    venv = tmp_path / "venv"
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # the pennello already on this machine
    wheel = next((wheel_bundle / "wheels").glob("tinya-*.whl"))
    intact = wheel.read_bytes()
    _flip(wheel)
    refused = _sh(wheel_bundle, offline, venv, path)
    assert refused.returncode == 4, refused.stderr
    assert refused.stderr.startswith(f"error: wheels/{wheel.name}: sha256 ")
    assert not venv.exists() and _nothing_installed(offline)

    # Intact, it hands over to the one-click installer the bundle carries, which sets up the
    # environment and stops at PyTorch: this wheelhouse has none (the full install of a bundle is
    # test_bundle_with_wheels_from_an_editable_install_installs_offline_and_generates).
    wheel.write_bytes(intact)
    done = _sh(wheel_bundle, offline, venv, path, "--python", sys.executable)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"from the bundle {wheel_bundle}, without network" in done.stdout
    assert f"{wheel_bundle}/wheels holds no torch wheel" in done.stderr and (venv / "bin" / "python").exists()


def test_install_sh_on_a_first_install_needs_the_locks_sha256_from_the_exporter(offline, wheel_bundle, tmp_path):
    bin_dir = tmp_path / "bin"  # python3, and no pennello anywhere on PATH
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    path, venv = f"{bin_dir}:/usr/bin:/bin", tmp_path / "venv"
    missing = _sh(wheel_bundle, offline, venv, path)
    assert missing.returncode == 3
    assert missing.stderr == ("error: no pennello on this machine to check the bundle's signature with; set\n"
                              "PENNELLO_LOCK_SHA256 to the sha256 of lock.txt the exporter gave you (see README.txt)\n")
    actual = hashlib.sha256((wheel_bundle / "lock.txt").read_bytes()).hexdigest()
    wrong = _sh(wheel_bundle, offline, venv, path, PENNELLO_LOCK_SHA256="0" * 64)
    assert wrong.returncode == 1
    assert wrong.stderr == f"error: lock.txt has sha256 {actual}, not {'0' * 64}; refusing the bundle\n"
    lock = wheel_bundle / "lock.txt"  # changed on the way, with the sha256 the exporter gave
    lock.write_bytes(lock.read_bytes().replace(b"tinyb==1.0", b"tinyb==1.1"))
    altered = _sh(wheel_bundle, offline, venv, path, PENNELLO_LOCK_SHA256=actual)
    assert altered.returncode == 1 and altered.stderr.endswith(f"not {actual}; refusing the bundle\n")
    assert not venv.exists() and _nothing_installed(offline)


# --- pennello's own wheel, from any install ------------------------------------------------------

def _venv_seeing_these_dependencies(root: Path) -> Path:
    """A fresh environment with pennello's dependencies importable from this one's site-packages
    (a .pth line: a plain directory, so this environment's editable pennello is not seen there)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    site = next(root.glob("lib/python*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root / "bin" / "python"


def _pip_install_wheel(python: Path, wheel: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, timeout=300, capture_output=True)


def test_own_wheel_from_an_editable_install_and_again_from_a_wheel_install(tmp_path):
    # A wheel install used to ask the package index for pennello itself, where it is not.
    built = own_wheel(tmp_path / "from-checkout")  # this environment: an editable install
    assert built.name == f"pennello-{importlib.metadata.version('pennello')}-py3-none-any.whl"
    python = _venv_seeing_these_dependencies(tmp_path / "installed")
    _pip_install_wheel(python, built)
    repacked_dir = tmp_path / "from-install"
    result = subprocess.run([str(python), "-c", "import sys; from pathlib import Path; from pennello.installer."
                             "ownwheel import own_wheel; print(own_wheel(Path(sys.argv[1])))", str(repacked_dir)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    repacked = Path(result.stdout.strip())
    assert repacked.name == built.name
    with zipfile.ZipFile(built) as a, zipfile.ZipFile(repacked) as b:
        same = [n for n in a.namelist() if not n.endswith("/RECORD")]
        assert sorted(same) == sorted(n for n in b.namelist() if not n.endswith("/RECORD"))
        assert all(a.read(n) == b.read(n) for n in same)
    again = _venv_seeing_these_dependencies(tmp_path / "again")
    _pip_install_wheel(again, repacked)  # pip checks the RECORD we wrote
    version = subprocess.run([str(again.parent / "pennello"), "--version"], capture_output=True, text=True,
                             timeout=120, cwd=tmp_path)
    assert version.returncode == 0 and importlib.metadata.version("pennello") in version.stdout


def test_exporting_wheels_from_an_environment_uv_made_without_pip_adds_pythons_own_pip(tmp_path):
    """The one-click installer makes its environment without pip when uv installs; `pip download`,
    which exporting wheels runs, used to fail there with "No module named pip"."""
    farm = tmp_path / "deps"  # this environment's packages but pip (and pennello: installed below)
    farm.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(("pip", "pennello", "__editable__")) and not entry.name.endswith(".pth"):
            (farm / entry.name).symlink_to(entry)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True, timeout=120)
    python = tmp_path / "venv" / "bin" / "python"
    (next((tmp_path / "venv").glob("lib/python*/site-packages")) / "deps.pth").write_text(f"{farm}\n")
    _pip_install_wheel(python, own_wheel(tmp_path / "built"))
    script = "from pennello.installer.bundle import _pip; _pip(['--version'])"
    result = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "venv" / "bin" / "pip").exists()


def test_a_file_changed_since_install_is_not_repacked(tmp_path):
    python = _venv_seeing_these_dependencies(tmp_path / "installed")
    _pip_install_wheel(python, own_wheel(tmp_path / "built"))
    site = next((tmp_path / "installed").glob("lib/python*/site-packages"))
    (site / "pennello" / "launch.py").write_text("print('changed')\n")
    result = subprocess.run([str(python), "-c", "import sys; from pathlib import Path; from pennello.installer."
                             "ownwheel import own_wheel; own_wheel(Path(sys.argv[1]))", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode != 0 and "pennello/launch.py of the installed pennello changed" in result.stderr
    assert list((tmp_path / "out").glob("*.whl")) == []


def test_a_checkouts_egg_info_in_the_current_directory_is_not_taken_for_the_install(tmp_path):
    """`pip install -e .` leaves pennello.egg-info in the checkout; started from there, Python finds
    it first, and exporting used to repack that (no files, so a StopIteration) instead of pennello."""
    egg = tmp_path / "pennello.egg-info"
    egg.mkdir()
    (egg / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: pennello\nVersion: 0.0.1\n")
    script = ("import sys; from pathlib import Path; from pennello.installer.ownwheel import own_wheel; "
              "print(own_wheel(Path(sys.argv[1])).name)")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "out")], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("pennello-") and "0.0.1" not in result.stdout


def test_bundle_with_wheels_from_an_editable_install_installs_offline_and_generates(home, offline, tmp_path,
                                                                                   dependency_wheels):
    ensure_embedded_default(home, Config())
    subprocess.run([sys.executable, "-m", "pennello", "keys", "generate", "office"], check=True, timeout=120,
                   capture_output=True, env={**os.environ, "PENNELLO_HOME": str(home.config_dir.parent)})
    offline_index = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": " ".join(dependency_wheels)}
    bundle = tmp_path / "bundle"
    # --no-cpu-backend: OpenVINO's 180 MB would cost CI a minute to pack and install here;
    # tests/test_backend_packages.py checks that a bundle asks pip for it by default.
    exported = subprocess.run([sys.executable, "-m", "pennello", "bundle", "export", "pennello-tiny", "--out",
                               str(bundle), "--with-wheels", "--no-cpu-backend", "--key", "office"],
                              capture_output=True, text=True,
                              timeout=900, env={**os.environ, **offline_index,
                                                "PENNELLO_HOME": str(home.config_dir.parent)})
    assert exported.returncode == 0, exported.stderr
    lock_sha = hashlib.sha256((bundle / "lock.txt").read_bytes()).hexdigest()
    assert "pennello==" in (bundle / "lock.txt").read_text()
    bin_dir = tmp_path / "bin"  # python3, and no pennello on PATH: a first install
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    venv = tmp_path / "venv"
    # pip's byte-compiling of every installed module (torch's thousands) is most of its time here and
    # proves nothing this test is about: Python compiles what it imports when it imports it
    done = _sh(bundle, offline, venv, f"{bin_dir}:/usr/bin:/bin", "--python", "python3", PENNELLO_LOCK_SHA256=lock_sha,
               PIP_COMPILE="false")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # The bundle's install.sh handed over to the one-click installer it carries: the same setup.
    assert "Pennello is installed." in done.stdout and "installed the bundle's models" in done.stdout
    menu = (tmp_path / ".local" / "share" / "applications" / "pennello.desktop").read_text()
    assert f"Exec={venv}/bin/pennello tray" in menu
    assert not (tmp_path / ".config" / "autostart" / "pennello.desktop").exists()  # not asked: no terminal
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "PENNELLO_HOME": str(offline.config_dir.parent),
           "PENNELLO_SERVER_PORT": "0"}
    version = subprocess.run([str(venv / "bin" / "pennello"), "--version"], capture_output=True, text=True,
                             timeout=120, env=env)
    assert version.returncode == 0 and importlib.metadata.version("pennello") in version.stdout
    try:
        made = subprocess.run([str(venv / "bin" / "pennello"), "generate", "a kite", "--steps", "2", "--size",
                               "64x64", "--out", str(tmp_path / "pictures"), "--json"],
                              capture_output=True, text=True, timeout=300, env=env)
        assert made.returncode == 0, made.stderr
        assert Path(json.loads(made.stdout)["images"][0]["path"]).is_file()
    finally:
        subprocess.run([str(venv / "bin" / "pennello"), "stop"], capture_output=True, timeout=120, env=env)


# --- uv, which the one-click installer prefers, with the same lock ------------------------------

def _uv() -> str:
    """The uv these tests run: the one installed beside this Python, else one on PATH."""
    found = shutil.which("uv", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        pytest.skip("uv is not installed in this environment (pip install uv)")
    return found


def _uv_install_from(bundle: Path, target: Path, cache: Path) -> subprocess.CompletedProcess:
    """What packaging/install.sh runs with uv, offline and with the bundle's lock, into ``target``."""
    return subprocess.run([_uv(), "pip", "install", "--offline", "--no-index", "--require-hashes", "--only-binary",
                           ":all:", "--find-links", str(bundle / "wheels"), "-r", str(bundle / "lock.txt"),
                           "--target", str(target), "--python", sys.executable],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "UV_CACHE_DIR": str(cache)})


def test_uv_installs_from_the_same_lock_offline_and_refuses_a_flipped_byte(offline, wheel_bundle, tmp_path):
    site = tmp_path / "site"
    installed = _uv_install_from(wheel_bundle, site, tmp_path / "cache")
    assert installed.returncode == 0, installed.stderr
    assert sorted(p.name for p in site.glob("tiny*.py")) == ["tinya.py", "tinyb.py"]

    # A well-formed wheel with other code (a flipped byte may break the zip before any hash is read).
    wheel = next((wheel_bundle / "wheels").glob("tinyb-*.whl"))
    with zipfile.ZipFile(wheel) as original:
        members = {name: original.read(name) for name in original.namelist()}
    with zipfile.ZipFile(wheel, "w") as changed:
        for name, data in members.items():
            changed.writestr(name, data.replace(b"NAME = 'tinyb'", b"NAME = 'evil'"))
    refused = _uv_install_from(wheel_bundle, tmp_path / "site2", tmp_path / "cache2")
    assert refused.returncode != 0
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert "Hash mismatch" in refused.stderr and f"sha256:{digest}" in refused.stderr, refused.stderr
    assert not list((tmp_path / "site2").glob("tiny*"))
