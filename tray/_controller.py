"""What the tray shows and does, with no GUI toolkit: state, status line, menu entries, actions.

The pystray layer (:mod:`._pystray`) only turns :class:`MenuEntry` trees into native menus,
pictures of :class:`Status` into icons, and clicks into :meth:`TrayController.run`. Everything
here talks to the daemon through :class:`pennello.client.Client` (HTTP only) and to the desktop
through a :class:`Desktop` object, so tests drive it against a real daemon with a fake desktop.

    >>> from pennello.tray import Status, status_from_health
    >>> status = status_from_health({"ready": True, "default_model": "pennello-tiny", "device": "cpu",
    ...                              "running": 1, "queue_depth": 2})
    >>> status.state, status.line()
    ('busy', 'pennello-tiny on cpu · 1 running, 2 waiting')
"""

from __future__ import annotations

import logging
import ssl
import threading
import tomllib
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, Sequence
from urllib.parse import urlsplit

from pennello.client import Client
from pennello.config import load_config, write_setting
from pennello.consent import NO_NETWORK_OFF_FACTS
from pennello.errors import ConfigError, PennelloError
from pennello.owner_token import is_loopback_url
from pennello.paths import Paths

log = logging.getLogger(__name__)

TrayState = Literal["starting", "ready", "busy", "offline", "error"]
TRAY_STATES: tuple[str, ...] = typing.get_args(TrayState)

Action = Literal["quick_generate", "open_web", "pair", "set_default_model", "open_outputs",
                 "toggle_offline", "toggle_autostart", "retry", "quit"]
ACTIONS: tuple[str, ...] = typing.get_args(Action)

MODELS_EVERY = 15  # refreshes between two model lists (a model installed meanwhile shows up)


# --- status ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Status:
    """What the tray knows about the daemon at one moment."""

    state: TrayState
    model: str | None = None  # the daemon's default model
    device: str | None = None  # "cpu", "cuda", "mps"
    running: int = 0  # jobs on the device now
    waiting: int = 0  # jobs queued behind them
    progress: float | None = None  # fraction of the running batch done, when busy
    offline: bool | None = None  # no-network mode; None when the daemon does not report it
    refused: int | None = None  # network connections refused by no-network mode, when reported
    message: str | None = None  # why it is starting or what went wrong

    def line(self) -> str:
        """The one-line summary shown at the top of the menu and as the icon's tooltip."""
        if self.state == "error":
            return f"Error: {self.message or 'pennello is not running'}"
        if self.state == "starting":
            return self.message or "Starting pennello…"
        parts = [f"{self.model or '?'} on {self.device or '?'}"]
        parts.append(f"{self.running} running, {self.waiting} waiting" if self.running or self.waiting else "idle")
        if self.offline is not None:
            parts.append("offline" if self.offline else "network allowed")
        if self.refused:
            parts.append(f"{self.refused} refused connection{'s' if self.refused != 1 else ''}")
        return " · ".join(parts)


def status_from_health(health: dict[str, Any], progress: float | None = None) -> Status:
    """Read ``GET /api/health``. Its ``offline`` summary (``{"mode": "on"|"off", "refused": N…}``)
    is optional: a daemon without no-network mode leaves ``offline`` and ``refused`` None."""
    offline_field = health.get("offline")
    offline: bool | None = None
    refused: Any = None
    if isinstance(offline_field, bool):
        offline = offline_field
    elif isinstance(offline_field, dict):
        mode = offline_field.get("mode", offline_field.get("enabled"))
        offline = mode in ("on", True) if mode is not None else None
        refused = offline_field.get("refused")
    running, waiting = int(health.get("running", 0)), int(health.get("queue_depth", 0))
    if not health.get("ready", False):
        state: TrayState = "starting"
    elif running or waiting:
        state = "busy"
    elif offline:
        state = "offline"
    else:
        state = "ready"
    return Status(state=state, model=health.get("default_model"), device=health.get("device"),
                  running=running, waiting=waiting, progress=progress if state == "busy" else None,
                  offline=offline, refused=int(refused) if isinstance(refused, (int, float)) else None,
                  message="The daemon is loading its model…" if state == "starting" else None)


