"""``pennello keys`` and ``pennello manifest``: manage trusted keys, sign and check manifests.

They parse options, call :mod:`pennello.installer.keys` and :mod:`pennello.installer.trust`
and print; refusals are TrustErrors, shown with their exit code by the top-level group.

    $ pennello keys generate office
    $ pennello manifest sign my-model.json --key office
    $ pennello manifest verify my-model.json
"""

from __future__ import annotations

from pathlib import Path

import click

from pennello.config import load_config
from pennello.installer.keys import add_signature, generate_key, key_id, load_private_key
from pennello.installer.manifest import format_time
from pennello.installer.store import write_atomic
from pennello.installer.trust import TrustPolicy
from pennello.paths import get_paths

__all__ = ["keys", "manifest"]

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _policy() -> TrustPolicy:
    return TrustPolicy.load(get_paths().ensure(), load_config().trust)


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


@click.group()
def keys() -> None:
    """Decide whose signatures this machine accepts on model manifests.

    A manifest is used only when enough trusted keys signed it (config: trust.threshold).
    The pennello release key ships trusted; add your publisher's key, or make your own to sign
    models you lock or build yourself. A key is named by its key id, the sha256 of its public
    key: compare it with the publisher over a channel you trust before `keys trust`.

    \b
      pennello keys list
      pennello keys trust ./acme-models.pub        # then check the printed key id
      pennello keys generate office                # your own signing key, trusted here
      pennello keys untrust 33e3ec9e               # revoke (a unique prefix is enough)
    """


@keys.command("generate")
@click.argument("name")
def keys_generate(name: str) -> None:
    """Make a new Ed25519 signing key NAME, trusted on this machine.

    The private key stays in pennello's data directory (mode 0600); share NAME.pub with the
    machines that should accept what you sign, and keep the key itself secret.

    \b
      pennello keys generate office
      pennello manifest sign my-model.json --key office
    """
    paths = get_paths().ensure()
    key = generate_key(paths, name)
    click.echo(f"generated key {key.name}: {key.keyid}")
    click.echo(f"  private: {paths.private_keys_dir / (name + '.key')}  (keep secret)")
    click.echo(f"  public:  {paths.trusted_keys_dir / (name + '.pub')}  (share; trusted here)")


@keys.command("list")
def keys_list() -> None:
    """List the trusted keys (shipped with pennello, or added here) and revoked key ids."""
    policy = _policy()
    rows = [("KEYID", "NAME", "ORIGIN", "REVOKED")]
    for key in policy.keys():
        rows.append((key.keyid, key.name, key.origin, policy.revoked.get(key.keyid, "")))
    known = {key.keyid for key in policy.keys()}
    rows += [(keyid, "-", "-", when) for keyid, when in sorted(policy.revoked.items()) if keyid not in known]
    _table(rows)


@keys.command("trust")
@click.argument("file", type=_FILE)
@click.option("--name", help="Name to keep the key under (default: the file name without .pub).")
@click.option("--unrevoke", is_flag=True, help="Trust a key that was revoked here, again.")
def keys_trust(file: Path, name: str | None, unrevoke: bool) -> None:
    """Trust signatures by the Ed25519 public key in FILE (PEM, `-----BEGIN PUBLIC KEY-----`).

    Check the printed key id with the key's owner before installing anything it signed.

    \b
      pennello keys trust /media/usb/bundle/keys/acme.pub --name acme
    """
    key = _policy().trust(file.read_bytes(), name or file.name.removesuffix(".pub"), unrevoke=unrevoke)
    click.echo(f"trusted key {key.name} ({key.origin}): {key.keyid}")


@keys.command("untrust")
@click.argument("keyid")
def keys_untrust(keyid: str) -> None:
    """Revoke KEYID (a unique prefix of 8 or more hex digits will do).

    Manifests it signed are refused from now on, and the revocation is kept even if the key
    file comes back (say, in a bundle). A key you added is also deleted; the shipped release
    key is revoked only. A full key id unknown here can be revoked ahead of time.

    \b
      pennello keys untrust 33e3ec9e
    """
    policy = _policy()
    full = policy.resolve_keyid(keyid)
    policy.untrust(full)
    click.echo(f"revoked key {full}")


@click.group()
def manifest() -> None:
    """Sign and check model manifests (the signed list of a model's files and hashes).

    \b
      pennello manifest verify my-model.json
      pennello manifest sign my-model.json --key office --out signed.json

    See docs/manifest-format.md for the fields and the exact bytes a signature covers.
    """


@manifest.command("sign")
@click.argument("file", type=_FILE)
@click.option("--key", "key", required=True, metavar="PATH_OR_NAME",
              help="A private key file (PEM), or the NAME of a key from `pennello keys generate`.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the signed manifest here instead of replacing FILE.")
def manifest_sign(file: Path, key: str, out: Path | None) -> None:
    """Add this key's signature to the manifest in FILE (replacing its earlier one).

    FILE is an envelope, {"signed": {...}, "signatures": [...]}; signatures by other keys are
    kept, so several publishers can co-sign for a threshold above 1. Nothing that pennello
    would refuse to read is signed. The file is replaced atomically.

    \b
      pennello manifest sign my-model.json --key office
      pennello manifest sign my-model.json --key ../keys/release-2026.key --out release/my-model.json
    """
    private_key = load_private_key(key, get_paths())
    signed = add_signature(file.read_bytes(), private_key)
    target = out or file
    write_atomic(target, signed)
    click.echo(f"signed {file} with key {key_id(private_key.public_key())} -> {target}")


@manifest.command("verify")
@click.argument("file", type=_FILE)
def manifest_verify(file: Path) -> None:
    """Check FILE exactly as `pennello install` would, without installing or recording it.

    Exits 3 with the reason when it would be refused (bad or missing signature, unknown or
    revoked key, too few signatures, expired, older than a version already installed…).
    """
    verified = _policy().verify_detailed(file.read_bytes())
    m = verified.manifest
    click.echo(f"{m.name} v{m.version}: OK")
    click.echo(f"  expires  {format_time(m.expires)}")
    click.echo(f"  digest   {m.digest}")
    click.echo(f"  files    {len(m.files)}" + ("" if m.locked else " (unlocked: `pennello manifest lock`)"))
    for key in verified.signers:
        click.echo(f"  signer   {key.name} ({key.origin}) {key.keyid}")
