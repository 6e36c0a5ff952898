"""Installing an unlocked Hub entry, verified against the git objects of its signed commit.

A real WSGI server on 127.0.0.1 stands in for the Hub: dulwich's git smart HTTP serves a real
repository (small files as blobs, weights as real Git LFS pointers) and the ``resolve`` routes
serve the files. Manifests are signed with a throwaway key and pin that repository's commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from dulwich.objects import Blob, Commit

from _fixtures_installer import KEY_NAME, Hub, lfs_pointer_for, load_script, make_manifest, serve_hub, store_listing
from pennello.errors import ConsentError, FetchError, IntegrityError, ManifestFormatError, ModelNotFoundError
from pennello.installer import gitpin
from pennello.installer.catalog import Catalog
from pennello.installer.fetchers import FetchOptions
from pennello.installer.install import Installer
from pennello.installer.manifest import Source
from pennello.installer.store import FIRST_FETCH, PINNED_FILE, SIGNED_COMMIT, Store

REPO = "acme/tiny"
UNET = "unet/diffusion_pytorch_model.safetensors"
FILES = {
    "model_index.json": b'{"_class_name": "StableDiffusionPipeline"}',
    "unet/config.json": b'{"sample_size": 8}',
    UNET: bytes(range(256)) * 2048,  # 512 KiB, stored in git as an LFS pointer
    "README.md": b"# tiny\n",
    "unet/diffusion_pytorch_model.bin": b"old format, not installed",  # pipeline_files leaves it out
}
LFS = {UNET, "unet/diffusion_pytorch_model.bin"}
INSTALLED = ["README.md", "model_index.json", "unet/config.json", UNET]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def pinned(home, hub: Hub, publish):
    """(installer, signed envelope, commit id) for an unlocked manifest pinning the stand-in repo."""
    commit = hub.publish(REPO, FILES, LFS)
    raw = publish(make_manifest("tiny", {}, source=Source("huggingface", repo=REPO, revision=commit),
                                locked=False))
    options = FetchOptions(downloads_dir=home.downloads_dir, retries=0, read_timeout_s=5, hub_endpoint=hub.url)
    return Installer(home, _config(), options=options, progress=False), raw, commit


def _config():
    from pennello.config import load_config
    return load_config()


def test_an_unlocked_entry_installs_with_hashes_from_the_signed_commit(home, hub, pinned):
    installer, raw, commit = pinned
    model = installer.install_raw(raw, expected_name="tiny")
    for path in INSTALLED:
        assert (model.path / path).read_bytes() == FILES[path]
    assert not (model.path / "unet/diffusion_pytorch_model.bin").exists()
    assert [(f.path, f.sha256, f.size) for f in model.manifest.files] == [
        (path, _sha(FILES[path]), len(FILES[path])) for path in INSTALLED]
    assert json.loads((model.path / PINNED_FILE).read_bytes())["how"] == SIGNED_COMMIT
    assert (model.path / "manifest.json").read_bytes() == raw  # the signed bytes, unchanged
    # Small files came inside the git objects: only the LFS file was downloaded, once.
    assert [p for p in hub.requests if "/resolve/" in p] == [f"{REPO}/resolve/{commit}/{UNET}"]
    assert Store(home).verify(["tiny"], progress=False) == []
    again = installer.install_raw(raw, expected_name="tiny")  # already current: nothing refused
    assert again.digest == model.digest


def test_a_damaged_file_list_is_an_error_and_install_repairs_it(home, hub, pinned):
    installer, raw, _ = pinned
    model = installer.install_raw(raw, expected_name="tiny")
    pinned_file = model.path / PINNED_FILE
    os.chmod(pinned_file, 0o644)
    pinned_file.write_text("{not json")
    with pytest.raises(IntegrityError, match=f"^{pinned_file} is damaged .*; repair the model with "
                                             f"`pennello install tiny`$"):
        Store(home).get("tiny")
    assert Store(home).installed() == []  # the daemon lists nothing it cannot check
    repaired = installer.install_raw(raw, expected_name="tiny")
    assert [f.path for f in Store(home).get("tiny").manifest.files] == INSTALLED == [
        f.path for f in repaired.manifest.files]


def test_a_hub_token_reaches_the_git_endpoint(home, hub, pinned, monkeypatch):
    """Gated repositories: the git fetch sends the Hub token, as the file downloads do."""
    import base64

    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    installer, raw, _ = pinned
    installer.install_raw(raw, expected_name="tiny")
    assert hub.git_auth and set(hub.git_auth) == {
        "Basic " + base64.b64encode(b"pennello:hf_test_token").decode()}


def test_a_large_file_with_other_bytes_is_refused_naming_both_hashes(home, hub, pinned):
    installer, raw, commit = pinned
    other = bytes(reversed(FILES[UNET]))
    hub.files[f"{REPO}/resolve/{commit}/{UNET}"] = other
    with pytest.raises(IntegrityError) as refused:
        installer.install_raw(raw, expected_name="tiny")
    assert str(refused.value).startswith(f"{UNET}: sha256 {_sha(other)}, manifest says {_sha(FILES[UNET])};")
    with pytest.raises(ModelNotFoundError):
        Store(home).get("tiny")


def test_a_redirect_to_another_host_with_other_bytes_is_refused(home, hub, mirror, pinned):
    installer, raw, commit = pinned
    mirror.files["cdn/unet.safetensors"] = FILES[UNET][:-1] + b"!"
    hub.redirects[f"{REPO}/resolve/{commit}/{UNET}"] = f"{mirror.url}/cdn/unet.safetensors"
    with pytest.raises(IntegrityError, match=f"^{UNET}: sha256 {_sha(FILES[UNET][:-1] + b'!')}, manifest says "
                                             f"{_sha(FILES[UNET])};"):
        installer.install_raw(raw, expected_name="tiny")
    assert [path for path, _ in mirror.requests] == ["cdn/unet.safetensors"]
    mirror.files["cdn/unet.safetensors"] = FILES[UNET]  # the CDN serving the committed bytes: fine
    assert (installer.install_raw(raw, expected_name="tiny").path / UNET).read_bytes() == FILES[UNET]


def test_a_small_file_the_git_server_changed_is_checked_against_its_blob_id(home, hub, pinned):
    installer, raw, commit = pinned
    real = Blob.from_string(FILES["unet/config.json"])
    hub.replace_object(REPO, real.id.decode(), Blob.from_string(b'{"sample_size": 9999}'))
    evil = b'{"evil": 1}'
    hub.files[f"{REPO}/resolve/{commit}/unet/config.json"] = evil
    with pytest.raises(IntegrityError) as refused:
        installer.install_raw(raw, expected_name="tiny")
    assert str(refused.value) == (f"unet/config.json of {REPO}@{commit[:12]}: git blob id "
                                  f"{gitpin.git_blob_id(evil)}, the signed commit says "
                                  f"{real.id.decode()}; the file was refused")
    with pytest.raises(ModelNotFoundError):
        Store(home).get("tiny")
    # The same file served intact over HTTP hashes to the signed blob id: accepted.
    hub.files[f"{REPO}/resolve/{commit}/unet/config.json"] = FILES["unet/config.json"]
    model = installer.install_raw(raw, expected_name="tiny")
    assert (model.path / "unet/config.json").read_bytes() == FILES["unet/config.json"]


@pytest.mark.parametrize("swapped", ["tree", "pointer"])
def test_a_tree_or_lfs_pointer_that_does_not_hash_to_its_id_is_refused(home, hub, pinned, swapped):
    """The server swaps the unet/ tree, or the weights' LFS pointer, for one naming other weights
    (served at the resolve URL): their sha256 would be taken on its word if objects were trusted
    by the id they are asked for rather than by what their bytes hash to."""
    installer, raw, commit = pinned
    other = bytes(reversed(FILES[UNET]))
    hub.files[f"{REPO}/resolve/{commit}/{UNET}"] = other
    store = hub.repos[REPO].object_store
    unet_tree = store[store[store[commit.encode()].tree][b"unet"][1]]
    pointer_id = unet_tree[b"diffusion_pytorch_model.safetensors"][1]
    evil_pointer = Blob.from_string(lfs_pointer_for(other))
    if swapped == "pointer":
        hub.replace_object(REPO, pointer_id.decode(), evil_pointer)
        expected = (f"{UNET} of {REPO}@{commit[:12]}: git blob id {gitpin.git_blob_id(other)}, the signed "
                    f"commit says {pointer_id.decode()}; the file was refused")
    else:
        store.add_object(evil_pointer)
        evil_tree = unet_tree.copy()
        evil_tree[b"diffusion_pytorch_model.safetensors"] = (0o100644, evil_pointer.id)
        hub.replace_object(REPO, unet_tree.id.decode(), evil_tree)
        expected = (f"{REPO}@{commit[:12]}: tree unet/ of commit {commit}: the source sent no git object "
                    f"that hashes to {unet_tree.id.decode()} (it serves other objects than the signed "
                    f"commit names); refused")
    before = store_listing(home)
    with pytest.raises(IntegrityError) as refused:
        installer.install_raw(raw, expected_name="tiny")
    assert str(refused.value) == expected
    assert store_listing(home) == before


def test_a_server_lying_about_the_commit_is_refused(home, hub, pinned):
    installer, raw, commit = pinned
    fake = Commit.from_string(hub.repos[REPO].object_store[commit.encode()].as_raw_string()
                              .replace(b"weights", b"other weights"))
    hub.replace_object(REPO, commit, fake)
    with pytest.raises(IntegrityError) as refused:
        installer.install_raw(raw, expected_name="tiny")
    assert str(refused.value) == (f"{REPO}@{commit[:12]}: commit {commit}: the source sent no git object that "
                                  f"hashes to {commit} (it serves other objects than the signed commit "
                                  f"names); refused")
    assert not [p for p in hub.requests if "/resolve/" in p]  # nothing downloaded on its word


def test_a_source_without_git_objects_asks_before_first_fetch(home, hub, pinned):
    installer, raw, commit = pinned
    del hub.repos[REPO]  # the files are still served, the git endpoint is not
    hub.files[f"api/models/{REPO}/tree/{commit}"] = json.dumps(
        [{"type": "file", "path": p, "size": len(d), "oid": "0" * 40} for p, d in FILES.items()]).encode()
    with pytest.raises(FetchError, match=r"its file hashes cannot be derived from the signed commit, and "
                                         r"recording them on first fetch needs your consent"):
        installer.install_raw(raw, expected_name="tiny")

    asked: list[tuple[str, str]] = []

    def refuse(model: str, why: str) -> None:
        asked.append((model, why))
        raise ConsentError("no")
    installer.first_fetch = refuse
    with pytest.raises(ConsentError):
        installer.install_raw(raw, expected_name="tiny")
    assert asked[0][0] == "tiny v1" and f"does not serve the git objects of commit {commit}" in asked[0][1]
    assert not [p for p in hub.requests if "/resolve/" in p]
    with pytest.raises(ModelNotFoundError):
        Store(home).get("tiny")

    installer.first_fetch = lambda model, why: None  # agreed
    model = installer.install_raw(raw, expected_name="tiny")
    assert json.loads((model.path / PINNED_FILE).read_bytes())["how"] == FIRST_FETCH
    assert sorted(f.path for f in model.manifest.files) == sorted(INSTALLED)


def _cli(home, hub_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PENNELLO_HOME": str(home.runtime_dir.parent), "HF_ENDPOINT": hub_url,
           "HF_HUB_OFFLINE": "0", "PENNELLO_INSTALLER_CONFIRM_OVER_MB": "0"}
    result = subprocess.run([sys.executable, "-m", "pennello", *args], capture_output=True, text=True,
                            timeout=120, env=env)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result


def _models_row(home, hub_url: str, name: str) -> list[str]:
    """The cells of ``name``'s row of `pennello models` (columns are two or more spaces apart)."""
    listing = _cli(home, hub_url, "models")
    assert listing.returncode == 0, listing.stderr
    return next(row for row in map(lambda line: re.split(r"\s{2,}", line), listing.stdout.splitlines())
                if row[0] == name)


