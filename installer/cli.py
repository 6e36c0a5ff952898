"""The installer's commands: install, models, verify, remove, bundle, keys and manifest.

They parse options, call :mod:`pennello.installer` and print; errors are PennelloErrors, turned
into a message and an exit code by the top-level ``pennello`` group.

    $ pennello install pennello-tiny
    $ pennello models
    $ pennello verify
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import click

from pennello.cli_output import emit, error_document, json_output
from pennello.config import InstallerConfig, load_config
from pennello.consent import ASSUME_YES_ENV, confirm
from pennello.errors import IntegrityError, ModelNotFoundError
from pennello.installer.bundle import export_bundle, import_bundle, trust_bundle_keys
from pennello.installer.wheelhouse import LOCK_FILE, verify_bundle
from pennello.installer.catalog import Catalog, CatalogEntry
from pennello.installer.cli_progress import JsonLines, stopped_by_sigterm
from pennello.installer.cli_trust import keys, manifest
from pennello.installer.install import Downloads, Installer, Verified, format_bytes
from pennello.installer.lock import lock_manifest
from pennello.installer.manifest import Manifest
from pennello.installer.store import FIRST_FETCH, InstalledModel, Store, file_sha256
from pennello.paths import get_paths

__all__ = ["install", "models", "verify", "remove", "bundle", "keys", "manifest"]

_EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


@click.command()
@click.argument("names", nargs=-1)
@click.option("--from", "from_dir", type=_EXISTING_DIR,
              help="Install every model of a bundle (or a directory with manifests/ and the files).")
@click.option("--manifest", "manifest_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Install the model this signed manifest file describes.")
@click.option("--trust-bundle-keys", "trust_keys", is_flag=True,
              help="With --from: trust the bundle's keys/*.pub first (their key ids are printed).")
@click.option("--yes", "-y", is_flag=True,
              help=f"Download without asking, whatever the size (or set {ASSUME_YES_ENV}=1).")
@click.option("--first-fetch", is_flag=True,
              help="Where a source cannot serve the signed commit's git objects, agree in advance to "
                   "record each file's hash as it first arrives (trust on first use).")
@click.option("--plan", "plan_only", is_flag=True,
              help="Say what would be downloaded (files, size, licence, from where) and change nothing.")
@click.option("--json", "as_json", is_flag=True,
              help="Report on stdout as JSON lines: plan, progress, then done or error (docs/usage.md).")
def install(names: tuple[str, ...], from_dir: Path | None, manifest_file: Path | None,
            trust_keys: bool, yes: bool, first_fetch: bool, plan_only: bool, as_json: bool) -> None:
    """Install, repair or update models, verifying every file against its signed manifest.

    \b
      pennello install pennello-tiny            # from the catalog (see `pennello models`)
      pennello install --from /media/usb/bundle # everything in an offline bundle
      pennello install sd-turbo --from /media/usb/bundle   # only some models of a bundle
      pennello install --manifest office.json --from ./files   # one manifest, files from a directory
      pennello install sd-turbo --plan          # what it would download; nothing changes

    A catalog entry that pins a Hub commit is checked against that commit's own git objects:
    every file must hash to what the signed commit says. If the source cannot serve them, it
    says so and asks before recording hashes on first fetch instead (--first-fetch agrees).
    A model whose files were damaged (`pennello verify`) is repaired by installing it again.
    Before downloading more than `[installer] confirm_over_mb` (500 MB unless configured) it
    says how much and asks; --yes agrees in advance. Without a terminal and without --yes it
    downloads nothing and exits 10. SIGTERM stops it as a failure does: the store stays as it was.
    """
    if trust_keys and from_dir is None:
        raise click.UsageError("--trust-bundle-keys needs --from DIR")
    if manifest_file is not None and names:
        raise click.UsageError("--manifest FILE installs the model it describes; give no NAMES with it")
    if plan_only and manifest_file is None and not names:
        raise click.UsageError("--plan needs NAMES or --manifest FILE")
    report = JsonLines() if as_json else None
    with stopped_by_sigterm(), report.errors() if report else contextlib.nullcontext():
        installed = _install(names, from_dir, manifest_file, trust_keys, yes, first_fetch, plan_only, report)
    if plan_only:
        return
    if report is not None:
        report.event("done", models=[{"name": m.name, "version": m.version, "size_bytes": m.manifest.total_size}
                                     for m in installed])
        return
    for model in installed:
        click.echo(f"{model.name} v{model.version} installed ({format_bytes(model.manifest.total_size)})")


def _install(names: tuple[str, ...], from_dir: Path | None, manifest_file: Path | None, trust_keys: bool,
             yes: bool, first_fetch: bool, plan_only: bool, report: JsonLines | None) -> list[InstalledModel]:
    """The work of ``install``: the models installed (none with ``plan_only``)."""
    paths, config = get_paths().ensure(), load_config()
    if trust_keys and from_dir is not None:
        for keyid in trust_bundle_keys(paths, from_dir):
            click.echo(f"trusted key {keyid} from the bundle", err=report is not None)
    if manifest_file is None and from_dir is not None:
        return import_bundle(paths, config, from_dir, names=list(names) or None)
    if manifest_file is None and not names:
        raise click.UsageError("name a model (see `pennello models`), or use --from DIR or --manifest FILE")
    installer = Installer(paths, config, progress=report is None,
                          first_fetch=_stop_plan if plan_only else lambda model, why: _confirm_first_fetch(
                              model, why, first_fetch),
                          on_bytes=report.advance if report else None)
    raws = ([(manifest_file.read_bytes(), None)] if manifest_file is not None
            else [(Catalog(paths).get(name).raw, name) for name in names])
    try:
        verified = [installer.verify(raw, expected_name=name, local_dir=from_dir) for raw, name in raws]
    except _FirstFetchNeeded as e:  # only with --plan: its size is known only by downloading it
        _plan(None, [installer.policy.verify(raw) for raw, _ in raws], report, first_fetch=e.why)
        return []
    downloads = installer.downloads(verified)
    _plan(downloads, [v.manifest for v in verified], report,
          line=_download_line(downloads, verified) if plan_only else "")
    if plan_only:
        return []
    _confirm_downloads(downloads, verified, config.installer, yes)
    return [installer.install_all([v])[0] for v in verified]


class _FirstFetchNeeded(Exception):
    """With --plan: a model's hashes could only be recorded by downloading it, so the plan ends there."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _stop_plan(model: str, why: str) -> None:
    raise _FirstFetchNeeded(f"{model}: {why}")


