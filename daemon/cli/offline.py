"""``pennello offline on|off|status|unit``: no-network mode, proof that it holds, and the
systemd drop-in carrying a cluster's boxes (:mod:`pennello.daemon.net.offline_unit`).

    $ pennello offline status
    no-network mode: on (running daemon, pid 4242, since 10:02)
      allowed: loopback and this machine's own addresses; mDNS 224.0.0.251:5353; …
      refused: 0 attempts
    $ pennello offline off      # asks first (--yes: no); written to config.toml; restart to apply

See docs/no-network.md for what is enforced, by whom, and the OS-level rules.
"""

from __future__ import annotations

import json
from datetime import datetime

import click

from pennello.paths import get_paths


@click.group()
def offline() -> None:
    """No-network mode: after setup the daemon reaches only this machine and its LAN clients.

    On by default. The daemon then tells the model libraries to stay offline and refuses, logs
    and counts every other connection attempt (docs/no-network.md).
    """


def _set(enabled: bool) -> None:
    from pennello.runtime import read_daemon_info
    from pennello.config import write_setting

    paths = get_paths().ensure()
    write_setting(paths.config_file, "offline", "enabled", enabled)
    click.echo(f"no-network mode is {'on' if enabled else 'off'} in {paths.config_file}.")
    if read_daemon_info(paths) is not None:
        click.echo("The running daemon keeps its current mode until it restarts "
                   "(`systemctl --user restart pennello`, or stop and start `pennello serve`).")


@offline.command("on")
def offline_on() -> None:
    """Turn no-network mode on (the default after setup)."""
    _set(True)


@offline.command("off")
@click.option("--yes", "-y", is_flag=True, help="Do not ask (or set PENNELLO_ASSUME_YES=1).")
def offline_off(yes: bool) -> None:
    """Turn no-network mode off, e.g. to let a library fetch something itself (not recommended).

    Says what that allows and asks first; --yes agrees in advance. Without a terminal and
    without --yes nothing changes and it exits 10.
    """
    from pennello.consent import NO_NETWORK_OFF_FACTS, confirm

    confirm("Turn no-network mode off?", NO_NETWORK_OFF_FACTS, assume_yes=yes)
    _set(False)


@offline.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's full report as JSON.")
@click.option("--stacks", is_flag=True, help="Show the stack of each refused attempt.")
def offline_status(as_json: bool, stacks: bool) -> None:
    """Show the mode, what the daemon may reach, and every attempt it refused.

    Asks the running daemon (`GET /api/offline`); without one, shows the configured mode.
    """
    from pennello.client import Client
    from pennello.runtime import read_daemon_info
    from pennello.config import load_config

    configured = "on" if load_config().offline.enabled else "off"
    info = read_daemon_info()
    if info is None:
        if as_json:
            click.echo(json.dumps({"mode": None, "configured": configured, "running": False}))
            return
        click.echo(f"no-network mode: {configured} in the config (isolation: "
                   f"{load_config().offline.isolation}); no daemon is running")
        return
    report = Client().offline()
    if as_json:
        click.echo(json.dumps({**report, "configured": configured, "running": True}, indent=2))
        return
    since = f", since {datetime.fromtimestamp(report['since']):%Y-%m-%d %H:%M}" if report.get("since") else ""
    click.echo(f"no-network mode: {report['mode']} (running daemon, pid {info.get('pid')}{since})")
    if report["mode"] != configured:
        click.echo(f"  the config says {configured}: restart the daemon to apply it")
    if report.get("reason"):
        click.echo(f"  {report['reason']}")
    _echo_isolation(report)
    click.echo("  allowed:")
    for rule in report["allowed"]:
        click.echo(f"    - {rule}")
    click.echo(f"  refused: {report['refused']} attempt{'s' if report['refused'] != 1 else ''}")
    for destination, count in report.get("refused_by_destination", {}).items():
        click.echo(f"    {count:>5} x {destination}")
    for attempt in report.get("attempts", []):
        when = datetime.fromtimestamp(attempt["time"]).strftime("%H:%M:%S")
        click.echo(f"  {when} {attempt['event']} to {attempt['destination']} from {attempt['where']}")
        if stacks:
            click.echo("      " + attempt["stack"].rstrip().replace("\n", "\n      "))


@offline.command("unit")
@click.option("--write", is_flag=True,
              help="Write it as UNIT.d/cluster.conf beside the systemd user units instead of printing it.")
def offline_unit(write: bool) -> None:
    """The systemd drop-in adding a cluster's boxes to the units' IP allow-list.

    The boxes are `head` and `peers` under [cluster] in config.toml, the same list no-network
    mode lets the daemon reach (docs/cluster.md). Then: systemctl --user daemon-reload.
    """
    import os
    from pathlib import Path

    from pennello.config import load_config

    from ..net.offline_unit import dropin, write_dropins

    cluster = load_config().cluster
    if not write:
        click.echo(dropin(cluster), nl=False)
        return
    unit_dir = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "systemd" / "user"
    for path in write_dropins(unit_dir, cluster):
        click.echo(f"wrote {path}")
    click.echo("apply it with: systemctl --user daemon-reload && systemctl --user restart pennello")


def _echo_isolation(report: dict) -> None:
    """Which process layout keeps the network out (docs/no-network.md, "Isolation")."""
    kind, why = report.get("isolation"), report.get("isolation_reason", "")
    if kind == "network-namespace":
        worker = report.get("worker", {})
        click.echo(f"  isolation: network namespace (model worker pid {worker.get('pid')}; its interfaces: "
                   f"{', '.join(worker.get('interfaces', [])) or 'none'})")
    elif kind == "in-process-guard":
        click.echo(f"  isolation: in-process guard only ({why})")
    elif kind:
        click.echo(f"  isolation: {kind} ({why})")