def test_pennello_install_says_what_it_downloads_and_asks(home, hub, publish):
    commit = hub.publish(REPO, FILES, LFS)
    Catalog(home).write_user("tiny", publish(make_manifest(
        "tiny", {}, source=Source("huggingface", repo=REPO, revision=commit), locked=False)))
    assert _models_row(home, hub.url, "tiny") == ["tiny", "v1", "-", "available", "-", "-"]
    refused = _cli(home, hub.url, "install", "tiny")
    assert refused.returncode == 10, refused.stderr
    assert f"to download: 1 file, 524.3 KB (licence tiny: Apache-2.0)\n   524.3 KB  {UNET}\n" in refused.stderr
    assert not [p for p in hub.requests if p.endswith(UNET)]
    done = _cli(home, hub.url, "install", "tiny", "--yes")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "tiny v1 installed (524.4 KB)\n"
    row = _models_row(home, hub.url, "tiny")
    assert row[:4] == ["tiny", "v1", "524.4 KB", "installed"]
    assert row[4] != "-" and row[5] == "signed commit"  # verified at install, against the commit
    assert Store(home).get("tiny").manifest.files[-1].sha256 == _sha(FILES[UNET])
    # The Hub is asked for the commit's objects and the files, not for huggingface_hub's telemetry.
    assert "api/agent-harnesses" not in hub.requests


