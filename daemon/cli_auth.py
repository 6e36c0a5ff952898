"""``pennello pair`` and ``pennello tokens``: let other devices in, see them, and shut them out.

    $ pennello pair                # a one-time code + QR code for a phone or laptop
    $ pennello tokens list         # paired devices
    $ pennello tokens revoke 3f9a1c2b
"""

from __future__ import annotations

import io
import json
from datetime import datetime

import click

from pennello.paths import get_paths

from .auth import TOKENS_FILE, TokenStore


@click.command()
@click.option("--qr/--no-qr", default=True, show_default=True, help="Draw the QR code in the terminal.")
def pair(qr: bool) -> None:
    """Show a one-time code that lets another device use this pennello.

    The daemon must be running with LAN access (`pennello serve --lan`). On the other device,
    open the address shown (or scan the QR code) and type the code, or send it yourself:

    \b
      curl http://HOST:8420/api/pair -H 'Content-Type: application/json' \\
           -d '{"code": "K7M2QX9P", "name": "kitchen tablet"}'

    The answer holds the device's token; it sends it as `Authorization: Bearer TOKEN`. A code
    works once and for 5 minutes; running `pennello pair` again replaces it.
    """
    from pennello.client import Client

    client = Client()
    # The pennello client maps the daemon's error answers back to pennello errors.
    offer = client._json("POST", "/api/pair/code")
    click.echo(f"Pairing code: {click.style(offer['code'], bold=True)}  "
               f"(valid {int(offer['expires_in_s']) // 60} minutes, once)")
    click.echo(f"On the device, open: {offer['pair_url']}")
    if qr:
        click.echo(render_qr(offer["pair_url"]), nl=False)
    click.echo(f"QR code as an image: {client.base_url}{offer['qr_png_url']}")
    if not offer.get("lan"):
        click.secho("note: the daemon listens on this computer only; restart it with "
                    "`pennello serve --lan` so other devices can reach it", fg="yellow", err=True)


def render_qr(data: str) -> str:
    """``data`` as a QR code drawn with block characters, dark on a light terminal or not."""
    import qrcode

    code = qrcode.QRCode(border=2)
    code.add_data(data)
    out = io.StringIO()
    code.print_ascii(out=out, invert=True)
    return out.getvalue()


@click.group()
def tokens() -> None:
    """Paired devices and their tokens (stored hashed in the state directory).

    Works whether or not the daemon runs; a running daemon notices changes at once.
    """


def _store() -> TokenStore:
    return TokenStore(get_paths().ensure().state_dir / TOKENS_FILE)


def _when(timestamp: float | None) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M") if timestamp else "never"


@tokens.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_tokens(as_json: bool) -> None:
    """Show paired devices: id, name, when paired, when last seen."""
    records = _store().list()
    if as_json:
        click.echo(json.dumps([r.public() for r in records], indent=2))
        return
    if not records:
        click.echo("No devices are paired. `pennello pair` pairs one.")
        return
    click.echo(f"{'ID':<10} {'DEVICE':<32} {'PAIRED':<17} LAST USED")
    for r in records:
        click.echo(f"{r.id:<10} {r.name[:32]:<32} {_when(r.created):<17} {_when(r.last_used)}")


@tokens.command()
@click.argument("token_id")
def revoke(token_id: str) -> None:
    """Revoke a device's token by its ID (from `pennello tokens list`); it must pair again."""
    record = _store().revoke(token_id)
    click.echo(f"Revoked {record.id} ({record.name}).")
