"""The thin pystray layer: menu entries become pystray items, status changes redraw the icon.

All decisions live in :class:`pennello.tray._controller.TrayController`; this module only
translates. Trays without native menus (pystray's plain X11 backend, under trayer, stalonetray,
i3bar…) get the same entries as a Tk pop-up menu on a left click.

    >>> tray = PystrayTray(controller, desktop)  # doctest: +SKIP
    >>> tray.run()  # blocks until Quit  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

import pystray

from ._controller import MenuEntry, Status, TrayController
from ._desktop import SystemDesktop, pystray_backend
from ._icon import draw_icon

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often the daemon's health is asked
ICON_PX = 64
QUIT_GRACE_S = 5.0  # after Quit, the longest the icon's event loop may take to end


def _listen_for_clicks(icon: pystray.Icon) -> None:
    """pystray 0.19's X11 backend handles ButtonPress but never asks X for it, so clicks on
    the icon are lost; add ButtonPressMask to its window's event mask."""
    import Xlib.X

    window = getattr(icon, "_window", None)
    if window is None:
        log.warning("cannot reach pystray's X11 window; clicks on the icon may do nothing")
        return
    window.change_attributes(event_mask=Xlib.X.ExposureMask | Xlib.X.StructureNotifyMask | Xlib.X.ButtonPressMask)
    icon._display.flush()


def tooltip(text: str) -> str:
    """The tooltip text: pystray's X11 backend can only set Latin-1 window names."""
    return text.replace("…", "...").encode("latin-1", "replace").decode("latin-1")


class PystrayTray:
    """The icon for one :class:`TrayController`.

    Args:
        desktop: used for the pop-up menu where the tray has no native menus.
    """

    def __init__(self, controller: TrayController, desktop: SystemDesktop, poll_s: float = POLL_S) -> None:
        self.controller, self.desktop, self.poll_s = controller, desktop, poll_s
        self._stopped = threading.Event()
        status = controller.status
        self.icon = pystray.Icon("pennello", draw_icon(status.state, ICON_PX), tooltip(status.line()),
                                 menu=pystray.Menu(self.items))
        self.native_menu = bool(self.icon.HAS_MENU)
        self._redock_on_redraw = pystray_backend() == "xorg"
        self._look: tuple[str, int | None] = (status.state, None)
        if self._redock_on_redraw:
            _listen_for_clicks(self.icon)
        controller.on_change = self.show
        desktop.on_quit = self.stop

    # --- translation ---------------------------------------------------------------------------

    def items(self) -> tuple[pystray.MenuItem, ...]:
        """The pystray items for the controller's current menu (pystray calls this on each show)."""
        entries = self.controller.menu()
        if not self.native_menu:
            # A click runs the menu's default item: here, the pop-up with every entry.
            return (pystray.MenuItem("Menu", lambda: self._in_thread(self.popup), default=True, visible=False),)
        return tuple(self.item(entry) for entry in entries)

    def item(self, entry: MenuEntry) -> pystray.MenuItem:
        if entry.separator:
            return pystray.Menu.SEPARATOR
        if entry.submenu:
            return pystray.MenuItem(entry.text, pystray.Menu(*(self.item(child) for child in entry.submenu)),
                                    enabled=entry.enabled)
        action = None if entry.action is None else self._action(entry)
        checked = None if entry.checked is None else (lambda _item, value=entry.checked: value)
        return pystray.MenuItem(entry.text, action, checked=checked, radio=entry.radio, default=entry.default,
                                enabled=entry.enabled)

    def _action(self, entry: MenuEntry) -> Any:
        return lambda: self._in_thread(self.controller.run, entry.action, entry.arg)

    def show(self, status: Status) -> None:
        """Redraw the icon and tooltip, and refresh native menus that cache their items."""
        look = (status.state, None if self._redock_on_redraw or status.progress is None else round(status.progress * 8))
        if look != self._look:
            # pystray's X11 backend docks the icon again on every redraw, which makes it
            # flicker: there it is redrawn when the state changes, not at every step.
            self._look = look
            self.icon.icon = draw_icon(status.state, ICON_PX, None if self._redock_on_redraw else status.progress)
        self.icon.title = tooltip(status.line())
        if self.icon.visible:
            try:
                self.icon.update_menu()
            except NotImplementedError:
                pass

    def popup(self) -> None:
        chosen = self.desktop.popup_menu(self.controller.menu())
        if chosen is not None:
            self.controller.run(chosen[0], chosen[1])  # type: ignore[arg-type]

    # --- running ------------------------------------------------------------------------------

    def run(self) -> None:
        """Show the icon and poll the daemon until Quit (must run on the main thread)."""
        def setup(icon: pystray.Icon) -> None:
            icon.visible = True
            threading.Thread(target=self._poll, name="pennello-tray-poll", daemon=True).start()

        self.icon.run(setup=setup)

    def _poll(self) -> None:
        self.controller.start()
        while not self._stopped.wait(self.poll_s / 2 if self.controller.status.state == "starting" else self.poll_s):
            self.controller.refresh()

    def stop(self) -> None:
        self._stopped.set()
        # pystray's X11 loop sometimes never returns after stop() (seen under Xvfb + trayer, about
        # one Quit in six, with the daemon already stopped): Quit must still end the tray.
        watchdog = threading.Timer(QUIT_GRACE_S, _exit_now)
        watchdog.daemon = True  # a tray that closes normally does not wait for it
        watchdog.start()
        self.icon.stop()

    @staticmethod
    def _in_thread(function: Any, *args: Any) -> None:
        # pystray calls menu actions on its event thread; keep it free to redraw the icon.
        threading.Thread(target=function, args=args, daemon=True).start()


def _exit_now() -> None:
    """End the process at once (the daemon it started is already stopped), output flushed."""
    log.warning("the tray icon did not close in %.0f s after Quit; exiting", QUIT_GRACE_S)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)