def test_pennello_install_without_git_objects_needs_first_fetch_consent(home, hub, publish):
    commit = hub.publish(REPO, FILES, LFS)
    del hub.repos[REPO]
    hub.files[f"api/models/{REPO}/tree/{commit}"] = json.dumps(
        [{"type": "file", "path": p, "size": len(d), "oid": "0" * 40} for p, d in FILES.items()]).encode()
    Catalog(home).write_user("tiny", publish(make_manifest(
        "tiny", {}, source=Source("huggingface", repo=REPO, revision=commit), locked=False)))
    refused = _cli(home, hub.url, "install", "tiny", "--yes")  # --yes is about size, not about trust
    assert refused.returncode == 10, refused.stderr
    assert f"does not serve the git objects of commit {commit}" in refused.stderr
    assert "Install tiny v1 with hashes recorded on first fetch: not done" in refused.stderr
    assert "Run again with --first-fetch" in refused.stderr
    done = _cli(home, hub.url, "install", "tiny", "--yes", "--first-fetch")
    assert done.returncode == 0, done.stderr
    assert _models_row(home, hub.url, "tiny")[-1] == "first fetch"  # trust on first use


def test_no_network_is_a_message_suggesting_a_bundle(home, tmp_path):
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens there
    result = _cli(home, closed, "install", "sd-turbo")
    assert result.returncode == 5, result.stderr
    error = result.stderr.splitlines()[-1]  # after urllib3's warnings about its retries
    assert error.startswith(f"error: cannot reach {closed}/stabilityai/sd-turbo (")
    assert "Connection refused" in error
    assert error.endswith("no network? On a machine without internet install from a bundle made elsewhere: "
                          "`pennello bundle export NAME --out DIR` there, `pennello install --from DIR` here")


