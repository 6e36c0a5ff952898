"""The tray's Tk windows, each run as its own process: quick generate, pairing, confirmations and a pop-up menu.

    $ python -m pennello.tray._tk quick --url http://127.0.0.1:8420
    $ python -m pennello.tray._tk menu < entries.json     # prints {"event": "chosen", ...}
    $ echo '{"question": "Turn no-network mode off?", "facts": ["…"]}' | python -m pennello.tray._tk confirm
    {"event": "answered", "yes": false}

Every window reports what happened as JSON lines on stdout (``ready``, ``progress``, ``done``,
``error``, ``chosen``, ``answered``), which the tray and the display tests read; people just see the window.
Errors are shown in the window, in red, with what to do next.
This module is the entry point and holds the small windows; the quick-generate window is
:mod:`pennello.tray._quick`, and what every window shares is :mod:`pennello.tray._tkcommon`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import tkinter as tk
from pathlib import Path
from tkinter import ttk
from typing import Any

from PIL import Image, ImageTk

from pennello.client import Client
from pennello.errors import PennelloError

from ._controller import MenuEntry
from ._desktop import decode_offer
from ._quick import QuickGenerate
from ._tkcommon import RED, emit, make_root


# --- pairing -----------------------------------------------------------------------------------

def pairing_window(root: tk.Tk, offer_data: dict[str, Any]) -> None:
    offer = decode_offer(offer_data)
    frame = ttk.Frame(root, padding=16)
    frame.pack(fill="both", expand=True)
    ttk.Label(frame, text="Pair a phone or another computer", font=("TkDefaultFont", 12, "bold")).pack(anchor="w")
    ttk.Label(frame, text="Scan the code, or open the address and type the code:").pack(anchor="w", pady=(6, 4))
    qr = Image.open(io.BytesIO(offer.qr_png)).convert("RGB")
    qr = qr.resize((260, 260), Image.NEAREST)
    photo = ImageTk.PhotoImage(qr, master=root)
    label = ttk.Label(frame, image=photo)
    label.image = photo  # type: ignore[attr-defined]
    label.pack(pady=4)
    ttk.Label(frame, text=offer.code, font=("TkFixedFont", 22, "bold")).pack()
    url = ttk.Entry(frame, width=44)
    url.insert(0, offer.pair_url)
    url.configure(state="readonly")
    url.pack(pady=4)
    fingerprint = offer.fingerprint or "none (the daemon serves plain HTTP on this computer)"
    ttk.Label(frame, text=f"Certificate fingerprint:\n{fingerprint}", wraplength=380, justify="left").pack(
        anchor="w", pady=4)
    if not offer.lan:
        tk.Label(frame, text="Pennello listens on this computer only. Other devices can pair once it runs "
                             "with LAN access: `pennello serve --lan`.", fg=RED, wraplength=380,
                 justify="left").pack(anchor="w", pady=4)
    expires = ttk.Label(frame)
    expires.pack(anchor="w")
    deadline = time.monotonic() + offer.expires_in_s

    def tick() -> None:
        left = int(deadline - time.monotonic())
        expires.configure(text=f"The code works once, for {left // 60}:{left % 60:02d} more" if left > 0
                          else "The code has expired; choose Pair a device… again")
        root.after(1000, tick)

    tick()
    ttk.Button(frame, text="Close", command=root.destroy).pack(anchor="e", pady=(8, 0))


# --- confirmation (start at login, leaving no-network mode) -------------------------------------

def confirm_window(root: tk.Tk, question: str, facts: list[str]) -> None:
    """The question, the facts, and Cancel (focused: Return or closing the window is a no) / Yes."""
    answered: list[bool] = []

    def answer(yes: bool) -> None:
        if not answered:
            answered.append(yes)
            emit("answered", yes=yes)
        root.after(10, root.destroy)

    frame = ttk.Frame(root, padding=16)
    frame.pack(fill="both", expand=True)
    ttk.Label(frame, text=question, font=("TkDefaultFont", 12, "bold")).pack(anchor="w")
    for fact in facts:
        ttk.Label(frame, text=fact, wraplength=420, justify="left").pack(anchor="w", pady=(6, 0))
    buttons = ttk.Frame(frame)
    buttons.pack(anchor="e", pady=(14, 0))
    cancel = ttk.Button(buttons, text="Cancel", command=lambda: answer(False))
    cancel.pack(side="left")
    ttk.Button(buttons, text="Yes, " + question.rstrip("?")[0].lower() + question.rstrip("?")[1:],
               command=lambda: answer(True)).pack(side="left", padx=(8, 0))
    cancel.focus_set()
    root.bind("<Return>", lambda _e: answer(False))
    root.bind("<Escape>", lambda _e: answer(False))
    root.protocol("WM_DELETE_WINDOW", lambda: answer(False))


# --- pop-up menu (trays without native menus) --------------------------------------------------

def popup_menu(root: tk.Tk, entries: list[MenuEntry]) -> None:
    root.withdraw()
    chosen: list[bool] = []

    def choose(entry: MenuEntry) -> None:
        chosen.append(True)
        emit("chosen", action=entry.action, arg=entry.arg)
        root.after(10, root.destroy)

    def build(parent: tk.Menu | tk.Tk, items: list[MenuEntry] | tuple[MenuEntry, ...]) -> tk.Menu:
        menu = tk.Menu(parent, tearoff=False)
        for entry in items:
            state = "normal" if entry.enabled else "disabled"
            if entry.separator:
                menu.add_separator()
            elif entry.submenu:
                menu.add_cascade(label=entry.text, menu=build(menu, entry.submenu), state=state)
            elif entry.checked is not None:
                variable = tk.BooleanVar(master=root, value=entry.checked)
                add = menu.add_radiobutton if entry.radio else menu.add_checkbutton
                options = {"value": True} if entry.radio else {"onvalue": True, "offvalue": False}
                add(label=entry.text, variable=variable, state=state,
                    command=lambda e=entry: choose(e), **options)
            else:
                menu.add_command(label=entry.text, state=state, command=lambda e=entry: choose(e),
                                 font=("TkMenuFont", 10, "bold") if entry.default else None)
        return menu

    menu = build(root, entries)

    def dismissed(_event: Any = None) -> None:
        root.after(200, lambda: None if chosen else (emit("dismissed"), root.destroy()))

    menu.bind("<Unmap>", dismissed)
    menu.bind("<Escape>", lambda _e: (menu.unpost(), dismissed()))
    x, y = root.winfo_pointerxy()
    default = next((i for i, entry in enumerate(entries) if entry.default and not entry.separator), None)
    menu.tk_popup(x, y, default if default is not None else "")
    menu.focus_set()


# --- entry point ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pennello.tray._tk")
    sub = parser.add_subparsers(dest="window", required=True)
    quick = sub.add_parser("quick", help="the quick-generate window")
    quick.add_argument("--url", help="daemon URL (default: the local daemon)")
    quick.add_argument("--model", help="model to use (default: the daemon's default)")
    quick.add_argument("--outputs", type=Path, help="folder Open folder opens")
    sub.add_parser("pair", help="the pairing window (offer JSON on stdin)")
    sub.add_parser("menu", help="a pop-up menu (entries JSON on stdin); prints the choice")
    sub.add_parser("confirm", help="a yes/no question ({question, facts} JSON on stdin); prints the answer")
    args = parser.parse_args(argv)

    if args.window == "quick":
        from pennello.paths import get_paths

        root = make_root("Pennello — Quick generate", "PennelloQuick")
        problem = None
        try:
            client = Client(args.url, os.environ.get("PENNELLO_TOKEN"))
        except PennelloError as e:
            client, problem = Client("http://127.0.0.1:8420"), str(e)  # `e` is gone after except
        window = QuickGenerate(root, client, args.model, args.outputs or get_paths().outputs_dir)
        if problem:
            root.after(100, lambda: window.show_error(problem))
    elif args.window == "pair":
        root = make_root("Pennello — Pair a device", "PennelloPair")
        pairing_window(root, json.loads(sys.stdin.read()))
    elif args.window == "confirm":
        data = json.loads(sys.stdin.read())
        root = make_root("Pennello", "PennelloConfirm")
        confirm_window(root, str(data["question"]), [str(fact) for fact in data.get("facts", [])])
    else:
        root = make_root("Pennello", "PennelloMenu")
        popup_menu(root, [MenuEntry.from_dict(entry) for entry in json.loads(sys.stdin.read())])
    root.after_idle(lambda: emit("ready", window=args.window, id=root.winfo_id()))
    root.mainloop()


if __name__ == "__main__":
    main()
