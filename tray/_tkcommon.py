"""What every Tk window of the tray shares: its root with pennello's icon, the JSON-lines report
to whoever started it, and the colour errors are shown in.

The tray reads each window's report (``ready``, ``progress``, ``done``, ``error``, ``chosen``,
``answered``, ...) from the window process's stdout, one JSON object a line; see
:mod:`pennello.tray._desktop`.
"""

from __future__ import annotations

import json
import tkinter as tk
from typing import Any

from PIL import ImageTk

from ._icon import draw_icon

RED = "#b3261e"  # errors and warnings, in every window


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout for whoever started the window."""
    print(json.dumps({"event": event, **fields}), flush=True)


def make_root(title: str, class_name: str) -> tk.Tk:
    """The window's Tk root, titled and with pennello's icon (``class_name`` is what window
    managers group it by)."""
    root = tk.Tk(className=class_name)
    root.title(title)
    icon = ImageTk.PhotoImage(draw_icon("ready", 64), master=root)
    root.iconphoto(True, icon)
    root._pennello_icon = icon  # type: ignore[attr-defined]  # keep a reference: Tk does not
    return root
