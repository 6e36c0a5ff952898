"""``pennello pair``, ``pennello tokens`` and ``pennello open``: who may use this pennello.

``pair`` and ``tokens`` let other devices in, list them and shut them out; ``open`` logs this
computer's browser in as the owner with a one-time link.

    $ pennello open                # the web page, logged in as the owner (one-time link)
    $ pennello pair                # on the daemon's machine: a one-time code + QR code
    $ pennello pair "Pennello on studio" --code K7M2QX9P   # on another PC: pair with it
    $ pennello pair --for-basic-auth --as "Open WebUI"     # a token for a front-end that sends Basic
    $ pennello pair --node         # on a cluster's front: a one-time code for a node (docs/cluster.md)
    $ pennello tokens list         # paired devices
    $ pennello tokens revoke 3f9a1c2b
    $ pennello tokens issue --admin "laptop admin"   # an owner token, for managing from elsewhere
"""

from __future__ import annotations

import io
import json
from datetime import datetime
from urllib.parse import urlsplit

import click

from pennello.paths import get_paths

from ..auth import TOKENS_FILE, TokenStore


@click.command()
@click.argument("daemon", required=False, metavar="[NAME|auto]")
@click.option("--qr/--no-qr", default=True, show_default=True, help="Draw the QR code in the terminal.")
@click.option("--code", help="With NAME: the code the daemon's machine shows (asked for when absent).")
@click.option("--as", "device_name", metavar="DEVICE", help="With NAME: how the daemon will list this "
              "device (default: this computer's name).")
@click.option("--fingerprint", help="With NAME: the certificate fingerprint the daemon's machine "
              "shows; any other is refused.")
@click.option("--timeout", type=float, default=3.0, show_default=True,
              help="With NAME: seconds to look for it on the LAN.")
@click.option("--for-basic-auth", "for_basic_auth", is_flag=True, help="On the daemon's machine: pair a "
              "front-end that can only send a user name and password (Open WebUI, SillyTavern) and print "
              "what to paste into its settings.")
@click.option("--node", "for_node", is_flag=True, help="On a cluster's front: a one-time code for a box "
              "joining the cluster (`pennello node --join HEAD --front URL --pair CODE` there).")
def pair(daemon: str | None, qr: bool, code: str | None, device_name: str | None,
         fingerprint: str | None, timeout: float, for_basic_auth: bool, for_node: bool) -> None:
    """Let another device use this pennello, or (with NAME) pair this device with one on the LAN.

    Without NAME, on the daemon's machine: shows a one-time code (and QR code) that lets another
    device use this pennello. The daemon must run with LAN access (`pennello serve --lan`). On the
    other device run `pennello pair NAME --code CODE`, or open the address shown (a browser warns
    about the self-signed certificate: compare its SHA-256 fingerprint with the one shown here),
    or POST {"code": ..., "name": ...} to /api/pair. The answer holds the device's token; it sends
    it as `Authorization: Bearer TOKEN`. A code works once and for 5 minutes; running
    `pennello pair` again replaces it.

    With NAME (as `pennello discover` lists it, its id, or `auto` for the only one answering), on
    the other device: finds that daemon over mDNS, pins its certificate and trades the code for
    a token, kept for `pennello generate --remote NAME`.

    \b
      pennello pair "Pennello on studio" --code K7M2QX9P
      pennello pair auto --code K7M2QX9P --fingerprint sha256:3b1f...

    With --for-basic-auth, on the daemon's machine: pairs a device named by --as and prints the
    address, user and password to paste into Open WebUI's or SillyTavern's AUTOMATIC1111
    settings (the token is the password; docs/clients.md).

    With --node, on a cluster's front: a one-time code for a box joining the cluster; it gets
    the cluster token with it, and is listed by `pennello tokens list` (docs/cluster.md).
    """
    if for_node:
        if daemon is not None or for_basic_auth:
            raise click.UsageError("--node makes a code on the front itself; leave out NAME and --for-basic-auth")
        _pair_node()
        return
    if daemon is not None:
        if for_basic_auth:
            raise click.UsageError("--for-basic-auth pairs a front-end with the daemon on this "
                                   "computer; leave out NAME")
        _pair_with(daemon, code, device_name, fingerprint, timeout)
        return
    if for_basic_auth:
        _pair_for_basic_auth(device_name or BASIC_AUTH_DEVICE)
        return
    from pennello.client import Client
    from pennello.runtime import read_daemon_info

    client = Client()
    # The pennello client maps the daemon's error answers back to pennello errors.
    offer = client.pair_code()
    click.echo(f"Pairing code: {click.style(offer['code'], bold=True)}  "
               f"(valid {int(offer['expires_in_s']) // 60} minutes, once)")
    click.echo(f"On the device, open: {offer['pair_url']}")
    if qr:
        click.echo(render_qr(offer["pair_url"]), nl=False)
    click.echo(f"QR code as an image: {client.base_url}{offer['qr_png_url']}")
    fingerprint_here = (read_daemon_info() or {}).get("fingerprint")
    if fingerprint_here:
        click.echo(f"Certificate fingerprint (the device should show the same): {fingerprint_here}")
    _warn_if_loopback_only(offer)