def _plan(downloads: Downloads | None, manifests: list[Manifest], report: JsonLines | None,
          line: str = "", first_fetch: str | None = None) -> None:
    """Say what installing would download: a ``plan`` line under --json; as text only with --plan
    (``line``; without it the download line comes with the question). ``first_fetch``: why the
    hashes (and so the size) are known only once the files arrive."""
    if report is not None:
        report.plan(downloads.files if downloads else None, downloads.size if downloads else None,
                    list(dict.fromkeys(_where(m) for m in manifests)),
                    [{"name": m.name, "version": m.version, "license": m.license} for m in manifests], first_fetch)
    elif first_fetch is not None:
        click.echo(f"hashes can only be recorded on first fetch ({first_fetch}); the size is known only as "
                   f"the files arrive: --first-fetch agrees to that")
    elif line:
        click.echo(line if downloads and downloads.size else "nothing to download")


def _confirm_first_fetch(model: str, why: str, agreed: bool) -> None:
    """Ask before hashes are recorded on first fetch, because the signed commit cannot be read."""
    confirm(f"Install {model} with hashes recorded on first fetch?",
            [why, "so the files cannot be checked against the signed commit; their hashes would be "
                  "whatever arrives now (trust on first use), and later checks compare against those"],
            assume_yes=agreed, flag="--first-fetch")


_LISTED = 12  # files named before a download (largest first); a sharded model has dozens


