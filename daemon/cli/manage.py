"""``pennello stop``, ``ps``, ``load``, ``unload`` and ``queue``: the verbs Ollama users reach for.

All but ``stop`` talk to the daemon over HTTP only, so they work the same against a paired daemon
on the LAN (``--remote``, ``--url``, ``--token``). ``stop`` is about the daemon of this pennello
home: it asks it over the API to shut down (``POST /api/shutdown``, owner only), falls back to
SIGTERM on the pid in ``daemon.json`` when the API does not answer, and waits until the daemon
has let go of its instance lock (it has then saved its pictures and removed ``daemon.json``).

    $ pennello ps
    $ pennello load sdxl-turbo --keep-alive 10m
    $ pennello queue cancel --all
    $ pennello stop
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import click

from pennello.cli_output import emit, json_output
from pennello.errors import DaemonError, PennelloError
from pennello.paths import get_paths
from pennello.runtime import read_daemon_info

from .autostart import daemon_running
from .core import _client, _remote

_STOP_WAIT_S = 90.0  # a running batch may take the server's 30 s grace, plus saving and the worker


def _ask_to_stop(info: dict[str, Any]) -> str:
    """Ask over the API, else by SIGTERM; returns how it was asked, for the user."""
    from pennello.client import Client

    try:
        Client(info["url"], fingerprint=info.get("fingerprint"), timeout=10).shutdown()
        return "over the API"
    except PennelloError as e:
        click.echo(f"the API did not take the request ({e}); sending SIGTERM to pid {info['pid']}", err=True)
    try:
        os.kill(int(info["pid"]), signal.SIGTERM)
    except ProcessLookupError:
        pass  # it ended meanwhile
    return f"with SIGTERM (pid {info['pid']})"


@click.command()
@click.option("--timeout", type=click.FloatRange(min=0), default=_STOP_WAIT_S, show_default=True,
              help="Seconds to wait for the daemon to finish its running jobs and exit.")
def stop(timeout: float) -> None:
    """Stop the daemon of this pennello home gracefully and wait until it has exited.

    Jobs that have begun finish and are saved, queued ones are cancelled. Exits 0 when no daemon
    runs (and says so), 8 when it did not exit within --timeout.
    """
    paths = get_paths()
    info = read_daemon_info(paths)
    if not daemon_running(paths):
        click.echo("pennello is not running" + (" (its daemon.json was stale)" if info else ""))
        return
    if info is None:
        raise DaemonError("a pennello daemon holds this home's lock but has not published where it "
                          "listens yet; try again in a moment")
    how = _ask_to_stop(info)
    click.echo(f"stopping pennello at {info['url']} ({how})…", err=True)
    deadline = time.monotonic() + timeout
    while daemon_running(paths):
        if time.monotonic() > deadline:
            raise DaemonError(f"pennello (pid {info['pid']}) did not exit within {timeout:g} s; it may "
                              f"still be finishing a batch (`pennello stop --timeout 300`)")
        time.sleep(0.2)
    click.echo("pennello stopped")


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


def _backend(model: dict[str, Any]) -> str:
    """What computes the model and on which device: ``torch on cpu``, ``openvino on AUTO: CPU``."""
    placement = model.get("placement") or {}
    backend = placement.get("backend")
    return "-" if backend is None else f"{backend} on {placement.get('backend_device') or '?'}"


def _keep_left(model: dict[str, Any]) -> str:
    left = model.get("expires_in_s")
    return "until unloaded" if left is None else f"{left:.0f} s"


@click.command()
@_remote
@json_output
def ps(remote: str | None, url: str | None, token: str | None, as_json: bool) -> None:
    """List the models in memory: size, device, keep-alive left, the backend computing each (torch or
    OpenVINO) and its device; and the device and queue."""
    report = _client(remote, url, token).ps()
    if as_json:
        emit(report)
        return
    backend = report.get("backend") or {}
    click.echo(f"device {report.get('device', '?')} (torch {backend.get('torch', '?')}"
               f"{', CUDA ' + backend['cuda'] if backend.get('cuda') else ''}); weights in memory "
               f"{_size((report.get('memory') or {}).get('weights_bytes'))}; queue: "
               f"{report.get('running', 0)} running, {report.get('queue_depth', 0)} waiting")
    click.echo(f"{'NAME':<24} {'SIZE':>9}  {'DEVICE':<6} {'KEEP-ALIVE LEFT':<16} {'IDLE':<7} BACKEND")
    for model in report["models"]:
        idle = f"{model.get('idle_s', 0):.0f} s"
        click.echo(f"{model['name']:<24} {_size(model.get('param_bytes')):>9}  {model.get('device', '?'):<6} "
                   f"{_keep_left(model):<16} {idle:<7} {_backend(model)}")
    refused = {address: why for model in report["models"]  # a cluster front: the same for every model
               for address, why in ((model.get("cluster") or {}).get("refused_nodes") or {}).items()}
    for address, why in refused.items():
        click.echo(f"cluster node {address} gets no replica: {why}")


@click.command()
@click.argument("name")
@click.option("--keep-alive", metavar="DURATION",
              help="How long it stays loaded after its last use: 10m, 1h30m, 300 (seconds); "
                   "0 = unload once idle, -1 = until unloaded.")
@_remote
@json_output
def load(name: str, keep_alive: str | None, remote: str | None, url: str | None, token: str | None,
         as_json: bool) -> None:
    """Load model NAME into memory now, so the first picture comes without waiting."""
    model = _client(remote, url, token).load_model(name, keep_alive)
    if as_json:
        emit(model)
        return
    click.echo(f"loaded {model['name']} on {model.get('device', '?')} ({_size(model.get('param_bytes'))}); "
               f"keep-alive: {_keep_left(model)}")


@click.command()
@click.argument("name")
@_remote
@json_output
def unload(name: str, remote: str | None, url: str | None, token: str | None, as_json: bool) -> None:
    """Free model NAME's memory now; the next request that needs it loads it again."""
    answer = _client(remote, url, token).unload_model(name)
    if as_json:
        emit(answer)
        return
    click.echo(f"unloaded {name}" if answer["unloaded"] else f"{name} was not loaded")


