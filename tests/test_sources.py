"""Fetchers against a real HTTP mirror on 127.0.0.1 and real directories: resume, caps, refusals."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from _fixtures_installer import Mirror, entries_for
from pennello.errors import FetchError, IntegrityError
from pennello.installer.manifest import FileEntry, Source
from pennello.installer.fetchers import FetchOptions, LocalFetcher, fetcher_for
from pennello.installer.sources import HubFetcher
from pennello.installer.store import Store

WEIGHTS = bytes(range(256)) * 4096  # 1 MiB
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def options(home) -> FetchOptions:
    return FetchOptions(downloads_dir=home.downloads_dir, retries=0, read_timeout_s=5)


def _fetch(fetcher, entry: FileEntry, store: Store):
    """Fetch into a store temp file and ingest it, as the installer does; return the blob bytes."""
    seen: list[int] = []
    with store.temp_file(entry.path) as temp:
        digest = fetcher.fetch(entry, temp, seen.append)
        assert digest == hashlib.sha256(temp.read_bytes()).hexdigest()  # hashed as written, resumed or not
        blob = store.ingest(temp, entry, digest)
    assert sum(seen) == entry.size
    return blob.read_bytes()


def _mirror_fetcher(mirror: Mirror, options: FetchOptions, **changes):
    return fetcher_for(Source("mirror", base_url=mirror.url + "/tiny"), "tiny",
                       FetchOptions(**{**options.__dict__, **changes}))


def test_mirror_download_is_verified_into_the_store(home, mirror, options):
    mirror.files["tiny/unet/w.safetensors"] = WEIGHTS
    entry, = entries_for({"unet/w.safetensors": WEIGHTS})
    assert _fetch(_mirror_fetcher(mirror, options), entry, Store(home)) == WEIGHTS
    assert list(home.downloads_dir.iterdir()) == []


def test_dropped_connection_is_resumed_with_a_range_request(home, mirror, options):
    mirror.files["tiny/w.bin"] = WEIGHTS
    mirror.drop_after["tiny/w.bin"] = 300_000
    entry, = entries_for({"w.bin": WEIGHTS})
    assert _fetch(_mirror_fetcher(mirror, options, retries=1), entry, Store(home)) == WEIGHTS
    assert mirror.ranges("tiny/w.bin") == ["bytes=300000-"]


def test_interrupted_download_keeps_its_partial_and_the_next_run_resumes(home, mirror, options):
    mirror.files["tiny/w.bin"] = WEIGHTS
    mirror.drop_after["tiny/w.bin"] = 500_000
    entry, = entries_for({"w.bin": WEIGHTS})
    store = Store(home)
    with pytest.raises(FetchError, match=r"/tiny/w.bin: download failed after 1 attempts \(.*\); "
                                         r"500000 of 1048576 bytes are kept and the next attempt resumes"):
        _fetch(_mirror_fetcher(mirror, options), entry, store)
    assert (home.downloads_dir / f"{entry.sha256}.part").stat().st_size == 500_000
    assert _fetch(_mirror_fetcher(mirror, options), entry, store) == WEIGHTS
    assert mirror.ranges("tiny/w.bin") == ["bytes=500000-"]


def test_a_server_ignoring_the_range_request_restarts_the_file_and_its_hash(home, mirror, options):
    mirror.files["tiny/w.bin"] = WEIGHTS
    mirror.drop_after["tiny/w.bin"] = 400_000
    mirror.no_range.add("tiny/w.bin")
    entry, = entries_for({"w.bin": WEIGHTS})
    assert _fetch(_mirror_fetcher(mirror, options, retries=1), entry, Store(home)) == WEIGHTS
    assert mirror.ranges("tiny/w.bin") == ["bytes=400000-"]  # asked, answered with the whole file


def test_a_file_of_unknown_size_is_hashed_as_it_arrives(home, mirror, options, tmp_path):
    """What `manifest lock` records: the digest of the bytes written, without reading them back."""
    mirror.files["tiny/w.bin"] = WEIGHTS
    mirror.drop_after["tiny/w.bin"] = 300_000  # the retry starts the file, and its hash, afresh
    digest = _mirror_fetcher(mirror, options, retries=1).fetch_unknown("w.bin", tmp_path / "w.bin", lambda n: None)
    assert digest == hashlib.sha256(WEIGHTS).hexdigest() and (tmp_path / "w.bin").read_bytes() == WEIGHTS


def test_truncated_download_is_refused(home, mirror, options):
    mirror.files["tiny/w.bin"] = WEIGHTS
    mirror.short["tiny/w.bin"] = 1000  # ends cleanly after 1000 bytes, every time
    entry, = entries_for({"w.bin": WEIGHTS})
    with pytest.raises(FetchError, match=r"download failed after 3 attempts \(the server sent 1000 of "
                                         r"1048576 bytes\)"):
        _fetch(_mirror_fetcher(mirror, options, retries=2), entry, Store(home))
    assert not Store(home).blob_path(entry.sha256).exists()


def test_substituted_file_is_refused_and_never_becomes_a_blob(home, mirror, options):
    mirror.files["tiny/w.bin"] = WEIGHTS
    mirror.substitute["tiny/w.bin"] = WEIGHTS[:-1] + b"!"  # same size, other bytes
    entry, = entries_for({"w.bin": WEIGHTS})
    store = Store(home)
    with pytest.raises(IntegrityError, match=f"w.bin: sha256 [0-9a-f]{{64}}, manifest says {entry.sha256}; "
                                             f"the file was refused and deleted"):
        _fetch(_mirror_fetcher(mirror, options), entry, store)
    assert not store.blob_path(entry.sha256).exists()
    assert list(home.downloads_dir.iterdir()) == [] and list(store.tmp_dir.iterdir()) == []


def test_a_bad_partial_is_deleted_and_the_retry_downloads_afresh(home, mirror, options):
    mirror.files["tiny/w.bin"] = WEIGHTS
    entry, = entries_for({"w.bin": WEIGHTS})
    (home.downloads_dir / f"{entry.sha256}.part").write_bytes(b"garbage from an older run")
    store = Store(home)
    with pytest.raises(IntegrityError, match="refused and deleted"):
        _fetch(_mirror_fetcher(mirror, options), entry, store)
    assert mirror.ranges("tiny/w.bin") == ["bytes=25-"]
    assert _fetch(_mirror_fetcher(mirror, options), entry, store) == WEIGHTS


def test_endless_data_is_cut_off_at_the_manifest_size(home, mirror, options):
    mirror.endless.add("tiny/w.bin")
    entry = FileEntry("w.bin", "0" * 64, 100_000)
    with pytest.raises(IntegrityError) as e:
        _fetch(_mirror_fetcher(mirror, options), entry, Store(home))
    assert str(e.value) == (f"{mirror.url}/tiny/w.bin: the server kept sending, more than the 100000 bytes "
                            f"allowed for w.bin; download stopped and refused (endless data)")
    assert list(home.downloads_dir.iterdir()) == []


def test_endless_data_for_a_file_of_unknown_size_is_cut_off_at_the_cap(home, mirror, options, tmp_path):
    # Locking an unlocked manifest fetches files whose size nobody published yet.
    mirror.endless.add("tiny/unet/w.bin")
    fetcher = _mirror_fetcher(mirror, options, max_file_bytes=200_000)
    with pytest.raises(IntegrityError) as e:
        fetcher.fetch_unknown("unet/w.bin", tmp_path / "w.bin", lambda n: None)
    assert str(e.value) == (f"{mirror.url}/tiny/unet/w.bin: the server kept sending, more than the 200000 bytes "
                            f"allowed for unet/w.bin; download stopped and refused (endless data)")
    assert (tmp_path / "w.bin").stat().st_size <= 200_000


def test_announced_oversize_is_refused_before_reading(home, mirror, options):
    mirror.files["tiny/w.bin"] = WEIGHTS
    entry = FileEntry("w.bin", "0" * 64, 1000)
    with pytest.raises(IntegrityError, match="the server announces 1048576 bytes, more than the 1000 bytes"):
        _fetch(_mirror_fetcher(mirror, options), entry, Store(home))


def test_http_errors_are_fetch_errors(home, mirror, options):
    entry = FileEntry("missing.bin", "0" * 64, 10)
    with pytest.raises(FetchError, match=r"/tiny/missing.bin: HTTP 404 Not Found"):
        _fetch(_mirror_fetcher(mirror, options, retries=3), entry, Store(home))
    assert len(mirror.requests) == 1  # not retried


def test_mirror_lists_files_from_index_json(mirror, options):
    mirror.files["tiny/index.json"] = json.dumps(["model_index.json", "unet/w.bin"]).encode()
    assert _mirror_fetcher(mirror, options).list_files() == ["model_index.json", "unet/w.bin"]
    mirror.files["tiny/index.json"] = json.dumps(["../../etc/passwd"]).encode()
    with pytest.raises(Exception, match="'..' component"):
        _mirror_fetcher(mirror, options).list_files()


def test_hub_fetcher_uses_the_pinned_commit_on_the_configured_endpoint(home, mirror, options):
    options = FetchOptions(**{**options.__dict__, "hub_endpoint": mirror.url})
    fetcher = fetcher_for(Source("huggingface", repo="acme/tiny", revision=REVISION), "tiny", options)
    assert isinstance(fetcher, HubFetcher)
    assert fetcher.url("unet/config.json") == f"{mirror.url}/acme/tiny/resolve/{REVISION}/unet/config.json"
    mirror.files[f"acme/tiny/resolve/{REVISION}/unet/config.json"] = b"{}"
    entry, = entries_for({"unet/config.json": b"{}"})
    assert _fetch(fetcher, entry, Store(home)) == b"{}"
    mirror.files[f"api/models/acme/tiny/tree/{REVISION}"] = json.dumps(
        [{"type": "file", "path": p, "size": 2, "oid": "0" * 40} for p in ("model_index.json", "unet/config.json")]
    ).encode()
    assert sorted(fetcher.list_files()) == ["model_index.json", "unet/config.json"]


def test_local_source_copies_regular_files(home, tmp_path, options):
    (tmp_path / "src" / "unet").mkdir(parents=True)
    (tmp_path / "src" / "unet" / "w.bin").write_bytes(WEIGHTS)
    entry, = entries_for({"unet/w.bin": WEIGHTS})
    assert _fetch(LocalFetcher(tmp_path / "src", "tiny"), entry, Store(home)) == WEIGHTS


def test_local_source_refuses_symlinks_anywhere_in_the_path(home, tmp_path):
    secret = tmp_path / "secret"
    (secret / "unet").mkdir(parents=True)
    (secret / "unet" / "w.bin").write_bytes(b"private")
    src = tmp_path / "src"
    src.mkdir()
    (src / "unet").symlink_to(secret / "unet")  # a directory link escaping the source
    entry, = entries_for({"unet/w.bin": b"private"})
    with pytest.raises(FetchError, match=r"src/unet: is a symbolic link; local sources must hold regular "
                                         r"files only \(refused\)"):
        _fetch(LocalFetcher(src, "tiny"), entry, Store(home))
    (src / "unet").unlink()
    (src / "unet").mkdir()
    (src / "unet" / "w.bin").symlink_to(secret / "unet" / "w.bin")  # a file link
    with pytest.raises(FetchError, match="w.bin: is a symbolic link"):
        _fetch(LocalFetcher(src, "tiny"), entry, Store(home))


def test_local_source_refuses_special_and_oversized_files(home, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "pipe")
    with pytest.raises(FetchError, match="pipe: not a regular file; refused"):
        _fetch(LocalFetcher(src, "tiny"), FileEntry("pipe", "0" * 64, 10), Store(home))
    (src / "big").write_bytes(b"x" * 11)
    with pytest.raises(IntegrityError, match="big: 11 bytes, more than the 10 the manifest allows; refused"):
        _fetch(LocalFetcher(src, "tiny"), FileEntry("big", "0" * 64, 10), Store(home))
    with pytest.raises(FetchError, match=r"gone of model 'tiny' is not in .*src \(looked for blobs/sha256/00/0+, "
                                         r"tiny/gone, gone\)"):
        _fetch(LocalFetcher(src, "tiny"), FileEntry("gone", "0" * 64, 10), Store(home))


def test_local_source_kind_needs_a_directory(options):
    with pytest.raises(FetchError, match=r"model 'tiny' has a local source: install it with "
                                         r"`pennello install --from DIR`"):
        fetcher_for(Source("local"), "tiny", options)