def _pair_with(daemon: str, code: str | None, device_name: str | None, fingerprint: str | None,
               timeout: float) -> None:
    from pennello.client.remote import pair as pair_remote

    if code is None:
        code = click.prompt("Pairing code shown on the daemon's machine")
    remote = pair_remote(daemon, code, device_name=device_name, fingerprint=fingerprint, timeout=timeout)
    click.echo(f"Paired with {remote.name} as {remote.device_name!r} (token {remote.token_id}).")
    click.echo(f"Pinned certificate: {remote.fingerprint}")
    click.echo(f"Use it with: pennello generate \"a red kite\" --remote {_quoted(remote.name)}")


def _pair_node() -> None:
    """A node's one-time code, and the command that uses it on the node."""
    from pennello.client import Client
    from pennello.runtime import read_daemon_info

    client = Client()
    offer = client.call("POST", "/api/pair/code", json={"scope": "node"})
    # The address other boxes reach: the pairing one in LAN mode, else where this CLI reached it.
    front = "{0.scheme}://{0.netloc}".format(urlsplit(offer["pair_url"])) if offer.get("lan") else client.base_url
    fingerprint = (read_daemon_info() or {}).get("fingerprint")
    click.echo(f"Node pairing code: {click.style(offer['code'], bold=True)}  "
               f"(valid {int(offer['expires_in_s']) // 60} minutes, once)")
    click.echo(f"On the node: pennello node --join HEAD:PORT --ip ITS_ADDRESS --front {front} "
               f"--pair {offer['code']}" + (f" --fingerprint {fingerprint}" if fingerprint else ""))
    _warn_if_loopback_only(offer)


BASIC_AUTH_DEVICE = "basic-auth front-end"
BASIC_AUTH_USER = "pennello"  # any user name is accepted; the password (the token) decides


def _pair_for_basic_auth(device_name: str) -> None:
    """Pair a device over this computer's daemon and print the settings a front-end needs."""
    from pennello.client import Client

    client = Client()
    offer = client.pair_code()
    paired = client.pair(offer["code"], device_name)
    # The pairing address is the one other devices reach; its scheme, host and port are the URL.
    url = "{0.scheme}://{0.netloc}".format(urlsplit(offer["pair_url"]))
    token, auth = paired["token"], f"{BASIC_AUTH_USER}:{paired['token']}"
    click.echo(f"Paired {paired['name']!r} (token {paired['id']}, {paired['scope']} scope). "
               "Paste into the front-end's settings:")
    click.echo(f"""
  Open WebUI (Admin Panel > Settings > Images, engine Automatic1111):
    AUTOMATIC1111 Base URL:        {url}
    AUTOMATIC1111 Api Auth String: {auth}
  SillyTavern (Image Generation, source Stable Diffusion WebUI (AUTOMATIC1111)):
    SD Web UI URL:                 {url}
    Authentication:                {auth}
  Any other client sending HTTP Basic:
    URL {url}   user {BASIC_AUTH_USER} (any name works)   password {token}
""")
    click.echo(f"It is shown only now; `pennello tokens revoke {paired['id']}` withdraws it.", err=True)
    if url.startswith("https:"):
        from ..net.tls import CERT_FILE, tls_dir

        click.echo(f"The certificate is self-signed: let the front-end trust {tls_dir(get_paths()) / CERT_FILE} "
                   "(docs/clients.md shows how).", err=True)
    _warn_if_loopback_only(offer)