def test_a_revision_that_is_not_a_full_commit_id_is_refused():
    with pytest.raises(IntegrityError, match="is not a full 40-hex commit id"):
        gitpin.fetch_commit("http://127.0.0.1:9", "a/b", "main")


def test_an_unlocked_mirror_entry_still_needs_a_lock(home, mirror, publish):
    """A mirror pins no commit: nothing to derive hashes from, so the old advice stands."""
    Catalog(home).write_user("office", publish(make_manifest(
        "office", {}, source=Source("mirror", base_url=mirror.url), locked=False)))
    result = _cli(home, mirror.url, "install", "office")
    assert result.returncode == 3, result.stderr
    assert result.stderr == ("error: manifest 'office' is not locked (it pins a mirror but no file hashes, and a "
                             "mirror has no signed commit to derive them from); lock it first: "
                             "`pennello manifest lock office --key KEYNAME`\n")
    assert mirror.requests == []


def test_a_bundle_carries_the_commit_so_an_offline_machine_derives_the_hashes_again(home, hub, pinned, tmp_path):
    from pennello.installer.bundle import export_bundle, import_bundle, trust_bundle_keys
    from pennello.paths import get_paths

    installer, raw, commit = pinned
    installer.install_raw(raw, expected_name="tiny")
    bundle = export_bundle(home, _config(), ["tiny"], tmp_path / "bundle", progress=False)
    assert (bundle / "commits" / "tiny.pack").is_file()
    hub.repos.clear()
    hub.files.clear()  # the Hub is gone: everything must come from the bundle
    offline = get_paths(tmp_path / "offline").ensure()
    trust_bundle_keys(offline, bundle)
    model, = import_bundle(offline, _config(), bundle, progress=False)
    assert json.loads((model.path / PINNED_FILE).read_bytes())["how"] == SIGNED_COMMIT
    assert [(f.path, f.sha256) for f in model.manifest.files] == [(p, _sha(FILES[p])) for p in INSTALLED]

    # Objects that are not the signed commit's (here: another commit's) are refused.
    other = get_paths(tmp_path / "other").ensure()
    trust_bundle_keys(other, bundle)
    store = gitpin.unpack((bundle / "commits" / "tiny.pack").read_bytes(), "test")
    lie = Commit.from_string(store[commit.encode()].as_raw_string().replace(b"weights", b"other"))
    store.add_object(lie)
    del store[commit.encode()]
    (bundle / "commits" / "tiny.pack").write_bytes(gitpin.pack(store))
    with pytest.raises(IntegrityError, match=f"the source sent no git object that hashes to {commit}"):
        import_bundle(other, _config(), bundle, progress=False)
    with pytest.raises(ModelNotFoundError):
        Store(other).get("tiny")


