"""Installing over a real HTTP mirror: every file of a version arrives intact, or nothing changes.

The attacks here need the whole install flow rather than one fetcher or the store alone:
files of two versions mixed under one manifest, a download interrupted between two runs of
``pennello install``, and a file two models share being fetched once.
"""

from __future__ import annotations

import hashlib

import pytest

from _fixtures_installer import make_manifest, store_listing
from pennello.config import Config
from pennello.errors import FetchError, IntegrityError
from pennello.installer import Installer, Store, TrustPolicy
from pennello.installer.manifest import Source
from pennello.installer.fetchers import FetchOptions

SHARED = b"shared tokenizer " * 100
WEIGHTS_1 = bytes(range(256)) * 1024  # 256 KiB
WEIGHTS_2 = bytes(reversed(range(256))) * 1024  # same size, other bytes
V1 = {"model_index.json": b'{"v": 1}', "tokenizer/vocab.json": SHARED, "unet/w.bin": WEIGHTS_1}
V2 = {"model_index.json": b'{"v": 2}', "tokenizer/vocab.json": SHARED, "unet/w.bin": WEIGHTS_2}


@pytest.fixture
def install(home, mirror, publish):
    """``install(name, files, version=1)``: serve ``files`` at ``mirror/<name>/`` and install them."""
    def run(name: str, files: dict[str, bytes], version: int = 1, serve: bool = True):
        if serve:
            mirror.files.update({f"{name}/{path}": data for path, data in files.items()})
        manifest = make_manifest(name, files, version, source=Source("mirror", base_url=f"{mirror.url}/{name}"))
        options = FetchOptions(downloads_dir=home.downloads_dir, retries=0, read_timeout_s=5)
        return Installer(home, Config(), options=options, progress=False).install_raw(publish(manifest))
    return run


def test_files_of_another_version_are_refused_and_the_old_version_stays(home, mirror, install):
    install("tiny", V1)
    mirror.files.update({f"tiny/{path}": data for path, data in V2.items()})
    mirror.substitute["tiny/unet/w.bin"] = WEIGHTS_1  # v1's weights served under v2's manifest
    with pytest.raises(IntegrityError) as e:
        install("tiny", V2, version=2, serve=False)
    assert str(e.value) == (f"unet/w.bin: sha256 {hashlib.sha256(WEIGHTS_1).hexdigest()}, manifest says "
                            f"{hashlib.sha256(WEIGHTS_2).hexdigest()}; the file was refused and deleted")
    store = Store(home)
    assert store.get("tiny").version == 1 and not (store.models_dir / "tiny" / "v2").exists()
    assert store.verify(["tiny"], progress=False) == []
    assert TrustPolicy.load(home, Config().trust).seen_version("tiny") == 1  # v2 was never recorded

    del mirror.substitute["tiny/unet/w.bin"]
    assert install("tiny", V2, version=2, serve=False).version == 2  # the retry is not blocked


def test_an_interrupted_install_resumes_where_it_stopped(home, mirror, install):
    mirror.drop_after["tiny/unet/w.bin"] = 100_000
    with pytest.raises(FetchError) as e:
        install("tiny", V1)
    message = str(e.value)  # the middle is the connection error, worded by urllib3
    assert message.startswith(f"{mirror.url}/tiny/unet/w.bin: download failed after 1 attempts (")
    assert message.endswith(f"); 100000 of {len(WEIGHTS_1)} bytes are kept and the next attempt resumes from there")
    assert Store(home).names() == [] and store_listing(home) == {}  # not even the files that did arrive

    assert install("tiny", V1, serve=False).version == 1  # a new `pennello install` run
    assert mirror.ranges("tiny/unet/w.bin") == ["bytes=100000-"]
    # The files that arrived whole were set aside, checked again and taken: not downloaded twice.
    assert [path for path, _ in mirror.requests].count("tiny/model_index.json") == 1
    assert (Store(home).get("tiny").path / "unet/w.bin").read_bytes() == WEIGHTS_1
    assert list(home.downloads_dir.iterdir()) == []


def test_a_file_two_models_share_is_fetched_once(home, mirror, install):
    install("alpha", V1)
    install("beta", V2)
    fetched = [path for path, _ in mirror.requests]
    assert "alpha/tokenizer/vocab.json" in fetched and "beta/tokenizer/vocab.json" not in fetched
    store = Store(home)
    assert store.blob_path(hashlib.sha256(SHARED).hexdigest()).stat().st_nlink == 3


