"""Write and sign the shipped catalog (``manifests/<name>.json``) and the shipped trusted root.

``pennello-tiny`` is *locked*: every file of ``installer/embedded/pennello-tiny/`` is listed
with its sha256 and size. The other entries pin a Hugging Face repository at a full commit. As
written they are *unlocked* (no file list: ``pennello install`` derives every hash from the
signed commit's git objects, ``signed commit``). ``--lock``, on a machine with internet, fetches
those git objects (:mod:`pennello.installer.gitpin`, as the install does: shallow, re-hashed
from the commit id down, no weights downloaded) and writes each pipeline file's sha256 and size
into the entry, which is then locked and checked as ``signed hashes``. A later run without
``--lock`` keeps the files of an entry already locked at the same commit.

Running it again changes nothing unless an entry's content changed (or ``--renew`` is given):
then that entry gets ``version + 1``, a fresh ``created``, ``expires`` a year later, and a new
signature. Timestamps and version alone never count as a change, so a rebuild that writes the
same bytes leaves the manifests as they are.

A release runs (see docs/releasing.md)::

    nice -n 19 python packaging/train_embedded_model.py
    python packaging/sign_catalog.py --lock --key ../shared/keys/pennello-release-2026.key

The trusted root (``installer/embedded/root.json``) lists the release key in both its roles
(``root`` and ``manifests``, threshold 1). It is re-signed the same way: only when its keys or
thresholds change (or ``--renew``), with ``version + 1`` and ``expires`` two years on, and only if
the result is a valid successor of the root already there (signed by the old root's keys), so
machines that applied it can follow. Rotating the release key itself is a root that the old key
*and* the new one sign: make it with ``pennello keys root draft`` and ``pennello keys root sign``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pennello.errors import ManifestFormatError, PennelloError
from pennello.installer.fetchers import FetchOptions, fetcher_for
from pennello.installer.keys import TrustedKey, key_id, load_private_key, sign_signed
from pennello.installer.lock import pipeline_files
from pennello.installer.manifest import (FileEntry, Manifest, PipelineSpec, Source, dump_envelope,
                                         parse_envelope)
from pennello.installer.root import Role, Root, parse_root, verify_next
from pennello.files import write_atomic
from pennello.installer.store import file_sha256
from pennello.paths import get_paths

log = logging.getLogger("sign_catalog")

REPO_ROOT = Path(__file__).resolve().parent.parent
MANIFESTS_DIR = REPO_ROOT / "manifests"
EMBEDDED_DIR = REPO_ROOT / "installer" / "embedded"
DEFAULT_KEY = REPO_ROOT.parent / "shared" / "keys" / "pennello-release-2026.key"
ROOT_PATH = EMBEDDED_DIR / "root.json"
VALIDITY = timedelta(days=365)
ROOT_VALIDITY = timedelta(days=2 * 365)  # outlives the manifests it vouches for
# What may differ between two signings of the same content.
_VOLATILE = ("version", "created", "expires")

# The model cards of both Turbo repositories declare `license: other, license_name:
# sai-nc-community`; the LICENSE file inside the repository is what binds, and Stability has
# changed its terms over time, so the description sends users to it.
_SAI_NOTE = ("Licence: Stability AI non-commercial community licence (model card: "
             "'sai-nc-community'); read LICENSE in the repository, and https://stability.ai/license "
             "for commercial use.")

@dataclass(frozen=True)
class Entry:
    """What the catalog says about one model, less what signing adds (version, dates, files)."""

    cls: str
    family: str
    license: str
    defaults: dict[str, Any]
    description: str
    repo: str | None = None  # None: embedded in the package, files hashed from EMBEDDED_DIR
    revision: str | None = None
    max_native_size: int | None = None  # for a model trained at one small size

    def manifest(self, name: str, now: datetime) -> Manifest:
        if self.repo is None:
            source, files = Source("embedded"), file_entries(EMBEDDED_DIR / name)
        else:
            source, files = Source("huggingface", repo=self.repo, revision=self.revision), ()
        return Manifest(name=name, version=1, created=now, expires=now + VALIDITY,
                        pipeline=PipelineSpec(self.cls, self.family, self.defaults, self.max_native_size),
                        license=self.license, source=source, files=files, locked=bool(files),
                        description=self.description)


# Hub commits are ones published as pins of these repositories (cache snapshot paths,
# revision= arguments) by several unrelated projects.
CATALOG: dict[str, Entry] = {
    "pennello-tiny": Entry(
        "StableDiffusionPipeline", "sd", "Apache-2.0",
        {"width": 64, "height": 64, "steps": 4, "guidance": 2.0},  # train_embedded_model.GUIDANCE
        "A ~5 MB Stable Diffusion pipeline shipped inside pennello: installs with no download and "
        "draws a 64x64 picture in well under a second on a CPU. Trained on one subject only: a "
        "circle, square, triangle or star in one of eight colours on a plain background, e.g. "
        "'a small red circle on a blue background, top left'.",
        max_native_size=64),  # trained on 64x64 scenes only: larger sizes are noise
    "sd-turbo": Entry(
        "StableDiffusionPipeline", "sd", "sai-nc-community",
        {"width": 512, "height": 512, "steps": 1, "guidance": 0.0},
        "SD-Turbo: Stable Diffusion 2.1 distilled for 1-4 steps. The default real model: one step "
        "at 512x512, runs on modest GPUs. " + _SAI_NOTE,
        repo="stabilityai/sd-turbo", revision="b261bac6fd2cf515557d5d0707481eafa0485ec2"),
    "sdxl-turbo": Entry(
        "StableDiffusionXLPipeline", "sdxl", "sai-nc-community",
        {"width": 512, "height": 512, "steps": 1, "guidance": 0.0},
        "SDXL-Turbo: SDXL 1.0 distilled for 1-4 steps at 512x512; better prompt following than "
        "SD-Turbo, at about three times the size. " + _SAI_NOTE,
        repo="stabilityai/sdxl-turbo", revision="71153311d3dbb46851df1931d3ca6e939de83304"),
    "flux.1-schnell": Entry(
        "FluxPipeline", "flux", "Apache-2.0",
        {"width": 1024, "height": 1024, "steps": 4, "guidance": 0.0},
        "FLUX.1 [schnell]: 12B rectified-flow transformer, 4 steps at 1024x1024. High quality; "
        "needs a large GPU (bfloat16) or CPU offload.",
        repo="black-forest-labs/FLUX.1-schnell", revision="741f7c3ce8b383c54771c7003378a50191e9efe9"),
    # The 2509 model: the Plus pipeline, which takes up to 3 reference pictures per edit.
    "qwen-image-edit": Entry(
        "QwenImageEditPlusPipeline", "qwen-image-edit", "Apache-2.0",
        {"width": 1024, "height": 1024, "steps": 40, "guidance": 4.0},
        "Qwen-Image-Edit-2509: 20B instruction-based image editing: one to three input pictures "
        "plus a text instruction ('put the cat of picture 1 on the sofa of picture 2'). Edits "
        "only (POST /api/edit); needs a large GPU (bfloat16) or CPU offload.",
        repo="Qwen/Qwen-Image-Edit-2509", revision="d3968ef930e841f4c73640fb8afa3b306a78167e"),
    # The AI upscaler of `pennello upscale --method ai` ([images] upscale_model).
    "sd-x4-upscaler": Entry(
        "StableDiffusionUpscalePipeline", "sd-upscale", "openrail++",
        {"width": 128, "height": 128, "steps": 20, "guidance": 0.0},
        "Stable Diffusion x4 upscaler: a text-guided latent diffusion model that enlarges a "
        "picture 4x (pennello runs it tile by tile; 2x and 8x are built on its 4x pass). "
        "Upscaling only (POST /api/upscale with method=ai); about 1.7 GB in float16.",
        repo="stabilityai/stable-diffusion-x4-upscaler", revision="572c99286543a273bfd17fac263db5a77be12c4c"),
    # The tiny decoder of SD 1/2-class models (decoder: tiny). Its commit is the one a published
    # provenance record pins (model card at this revision; diffusion_pytorch_model.safetensors
    # 9,793,292 bytes, sha256 db169d69...3549); TAESDXL and TAEF1 wait for confirmed commits.
    "taesd": Entry(
        "AutoencoderTiny", "tiny-decoder", "MIT", {},
        "TAESD: a tiny distilled decoder for SD 1.x/2.x latents (about 10 MB). Not a model to draw "
        "with: generate requests with decoder=tiny use it instead of the full VAE, several times "
        "faster on a CPU at a little fine detail.",
        repo="madebyollin/taesd", revision="614f76814bbe30edbe2e627ace1c2234c81a2c0e"),
}


def file_entries(directory: Path) -> tuple[FileEntry, ...]:
    """Path, sha256 and size of every file under ``directory``, sorted by path."""
    return tuple(FileEntry(path.relative_to(directory).as_posix(), file_sha256(path), path.stat().st_size)
                 for path in sorted(p for p in directory.rglob("*") if p.is_file()))


def catalog(now: datetime, out: Path = MANIFESTS_DIR) -> list[Manifest]:
    """Every manifest the catalog should hold, at version 1 and dated ``now``; entries already
    locked in ``out`` at the same commit keep their files."""
    return [keep_lock(entry.manifest(name, now), out) for name, entry in CATALOG.items()]


def lock(manifest: Manifest, options: FetchOptions) -> Manifest:
    """``manifest`` listing the sha256 and size of each pipeline file of the commit it pins,
    derived from that commit's git objects (re-hashed from the commit id down, as an install
    does), so it installs as ``signed hashes``.

    Raises:
        FetchError, IntegrityError, CommitObjectsUnavailable: the objects cannot be had intact.
    """
    if manifest.source.kind != "huggingface" or manifest.locked:
        return manifest
    derived = fetcher_for(manifest.source, manifest.name, options).commit_files(
        pipeline_files, manifest.source.revision or "")
    log.info("locked %s: %d files from commit %s", manifest.name, len(derived.files), manifest.source.revision)
    return replace(manifest, files=derived.files, locked=True)


def keep_lock(manifest: Manifest, out: Path) -> Manifest:
    """``manifest`` with the files of the entry in ``out`` if that one is locked at the same source."""
    old = None if manifest.locked else _existing(out / f"{manifest.name}.json")
    if old is None or not old[0].get("locked"):
        return manifest
    signed = Manifest.from_signed(old[0])
    if signed.source != manifest.source or signed.trust_on_first_use:
        return manifest
    return replace(manifest, files=signed.files, locked=True)


def _content(signed: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in signed.items() if k not in _VOLATILE}


def _existing(path: Path) -> tuple[dict[str, Any], list[dict[str, str]]] | None:
    try:
        return parse_envelope(path.read_bytes())
    except FileNotFoundError:
        return None
    except ManifestFormatError as e:
        raise ManifestFormatError(f"{path}: {e}; fix or delete it, then sign again") from e


def sign_entry(manifest: Manifest, key: Ed25519PrivateKey, out: Path = MANIFESTS_DIR,
               renew: bool = False) -> bool:
    """Write ``<out>/<name>.json`` if its content (or signer) changed; True when written.

    Args:
        manifest: the wanted manifest; its version and dates are replaced as needed.
        key: the release private key.
        out: the catalog directory.
        renew: re-sign with fresh dates even when nothing changed (before ``expires`` nears).
    """
    path = out / f"{manifest.name}.json"
    signed = manifest.to_signed()
    old = _existing(path)
    if old is not None:
        old_signed, old_sigs = old
        # Ed25519 signatures are deterministic: re-signing reproduces a valid old signature exactly.
        if not renew and _content(old_signed) == _content(signed) \
                and sign_signed(old_signed, key) in old_sigs:
            return False
        # Rollback protection: a re-signed manifest must carry a higher version than the old one.
        signed["version"] = int(old_signed.get("version", 0)) + 1
    Manifest.from_signed(signed)  # refuse to sign anything pennello itself would not accept
    write_atomic(path, dump_envelope(signed, [sign_signed(signed, key)]))
    path.chmod(0o644)  # package data: readable by everyone once installed from a wheel
    log.info("signed %s v%d", path, signed["version"])
    return True


def sign_root(key: Ed25519PrivateKey, key_name: str, path: Path = ROOT_PATH, renew: bool = False,
              now: datetime | None = None) -> bool:
    """Write the shipped root (the release key in both roles) if it changed; True when written.

    Raises:
        PennelloError: the new root would not follow the one already at ``path`` (a different
            release key: rotate it with `pennello keys root draft` and `sign` by both keys).
    """
    now = now or datetime.now(timezone.utc)
    release = TrustedKey(key_id(key.public_key()), key_name, key.public_key(), "root")
    both = Role((release.keyid,), 1)
    wanted = Root(1, now + ROOT_VALIDITY, {release.keyid: release}, {"root": both, "manifests": both})
    old = parse_root(path.read_bytes())[0] if path.exists() else None
    if old is not None:
        same = {k: old.to_signed()[k] for k in ("keys", "roles")} == \
            {k: wanted.to_signed()[k] for k in ("keys", "roles")}
        if same and not renew:
            return False
        wanted = Root(old.version + 1, wanted.expires, wanted.keys, wanted.roles)
    signed = wanted.to_signed()
    raw = dump_envelope(signed, [sign_signed(signed, key)])
    if old is not None:
        verify_next(old, raw)  # machines that trust the old root must be able to follow
    write_atomic(path, raw)
    path.chmod(0o644)
    log.info("signed %s v%d", path, wanted.version)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--key", type=Path, default=DEFAULT_KEY,
                        help=f"release private key (PEM, Ed25519); default {DEFAULT_KEY}")
    parser.add_argument("--out", type=Path, default=MANIFESTS_DIR,
                        help=f"catalog directory to write (default {MANIFESTS_DIR})")
    parser.add_argument("--root-out", type=Path,
                        help=f"trusted root to write (default {ROOT_PATH} when --out is the shipped "
                             f"catalog; otherwise no root is signed unless this is given)")
    parser.add_argument("--renew", action="store_true",
                        help="re-sign every entry with fresh dates and a higher version")
    parser.add_argument("--lock", action="store_true",
                        help="record each Hub entry's file hashes from its commit's git objects (needs internet)")
    parser.add_argument("--hub-endpoint", metavar="URL",
                        help="with --lock: the Hub to ask (default: HF_ENDPOINT, else huggingface.co)")
    args = parser.parse_args(argv)
    # A catalog written elsewhere (a test, a trial) must never replace the shipped root.
    root_out = args.root_out or (ROOT_PATH if args.out.resolve() == MANIFESTS_DIR.resolve() else None)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        key = load_private_key(str(args.key), get_paths())
        manifests = catalog(datetime.now(timezone.utc), args.out)
        if args.lock:
            with tempfile.TemporaryDirectory(prefix="sign-catalog.") as downloads:
                options = FetchOptions(downloads_dir=Path(downloads), hub_endpoint=args.hub_endpoint)
                manifests = [lock(m, options) for m in manifests]
        written = sum(sign_entry(m, key, args.out, args.renew) for m in manifests)
        if root_out is not None:
            written += sign_root(key, args.key.stem, root_out, renew=args.renew)
        else:
            log.info("no trusted root signed: --out is not the shipped catalog (give --root-out)")
    except PennelloError as e:
        parser.exit(e.exit_code, f"error: {e}\n")
    log.info("%d file(s) written, the rest unchanged", written)


if __name__ == "__main__":
    main()