def _confirm_downloads(downloads: Downloads, verified: list[Verified], limits: InstallerConfig,
                       yes: bool) -> None:
    """Say what will be downloaded; ask when over the configured size (ConsentError, exit 10, on no)."""
    if downloads.size == 0:
        return
    click.echo(_download_line(downloads, verified), err=True)
    for path, size in downloads.paths[:_LISTED]:
        click.echo(f"  {format_bytes(size):>9}  {path}", err=True)
    if len(downloads.paths) > _LISTED:
        click.echo(f"  and {len(downloads.paths) - _LISTED} smaller files", err=True)
    if downloads.size <= limits.confirm_over_mb * 1_000_000:
        return
    sources = dict.fromkeys(_where(v.manifest) for v in verified if f"{v.manifest.name} v{v.manifest.version}"
                            in downloads.models)
    confirm(f"Download {format_bytes(downloads.size)} for {', '.join(downloads.models)}?",
            [f"{downloads.files} file{'s' if downloads.files != 1 else ''}, {format_bytes(downloads.size)} "
             f"in all, from {', '.join(sources)} (files already on this machine are not counted)",
             f"that is over [installer] confirm_over_mb = {limits.confirm_over_mb} (config.toml); "
             f"every file is checked against its signed manifest"], assume_yes=yes)


def _download_line(downloads: Downloads, verified: list[Verified]) -> str:
    """"to download: N files, SIZE (licence …)", as ``install`` says before downloading."""
    licences = ", ".join(dict.fromkeys(f"{v.manifest.name}: {v.manifest.license}" for v in verified
                                       if f"{v.manifest.name} v{v.manifest.version}" in downloads.models))
    return (f"to download: {downloads.files} file{'s' if downloads.files != 1 else ''}, "
            f"{format_bytes(downloads.size)} (licence {licences})")


def _confirm_lock(model: str, sizes: dict[str, int | None], limits: InstallerConfig, yes: bool) -> None:
    """Ask before locking downloads more than the configured size, or an unknown amount."""
    known = sum(size for size in sizes.values() if size is not None)
    unknown = sum(size is None for size in sizes.values())
    if not unknown and known <= limits.confirm_over_mb * 1_000_000:
        return
    parts = [format_bytes(known)] if known or not unknown else []
    parts += [f"{unknown} file{'s' if unknown != 1 else ''} of unknown size"] if unknown else []
    amount = " and ".join(parts)
    confirm(f"Download {amount} to lock {model}?",
            [f"{len(sizes)} file{'s' if len(sizes) != 1 else ''}: the source "
             + ("does not say how big some are, so the total may be much more" if unknown
                else f"says {format_bytes(known)} in all, over [installer] confirm_over_mb = "
                     f"{limits.confirm_over_mb}"),
             "they go into the store, so installing the model afterwards downloads nothing again"],
            assume_yes=yes)


def _where(manifest: Manifest) -> str:
    source = manifest.source
    if source.kind == "huggingface":
        return f"Hugging Face {source.repo}@{(source.revision or '')[:12]}"
    return source.base_url or source.kind


@click.command()
@json_output
def models(as_json: bool) -> None:
    """List installed models and the catalog's models you can install.

    STATUS is 'installed', 'damaged' (run `pennello install NAME` to repair), 'update vN'
    (the catalog has a newer version), 'available', or 'needs lock' (an unlocked catalog entry
    that pins no commit: `pennello manifest lock NAME --key KEYNAME`). VERIFICATION says how
    an installed model's file hashes are known: 'signed hashes' (listed in the signed
    manifest), 'signed commit' (derived from the git objects of the commit it signs) or
    'first fetch' (recorded as the files first arrived: trust on first use).
    """
    paths = get_paths()
    store, catalog = Store(paths), Catalog(paths).entries()
    found = [_model_info(store, name, catalog.get(name)) for name in sorted(set(store.names()) | set(catalog))]
    if as_json:
        emit({"models": found})
        return
    rows = [("NAME", "VERSION", "SIZE", "STATUS", "VERIFIED", "VERIFICATION")]
    rows += [(m["name"], f"v{m['version']}", "-" if m["size_bytes"] is None else format_bytes(m["size_bytes"]),
              m["status"], m["last_verified"] or "-", m["verification"] or "-") for m in found]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _model_info(store: Store, name: str, entry: CatalogEntry | None) -> dict[str, Any]:
    """One row of `pennello models`: verification and last check are None until installed."""
    try:
        model = store.get(name)
        status, manifest, verification = "installed", model.manifest, model.verification
    except IntegrityError:  # damaged: listed all the same, so the user sees what to repair
        path, manifest = store.current(name)
        status, verification = "damaged", store.file_list(path).how
    except ModelNotFoundError:
        assert entry is not None  # listed because the catalog has it
        manifest, verification = entry.manifest, None
        status = "available" if manifest.locked or manifest.source.revision else "needs lock"
    if status == "installed" and entry is not None and entry.manifest.version > manifest.version:
        status = f"update v{entry.manifest.version}"
    return {"name": name, "version": manifest.version, "installed": verification is not None, "status": status,
            "size_bytes": manifest.total_size if manifest.files else None,
            "last_verified": store.last_verified(name) if verification else None,
            "verification": verification, "trust_on_first_use": verification == FIRST_FETCH,
            "catalog_version": entry.manifest.version if entry is not None else None}


