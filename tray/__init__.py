"""The pennello tray: an icon whose look shows the daemon's state, and a menu to use it.

It talks to the daemon over HTTP only (:class:`pennello.client.Client`), starting
``pennello serve`` itself when none is running. The menu and state logic
(:class:`TrayController`) imports no GUI toolkit, so it is tested against a real daemon with
pystray's dummy backend; ``_pystray`` draws it, ``_tk`` holds the windows.

    >>> from pennello.tray import TrayController, DaemonSupervisor, login_item  # doctest: +SKIP
    >>> controller = TrayController(DaemonSupervisor(paths), desktop, login_item(), paths)  # doctest: +SKIP
    >>> controller.start().state  # doctest: +SKIP
    'starting'
    >>> [entry.text for entry in controller.menu()][2]  # doctest: +SKIP
    'Quick generate…'

Run it with ``pennello tray``.
"""

from __future__ import annotations

from pennello.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "TrayController": "_controller",
    "TrayState": "_controller",
    "TRAY_STATES": "_controller",
    "Status": "_controller",
    "MenuEntry": "_controller",
    "PairOffer": "_controller",
    "status_from_health": "_controller",
    "DaemonSupervisor": "_daemon",
    "login_item": "_autostart",
    "desktop_entry": "_autostart",
    "draw_icon": "_icon",
    "SystemDesktop": "_desktop",
    "tray_host": "_desktop",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
