"""``pennello discover``: the pennello daemons answering on the local network.

    $ pennello discover
    Pennello on studio  (paired)
      addresses:   192.168.1.20, fe80::1c2b:…%eth0   port 8420
      models:      pennello-tiny, sd-turbo  (loaded: pennello-tiny)
      auth:        token required   tls: yes
      fingerprint: sha256:3b1f…
      id:          9c0e…
"""

from __future__ import annotations

import json
from dataclasses import asdict

import click


@click.command()
@click.option("--timeout", type=float, default=3.0, show_default=True, help="Seconds to listen for answers.")
@click.option("--interface", "interfaces", multiple=True, metavar="NAME|ADDRESS",
              help="Look only on this interface (repeatable; default: all of them).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def discover(timeout: float, interfaces: tuple[str, ...], as_json: bool) -> None:
    """List the pennello daemons on the local network (found over mDNS; nothing leaves the LAN).

    Each shows its name, addresses, port, models, whether it needs a token, and its certificate
    fingerprint, which pairing pins. Pair with one with `pennello pair NAME`.

    Exits with status 8 when none answered.
    """
    from pennello.client.discover import browse
    from pennello.client.remote import RemoteStore
    from pennello.errors import DaemonError

    services = browse(timeout, interfaces)
    paired = {remote.id for remote in RemoteStore.default().list()}
    if as_json:
        click.echo(json.dumps([{**asdict(s), "url": s.url, "paired": s.id in paired} for s in services], indent=2))
    for s in [] if as_json else services:
        click.echo(f"{click.style(s.name, bold=True)}{'  (paired)' if s.id in paired else ''}")
        click.echo(f"  addresses:   {', '.join(s.addresses)}   port {s.port}")
        more = "…" if s.models_truncated else ""
        click.echo(f"  models:      {', '.join(s.models) or 'none'}{more}"
                   f"  (loaded: {', '.join(s.loaded) or 'none'})")
        click.echo(f"  auth:        {'token required' if s.auth else 'open'}   tls: {'yes' if s.tls else 'no'}")
        click.echo(f"  fingerprint: {s.fingerprint or '-'}")
        click.echo(f"  id:          {s.id}")
    if not services:
        raise DaemonError(f"no pennello answered within {timeout:g}s; on the other machine run "
                          f"`pennello serve --lan`, and check both are on the same network")