def test_how_each_model_was_verified_is_shown_by_models_verify_and_the_api(home, hub, publish):
    """The three kinds side by side: the embedded model's signed hashes, a Hub entry checked
    against its signed commit, and one whose source serves no git objects (first fetch)."""
    import requests

    from pennello.config import Config
    from pennello.daemon.engine.engine import Engine
    from pennello.daemon.http.app import create_app
    from pennello.daemon.server import start_background_server

    commit, other = hub.publish(REPO, FILES, LFS), hub.publish("acme/other", FILES, LFS)
    del hub.repos["acme/other"]
    hub.files[f"api/models/acme/other/tree/{other}"] = json.dumps(
        [{"type": "file", "path": p, "size": len(d), "oid": "0" * 40} for p, d in FILES.items()]).encode()
    for name, repo, revision in (("tiny", REPO, commit), ("other", "acme/other", other)):
        Catalog(home).write_user(name, publish(make_manifest(
            name, {}, source=Source("huggingface", repo=repo, revision=revision), locked=False)))
    assert _cli(home, hub.url, "install", "pennello-tiny", "tiny", "--yes").returncode == 0
    assert _cli(home, hub.url, "install", "other", "--yes", "--first-fetch").returncode == 0
    kinds = {"other": "first fetch", "pennello-tiny": "signed hashes", "tiny": "signed commit"}

    listed = json.loads(_cli(home, hub.url, "models", "--json").stdout)["models"]
    assert {m["name"]: (m["status"], m["verification"]) for m in listed if m["name"] in kinds} == {
        name: ("installed", kind) for name, kind in kinds.items()}
    assert {m["verification"] for m in listed if m["name"] not in kinds} == {None}  # catalog only
    assert _models_row(home, hub.url, "other")[5] == "first fetch"
    checked = _cli(home, hub.url, "verify", "--json")
    assert checked.returncode == 0, checked.stderr
    assert [{**m, "verified": None} for m in json.loads(checked.stdout)["models"]] == [
        {"name": name, "ok": True, "verified": None, "verification": kind, "problems": []} for name, kind in kinds.items()]
    assert _cli(home, hub.url, "verify", "tiny").stdout == "tiny: ok (signed commit)\n"

    engine = Engine(Config(), home)
    _, url, stop = start_background_server(create_app(Config(), engine, home), "127.0.0.1", 0)
    try:
        served = requests.get(f"{url}/api/models", timeout=10).json()["models"]
    finally:
        stop()
    assert {m["name"]: m["verification"] for m in served} == kinds

    weights = Store(home).get("tiny").path / UNET  # one flipped byte: the JSON says which file
    os.chmod(weights, 0o644)
    flipped = b"\xff" + FILES[UNET][1:]
    weights.write_bytes(flipped)
    damaged = _cli(home, hub.url, "verify", "--json")
    document = json.loads(damaged.stdout)
    assert damaged.returncode == 4 and "damaged or missing file(s)" in document["error"]
    report = {r["name"]: r for r in document["models"]}
    assert report["tiny"]["ok"] is False and report["tiny"]["verification"] == "signed commit"
    assert report["tiny"]["problems"] == [f"{UNET}: sha256 {_sha(flipped)}, manifest says "
                                          f"{_sha(FILES[UNET])}"]
    # "other" holds the same weights: one blob, hard-linked into both, so both are damaged.
    assert report["other"]["problems"] == report["tiny"]["problems"] and report["other"]["ok"] is False
    assert {**report["pennello-tiny"], "verified": None} == {"name": "pennello-tiny", "verified": None,
                                                             "verification": "signed hashes", "ok": True,
                                                             "problems": []}


# --- hostile sources: every refusal leaves the store exactly as it was -----------------------------

