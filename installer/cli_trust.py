"""``pennello keys`` and ``pennello manifest``: manage trusted keys and the trusted root, sign and
check manifests.

They parse options, call :mod:`pennello.installer.keys`, :mod:`pennello.installer.root` and
:mod:`pennello.installer.trust` and print; refusals are TrustErrors, shown with their exit code
by the top-level group.

    $ pennello keys generate office
    $ pennello keys root show
    $ pennello manifest sign my-model.json --key office
    $ pennello manifest verify my-model.json
"""

from __future__ import annotations

from pathlib import Path

import click

from datetime import datetime, timedelta, timezone

from pennello.config import load_config
from pennello.errors import TrustError
from pennello.installer import root as rootring
from pennello.installer.root_drafts import add_root_signature, draft_root
from pennello.installer.keys import (TrustedKey, add_signature, check_key_name, generate_key, key_id,
                                     load_private_key, load_public_key_pem)
from pennello.installer.manifest import dump_envelope, format_time
from pennello.files import write_atomic
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

    Two kinds of keys sign manifests. The publisher's are listed in the signed trusted root
    (`pennello keys root --help`): pennello ships it with the release key, and signed root
    updates rotate or revoke those keys. Keys you add here (`keys trust`, `keys generate`) are
    yours to manage. A manifest is used when at least trust.threshold (config, default 1)
    distinct trusted keys signed it and, unless one of yours did, the publisher's keys reach
    the root's own threshold. A key is named by its key id, the sha256 of its public key:
    compare it with the publisher over a channel you trust before `keys trust`.

    \b
      pennello keys list
      pennello keys trust ./acme-models.pub        # then check the printed key id
      pennello keys generate office                # your own signing key, trusted here
      pennello keys untrust 33e3ec9e               # revoke (a unique prefix is enough)
      pennello keys root show                      # the publisher's keys and thresholds
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
    """List the keys that may sign manifests and the revoked ones.

    ORIGIN is 'root' (the publisher's, from the trusted root's manifests role) or 'user'
    (added here). REVOKED is when you revoked it here, or the root version that dropped it.
    """
    policy = _policy()
    rows = [("KEYID", "NAME", "ORIGIN", "REVOKED")]
    for key in policy.keys():
        rows.append((key.keyid, key.name, key.origin, policy.revoked.get(key.keyid, "")))
    known = {key.keyid for key in policy.keys()}
    rows += [(keyid, "-", "-", when) for keyid, when in sorted(policy.revoked.items()) if keyid not in known]
    rows += [(keyid, r.name, "-", f"dropped by root v{r.version}") for keyid, r in sorted(policy.retired.items())
             if keyid not in known and keyid not in policy.revoked]
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


@keys.group("root")
def keys_root() -> None:
    """The publisher's keys: the signed trusted root, and the updates that rotate them.

    The root lists the keys that may sign manifests (role 'manifests') and the keys that must
    sign the next root (role 'root'), each with a threshold. Pennello ships root v1 (the
    release key). A newer root is applied only if its version is exactly one more than the
    trusted one and it is signed by the threshold of the trusted root's root keys AND of its
    own: a stolen manifest key cannot rotate the root, and revoking a key is one signed root
    update. An older root is refused (rollback); the newest applied is kept in pennello's state.

    \b
    On each machine:
      pennello keys root show
      pennello keys root show root-2.json          # read a root file before applying it
      pennello keys root update root-2.json root-3.json   # the publisher's files, any order
    \b
    The publisher, to revoke key 1234abcd and add a new manifest key:
      pennello keys root draft root-2.json --remove 1234abcd --add manifests=new.pub
      pennello keys root sign root-2.json --key release-2026   # the current root keys
      pennello keys root sign root-2.json --key release-2027   # and the new root's own
    """