@click.command()
@click.argument("names", nargs=-1)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@json_output
def verify(names: tuple[str, ...], quiet: bool, as_json: bool) -> None:
    """Re-hash every file of the installed models (all of them, or NAMES).

    Each model's line says how its hashes are known (see `pennello models`). Damaged or
    missing files are moved to the store's quarantine/ directory and the model is marked
    damaged so it will not load; `pennello install NAME` repairs it. Exits non-zero when
    anything was wrong.
    """
    store = Store(get_paths().ensure())
    checked = list(names) or store.names()
    if not checked and not as_json:
        click.echo("No models are installed; nothing to verify. `pennello install pennello-tiny` installs one.")
        return
    damage: IntegrityError | None = None
    with store.lock():
        try:
            store.verify(checked, progress=not (quiet or as_json))
        except IntegrityError as e:
            damage = e
    results = [{"name": name, "ok": not store.is_broken(name), "verified": store.last_verified(name),
                "verification": store.file_list(store.current(name)[0]).how, "problems": store.damage(name)}
               for name in checked]
    if as_json:  # on damage, the error document of json_output with each model's result beside it
        emit({**error_document(damage), "models": results} if damage else {"models": results})
        if damage is not None:
            sys.exit(damage.exit_code)
        return
    for result in results:
        if result["ok"]:
            click.echo(f"{result['name']}: ok ({result['verification']})")
    if damage is not None:
        raise damage


@click.command()
@click.argument("name")
def remove(name: str) -> None:
    """Remove an installed model; files no other model uses are deleted."""
    store = Store(get_paths().ensure())
    with store.lock():
        freed = store.remove(name)
    click.echo(f"{name} removed ({format_bytes(freed)} freed)")


@click.group()
def bundle() -> None:
    """Carry models to machines without network access."""


@bundle.command("export")
@click.argument("names", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="New directory for the bundle.")
@click.option("--with-wheels", is_flag=True,
              help="Also carry wheels of pennello and its dependencies (downloads them; wheels only), "
                   "pinned in lock.txt and signed with --key.")
@click.option("--key", "key_name", metavar="KEYNAME",
              help="Local signing key for the wheels' bundle.json (`pennello keys generate`); needed with wheels.")
@click.option("--wheels-from", type=_EXISTING_DIR,
              help="Take the wheels from this directory (a wheelhouse you built) instead of downloading.")
@click.option("--platform", "platforms", multiple=True, help="Wheel platform tag of the target machine (repeatable), e.g. manylinux2014_x86_64.")
@click.option("--python-version", help="Python version of the target machine, e.g. 3.11.")
@click.option("--cpu-backend/--no-cpu-backend", default=True,
              help="With --with-wheels: also carry the CPU backend (OpenVINO), which draws several times "
                   "faster where the target has no NVIDIA GPU (default: carried).")
