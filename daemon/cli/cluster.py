"""``pennello node``: make this box part of a pennello cluster (``pip install 'pennello[cluster]'``).

One box starts the head, and the front on it; the others join after pairing with the front
(``pennello pair --node`` there shows a one-time code), which hands them the cluster token and
checks they run its pennello and model versions (:mod:`..cluster.membership`). An office
without a front to ask yet can copy the head's token file by hand (``--token-file``). Each node
offers the models its own store verifies right now.

    $ pennello node --head --ip 192.168.1.20      # on box A: the head
    $ pennello serve --lan --cluster 192.168.1.20:6379   # on box A: the front
    $ pennello pair --node                         # on box A: a one-time code for a node
    $ pennello node --join 192.168.1.20:6379 --ip 192.168.1.21 --front https://192.168.1.20:8420 \
          --pair K7M2QX9P --fingerprint sha256:3b1f...   # on box B; later joins need no code
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import click

from pennello.paths import get_paths


@click.command()
@click.option("--head", "as_head", is_flag=True, help="Start the cluster's head on this box.")
@click.option("--join", "head", metavar="HOST:PORT", help="Join the cluster whose head is HOST:PORT.")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="The cluster token copied by hand, instead of asking the front (default: the head "
                   "makes its own; a paired node asks the front).")
@click.option("--pair", "code", metavar="CODE", help="With --join: the one-time code `pennello pair --node` "
              "shows on the front; needed only the first time.")
@click.option("--front", metavar="URL", help="With --pair: the front's address `pennello pair --node` "
              "shows (kept for later joins).")
@click.option("--fingerprint", help="With --pair: the front's certificate fingerprint; any other is refused.")
@click.option("--ip", "node_ip", required=True,
              help="This box's address the other nodes reach it on (Ray turns 127.0.0.1 into the "
                   "LAN address; 127.0.0.2 and up stay on loopback).")
@click.option("--port", "head_port", type=click.IntRange(1024, 65535), default=None,
              help="The head's port (--head only; default 6379).")
@click.option("--port-base", type=int, default=None,
              help="This node's own ports are pinned from here up (default 6400; see docs/cluster.md).")
@click.option("--gpus", type=click.IntRange(0), help="GPUs this node offers (default: all Ray finds).")
def node(as_head: bool, head: str | None, token_file: Path | None, code: str | None, front: str | None,
         fingerprint: str | None, node_ip: str, head_port: int | None, port_base: int | None,
         gpus: int | None) -> None:
    """Run this box as a node of a pennello cluster until Ctrl-C or SIGTERM.

    Starts Ray with pinned ports, token authentication on and every outbound report off,
    offering one resource per model version this box's store verifies now (a damaged copy is
    left out). A joining node first asks the front for the cluster token (--pair CODE the first
    time): a revoked node, or one with another pennello or model version, is refused there.
    Stopping ends this node's Ray processes only, never another's on the machine.
    """
    from pennello.installer import Store

    from ..cluster import nodes
    from ..cluster.membership import join_through_front
    from ..cluster.ray_env import DEFAULT_HEAD_PORT, DEFAULT_PORT_BASE, TOKEN_FILE, new_token, read_token

    if as_head == bool(head):
        raise click.UsageError("say either --head or --join HOST:PORT")
    if head_port is not None and not as_head:
        raise click.UsageError("--port is the head's own port: use it with --head")
    if (code or front) and (as_head or token_file):
        raise click.UsageError("--pair and --front join through the front: use them with --join, without --token-file")
    if code and not front:
        raise click.UsageError("--pair needs --front URL, the front's address `pennello pair --node` shows")
    paths = get_paths().ensure()
    store = Store(paths)
    if token_file or as_head:
        token = read_token(token_file) if token_file else new_token(paths.state_dir / TOKEN_FILE)
    else:
        token = join_through_front(paths, store, f"node {node_ip}", front, code, fingerprint)
    resources = nodes.verified_resources(store)
    base = port_base or DEFAULT_PORT_BASE
    command = nodes.ray_start_command(None if as_head else head, head_port or DEFAULT_HEAD_PORT,
                                      base, node_ip, resources, gpus)
    _run_ray(command, token, paths.runtime_dir, node_ip, base, as_head,
             f"models: {', '.join(sorted(resources)) or 'none verified'}; token file {token}")


def _run_ray(command: list[str], token: Path, runtime_dir: Path, node_ip: str, base: int, as_head: bool,
             details: str) -> None:
    """Run ``ray start --block`` (started again when it missed Ray's window to register,
    :func:`..cluster.nodes.run`) until it ends, or Ctrl-C or SIGTERM stops this node's processes."""
    from ..cluster import nodes

    ray: list[subprocess.Popen] = []  # the `ray start` running now
    stopping: list[bool] = []

    def started(process: subprocess.Popen) -> None:
        ray[:] = [process]
        if stopping:  # a signal came between two tries
            stop()
        nodes.write_node_file(runtime_dir, node_ip, process.pid)
        click.echo(f"pennello node {'head ' if as_head else ''}running (Ray pid {process.pid}); {details}")

    def stop(*_: object) -> None:
        stopping.append(True)
        if ray:
            nodes.stop_node(ray[0].pid, node_ip, base)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = nodes.run(command, token, dict(os.environ), started,
                         stop=lambda pid: nodes.stop_node(pid, node_ip, base))
    finally:
        stop()
        (runtime_dir / nodes.NODE_FILE).unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code not in (0, -signal.SIGTERM):
        why = "see its log" if as_head else "refused by the head? see its log"
        raise click.ClickException(f"Ray stopped with status {code} ({why})")
