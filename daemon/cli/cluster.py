"""``pennello node``: make this box part of a pennello cluster (``pip install 'pennello[cluster]'``).

One box starts the head, the others join it with the head's token file (copied by hand for
now; docs/cluster.md). Each offers the models its own store verifies right now. The front box,
itself a node, then serves users with ``pennello serve --cluster HEAD``.

    $ pennello node --head --ip 192.168.1.20      # prints the head's address and token file
    $ pennello node --join 192.168.1.20:6379 --ip 192.168.1.21 --token-file cluster-token
    $ pennello serve --lan --cluster 192.168.1.20:6379
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import click

from pennello.paths import get_paths


@click.command()
@click.option("--head", "as_head", is_flag=True, help="Start the cluster's head on this box.")
@click.option("--join", "head", metavar="HOST:PORT", help="Join the cluster whose head is HOST:PORT.")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="The cluster token (default: this box's own, made by `pennello node --head`).")
@click.option("--ip", "node_ip", required=True,
              help="This box's address the other nodes reach it on (Ray turns 127.0.0.1 into the "
                   "LAN address; 127.0.0.2 and up stay on loopback).")
@click.option("--port", "head_port", type=click.IntRange(1024, 65535), default=None,
              help="The head's port (--head only; default 6379).")
@click.option("--port-base", type=int, default=None,
              help="This node's own ports are pinned from here up (default 6400; see docs/cluster.md).")
@click.option("--gpus", type=click.IntRange(0), help="GPUs this node offers (default: all Ray finds).")
def node(as_head: bool, head: str | None, token_file: Path | None, node_ip: str, head_port: int | None,
         port_base: int | None, gpus: int | None) -> None:
    """Run this box as a node of a pennello cluster until Ctrl-C or SIGTERM.

    Starts Ray with pinned ports, token authentication on and every outbound report off,
    offering one resource per model version this box's store verifies now (a damaged copy is
    left out). Stopping ends this node's Ray processes only, never another's on the machine.
    """
    from pennello.installer import Store

    from ..cluster import nodes
    from ..cluster.ray_env import DEFAULT_HEAD_PORT, DEFAULT_PORT_BASE, TOKEN_FILE, new_token, read_token

    if as_head == bool(head):
        raise click.UsageError("say either --head or --join HOST:PORT")
    if head_port is not None and not as_head:
        raise click.UsageError("--port is the head's own port: use it with --head")
    paths = get_paths().ensure()
    own_token = paths.state_dir / TOKEN_FILE
    token = read_token(token_file) if token_file else (new_token(own_token) if as_head else read_token(own_token))
    resources = nodes.verified_resources(Store(paths))
    base = port_base or DEFAULT_PORT_BASE
    command = nodes.ray_start_command(None if as_head else head, head_port or DEFAULT_HEAD_PORT,
                                      base, node_ip, resources, gpus)
    ray = nodes.start(command, token, dict(os.environ))
    node_file = nodes.write_node_file(paths.runtime_dir, node_ip, ray.pid)
    click.echo(f"pennello node {'head ' if as_head else ''}running (Ray pid {ray.pid}); models: "
               f"{', '.join(sorted(resources)) or 'none verified'}; token file {token}")

    def stop(*_: object) -> None:
        nodes.stop_node(ray.pid, node_ip, base)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = ray.wait()
    finally:
        stop()
        node_file.unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code not in (0, -signal.SIGTERM):
        raise click.ClickException(f"Ray stopped with status {code} (refused by the head? see its log)")