def _job_line(job: dict[str, Any]) -> str:
    prompt = job.get("prompt") or ""
    return (f"{job['id']:<34} {job['status']:<10} {job.get('progress', 0):>4.0%}  "
            f"{job.get('model') or '-':<18} {prompt[:40]!r}")


@click.group(invoke_without_command=True)
@_remote
@json_output
@click.pass_context
def queue(ctx: click.Context, remote: str | None, url: str | None, token: str | None, as_json: bool) -> None:
    """List your jobs, oldest first (`pennello queue cancel ID` or `--all` cancels).

    \b
      pennello queue
      pennello queue cancel 3f2a…
      pennello queue cancel --all
    """
    if ctx.invoked_subcommand is not None:
        return
    jobs = _client(remote, url, token).jobs(mine=True)
    if as_json:
        emit({"jobs": jobs})
        return
    if not jobs:
        click.echo("no jobs")
    for job in jobs:
        click.echo(_job_line(job))


@queue.command("cancel")
@click.argument("job_ids", nargs=-1, metavar="[ID]...")
@click.option("--all", "cancel_all", is_flag=True, help="Cancel every one of your queued and running jobs.")
@_remote
@json_output
def queue_cancel(job_ids: tuple[str, ...], cancel_all: bool, remote: str | None, url: str | None,
                 token: str | None, as_json: bool) -> None:
    """Cancel jobs by ID, or all of yours with --all (a running one stops at its next step)."""
    if bool(job_ids) == cancel_all:
        raise click.UsageError("give job IDs or --all (not both)")
    client = _client(remote, url, token)
    if cancel_all:
        job_ids = tuple(job["id"] for job in client.jobs(mine=True) if job["status"] in ("queued", "running"))
    cancelled = [client.cancel_job(job_id) for job_id in job_ids]
    if as_json:
        emit({"cancelled": cancelled})
        return
    for job in cancelled:
        click.echo(f"cancelled {job['id']}" + ("" if job["status"] == "cancelled" else " (it stops at its next step)"))
    if not cancelled:
        click.echo("no jobs to cancel")
