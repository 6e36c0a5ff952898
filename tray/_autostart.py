"""Start at login: the same registrations the one-click installers make, so either can undo the other.

=========  ===================================================================================
platform   what "start at login" means
=========  ===================================================================================
Linux      ``$XDG_CONFIG_HOME/autostart/pennello.desktop`` runs ``pennello tray``; when the
           systemd user unit ``pennello.service`` is installed it is enabled too (the daemon
           then starts with the no-network policy, and the tray attaches to it)
macOS      ``~/Library/LaunchAgents/org.pennello.tray.plist`` (RunAtLoad)
Windows    ``Pennello.lnk`` in the Startup folder
=========  ===================================================================================

    >>> from pennello.tray import login_item
    >>> item = login_item()  # doctest: +SKIP
    >>> item.enable(); item.enabled()  # doctest: +SKIP
    True
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

from pennello.launch import python_command

log = logging.getLogger(__name__)

DESKTOP_FILE = "pennello.desktop"
SYSTEMD_UNIT = "pennello.service"
LAUNCH_AGENT = "org.pennello.tray"
STARTUP_LINK = "Pennello.lnk"


def tray_command() -> list[str]:
    """How to start the tray from this environment: the ``pennello`` script beside this Python."""
    scripts = Path(sys.executable).parent
    if sys.platform == "win32" and (scripts / "pythonw.exe").exists():
        return python_command("-m", "pennello", "tray", python=str(scripts / "pythonw.exe"))  # no console window at login
    for name in ("pennello.exe", "pennello"):
        if (scripts / name).exists():
            return [str(scripts / name), "tray"]
    return python_command("-m", "pennello", "tray")


class XdgAutostart:
    """Linux and other freedesktop systems."""

    def __init__(self, environ: Mapping[str, str] | None = None, command: Sequence[str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        home = Path(environ.get("HOME") or Path.home())
        self.config_home = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
        self.command = list(command or tray_command())

    @property
    def path(self) -> Path:
        return self.config_home / "autostart" / DESKTOP_FILE

    @property
    def unit_path(self) -> Path:
        return self.config_home / "systemd" / "user" / SYSTEMD_UNIT

    def enabled(self) -> bool:
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError:
            return False
        return "Hidden=true" not in text and "X-GNOME-Autostart-enabled=false" not in text

    def enable(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(desktop_entry(self.command, autostart=True), encoding="utf-8")
        self._systemctl("enable")

    def disable(self) -> None:
        self.path.unlink(missing_ok=True)
        self._systemctl("disable")

    def _systemctl(self, verb: str) -> None:
        if not self.unit_path.exists() or shutil.which("systemctl") is None:
            return
        result = subprocess.run(["systemctl", "--user", verb, SYSTEMD_UNIT], capture_output=True, text=True)
        if result.returncode:
            log.warning("systemctl --user %s %s failed: %s", verb, SYSTEMD_UNIT, result.stderr.strip())


def desktop_entry(command: Sequence[str], autostart: bool = False) -> str:
    """A freedesktop .desktop entry that runs ``command`` (the installer writes the same)."""
    lines = ["[Desktop Entry]", "Type=Application", "Name=Pennello",
             "Comment=Private image generation on this computer",
             f"Exec={' '.join(_desktop_quote(part) for part in command)}", "Icon=pennello",
             "Terminal=false", "Categories=Graphics;"]
    if autostart:
        lines.append("X-GNOME-Autostart-enabled=true")
    return "\n".join(lines) + "\n"


def _desktop_quote(arg: str) -> str:
    if not any(c in arg for c in ' \t\n"\'\\><~|&;$*?#()`'):
        return arg
    return '"' + "".join("\\" + c if c in '"`$\\' else c for c in arg) + '"'


class LaunchAgent:
    """macOS: a LaunchAgent that runs the tray when the user logs in."""

    def __init__(self, environ: Mapping[str, str] | None = None, command: Sequence[str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self.path = Path(environ.get("HOME") or Path.home()) / "Library" / "LaunchAgents" / f"{LAUNCH_AGENT}.plist"
        self.command = list(command or tray_command())

    def enabled(self) -> bool:
        return self.path.exists()

    def enable(self) -> None:
        import plistlib

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(plistlib.dumps({"Label": LAUNCH_AGENT, "ProgramArguments": self.command,
                                              "RunAtLoad": True, "ProcessType": "Interactive"}))

    def disable(self) -> None:
        self.path.unlink(missing_ok=True)


class StartupFolder:
    """Windows: a shortcut in the user's Startup folder."""

    def __init__(self, environ: Mapping[str, str] | None = None, command: Sequence[str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        appdata = Path(environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
        self.path = appdata / "Microsoft" / "Windows" / "Start Menu" / "Programs" / "Startup" / STARTUP_LINK
        self.command = list(command or tray_command())

    def enabled(self) -> bool:
        return self.path.exists()

    def enable(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        target, *args = self.command
        script = ("$s = (New-Object -ComObject WScript.Shell).CreateShortcut($env:PENNELLO_LINK); "
                  "$s.TargetPath = $env:PENNELLO_TARGET; $s.Arguments = $env:PENNELLO_ARGS; "
                  "$s.WindowStyle = 7; $s.Save()")
        env = {**os.environ, "PENNELLO_LINK": str(self.path), "PENNELLO_TARGET": target,
               "PENNELLO_ARGS": subprocess.list2cmdline(args)}
        subprocess.run(["powershell", "-NoProfile", "-NonInteractive", "-Command", script], env=env,
                       check=True, capture_output=True)

    def disable(self) -> None:
        self.path.unlink(missing_ok=True)


def login_item(platform: str | None = None, environ: Mapping[str, str] | None = None,
               command: Sequence[str] | None = None) -> XdgAutostart | LaunchAgent | StartupFolder:
    """The start-at-login registration for ``platform`` (default: this one)."""
    platform = platform or sys.platform
    if platform == "darwin":
        return LaunchAgent(environ, command)
    if platform == "win32":
        return StartupFolder(environ, command)
    return XdgAutostart(environ, command)


__all__ = ["login_item", "desktop_entry", "tray_command", "XdgAutostart", "LaunchAgent", "StartupFolder"]
