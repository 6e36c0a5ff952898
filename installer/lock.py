"""Locking an unlocked catalog entry: record the sha256 and size of every file, sign locally.

A shipped entry for a Hub model pins a repository at a full commit but lists no files (the
project does not redistribute those weights or their hashes). ``pennello manifest lock NAME
--key KEYNAME`` fetches each file once, records what arrived, sets ``locked`` and
``trust_on_first_use`` (the hashes are what *this* machine saw first, not the publisher's),
signs the result with a local key and writes it to the user catalog. Nothing else changes,
the version included, so the locked copy replaces the unlocked one in the catalog.

Which files: ``--files`` names them; otherwise a Hub repository is listed through its API and
reduced to what a diffusers pipeline loads (see :func:`pipeline_files`), and a mirror lists
its files in ``index.json`` at its ``base_url`` (a JSON list of relative paths). The fetched
files go into the store as blobs, so the install that follows downloads nothing again.

    $ pennello keys generate office
    $ pennello manifest lock sd-turbo --key office
    $ pennello install sd-turbo
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Callable

from tqdm import tqdm

from pennello.config import Config
from pennello.errors import ManifestFormatError
from pennello.installer.catalog import Catalog
from pennello.installer.keys import load_private_key, sign_signed
from pennello.installer.manifest import FileEntry, check_relative_path, dump_envelope
from pennello.installer.fetchers import FetchOptions, Fetcher, fetcher_for
from pennello.installer.store import Store
from pennello.installer.trust import TrustPolicy
from pennello.paths import Paths

log = logging.getLogger(__name__)

# Weight formats diffusers does not need when the same folder has safetensors.
_OTHER_WEIGHTS = (".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".h5", ".onnx", ".onnx_data", ".pb", ".ot")
_ROOT_KEEP = ("model_index.json", "LICENSE", "LICENSE.md", "LICENSE.txt", "README.md")


def pipeline_files(paths: list[str]) -> list[str]:
    """The files of a Hub repository that ``from_pretrained`` loads.

    Keeps ``model_index.json`` and licence/readme at the root (root weights are single-file
    checkpoints), everything in component folders except precision variants (``*.fp16.*``) and
    other weight formats where the folder has ``.safetensors``.

        >>> pipeline_files(["sd.safetensors", "model_index.json", "unet/a.safetensors",
        ...                 "unet/a.fp16.safetensors", "unet/a.bin", "unet/config.json"])
        ['model_index.json', 'unet/a.safetensors', 'unet/config.json']
    """
    with_safetensors = {str(PurePosixPath(p).parent) for p in paths if p.endswith(".safetensors")}
    kept = []
    for path in paths:
        pure = PurePosixPath(path)
        if pure.parent == PurePosixPath("."):
            if path in _ROOT_KEEP:
                kept.append(path)
            continue
        if ".fp16." in pure.name or pure.name.startswith("."):
            continue
        if str(pure.parent) in with_safetensors and pure.name.endswith(_OTHER_WEIGHTS):
            continue
        kept.append(path)
    return sorted(kept)


def lock_manifest(paths: Paths, config: Config, target: str, key_name: str,
                  files: list[str] | None = None, options: FetchOptions | None = None,
                  progress: bool = True,
                  confirm: Callable[[str, dict[str, int | None]], None] | None = None) -> Path:
    """Lock an unlocked manifest (a catalog name or a manifest file) and sign it with ``key_name``.

    Args:
        confirm: called with the model's name and the size of each file to fetch (None where
            the source does not say) before anything is fetched; it raises to stop (the
            ``manifest lock`` command asks the user there, see :mod:`pennello.consent`).

    Returns:
        where the locked manifest was written (the user catalog).

    Raises:
        TrustError: the unlocked manifest does not verify, or the signing key is not trusted here.
        ManifestFormatError: it is locked already, or lists no files to lock.
        FetchError, IntegrityError, DiskSpaceError: a file could not be fetched.
    """
    policy = TrustPolicy.load(paths, config.trust)
    raw = Path(target).read_bytes() if Path(target).is_file() else Catalog(paths).get(target).raw
    manifest = policy.verify(raw)  # spend no bandwidth on an entry we would not trust
    if manifest.locked:
        raise ManifestFormatError(f"manifest {manifest.name!r} v{manifest.version} is already locked")
    options = options or FetchOptions(downloads_dir=paths.downloads_dir,
                                      max_file_bytes=config.trust.max_file_bytes)
    fetcher = fetcher_for(manifest.source, manifest.name, options)
    wanted = [check_relative_path(f) for f in files] if files else default_files(fetcher, manifest.source.kind)
    if not wanted:
        raise ManifestFormatError(f"no files to lock for {manifest.name!r}; name them with --files")
    if confirm is not None and fetcher.remote:
        confirm(f"{manifest.name} v{manifest.version}", fetcher.sizes(wanted))
    entries = fetch_and_record(Store(paths), fetcher, wanted, manifest.name, progress)
    signed = replace(manifest, files=tuple(entries), locked=True, trust_on_first_use=True).to_signed()
    locked = dump_envelope(signed, [sign_signed(signed, load_private_key(key_name, paths))])
    policy.verify(locked)  # the local key must be trusted, or the locked copy could not be installed
    written = Catalog(paths).write_user(manifest.name, locked)
    log.info("locked %s v%d: %d files, written to %s", manifest.name, manifest.version, len(entries), written)
    return written


def default_files(fetcher: Fetcher, kind: str) -> list[str]:
    """The files to lock when none are named: a Hub repository's pipeline files, a mirror's index."""
    listed = fetcher.list_files()
    return pipeline_files(listed) if kind == "huggingface" else sorted(listed)


def fetch_and_record(store: Store, fetcher: Fetcher, wanted: list[str], name: str,
                     progress: bool) -> list[FileEntry]:
    """Fetch each of ``wanted`` into the store once and record its sha256 and size as it arrived."""
    entries = []
    with store.lock(), tqdm(unit="B", unit_scale=True, desc=f"lock {name}"[:40],
                            disable=None if progress else True) as bar:
        for path in wanted:
            with store.temp_file(path) as temp:
                digest = fetcher.fetch_unknown(path, temp, bar.update)  # hashed as it arrived
                entry = FileEntry(path, digest, temp.stat().st_size)
                store.ingest(temp, entry, digest)
            entries.append(entry)
    return entries
