"""The content-addressed store: blobs, version directories, dedup, verify/quarantine, remove + GC."""

from __future__ import annotations

import os
import stat

import pytest

from _fixtures_installer import make_manifest
from pennello.errors import IntegrityError, ModelNotFoundError
from pennello.installer.manifest import dump_envelope
from pennello.installer.store import Store

SHARED = b"shared tokenizer " * 100
V1 = {"model_index.json": b'{"v": 1}', "tokenizer/vocab.json": SHARED, "unet/w.bin": b"weights one" * 50}
V2 = {"model_index.json": b'{"v": 2}', "tokenizer/vocab.json": SHARED, "unet/w.bin": b"weights two" * 50}


def _put(store: Store, name: str, files: dict[str, bytes], version: int = 1):
    """Ingest a model's files through temp files and commit it, as the installer does."""
    manifest = make_manifest(name, files, version)
    for entry in manifest.files:
        with store.temp_file(entry.path) as temp:
            temp.write_bytes(files[entry.path])
            store.ingest(temp, entry)
    return store.commit_version(manifest, dump_envelope(manifest.to_signed(), []))


@pytest.fixture
def store(home) -> Store:
    return Store(home)


def test_committed_version_is_hard_links_to_read_only_blobs(store):
    model = _put(store, "tiny", V1)
    assert model.path == store.models_dir / "tiny" / "v1"
    assert (store.models_dir / "tiny" / "current").read_text() == "v1\n"
    for entry in model.manifest.files:
        blob = store.blob_path(entry.sha256)
        assert blob == store.root / "blobs" / "sha256" / entry.sha256[:2] / entry.sha256
        assert os.path.samefile(blob, model.path / entry.path)
        assert not blob.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
        assert (model.path / entry.path).read_bytes() == V1[entry.path]
    raw = (model.path / "manifest.json").read_bytes()
    assert raw == dump_envelope(model.manifest.to_signed(), [])
    assert store.get("tiny") == model
    assert [m.name for m in store.installed()] == ["tiny"]
    assert not list(store.tmp_dir.glob("*")) if store.tmp_dir.exists() else True
    assert not store.staging_dir.exists() or not list(store.staging_dir.iterdir())


def test_ingest_refuses_wrong_bytes_and_deletes_them(store):
    entry = make_manifest("tiny", V1).files[0]
    with store.temp_file(entry.path) as temp:
        temp.write_bytes(b"not the model index")
        with pytest.raises(IntegrityError, match=r"model_index.json: size 19 bytes, manifest says 8; "
                                                 r"the file was refused and deleted"):
            store.ingest(temp, entry)
        assert not temp.exists()
    with store.temp_file(entry.path) as temp:
        temp.write_bytes(b'{"v": 9}')  # right size, wrong content
        with pytest.raises(IntegrityError, match=f"sha256 [0-9a-f]{{64}}, manifest says {entry.sha256}"):
            store.ingest(temp, entry)
    assert not store.blob_path(entry.sha256).exists()


def test_two_models_sharing_a_file_share_one_blob(store):
    a = _put(store, "alpha", V1)
    b = _put(store, "beta", V2)
    blob = store.blob_path(a.manifest.files[1].sha256)
    assert a.manifest.files[1].sha256 == b.manifest.files[1].sha256
    assert blob.stat().st_nlink == 3  # the blob and one link in each model
    assert len(list(store.blobs_dir.glob("*/*"))) == 5


def test_new_version_replaces_the_old_one_and_its_unshared_blobs_go(store):
    v1 = _put(store, "tiny", V1)
    v2 = _put(store, "tiny", V2, version=2)
    store.collect_garbage()
    assert store.get("tiny").version == 2
    assert not v1.path.exists() and v2.path.is_dir()
    assert not store.blob_path(v1.manifest.files[2].sha256).exists()  # v1's weights
    assert store.blob_path(v2.manifest.files[1].sha256).exists()  # shared tokenizer stays


