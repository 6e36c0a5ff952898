"""The signed catalog's models, built tiny, installed from a stand-in Hub and served by a daemon.

For every catalog model that ``bench/archs.py`` can build (``CATALOG_ARCHS``), the session
fixture ``catalog_daemon``:

1. builds the real pipeline class with random weights and shrunk widths (``tiny=True``: the same
   diffusers/transformers classes, block types, latent channels and ``model_index.json``) and
   saves it with ``save_pretrained`` in the real repository's layout (safetensors);
2. commits those files into a git repository named like the real one (``stabilityai/sd-turbo``)
   on the stand-in Hub (dulwich smart HTTP, the weights as Git LFS pointers);
3. signs a copy of the shipped manifest (same name, version, pipeline class, family and
   defaults) that pins that commit, with a throwaway key trusted in a session home;
4. runs the real ``pennello install NAME --yes`` against the Hub (``HF_ENDPOINT``);
5. starts ``pennello serve`` on that home.

Random weights draw noise: this proves that each model installs, loads with its family's
pipeline class and draws at its manifest's defaults through the daemon, not picture quality.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest

from _fixtures_owner import SERVED
from _fixtures_installer import KEY_NAME, Hub, serve_hub
from pennello.installer.manifest import Manifest, Source, dump_envelope, parse_envelope
from pennello.paths import Paths, get_paths

ROOT = Path(__file__).resolve().parent.parent
LFS_SUFFIXES = (".safetensors", ".bin")  # what the Hub's default .gitattributes stores in LFS


def bench_archs() -> Any:
    """``bench/archs.py``, imported the way the benchmarks import it (bench/ on sys.path)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return importlib.import_module("archs")
    finally:
        sys.path.remove(str(ROOT / "bench"))


def shipped_manifest(name: str) -> Manifest:
    """The catalog's entry for ``name`` as pennello ships it (``manifests/NAME.json``)."""
    signed, _ = parse_envelope((ROOT / "manifests" / f"{name}.json").read_bytes())
    return Manifest.from_signed(signed)


def tiny_repository(name: str) -> dict[str, bytes]:
    """The files of ``name``'s repository with tiny random weights, as ``save_pretrained`` writes them."""
    archs = bench_archs()
    pipe = archs.build_pipeline(archs.CATALOG_ARCHS[name], tiny=True)
    with tempfile.TemporaryDirectory() as folder:
        pipe.save_pretrained(folder, safe_serialization=True)
        return {path.relative_to(folder).as_posix(): path.read_bytes()
                for path in sorted(Path(folder).rglob("*")) if path.is_file()}


def pinned_manifest(name: str, commit: str) -> Manifest:
    """The shipped entry, re-pinned to ``commit`` of the stand-in repository, fresh dates."""
    shipped = shipped_manifest(name)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    return dataclasses.replace(shipped, created=now, expires=now + timedelta(days=30),
                               source=Source("huggingface", repo=shipped.source.repo, revision=commit))


def sign(home: Paths, manifest: Manifest) -> bytes:
    """A signed envelope, by the key ``catalog_daemon`` made and trusted in ``home``."""
    from pennello.installer.keys import load_private_key, sign_signed

    signed = manifest.to_signed()
    return dump_envelope(signed, [sign_signed(signed, load_private_key(KEY_NAME, home))])


def pennello(home: Paths, hub_url: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real command line, on ``home``, with the stand-in Hub as its endpoint."""
    env = {**os.environ, "PENNELLO_HOME": str(home.runtime_dir.parent), "HF_ENDPOINT": hub_url,
           "HF_HUB_OFFLINE": "0", "PENNELLO_INSTALLER_CONFIRM_OVER_MB": "0"}
    return subprocess.run([sys.executable, "-m", "pennello", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@dataclass
class CatalogDaemon:
    """A ``pennello serve`` whose home has the catalog's models installed from the stand-in Hub."""

    url: str
    home: Paths
    hub: Hub
    repositories: dict[str, dict[str, bytes]]  # model name -> the files committed for it
    installs: dict[str, subprocess.CompletedProcess]  # model name -> its `pennello install`


def publish_and_install(home: Paths, hub: Hub, name: str) -> tuple[dict[str, bytes], subprocess.CompletedProcess]:
    """Build, commit, sign and ``pennello install`` one catalog model."""
    from pennello.installer.catalog import Catalog

    files = tiny_repository(name)
    repo = shipped_manifest(name).source.repo
    commit = hub.publish(repo, files, {path for path in files if path.endswith(LFS_SUFFIXES)})
    Catalog(home).write_user(name, sign(home, pinned_manifest(name, commit)))
    return files, pennello(home, hub.url, "install", name, "--yes")


@pytest.fixture(scope="session")
def catalog_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CatalogDaemon]:
    """Every model of ``CATALOG_ARCHS`` installed and a daemon serving them (built once per session)."""
    from test_cli_daemon import Daemon

    from pennello.installer.keys import generate_key

    home = get_paths(tmp_path_factory.mktemp("catalog") / "home").ensure()
    generate_key(home, KEY_NAME)
    repositories, installs = {}, {}
    with serve_hub() as hub:
        for name in bench_archs().CATALOG_ARCHS:
            repositories[name], installs[name] = publish_and_install(home, hub, name)
        daemon = Daemon(home)
        SERVED[daemon.url] = home  # plain requests to it go as the owner (tests/_fixtures_owner.py)
        try:
            yield CatalogDaemon(daemon.url, home, hub, repositories, installs)
        finally:
            SERVED.pop(daemon.url, None)
            if daemon.process.poll() is None:
                daemon.terminate()
