"""``pennello tray``: the icon in the system tray, starting the daemon if it is not running.

    $ pennello tray                                  # start or attach to the local daemon
    $ pennello tray --url http://studio.lan:8420 --token …   # watch a daemon elsewhere
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from urllib.parse import urljoin

import click
import filelock

from pennello.paths import get_paths

log = logging.getLogger(__name__)

TRAY_LOCK = "tray.lock"
TRAY_FILE = "tray.json"  # {"pid": …}: lets the uninstaller stop a running tray
READY_WAIT_S = 300.0


@click.command()
@click.option("--url", envvar="PENNELLO_URL", help="Use the daemon at this URL and never start one.")
@click.option("--token", envvar="PENNELLO_TOKEN", help="Paired device token for --url.")
def tray(url: str | None, token: str | None) -> None:
    """Show pennello in the system tray, starting the daemon if it is not running.

    The icon shows the state (grey: starting, green: ready, amber: busy, padlock: no-network
    mode, red: error). Its menu has Quick generate, the web page, pairing, models, the outputs
    folder, No-network mode, Start at login and Quit; Quit stops the daemon only if the tray
    started it. Turning no-network mode off or start at login on asks first, in a dialog.

    Without a system tray (e.g. GNOME without the AppIndicator extension, or no desktop at all)
    pennello keeps running without an icon and opens the web page instead; Ctrl-C stops it.
    """
    from ._autostart import login_item
    from ._controller import TrayController
    from ._daemon import DaemonSupervisor
    from ._desktop import SystemDesktop, tray_host

    paths = get_paths().ensure()
    lock = filelock.FileLock(str(paths.runtime_dir / TRAY_LOCK))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        pid = _tray_pid(paths.runtime_dir / TRAY_FILE)
        click.echo(f"the pennello tray is already running (pid {pid or '?'})")
        return
    tray_file = paths.runtime_dir / TRAY_FILE
    tray_file.write_text(json.dumps({"pid": os.getpid()}), encoding="utf-8")
    desktop = SystemDesktop(paths.outputs_dir, token)
    controller = TrayController(DaemonSupervisor(paths, url, token), desktop, login_item(), paths)
    try:
        available, why = tray_host()
        if available:
            from ._pystray import PystrayTray

            icon = PystrayTray(controller, desktop)
            _on_signals(controller.quit)
            icon.run()
        else:
            _without_tray(controller, desktop, why)
    finally:
        controller.daemon.stop()
        tray_file.unlink(missing_ok=True)
        lock.release()


def _without_tray(controller, desktop, why: str) -> None:  # type: ignore[no-untyped-def]
    """No tray host: keep the daemon running, open the web page, wait for Ctrl-C or SIGTERM."""
    click.echo(f"note: {why}.", err=True)
    click.echo("pennello runs without a tray icon; the web page opens instead. Ctrl-C stops it.", err=True)
    stop = threading.Event()
    _on_signals(stop.set)
    status = controller.start()
    deadline = time.monotonic() + READY_WAIT_S
    while status.state == "starting" and time.monotonic() < deadline and not stop.is_set():
        stop.wait(0.5)
        status = controller.refresh()
    if status.state == "error":
        click.secho(f"error: {status.message}", fg="red", err=True)
        desktop.notify("Pennello could not start", status.message or "")
        return
    # The browser got a one-time login link; what is shown is the page's lasting address.
    url = urljoin(controller.open_web(), "/")
    click.echo(f"pennello is running at {url}")
    desktop.notify("Pennello is running", f"No system tray was found; `pennello open` opens {url} logged in")
    while not stop.wait(1.0):
        if controller.refresh().state == "error":
            click.secho(f"error: {controller.status.message}", fg="red", err=True)
            return


def _on_signals(handler) -> None:  # type: ignore[no-untyped-def]
    def handle(*_args: object) -> None:
        threading.Thread(target=handler, daemon=True).start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handle)


def _tray_pid(path) -> int | None:  # type: ignore[no-untyped-def]
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
