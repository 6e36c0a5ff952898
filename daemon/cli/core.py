"""``pennello serve``, ``pennello status`` and ``pennello generate``.

``serve`` runs the daemon in the foreground; the other two talk to it over HTTP only, so they
work the same against a daemon on another machine: a paired one found on the LAN
(``--remote NAME`` or ``--remote auto``), or any one by address (``--url``, ``--token``).
``generate`` starts the local daemon when none runs (:mod:`.autostart`), as ``ollama run`` does.

    $ pennello serve --port 0 &
    $ pennello status
    $ pennello generate "a lighthouse at dusk" -n 2 --seed 7 --out pictures/
    $ pennello generate "a lighthouse at dusk" --remote auto   # the paired daemon on the LAN
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pennello.cli_output import emit, json_output
from pennello.paths import get_paths

if TYPE_CHECKING:  # imported where used: `pennello serve` never loads the client side
    from pennello.client import Client


@click.command()
@click.option("--host", help="Address to listen on (default from config: 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535),
              help="Port to listen on (default 8420; 0 picks a free one and prints it).")
@click.option("--lan", is_flag=True, default=None,
              help="Serve HTTPS on every interface and advertise it over mDNS so phones and other "
                   "PCs can find and connect to it; they need a paired token (see `pennello pair`).")
@click.option("--cluster", metavar="HOST:PORT",
              help="Draw on the pennello cluster whose head is HOST:PORT (this box runs `pennello node`; "
                   "docs/cluster.md). Default: `head` under [cluster] in config.toml.")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="The cluster token for --cluster (default: this box's own).")
def serve(host: str | None, port: int | None, lan: bool | None, cluster: str | None,
          token_file: Path | None) -> None:
    """Keep the default model warm and serve the HTTP API until Ctrl-C or SIGTERM.

    Installs the embedded default model first if it is missing (no download). Only one daemon
    runs per pennello home; a second `serve` says where the first one is. On shutdown the
    running batch finishes and its pictures are saved.

    \b
      pennello serve                 # http://127.0.0.1:8420, this machine only
      pennello serve --lan           # HTTPS for the local network, advertised over mDNS,
                                     # paired devices only (see `pennello pair`)
      pennello serve --port 0        # any free port; the URL is printed
      pennello serve --cluster 192.168.1.20:6379   # batches drawn by the cluster's nodes
    """
    from pennello.config import load_config

    paths = get_paths().ensure()
    config = load_config()
    if config.offline.enabled:
        from ..net.offline import apply_offline_env

        apply_offline_env()  # before anything imports huggingface_hub, diffusers or transformers
    from pennello.installer import ensure_embedded_default

    from ..server import serve as run_server

    overrides = {key: value for key, value in (("host", host), ("port", port), ("lan", lan))
                 if value is not None}
    config = config.replace("server", **overrides)
    cluster = cluster or config.cluster.head or None
    if cluster:  # no-network mode then lets the daemon reach the head (ClusterConfig.peer_networks)
        config = config.replace("cluster", head=cluster)
        if config.offline.enabled:
            config.cluster.peer_networks()  # a head given by name is refused before Ray looks it up
    ensure_embedded_default(paths, config)
    engine_class = None
    if cluster:
        from ..cluster.front import ClusterEngine, connect
        from ..cluster.nodes import node_ip
        from ..cluster.ray_env import TOKEN_FILE, read_token

        ip = node_ip(paths.runtime_dir)  # first: without a node here, no token file helps
        connect(cluster, read_token(token_file or paths.state_dir / TOKEN_FILE), ip)
        engine_class = ClusterEngine
    run_server(config, paths, on_ready=lambda url: click.echo(f"pennello is serving on {url}"),
               engine_class=engine_class)


_remote_options = [
    click.option("--remote", envvar="PENNELLO_REMOTE", metavar="NAME|auto",
                 help="A paired daemon on the LAN, by name or instance id; `auto`: the only paired "
                      "one that answers. Found by mDNS, reached over TLS pinned at pairing."),
    click.option("--url", envvar="PENNELLO_URL",
                 help="Daemon to use, e.g. http://192.168.1.20:8420 (default: the local one)."),
    click.option("--token", envvar="PENNELLO_TOKEN", help="Paired device token for a remote daemon."),
]


def _client(remote: str | None, url: str | None, token: str | None) -> Client:
    if remote:
        from pennello.client.remote import connect

        return connect(remote)
    from pennello.client import Client

    return Client(url, token)


def _remote(command: Any) -> Any:
    for option in reversed(_remote_options):
        command = option(command)
    return command


@click.command()
@_remote
@json_output
def status(remote: str | None, url: str | None, token: str | None, as_json: bool) -> None:
    """Say whether the daemon runs, where, on which device, and how busy it is.

    Exits with status 8 when no daemon is running.
    """
    client = _client(remote, url, token)
    health = client.health()
    if as_json:
        emit({"url": client.base_url, **health})
        return
    click.echo(f"pennello {health['version']} is running at {client.base_url}")
    click.echo(f"  device:        {health['device']}")
    click.echo(f"  default model: {health['default_model']}"
               f" ({'loaded' if health['default_loaded'] else 'not loaded'})")
    click.echo(f"  loaded models: {', '.join(health['loaded']) or 'none'}")
    click.echo(f"  queue:         {health['running']} running, {health['queue_depth']} waiting")
    offline = health.get("offline")
    if offline:
        click.echo(f"  no-network:    {offline['mode']} ({offline['refused']} attempts refused)")


def _parse_size(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        width, height = (int(part) for part in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter("use WIDTHxHEIGHT, e.g. 512x768") from None
    return width, height


@click.command()
@click.argument("prompt")
@click.option("-n", "n", type=int, default=1, show_default=True, help="How many pictures.")
@click.option("--size", callback=_parse_size, metavar="WxH", help="Picture size (default: the model's).")
@click.option("--steps", type=int, help="Denoising steps (default: the model's).")
@click.option("--guidance", type=float, help="Guidance scale (default: the model's).")
@click.option("--seed", type=int, help="Seed of the first picture; the next ones use seed+1, seed+2…")
@click.option("--negative", default="", help="What the picture should not contain.")
@click.option("--model", help="Installed model to use (default: the daemon's default).")
@click.option("--keep-alive", metavar="DURATION",
              help="How long the model stays loaded afterwards: 10m, 1h30m, 300 (seconds); "
                   "0 = unload once idle, -1 = until unloaded.")
@click.option("--format", "fmt", type=click.Choice(["png", "jpeg", "webp"]), default="png",
              show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Directory to save the pictures in.")
@_remote
@json_output
def generate(prompt: str, n: int, size: tuple[int, int] | None, steps: int | None,
             guidance: float | None, seed: int | None, negative: str, model: str | None,
             keep_alive: str | None, fmt: str, out: Path, remote: str | None, url: str | None,
             token: str | None, as_json: bool) -> None:
    """Generate pictures and save them, starting the local daemon first if it is not running.

    Shows progress while the daemon works, then prints each saved file with its seed (the same
    prompt, settings and seed give the same picture again). A daemon started here keeps
    running for the next command (`pennello stop` ends it).

    \b
      pennello generate "a red kite over a beach"
      pennello generate "a red kite" -n 4 --seed 7 --size 512x512 --out kites/
      pennello generate "a red kite" --remote "Pennello on studio"
    """
    from pennello.client import save_images

    from .progress import progress_bar

    params: dict[str, Any] = {"n": n, "format": fmt, "negative_prompt": negative, "steps": steps,
                              "guidance": guidance, "seed": seed, "model": model, "keep_alive": keep_alive}
    if size:
        params["width"], params["height"] = size
    params = {key: value for key, value in params.items() if value is not None}
    if not (remote or url):
        from .autostart import ensure_daemon

        url = ensure_daemon(get_paths())
    client = _client(remote, url, token)
    with progress_bar("generating", as_json) as bar:
        def on_progress(step: int, total: int) -> None:
            bar.total = total
            bar.update(step - bar.n)

        images = client.generate(prompt, on_progress=on_progress, **params)
    saved = save_images(images, out)
    if as_json:
        emit({"images": [{"path": str(path), **{k: v for k, v in image.items() if k != "bytes"}}
                         for path, image in zip(saved, images)]})
        return
    for path, image in zip(saved, images):
        click.echo(f"{path}  seed={image['seed']}")