def _describe_root(root: rootring.Root) -> None:
    for name in rootring.ROLE_NAMES:
        role = root.roles[name]
        click.echo(f"  role {name}: {role.threshold} of {len(role.keyids)} key(s)")
        for keyid in role.keyids:
            click.echo(f"    {keyid}  {root.keys[keyid].name}")


@keys_root.command("show")
@click.argument("file", type=_FILE, required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the root file itself.")
def keys_root_show(file: Path | None, as_json: bool) -> None:
    """Show the trusted root (or, without applying it, the root in FILE).

    A FILE is only read, not verified: `keys root update FILE` decides whether it is trusted.
    """
    if file is not None:
        raw = file.read_bytes()
        root = rootring.parse_root(raw)[0]
        heading = f"root v{root.version} in {file} (not verified), expires {format_time(root.expires)}"
    else:
        trusted = rootring.load_trusted_root(get_paths())
        raw, root = trusted.raw, trusted.root
        where = "shipped with pennello" if trusted.origin == "shipped" else "applied here"
        heading = f"trusted root v{root.version} ({where}), expires {format_time(root.expires)}"
        if root.is_expired(datetime.now(timezone.utc)):
            heading += " -- EXPIRED: apply a newer root"
    if as_json:
        click.echo(raw.decode("utf-8"), nl=False)
        return
    click.echo(heading)
    _describe_root(root)
    if file is None and trusted.retired:
        click.echo("  dropped by root updates (refused):")
        for keyid, retired in sorted(trusted.retired.items()):
            click.echo(f"    {keyid}  {retired.name} (from v{retired.version})")


@keys_root.command("update")
@click.argument("files", nargs=-1, required=True, type=_FILE)
def keys_root_update(files: tuple[Path, ...]) -> None:
    """Apply newer roots from the publisher (FILES in any order; older ones are skipped).

    Each must be the next version and signed by the threshold of the trusted root's root keys
    and of its own; each accepted root is kept before the next is checked. Keys a root drops
    are refused from then on, even where you had trusted them with `keys trust`. At most 32
    roots are applied at once, and the last one must not have expired.

    \b
      pennello keys root update /media/usb/roots/*.json
    """
    paths = get_paths().ensure()
    before = rootring.load_trusted_root(paths).root

    def report(new: rootring.Root) -> None:
        nonlocal before
        click.echo(f"applied root v{new.version}: {_changes(before, new)}")
        before = new
    done = rootring.update_root(paths, [f.read_bytes() for f in files], applied=report)
    if not done:
        click.echo(f"trusted root v{before.version} is already the newest given; nothing to do")
        return
    click.echo(f"trusted root is now v{done[-1].version}, expires {format_time(done[-1].expires)}")


def _changes(old: rootring.Root, new: rootring.Root) -> str:
    parts = []
    for name in rootring.ROLE_NAMES:
        was, now = old.roles[name], new.roles[name]
        parts += [f"{name} +{k[:16]} ({new.keys[k].name})" for k in now.keyids if k not in was.keyids]
        parts += [f"{name} -{k[:16]} ({old.keys[k].name})" for k in was.keyids if k not in now.keyids]
        if was.threshold != now.threshold:
            parts.append(f"{name} threshold {was.threshold} -> {now.threshold}")
    return ", ".join(parts) or "same keys and thresholds"


def _role_value(value: str, option: str) -> tuple[str, str]:
    role, sep, rest = value.partition("=")
    if not sep or role not in rootring.ROLE_NAMES or not rest:
        raise click.BadParameter(f"{value!r}: expected ROLE=VALUE with ROLE one of "
                                 f"{', '.join(rootring.ROLE_NAMES)}", param_hint=option)
    return role, rest


@keys_root.command("draft")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--from", "base_file", type=_FILE,
              help="Start from this root file (a draft not applied yet) instead of the trusted root.")
@click.option("--add", "adds", multiple=True, metavar="ROLE=FILE.pub",
              help="Add the public key in FILE.pub to ROLE (root or manifests); repeatable.")
