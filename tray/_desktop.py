"""The real desktop: browser, file manager, notifications, and the tray's windows.

Windows (quick generate, pairing, confirmations, and the pop-up menu on trays that have no native menus) run
as separate ``python -m pennello.tray._tk`` processes: Tk and the tray toolkit each want the
main thread (on macOS both insist), and a window that hangs cannot take the icon with it.

    >>> desktop = SystemDesktop(outputs_dir=Path("~/Pictures/Pennello").expanduser())  # doctest: +SKIP
    >>> desktop.quick_generate("http://127.0.0.1:8420", model=None)  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import subprocess
import sys
import webbrowser
from pathlib import Path
from typing import Any, Callable, Sequence

from pennello.launch import python_command

from ._controller import MenuEntry, PairOffer

log = logging.getLogger(__name__)


class SystemDesktop:
    """:class:`pennello.tray._controller.Desktop` for a real session.

    Args:
        outputs_dir: the folder the quick-generate window's "Open folder" opens.
        token: a paired device token the windows pass to the daemon (remote daemons only).
        on_quit: called by :meth:`quit` (the tray layer stops its icon there).
        notifier: shows a notification; defaults to the platform's own (notify-send, osascript).
    """

    def __init__(self, outputs_dir: Path, token: str | None = None, on_quit: Callable[[], None] | None = None,
                 notifier: Callable[[str, str], bool] | None = None) -> None:
        self.outputs_dir = outputs_dir
        self.token = token
        self.on_quit = on_quit
        self.notifier = notifier
        self.windows: dict[str, subprocess.Popen[bytes]] = {}

    def open_url(self, url: str) -> None:
        if not webbrowser.open(url):
            self.notify("Pennello", f"Open {url} in your browser")

    def open_path(self, path: Path) -> None:
        open_path(path)

    def quick_generate(self, base_url: str, model: str | None) -> None:
        args = ["quick", "--url", base_url, "--outputs", str(self.outputs_dir)]
        if model:
            args += ["--model", model]
        self._window("quick", args)

    def show_pairing(self, offer: PairOffer) -> None:
        data = {**offer.__dict__, "qr_png": base64.b64encode(offer.qr_png).decode("ascii")}
        self._window("pair", ["pair"], stdin=json.dumps(data).encode())

    def notify(self, title: str, message: str) -> None:
        log.info("%s: %s", title, message)
        if self.notifier and self.notifier(title, message):
            return
        notify(title, message)

    def confirm(self, question: str, facts: Sequence[str]) -> bool:
        """Ask in a dialog (``python -m pennello.tray._tk confirm``) and wait for the answer.

        Returns:
            True only when the user chose the yes button; a closed dialog, or one that could
            not open, is a no.
        """
        payload = json.dumps({"question": question, "facts": list(facts)}).encode()
        try:
            result = subprocess.run(window_command(["confirm"]), input=payload, capture_output=True, timeout=3600)
        except (OSError, subprocess.TimeoutExpired) as e:
            log.warning("the confirmation dialog failed: %s", e)
            return False
        for line in result.stdout.decode(errors="replace").splitlines():
            if line.startswith("{") and json.loads(line).get("event") == "answered":
                return json.loads(line).get("yes") is True
        log.warning("the confirmation dialog did not answer: %s", result.stderr.decode(errors="replace")[-500:])
        return False

    def quit(self) -> None:
        for window in self.windows.values():
            if window.poll() is None:
                window.terminate()
        if self.on_quit:
            self.on_quit()

    def popup_menu(self, entries: Sequence[MenuEntry]) -> tuple[str, str | None] | None:
        """Show ``entries`` as a pop-up menu at the pointer (for trays without native menus).

        Returns:
            the chosen ``(action, arg)``, or None when the menu was dismissed.
        """
        payload = json.dumps([entry.to_dict() for entry in entries]).encode()
        result = subprocess.run(window_command(["menu"]), input=payload, capture_output=True, timeout=600)
        for line in result.stdout.decode(errors="replace").splitlines():
            if line.startswith("{"):
                chosen = json.loads(line)
                if chosen.get("event") == "chosen":
                    return chosen["action"], chosen.get("arg")
        if result.returncode:
            log.warning("the menu window failed: %s", result.stderr.decode(errors="replace")[-500:])
        return None

    def _window(self, name: str, args: list[str], stdin: bytes | None = None) -> None:
        old = self.windows.get(name)
        if old is not None and old.poll() is None:
            old.terminate()  # one window of each kind: the new one replaces it
        env = {**os.environ, **({"PENNELLO_TOKEN": self.token} if self.token else {})}
        process = subprocess.Popen(window_command(args), stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                   env=env)
        if stdin:
            assert process.stdin is not None
            process.stdin.write(stdin)
            process.stdin.close()
        self.windows[name] = process


def window_command(args: list[str]) -> list[str]:
    """``python -m pennello.tray._tk ARGS``, windowless on Windows (pythonw)."""
    python = Path(sys.executable)
    if sys.platform == "win32" and (python.parent / "pythonw.exe").exists():
        python = python.parent / "pythonw.exe"
    return python_command("-m", "pennello.tray._tk", *args, python=str(python))


def open_path(path: Path) -> None:
    """Open a folder or file with the desktop's file manager or viewer."""
    if sys.platform == "win32":
        os.startfile(path)  # type: ignore[attr-defined]
        return
    opener = "open" if sys.platform == "darwin" else "xdg-open"
    if shutil.which(opener) is None:
        raise FileNotFoundError(f"{opener} is not installed; the folder is {path}")
    subprocess.Popen([opener, str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def notify(title: str, message: str) -> bool:
    """A desktop notification where the platform offers one from the command line."""
    if sys.platform == "darwin":
        script = f"display notification {json.dumps(message)} with title {json.dumps(title)}"
        command = ["osascript", "-e", script]
    elif sys.platform == "win32":
        return False  # pystray's win32 backend notifies through the icon itself
    else:
        command = ["notify-send", "--app-name=Pennello", title, message]
    if shutil.which(command[0]) is None:
        return False
    return subprocess.run(command, capture_output=True).returncode == 0


def tray_host(environ: dict[str, str] | None = None) -> tuple[bool, str]:
    """Whether a system tray can show our icon here, and if not, why.

    Returns:
        ``(True, backend)`` or ``(False, reason)``.
    """
    environ = dict(os.environ if environ is None else environ)
    try:
        import pystray
    except Exception as e:  # pystray raises Xlib errors, not ImportError, without a display
        return False, f"no tray toolkit can start ({type(e).__name__}: {e})"
    backend = pystray_backend()
    if backend == "dummy":
        return True, backend
    if backend in ("xorg", "gtk") and sys.platform.startswith("linux"):
        owner = _x_tray_owner(environ.get("DISPLAY"))
        if not owner:
            return False, ("this desktop has no system tray (no X11 tray manager owns "
                           "_NET_SYSTEM_TRAY; GNOME needs the AppIndicator extension)")
    return True, backend


def pystray_backend() -> str:
    """The name of the backend pystray chose ("xorg", "gtk", "appindicator", "win32", "darwin", "dummy")."""
    import pystray

    for name in ("dummy", "xorg", "gtk", "appindicator", "win32", "darwin"):
        module = sys.modules.get(f"pystray._{name}")
        if module is not None and getattr(module, "Icon", None) is pystray.Icon:
            return name
    return "unknown"


def _x_tray_owner(display_name: str | None) -> bool:
    if not display_name:
        return False
    try:
        from Xlib import display as xdisplay
    except ImportError:
        return True  # cannot tell; let pystray try
    try:
        display = xdisplay.Display(display_name)
    except Exception:
        return False
    try:
        atom = display.intern_atom(f"_NET_SYSTEM_TRAY_S{display.get_default_screen()}")
        return display.get_selection_owner(atom) != 0
    finally:
        display.close()


def decode_offer(data: dict[str, Any]) -> PairOffer:
    """The pairing offer a window got on stdin (see :meth:`SystemDesktop.show_pairing`)."""
    return PairOffer(**{**data, "qr_png": base64.b64decode(data["qr_png"])})