# --- menu --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MenuEntry:
    """One menu line. A toolkit layer renders it; ``action``/``arg`` go back to the controller."""

    text: str
    action: Action | None = None
    arg: str | None = None
    enabled: bool = True
    checked: bool | None = None  # None: not a check item
    radio: bool = False  # drawn as a radio button when checked is not None
    default: bool = False  # the action of a plain click on the icon
    submenu: tuple["MenuEntry", ...] = ()
    separator: bool = False

    def find(self, text: str) -> "MenuEntry | None":
        """This entry or the first entry below it whose text starts with ``text``."""
        if self.text.startswith(text):
            return self
        return next((found for child in self.submenu if (found := child.find(text))), None)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "action": self.action, "arg": self.arg, "enabled": self.enabled,
                "checked": self.checked, "radio": self.radio, "default": self.default,
                "separator": self.separator, "submenu": [child.to_dict() for child in self.submenu]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MenuEntry":
        return cls(**{**data, "submenu": tuple(cls.from_dict(child) for child in data["submenu"])})


SEPARATOR = MenuEntry("", separator=True)


# --- what the tray needs from the outside ----------------------------------------------------

class Daemon(Protocol):
    """The daemon the tray watches (see :class:`pennello.tray._daemon.DaemonSupervisor`)."""

    started_here: bool

    def ensure_running(self) -> None: ...
    def client(self) -> Client | None: ...
    def problem(self) -> str | None: ...
    def stop(self) -> None: ...


class Desktop(Protocol):
    """The desktop side: windows, the browser, the file manager, notifications."""

    def open_url(self, url: str) -> None: ...
    def open_path(self, path: Path) -> None: ...
    def quick_generate(self, base_url: str, model: str | None) -> None: ...
    def show_pairing(self, offer: "PairOffer") -> None: ...
    def notify(self, title: str, message: str) -> None: ...
    def confirm(self, question: str, facts: Sequence[str]) -> bool:
        """Ask ``question`` after showing ``facts``; True only on an explicit yes."""
        ...
    def quit(self) -> None: ...


class Autostart(Protocol):
    path: Path  # the file that registers it (autostart entry, LaunchAgent, Startup shortcut)

    def enabled(self) -> bool: ...
    def enable(self) -> None: ...
    def disable(self) -> None: ...


@dataclass(frozen=True)
class PairOffer:
    """A one-time pairing code with everything a phone needs to use it."""

    code: str
    pair_url: str
    expires_in_s: int
    lan: bool  # False: the daemon listens on this computer only, so other devices cannot reach it
    qr_png: bytes
    fingerprint: str | None  # the daemon's TLS certificate, "sha256:…"; None when it has none


# --- the controller --------------------------------------------------------------------------