def test_downloads_are_hashed_as_they_arrive_and_never_read_back(home, mirror, install, monkeypatch):
    """One pass over the bytes: the store checks the digest the download computed."""
    from pennello.installer import blobs

    hashed: list[str] = []
    real = blobs.file_sha256
    monkeypatch.setattr(blobs, "file_sha256", lambda path: hashed.append(str(path)) or real(path))
    model = install("tiny", V1)
    assert hashed == []
    assert Store(home).verify(["tiny"], progress=False) == [] and len(hashed) == len(V1)  # verify still reads
    assert (model.path / "unet/w.bin").read_bytes() == WEIGHTS_1


def test_a_partial_changed_between_runs_is_refused_and_the_store_stays_as_it_was(home, mirror, install):
    """The resumed part is hashed again, not trusted because it is ours."""
    mirror.drop_after["tiny/unet/w.bin"] = 100_000
    with pytest.raises(FetchError):
        install("tiny", V1)
    partial = home.downloads_dir / f"{hashlib.sha256(WEIGHTS_1).hexdigest()}.part"
    with open(partial, "r+b") as f:  # one byte of the kept part changes on disk
        f.seek(5)
        f.write(b"\xff")
    before = store_listing(home)
    with pytest.raises(IntegrityError, match=r"^unet/w.bin: sha256 [0-9a-f]{64}, manifest says "
                                             + hashlib.sha256(WEIGHTS_1).hexdigest()):
        install("tiny", V1, serve=False)
    assert mirror.ranges("tiny/unet/w.bin") == ["bytes=100000-"]
    assert store_listing(home) == before and not partial.exists()
    assert (install("tiny", V1, serve=False).path / "unet/w.bin").read_bytes() == WEIGHTS_1  # afresh
    assert mirror.ranges("tiny/unet/w.bin") == ["bytes=100000-"]


def test_the_files_of_an_install_download_at_the_same_time(home, mirror, install):
    """A few streams at once, as huggingface_hub downloads: the mirror answers these three files
    only while all three are being asked for, so fetching one after another fails with a 503."""
    files = {f"unet/part-{n}.bin": bytes([n]) * 300_000 for n in range(3)}
    mirror.together = {f"tiny/{path}" for path in files}
    model = install("tiny", files)
    assert all((model.path / path).read_bytes() == data for path, data in files.items())


def test_a_failed_file_stops_the_others_and_the_store_stays_as_it_was(home, mirror, install):
    """The other downloads end before the failure is reported: none of them becomes a blob after
    the store was put back, and what each of them had is kept for the next attempt."""
    files = {f"unet/part-{n}.bin": bytes([n]) * 2_000_000 for n in range(3)}
    mirror.together = {f"tiny/{path}" for path in files}
    mirror.substitute["tiny/unet/part-0.bin"] = b"\xff" * 2_000_000
    with pytest.raises(IntegrityError, match="^unet/part-0.bin: sha256 "):
        install("tiny", files)
    assert store_listing(home) == {} and Store(home).names() == []
    kept = {p.name: p.stat().st_size for p in home.downloads_dir.iterdir()}
    assert set(kept) <= {f"{hashlib.sha256(files[f'unet/part-{n}.bin']).hexdigest()}.part" for n in (1, 2)}
    del mirror.substitute["tiny/unet/part-0.bin"]
    mirror.together = set()
    assert install("tiny", files, serve=False).version == 1


def test_pennello_install_names_the_largest_files_before_it_asks(home, mirror, publish):
    """What a download holds, not only its size: the first dozen files, largest first."""
    import os
    import subprocess
    import sys

    from pennello.installer.catalog import Catalog

    files = {f"unet/shard-{n:02d}.bin": b"w" * (1000 + n) for n in range(14)}
    mirror.files.update({f"sharded/{path}": data for path, data in files.items()})
    Catalog(home).write_user("sharded", publish(make_manifest(
        "sharded", files, source=Source("mirror", base_url=f"{mirror.url}/sharded"))))
    env = {**os.environ, "PENNELLO_HOME": str(home.runtime_dir.parent), "PENNELLO_INSTALLER_CONFIRM_OVER_MB": "0"}
    refused = subprocess.run([sys.executable, "-m", "pennello", "install", "sharded"], capture_output=True,
                             text=True, stdin=subprocess.DEVNULL, env=env, timeout=120)
    assert refused.returncode == 10, refused.stderr
    listed = refused.stderr.split("to download: 14 files, 14.1 KB (licence sharded: Apache-2.0)\n")[1]
    assert listed.splitlines()[:13] == [f"     1.0 KB  unet/shard-{n:02d}.bin" for n in range(13, 1, -1)] \
        + ["  and 2 smaller files"]
    assert mirror.requests == []  # nothing downloaded before the answer