def test_remove_collects_only_unreferenced_blobs(store):
    a = _put(store, "alpha", V1)
    _put(store, "beta", V2)
    freed = store.remove("alpha")
    assert freed == len(V1["model_index.json"]) + len(V1["unet/w.bin"])
    assert not (store.models_dir / "alpha").exists()
    assert store.blob_path(a.manifest.files[1].sha256).exists()  # still used by beta
    assert store.blob_path(a.manifest.files[1].sha256).stat().st_nlink == 2
    store.remove("beta")
    assert list(store.blobs_dir.glob("*/*")) == []
    assert store.installed() == []


def test_get_unknown_model_names_installed_ones_and_how_to_install(store):
    _put(store, "alpha", V1)
    with pytest.raises(ModelNotFoundError) as e:
        store.get("sd-turbo")
    assert str(e.value) == ("model 'sd-turbo' is not installed (installed: alpha); "
                            "install it with `pennello install sd-turbo`")
    with pytest.raises(ModelNotFoundError, match="model 'nope' is not installed"):
        store.remove("nope")


def test_verify_quarantines_damaged_and_missing_files_and_the_model_stops_loading(store):
    model = _put(store, "tiny", V1)
    _put(store, "other", V2)
    weights = model.path / "unet/w.bin"
    os.chmod(weights, 0o644)
    with open(weights, "r+b") as f:  # one flipped byte, written through the hard link
        f.seek(5)
        f.write(b"X")
    (model.path / "model_index.json").unlink()
    with pytest.raises(IntegrityError) as e:
        store.verify(progress=False)
    message = str(e.value)
    assert message.startswith("2 damaged or missing file(s), quarantined: ")
    assert "tiny: unet/w.bin: sha256 " in message and "tiny: model_index.json: missing" in message
    assert message.endswith("The model will not load until you repair it with `pennello install tiny`")
    assert not weights.exists()
    assert not store.blob_path(model.manifest.files[2].sha256).exists()  # same inode: gone too
    assert [p.read_bytes()[:10] for p in store.quarantine_dir.iterdir()] == [b"weighXs on"]
    with pytest.raises(IntegrityError, match=r"model 'tiny' is damaged and will not load \(model_index.json: missing; unet/w.bin: sha256 .*\); "
                                              r"repair it with `pennello install tiny`$"):
        store.get("tiny")
    assert [m.name for m in store.installed()] == ["other"]
    assert store.is_broken("tiny") and not store.is_broken("other")
    assert store.last_verified("other") is not None
    store.verify(["other"], progress=False)  # intact models verify cleanly


def test_get_with_verify_rehashes(store):
    model = _put(store, "tiny", V1)
    assert store.get("tiny", verify=True) == model
    os.chmod(model.path / "model_index.json", 0o644)
    (model.path / "model_index.json").write_bytes(b'{"v": 7}')
    with pytest.raises(IntegrityError, match="model_index.json: sha256"):
        store.get("tiny", verify=True)


def test_copies_when_hard_links_are_not_possible(store, monkeypatch):
    def no_links(src, dst):
        raise OSError(18, "Invalid cross-device link")
    monkeypatch.setattr(os, "link", no_links)
    model = _put(store, "tiny", V1)
    for entry in model.manifest.files:
        copy = model.path / entry.path
        assert copy.stat().st_nlink == 1 and copy.read_bytes() == V1[entry.path]
    store.verify(["tiny"], progress=False)


def test_has_blob_quarantines_a_rotten_blob_so_it_is_fetched_again(store):
    model = _put(store, "tiny", V1)
    entry = model.manifest.files[0]
    blob = store.blob_path(entry.sha256)
    store.remove("tiny")
    assert not blob.exists()
    _put(store, "tiny", V1)
    os.chmod(blob, 0o644)
    blob.write_bytes(b'{"v": 0}')
    assert store.has_blob(entry) is False
    assert not blob.exists() and len(list(store.quarantine_dir.iterdir())) == 1