def test_a_pointer_whose_size_disagrees_with_the_file_is_refused(home, hub, publish):
    """The signed commit's pointer names the size; a file of any other size never becomes a blob."""
    options = FetchOptions(downloads_dir=home.downloads_dir, retries=0, read_timeout_s=5, hub_endpoint=hub.url)
    installer = Installer(home, _config(), options=options, progress=False)
    before = store_listing(home)
    for name, size in (("smaller", len(FILES[UNET]) - 1), ("larger", len(FILES[UNET]) + 1)):
        pointer = (f"version https://git-lfs.github.com/spec/v1\noid sha256:{_sha(FILES[UNET])}\n"
                   f"size {size}\n").encode()
        commit = hub.publish(f"acme/{name}", FILES, LFS, pointers={UNET: pointer})
        raw = publish(make_manifest(name, {}, source=Source("huggingface", repo=f"acme/{name}", revision=commit),
                                    version=1, locked=False))
        with pytest.raises((IntegrityError, FetchError)) as refused:
            installer.install_raw(raw, expected_name=name)
        url = f"{hub.url}/acme/{name}/resolve/{commit}/{UNET}"
        if name == "smaller":
            assert str(refused.value) == (f"{url}: the server announces {len(FILES[UNET])} bytes, more than the "
                                          f"{size} bytes allowed for {UNET}; download stopped and refused "
                                          f"(endless data)")
        else:
            assert str(refused.value).startswith(f"{url}: download failed after 1 attempts (the server sent "
                                                 f"{len(FILES[UNET])} of {size} bytes)")
        with pytest.raises(ModelNotFoundError):
            Store(home).get(name)
    assert store_listing(home) == before  # not even the small files that came with the git objects


def test_an_endless_download_is_stopped_past_the_pointers_size_and_refused(home, hub, mirror, pinned):
    installer, raw, commit = pinned
    installer.install_raw(raw, expected_name="tiny")  # something installed, so "as it was" says something
    before = store_listing(home)
    Store(home).remove("tiny")
    before_removed = store_listing(home)
    mirror.endless.add("cdn/unet")  # no Content-Length, data without end
    hub.redirects[f"{REPO}/resolve/{commit}/{UNET}"] = f"{mirror.url}/cdn/unet"
    with pytest.raises(IntegrityError, match=rf"^{hub.url}/{REPO}/resolve/{commit}/{UNET}: the server kept "
                                             rf"sending, more than the {len(FILES[UNET])} bytes allowed for "
                                             rf"{UNET}; download stopped and refused \(endless data\)$"):
        installer.install_raw(raw, expected_name="tiny")
    assert [path for path, _ in mirror.requests] == ["cdn/unet"]
    assert not (home.downloads_dir / f"{_sha(FILES[UNET])}.part").exists()  # nothing kept to resume from
    assert store_listing(home) == before_removed != before


def test_a_commit_the_server_does_not_have_is_refused(home, hub, publish):
    hub.publish(REPO, FILES, LFS)
    missing = "0123456789abcdef0123456789abcdef01234567"
    raw = publish(make_manifest("tiny", {}, source=Source("huggingface", repo=REPO, revision=missing),
                                locked=False))
    options = FetchOptions(downloads_dir=home.downloads_dir, retries=0, read_timeout_s=5, hub_endpoint=hub.url)
    installer = Installer(home, _config(), options=options, progress=False)
    before = store_listing(home)
    with pytest.raises(FetchError, match=rf"^tiny v1: {hub.url}/{REPO} does not serve the git objects of "
                                         rf"commit {missing} \(.*\); its file hashes cannot be derived"):
        installer.install_raw(raw, expected_name="tiny")
    installer.first_fetch = lambda model, why: None  # even agreeing to first fetch: nothing to fetch
    with pytest.raises(FetchError, match=f"cannot list {REPO}@{missing} on {hub.url}"):
        installer.install_raw(raw, expected_name="tiny")
    assert store_listing(home) == before
    assert not [p for p in hub.requests if "/resolve/" in p]


def test_a_manifest_pinning_a_branch_instead_of_a_commit_is_refused(home, hub, publish, pinned):
    installer, _, _ = pinned
    signed = make_manifest("tiny", {}, source=Source("huggingface", repo=REPO, revision="main"),
                           locked=False).to_signed()
    from pennello.installer.keys import load_private_key, sign_signed
    from pennello.installer.manifest import dump_envelope

    raw = dump_envelope(signed, [sign_signed(signed, load_private_key(KEY_NAME, home))])
    before = store_listing(home)
    with pytest.raises(ManifestFormatError, match="source.revision must be a full 40-hex commit, not a branch"):
        installer.install_raw(raw, expected_name="tiny")
    assert store_listing(home) == before and hub.requests == [] and hub.git_auth == []