def export(names: tuple[str, ...], out: Path, with_wheels: bool, key_name: str | None,
           wheels_from: Path | None, platforms: tuple[str, ...], python_version: str | None,
           cpu_backend: bool) -> None:
    """Write installed models (manifests, files, public keys) to a directory for an offline machine.

    \b
      pennello bundle export pennello-tiny sd-turbo --out /media/usb/pennello
      pennello bundle export pennello-tiny --out /media/usb/pennello --with-wheels --key office
      # on the offline machine:
      pennello install --from /media/usb/pennello     # pennello installed already
      sh /media/usb/pennello/install.sh               # or: pennello itself, then the models

    The bundle's README.txt lists the key ids to check before trusting them. With wheels, the
    printed sha256 of lock.txt is what a first install on a machine without pennello checks:
    send it to the admin over another channel than the bundle itself.
    """
    if (platforms or python_version) and not (with_wheels or wheels_from):
        raise click.UsageError("--platform and --python-version only apply with --with-wheels")
    if (with_wheels or wheels_from) and not key_name:
        raise click.UsageError("--with-wheels needs --key KEYNAME: the wheels are signed so the "
                               "target machine can check them before pip runs")
    if not cpu_backend and not with_wheels:
        raise click.UsageError("--no-cpu-backend only applies with --with-wheels (downloaded wheels)")
    if wheels_from and (platforms or python_version):
        raise click.UsageError("--wheels-from takes the wheels as they are; --platform and "
                               "--python-version apply to downloading")
    out = export_bundle(get_paths().ensure(), load_config(), list(names), out, with_wheels, platforms,
                        python_version, key_name=key_name, wheels_from=wheels_from, cpu_backend=cpu_backend)
    click.echo(f"bundle written to {out}")
    if (out / LOCK_FILE).is_file():
        click.echo(f"  {LOCK_FILE} sha256 {file_sha256(out / LOCK_FILE)}  (for a first install: "
                   f"PENNELLO_LOCK_SHA256)")


@bundle.command("verify")
@click.argument("directory", type=_EXISTING_DIR)
def bundle_verify(directory: Path) -> None:
    """Check a bundle's wheels before installing them: the signed bundle.json and every file.

    bundle.json must be signed as a model manifest must (keys trusted here, thresholds, the
    trusted root, revocations, not expired); then lock.txt, every wheel, install.sh and
    README.txt must match it byte for byte, and wheels/ may hold nothing else. install.sh runs
    this before pip; exits 3 (trust) or 4 (a changed file) and installs nothing otherwise.
    The models are checked by `pennello install --from DIR` against their own manifests.

    \b
      pennello bundle verify /media/usb/pennello && sh /media/usb/pennello/install.sh
    """
    verified = verify_bundle(get_paths(), load_config(), directory)
    click.echo(f"{directory}: OK, {len(verified.manifest.files)} files as signed")
    for key in verified.signers:
        click.echo(f"  signer   {key.name} ({key.origin}) {key.keyid}")


@manifest.command("lock")
@click.argument("target", metavar="NAME|FILE")
@click.option("--key", "key_name", required=True, help="Name of the local signing key (`pennello keys generate NAME`).")
@click.option("--files", "files", multiple=True,
              help="Lock exactly these paths (repeatable); default: the Hub repository's pipeline "
                   "files, or a mirror's index.json.")
@click.option("--yes", "-y", is_flag=True,
              help=f"Download without asking, whatever the size (or set {ASSUME_YES_ENV}=1).")
def lock(target: str, key_name: str, files: tuple[str, ...], yes: bool) -> None:
    """Record the sha256 of every file of an unlocked catalog entry and sign it with a local key.

    \b
      pennello keys generate office
      pennello manifest lock sd-turbo --key office
      pennello install sd-turbo

    The locked copy goes to the user catalog and is marked trust-on-first-use: its hashes are
    what this machine received, checked against the pinned commit, not published by the maker.
    Locking downloads every file: over `[installer] confirm_over_mb`, or when the source does
    not say how big the files are, it asks first (--yes agrees in advance).
    """
    paths, config = get_paths().ensure(), load_config()
    written = lock_manifest(paths, config, target, key_name, list(files) or None,
                            confirm=lambda model, sizes: _confirm_lock(model, sizes, config.installer, yes))
    click.echo(f"locked manifest written to {written}")