@click.option("--remove", "removes", multiple=True, metavar="KEYID",
              help="Drop a key from every role (a prefix of 8+ hex digits); machines that apply the "
                   "root refuse it from then on. Repeatable.")
@click.option("--threshold", "thresholds", multiple=True, metavar="ROLE=N",
              help="Set how many of ROLE's keys must sign; repeatable.")
@click.option("--expires-days", type=click.IntRange(1, 3650), default=365, show_default=True,
              help="Days until the new root expires.")
def keys_root_draft(out: Path, base_file: Path | None, adds: tuple[str, ...], removes: tuple[str, ...],
                    thresholds: tuple[str, ...], expires_days: int) -> None:
    """Write OUT: the next root (version + 1), unsigned, with the changes asked for.

    Then sign it with `keys root sign` by enough of the current root keys and, if the root
    keys change, by enough of the new ones. A key's name in the root is its file name.

    \b
      pennello keys root draft root-2.json --remove 1234abcd --add manifests=office-2027.pub
      pennello keys root draft root-3.json --from root-2.json --threshold manifests=2
    """
    if out.exists():
        raise click.UsageError(f"{out} exists already; give a new file name")
    paths = get_paths().ensure()
    base = rootring.parse_root(base_file.read_bytes())[0] if base_file else rootring.load_trusted_root(paths).root
    added = []
    for value in adds:
        role, file = _role_value(value, "--add")
        pem = Path(file).read_bytes() if Path(file).is_file() else None
        if pem is None:
            raise click.BadParameter(f"{file!r} is not a file", param_hint="--add")
        public_key = load_public_key_pem(pem, file)
        added.append((role, TrustedKey(key_id(public_key), check_key_name(Path(file).name.removesuffix(".pub")),
                                       public_key, "root")))
    removed = [_resolve_root_key(base, prefix) for prefix in removes]
    wanted = {}
    for value in thresholds:
        role, number = _role_value(value, "--threshold")
        if not number.isdigit():
            raise click.BadParameter(f"{value!r}: the threshold must be a number", param_hint="--threshold")
        wanted[role] = int(number)
    signed = draft_root(base, datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=expires_days),
                        added, removed, wanted)
    write_atomic(out, dump_envelope(signed, []))
    new = rootring.parse_root(out.read_bytes())[0]
    click.echo(f"draft root v{new.version} written to {out} (unsigned): {_changes(base, new)}")
    click.echo(f"  sign it with {base.roles['root'].threshold} of root v{base.version}'s root keys and "
               f"{new.roles['root'].threshold} of its own: `pennello keys root sign {out} --key KEY`")


def _resolve_root_key(root: rootring.Root, prefix: str) -> str:
    matches = [k for k in root.keys if k.startswith(prefix.lower())] if len(prefix) >= 8 else []
    if len(matches) != 1:
        raise TrustError(f"{prefix!r} names {'no key' if not matches else 'several keys'} of root "
                         f"v{root.version}; give 8 or more hex digits of a key id it lists")
    return matches[0]


@keys_root.command("sign")
@click.argument("file", type=_FILE)
@click.option("--key", "key", required=True, metavar="PATH_OR_NAME",
              help="A private key file (PEM), or the NAME of a key from `pennello keys generate`.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the signed root here instead of replacing FILE.")
def keys_root_sign(file: Path, key: str, out: Path | None) -> None:
    """Add this key's signature to the root in FILE (replacing its earlier one).

    Other signatures are kept, so the old root keys and the new ones can sign in turn, each on
    their own machine. Nothing that pennello would refuse to read is signed.

    \b
      pennello keys root sign root-2.json --key ../keys/release-2026.key
    """
    private_key = load_private_key(key, get_paths())
    signed = add_root_signature(file.read_bytes(), private_key)
    target = out or file
    write_atomic(target, signed)
    version = rootring.parse_root(signed)[0].version
    click.echo(f"signed root v{version} {file} with key {key_id(private_key.public_key())} -> {target}")


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