def test_the_hub_going_away_mid_download_resumes_later_and_finishes_verified(home, hub, pinned):
    installer, raw, commit = pinned
    path = f"{REPO}/resolve/{commit}/{UNET}"
    hub.drop_after[path] = 200_000
    with pytest.raises(FetchError, match=r"200000 of 524288 bytes are kept and the next attempt resumes"):
        installer.install_raw(raw, expected_name="tiny")
    state, before = hub, store_listing(home)
    with serve_hub(Hub(repos=state.repos, files=state.files)) as again:
        gone = again.url
    with pytest.raises(FetchError, match=rf"^cannot reach {gone}/{REPO} \(.*\); no network\?"):
        Installer(home, _config(), options=replace(installer.options, hub_endpoint=gone),
                  progress=False).install_raw(raw, expected_name="tiny")
    assert store_listing(home) == before
    with serve_hub(Hub(repos=state.repos, files=state.files)) as back:
        model = Installer(home, _config(), options=replace(installer.options, hub_endpoint=back.url),
                          progress=False).install_raw(raw, expected_name="tiny")
        assert [p for p in back.requests if "/resolve/" in p] == [path]
    assert (model.path / UNET).read_bytes() == FILES[UNET]
    assert Store(home).verify(["tiny"], progress=False) == [] and list(home.downloads_dir.iterdir()) == []


def test_sign_catalog_lock_records_every_files_hashes_from_the_commit_and_bumps_the_version(
        home, hub, tmp_path, monkeypatch, capsys):
    """The maintainers' lock: hashes from the git objects (no weights downloaded), signed."""
    from pennello.installer.keys import generate_key
    from pennello.installer.manifest import Manifest, parse_envelope

    script = load_script("sign_catalog")
    commit = hub.publish(REPO, FILES, LFS)
    entry = script.Entry("StableDiffusionPipeline", "sd", "Apache-2.0", {"steps": 1}, "A test entry.",
                         repo=REPO, revision=commit)
    monkeypatch.setattr(script, "CATALOG", {"pennello-tiny": script.CATALOG["pennello-tiny"], "tiny": entry})
    generate_key(home, "test-release")
    out = tmp_path / "catalog"
    args = ["--key", "test-release", "--out", str(out)]
    script.main(args)
    assert parse_envelope((out / "tiny.json").read_bytes())[0]["locked"] is False
    embedded = (out / "pennello-tiny.json").read_bytes()

    script.main(args + ["--lock", "--hub-endpoint", hub.url])
    locked = Manifest.from_signed(parse_envelope((out / "tiny.json").read_bytes())[0])
    assert (locked.version, locked.locked, locked.trust_on_first_use) == (2, True, False)
    assert [(f.path, f.sha256, f.size) for f in locked.files] == [
        (path, _sha(FILES[path]), len(FILES[path])) for path in INSTALLED]
    assert (out / "pennello-tiny.json").read_bytes() == embedded  # nothing to lock there
    assert not [p for p in hub.requests if "/resolve/" in p]  # the weights' hashes come from the pointers
    signed = (out / "tiny.json").read_bytes()
    script.main(args)  # a later run without --lock keeps the lock
    assert (out / "tiny.json").read_bytes() == signed

    options = FetchOptions(downloads_dir=home.downloads_dir, retries=0, read_timeout_s=5, hub_endpoint=hub.url)
    model = Installer(home, _config(), options=options, progress=False).install_raw(signed, expected_name="tiny")
    assert model.verification == "signed hashes" and (model.path / UNET).read_bytes() == FILES[UNET]

    # A new pin at a commit the Hub does not serve: --lock fails, naming it, and writes nothing.
    missing = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setattr(script, "CATALOG", {"tiny": replace(entry, revision=missing)})
    with pytest.raises(SystemExit) as failed:
        script.main(args + ["--lock", "--hub-endpoint", hub.url])
    assert failed.value.code != 0 and (out / "tiny.json").read_bytes() == signed
    assert f"does not serve the git objects of commit {missing}" in capsys.readouterr().err