@dataclass
class TrayController:
    """The tray's state machine and actions.

    Args:
        daemon: starts or finds the daemon and hands out a client for it.
        desktop: opens windows and pages.
        autostart: the "start at login" registration.
        paths: pennello's directories (outputs folder, config file, TLS certificate).
        on_change: called with the new :class:`Status` whenever it changes.
    """

    daemon: Daemon
    desktop: Desktop
    autostart: Autostart
    paths: Paths
    on_change: Callable[[Status], None] | None = None
    status: Status = field(default_factory=lambda: Status("starting", message="Starting pennello…"))
    models: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _polls: int = 0

    def start(self) -> Status:
        """Start the daemon (or attach to a running one) and take a first look."""
        try:
            self.daemon.ensure_running()
        except PennelloError as e:
            return self._set(Status("error", message=str(e)))
        return self.refresh()

    def refresh(self) -> Status:
        """Ask the daemon how it is (one health request, plus models when they may have changed)."""
        problem = self.daemon.problem()
        if problem:
            return self._set(Status("error", message=problem))
        client = self.daemon.client()
        if client is None:
            return self._set(Status("starting", message="Starting pennello…"))
        try:
            health = client.health()
            progress = None
            if health.get("running"):
                progress = float(client.progress().get("fraction", 0.0))
            status = status_from_health(health, progress)
            self._polls += 1
            if status.state != "starting" and (not self.models or self._polls % MODELS_EVERY == 0
                                               or self.status.state in ("starting", "error")):
                self.models = client.models()
        except PennelloError as e:
            if self.daemon.started_here and self.status.state == "starting":
                return self._set(replace(self.status, message="Starting pennello…"))
            return self._set(Status("error", message=str(e)))
        return self._set(status)

    def _set(self, status: Status) -> Status:
        with self._lock:
            changed, self.status = status != self.status, status
        if changed:
            log.debug("tray state: %s (%s)", status.state, status.line())
            if self.on_change:
                self.on_change(status)
        return status

    # --- menu --------------------------------------------------------------------------------

    def menu(self) -> list[MenuEntry]:
        """The menu as it should look now."""
        status = self.status
        up = status.state not in ("starting", "error")
        default = self.configured_default() or status.model
        models = tuple(MenuEntry(f"{m['name']} v{m.get('version', '?')}", "set_default_model", m["name"],
                                 checked=m["name"] == default, radio=True)
                       for m in self.models) or (MenuEntry("(none installed)", enabled=False),)
        entries = [
            MenuEntry(status.line(), enabled=False),
            SEPARATOR,
            MenuEntry("Quick generate…", "quick_generate", enabled=up, default=up),
            MenuEntry("Open web page", "open_web", enabled=up),
            MenuEntry("Pair a device…", "pair", enabled=up),
            MenuEntry("Models", submenu=models, enabled=up),
            MenuEntry("Outputs folder", "open_outputs"),
            SEPARATOR,
            MenuEntry("No-network mode", "toggle_offline", checked=self.configured_offline()),
            MenuEntry("Start at login", "toggle_autostart", checked=self.autostart.enabled()),
        ]
        if status.state == "error":
            entries.insert(2, MenuEntry("Try again", "retry", default=True))
        entries.append(MenuEntry("Quit" + (" (stops pennello)" if self.daemon.started_here else ""), "quit"))
        return entries

    def default_action(self) -> Action:
        """What a plain click on the icon does."""
        return "retry" if self.status.state == "error" else "quick_generate"

    # --- actions -----------------------------------------------------------------------------

    def run(self, action: Action, arg: str | None = None) -> Any:
        """Do what a menu entry asks. Errors are shown as a notification rather than raised."""
        if action not in ACTIONS:
            raise ValueError(f"unknown tray action {action!r}; known: {', '.join(ACTIONS)}")
        try:
            method = getattr(self, action)
            return method(arg) if action == "set_default_model" else method()
        except PennelloError as e:
            log.warning("%s failed: %s", action, e)
            self.desktop.notify("Pennello", str(e))
            return None

    def quick_generate(self) -> None:
        self.desktop.quick_generate(self._client().base_url, self.configured_default())

    def open_web(self) -> str:
        """Open the web page; on this computer through a one-time login link, so the browser is
        the owner's (a remote daemon's page pairs the browser instead). Returns what it opened."""
        client = self._client()
        if is_loopback_url(client.base_url):
            url = client.call("POST", "/api/login-link")["url"]
        else:
            url = client.base_url + "/"
        self.desktop.open_url(url)
        return url

    def pair(self) -> PairOffer:
        """A fresh pairing code, its QR code and the daemon's certificate fingerprint."""
        client = self._client()
        offer = client.pair_code()
        qr = client.download(offer["qr_png_url"])
        pairing = PairOffer(code=offer["code"], pair_url=offer["pair_url"],
                            expires_in_s=int(offer["expires_in_s"]), lan=bool(offer.get("lan")), qr_png=qr,
                            fingerprint=offer.get("fingerprint") or certificate_fingerprint(client.base_url,
                                                                                           self.paths))
        self.desktop.show_pairing(pairing)
        return pairing

    def set_default_model(self, name: str | None) -> None:
        """Make ``name`` the default: written to config.toml (the daemon's default from its next
        start) and loaded now; quick generate uses it at once."""
        if not name:
            raise ValueError("set_default_model needs a model name")
        client = self._client()
        if name not in {m["name"] for m in self.models}:
            self.models = client.models()
        write_setting(self.paths.config_file, "engine", "default_model", name)
        client.load_model(name)
        self.models = client.models()

    def configured_default(self) -> str | None:
        """The default model set in config.toml, if any."""
        try:
            data = tomllib.loads(self.paths.config_file.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError):
            return None
        value = data.get("engine", {}).get("default_model")
        return value if isinstance(value, str) else None

    def open_outputs(self) -> Path:
        folder = self.paths.outputs_dir
        folder.mkdir(parents=True, exist_ok=True)
        self.desktop.open_path(folder)
        return folder

    def toggle_autostart(self) -> bool:
        """Turn start at login off, or on after the user agreed; returns the new setting."""
        if self.autostart.enabled():
            self.autostart.disable()
        elif self.desktop.confirm("Start Pennello when you log in?", [
                "Pennello's tray, and with it the daemon, will start each time you log in and keep "
                "the default model loaded (memory, and GPU memory when there is a GPU).",
                f"Registered as {self.autostart.path}; this menu turns it off again."]):
            self.autostart.enable()
        return self.autostart.enabled()

    def configured_offline(self) -> bool:
        """No-network mode as config.toml sets it (what the daemon uses from its next start)."""
        try:
            return load_config(self.paths.config_file).offline.enabled
        except ConfigError:
            return True  # a broken file: the daemon refuses to start, so nothing is reachable

    def toggle_offline(self) -> bool:
        """Turn no-network mode on, or off after the user agreed; returns the configured mode."""
        enabled = self.configured_offline()
        if enabled and not self.desktop.confirm("Turn no-network mode off?", NO_NETWORK_OFF_FACTS):
            return True
        write_setting(self.paths.config_file, "offline", "enabled", not enabled)
        self.desktop.notify("Pennello", f"No-network mode is {'off' if enabled else 'on'} from pennello's next "
                                        f"start (Quit and start it again to apply it now).")
        return not enabled

    def retry(self) -> Status:
        return self.start()

    def quit(self) -> None:
        """Stop the daemon if this tray started it, then close the tray."""
        self.daemon.stop()
        self.desktop.quit()

    def _client(self) -> Client:
        client = self.daemon.client()
        if client is None:
            raise _not_ready(self.status)
        return client


def _not_ready(status: Status) -> PennelloError:
    from pennello.errors import DaemonError

    return DaemonError(f"pennello is not ready yet ({status.line()})")


# --- helpers -------------------------------------------------------------------------------------

def certificate_fingerprint(base_url: str, paths: Paths) -> str | None:
    """The daemon's TLS identity: read from the connection for an https URL, else from the
    certificate LAN mode made (``data_dir/tls/cert.pem``); None when there is none."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from pennello.lan import fingerprint

    parts = urlsplit(base_url)
    if parts.scheme == "https":
        try:
            pem = ssl.get_server_certificate((parts.hostname or "127.0.0.1", parts.port or 443), timeout=5)
            return fingerprint(ssl.PEM_cert_to_DER_cert(pem))
        except OSError as e:
            log.warning("could not read the daemon's certificate: %s", e)
            return None
    cert = paths.data_dir / "tls" / "cert.pem"
    try:
        return fingerprint(x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(Encoding.DER))
    except (OSError, ValueError):
        return None