def _warn_if_loopback_only(offer: dict) -> None:
    if not offer.get("lan"):
        click.secho("note: the daemon listens on this computer only; restart it with "
                    "`pennello serve --lan` so other devices can reach it", fg="yellow", err=True)


def _quoted(name: str) -> str:
    return f'"{name}"' if " " in name else name


def render_qr(data: str) -> str:
    """``data`` as a QR code drawn with block characters, dark on a light terminal or not."""
    import qrcode

    code = qrcode.QRCode(border=2)
    code.add_data(data)
    out = io.StringIO()
    code.print_ascii(out=out, invert=True)
    return out.getvalue()


@click.command("open")
@click.option("--browser/--no-browser", default=True, show_default=True,
              help="Open the link in the default browser; without, only print it.")
def open_page(browser: bool) -> None:
    """Open the web page in this computer's browser, logged in as the owner.

    Prints a one-time login link (it works once, for 2 minutes) and opens it: the browser gets
    a session cookie and keeps it for 30 days. Another account on this computer cannot do this:
    the link comes from the daemon only for the owner token, which only you can read.
    """
    import webbrowser

    from pennello.client import Client

    link = Client().call("POST", "/api/login-link")
    click.echo(f"Web page (the link works once, for {int(link['expires_in_s'])} s): {link['url']}")
    if browser and not webbrowser.open(link["url"]):
        click.echo("no browser could be started here; open the link above in one", err=True)


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
    """Show paired devices: id, name, scope, when paired, when last seen."""
    records = _store().list()
    if as_json:
        click.echo(json.dumps([r.public() for r in records], indent=2))
        return
    if not records:
        click.echo("No devices are paired. `pennello pair` pairs one.")
        return
    click.echo(f"{'ID':<10} {'DEVICE':<32} {'SCOPE':<7} {'PAIRED':<17} LAST USED")
    for r in records:
        click.echo(f"{r.id:<10} {r.name[:32]:<32} {r.scope:<7} {_when(r.created):<17} {_when(r.last_used)}")


@tokens.command()
@click.argument("token_id")
def revoke(token_id: str) -> None:
    """Revoke a device's token by its ID (from `pennello tokens list`); it must pair again."""
    record = _store().revoke(token_id)
    click.echo(f"Revoked {record.id} ({record.name}).")


@tokens.command()
@click.argument("name")
@click.option("--admin", is_flag=True, help="An owner token: it may do everything the owner on this "
              "computer may (pair and revoke devices, load models, read no-network status...).")
def issue(name: str, admin: bool) -> None:
    """Issue a token without pairing, for a client you set up by hand (device scope unless --admin).

    The token is shown once; send it as `Authorization: Bearer TOKEN`.

    \b
      pennello tokens issue "render box"
      pennello tokens issue --admin "laptop admin"
    """
    token, record = _store().issue(name, "owner" if admin else "device")
    click.echo(f"Issued {record.scope} token {record.id} for {record.name!r}:")
    click.echo(token)
    click.echo("It is shown only now; `pennello tokens revoke " + record.id + "` withdraws it.", err=True)
    if admin:
        click.secho("This token may do everything the owner may; keep it like a password.", fg="yellow", err=True)
