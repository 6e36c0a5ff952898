"""The quick-generate window: a prompt, Generate, progress, a preview, and Save / Copy / Upscale / Open folder.

    $ python -m pennello.tray._tk quick --url http://127.0.0.1:8420

The daemon is called on a worker thread (:class:`pennello.client.Client`); what it reports comes
back through a queue the Tk loop polls, because Tk may only be touched from its own thread.
Each step is also reported as a JSON line (:func:`pennello.tray._tkcommon.emit`).
"""

from __future__ import annotations

import io
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tkinter as tk
from datetime import date
from pathlib import Path
from tkinter import filedialog, ttk
from typing import Any

from PIL import Image, ImageDraw, ImageTk

from pennello.client import Client
from pennello.errors import PennelloError

from ._desktop import open_path
from ._tkcommon import RED, emit

PREVIEW_PX = 384  # the preview's longest side
UPSCALE = 4  # the Upscale button's factor: a 512² picture becomes 2048², as big as screens need
_POLL_MS = 50


class QuickGenerate:
    """Prompt, Generate, progress, preview, and Save / Copy / Upscale / Open folder."""

    def __init__(self, root: tk.Tk, client: Client, model: str | None, outputs_dir: Path) -> None:
        self.root, self.client, self.model, self.outputs_dir = root, client, model, outputs_dir
        self.events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.image: dict[str, Any] | None = None
        self.file: Path | None = None  # the picture written to a temp file (for Copy)
        self.busy = False
        root.minsize(440, 560)
        frame = ttk.Frame(root, padding=14)
        frame.pack(fill="both", expand=True)

        ttk.Label(frame, text="Describe a picture:").pack(anchor="w")
        row = ttk.Frame(frame)
        row.pack(fill="x", pady=(4, 8))
        self.prompt = ttk.Entry(row, width=40)
        self.prompt.pack(side="left", fill="x", expand=True)
        self.prompt.bind("<Return>", lambda _e: self.generate())
        self.button = ttk.Button(row, text="Generate", command=self.generate)
        self.button.pack(side="left", padx=(8, 0))

        self.progress = ttk.Progressbar(frame, mode="determinate", maximum=1)
        self.progress.pack(fill="x")
        self.status = ttk.Label(frame, text=f"Model: {model or 'the default'} · ready")
        self.status.pack(anchor="w", pady=(2, 6))
        self.error = tk.Label(frame, text="", fg=RED, wraplength=400, justify="left", anchor="w")
        self.error.pack(fill="x")

        self.placeholder = ImageTk.PhotoImage(_placeholder(PREVIEW_PX), master=root)
        area = ttk.Frame(frame, width=PREVIEW_PX, height=PREVIEW_PX)
        area.pack(pady=6)
        area.pack_propagate(False)  # the window keeps its size when a picture replaces the placeholder
        self.preview = ttk.Label(area, image=self.placeholder, anchor="center")
        self.preview.pack(fill="both", expand=True)

        buttons = ttk.Frame(frame)
        buttons.pack(fill="x")
        self.save_button = ttk.Button(buttons, text="Save…", command=self.save, state="disabled")
        self.copy_button = ttk.Button(buttons, text="Copy", command=self.copy, state="disabled")
        self.upscale_button = ttk.Button(buttons, text=f"Upscale {UPSCALE}×", command=self.upscale,
                                         state="disabled", underline=0)
        self.save_button.pack(side="left")
        self.copy_button.pack(side="left", padx=6)
        self.upscale_button.pack(side="left")
        ttk.Button(buttons, text="Open folder", command=self.open_folder).pack(side="left", padx=6)
        root.bind("<Alt-u>", lambda _e: self.upscale())
        self.prompt.focus_set()
        root.after(_POLL_MS, self._poll)

    def generate(self) -> None:
        prompt = self.prompt.get().strip()
        if self.busy:
            return
        if not prompt:
            self.show_error("Type what the picture should show first.")
            return
        self._start("Waiting for the daemon…")
        emit("generating", prompt_chars=len(prompt))
        threading.Thread(target=self._work, args=(prompt,), daemon=True).start()

    def upscale(self) -> None:
        """Enlarge the picture shown, on the daemon (Lanczos: instant, no model needed)."""
        if self.busy or self.image is None:
            return
        self._start(f"Upscaling {UPSCALE}×…")
        emit("upscaling", id=self.image["id"], scale=UPSCALE)
        threading.Thread(target=self._upscale_work, args=(self.image["id"],), daemon=True).start()

    def _start(self, status: str) -> None:
        self.busy = True
        self.show_error("")
        for button in (self.button, self.upscale_button):
            button.configure(state="disabled")
        self.progress.configure(value=0, maximum=1)
        self.status.configure(text=status)

    def _work(self, prompt: str) -> None:
        params = {"model": self.model} if self.model else {}
        started = time.monotonic()
        try:
            images = self.client.generate(prompt, n=1, on_progress=lambda step, total:
                                          self.events.put(("progress", step, total)), **params)
            self.events.put(("done", images[0], time.monotonic() - started))
        except Exception as e:
            self.events.put(("error", _message(e)))

    def _upscale_work(self, image_id: str) -> None:
        started = time.monotonic()
        try:
            self.events.put(("upscaled", self.client.upscale(image_id, UPSCALE), time.monotonic() - started))
        except Exception as e:
            self.events.put(("error", _message(e)))

    def _poll(self) -> None:
        try:
            while True:
                self._handle(*self.events.get_nowait())
        except queue.Empty:
            pass
        self.root.after(_POLL_MS, self._poll)

    def _handle(self, kind: str, *data: Any) -> None:
        if kind == "progress":
            step, total = data
            self.progress.configure(maximum=total, value=step)
            self.status.configure(text=f"Step {step} of {total}")
            emit("progress", step=step, total=total)
        elif kind == "done":
            image, seconds = data
            self._show(image, f"Done in {seconds:.1f} s · {image['width']}×{image['height']} · seed {image['seed']}")
            emit("done", id=image["id"], seed=image["seed"], width=image["width"], height=image["height"])
        elif kind == "upscaled":
            image, seconds = data
            self._show(image, f"Upscaled {UPSCALE}× in {seconds:.1f} s · {image['width']}×{image['height']}")
            emit("upscaled", id=image["id"], width=image["width"], height=image["height"])
        elif kind == "error":
            self.show_error(data[0])
            self.status.configure(text="Not generated")
            self._idle()
            emit("error", message=data[0])

    def _show(self, image: dict[str, Any], status: str) -> None:
        """Preview a picture the daemon made and make Save, Copy and Upscale act on it."""
        self.image = image
        picture = _fit(Image.open(io.BytesIO(image["bytes"])), PREVIEW_PX)
        self.photo = ImageTk.PhotoImage(picture, master=self.root)
        self.preview.configure(image=self.photo)
        self.file = Path(tempfile.gettempdir()) / f"pennello-{image['id']}.{_ext(image)}"
        self.file.write_bytes(image["bytes"])
        self.progress.configure(value=self.progress.cget("maximum"))
        self.status.configure(text=status)
        for button in (self.save_button, self.copy_button):
            button.configure(state="normal")
        self._idle()

    def _idle(self) -> None:
        self.busy = False
        for button in (self.button, self.upscale_button):
            button.configure(state="normal" if button is self.button or self.image else "disabled")

    def show_error(self, message: str) -> None:
        self.error.configure(text=message)

    def save(self) -> None:
        if self.image is None:
            return
        target = filedialog.asksaveasfilename(parent=self.root, initialfile=f"{self.image['id']}.{_ext(self.image)}",
                                              initialdir=str(self.outputs_dir if self.outputs_dir.exists()
                                                             else Path.home()))
        if target:
            try:
                Path(target).write_bytes(self.image["bytes"])
            except OSError as e:
                self.show_error(f"Could not save to {target}: {e.strerror}. Choose another folder.")
                return
            self.status.configure(text=f"Saved to {target}")
            emit("saved", path=target)

    def copy(self) -> None:
        if self.file is None:
            return
        how = copy_image(self.file)
        if how is None:
            self.root.clipboard_clear()
            self.root.clipboard_append(str(self.file))
            self.status.configure(text="Copied the picture's file path (install xclip or wl-clipboard "
                                       "to copy the picture itself)")
        else:
            self.status.configure(text="Copied the picture")
        emit("copied", how=how or "path")

    def open_folder(self) -> None:
        folder = self.outputs_dir / date.today().isoformat()
        folder = folder if folder.exists() else self.outputs_dir
        try:
            folder.mkdir(parents=True, exist_ok=True)
            open_path(folder)
        except OSError as e:
            self.show_error(f"Could not open {folder}: {e}")


def _fit(picture: Image.Image, size: int) -> Image.Image:
    """Scale to ``size`` on the longest side; small pictures are enlarged with sharp pixels."""
    scale = size / max(picture.size)
    target = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return picture.convert("RGB").resize(target, Image.NEAREST if scale >= 2 else Image.LANCZOS)


def _message(error: Exception) -> str:
    """What the window says about a failed call: pennello's own errors say what to do next."""
    if isinstance(error, PennelloError):
        return str(error)
    return f"unexpected error: {type(error).__name__}: {error}"  # a window must say what happened


def _ext(image: dict[str, Any]) -> str:
    return "jpg" if image.get("format") == "jpeg" else str(image.get("format", "png"))


def _placeholder(size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), (236, 238, 241))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, size - 1, size - 1), outline=(200, 204, 210))
    text = "Your picture appears here"
    width = draw.textlength(text)
    draw.text(((size - width) / 2, size / 2 - 6), text, fill=(120, 126, 134))
    return image


def copy_image(path: Path) -> str | None:
    """Put the picture on the clipboard with the platform's tool; returns which, or None."""
    if sys.platform == "darwin":
        script = f'set the clipboard to (read (POSIX file "{path}") as «class PNGf»)'
        commands = [["osascript", "-e", script]]
    elif sys.platform == "win32":
        script = ("Add-Type -AssemblyName System.Windows.Forms, System.Drawing; "
                  "[Windows.Forms.Clipboard]::SetImage([Drawing.Image]::FromFile($env:PENNELLO_FILE))")
        commands = [["powershell", "-NoProfile", "-STA", "-Command", script]]
    else:
        mime = "image/png" if path.suffix == ".png" else f"image/{path.suffix[1:]}"
        commands = [["wl-copy", "--type", mime], ["xclip", "-selection", "clipboard", "-t", mime, "-i"]]
        if not os.environ.get("WAYLAND_DISPLAY"):
            commands.reverse()
    for command in commands:
        if shutil.which(command[0]) is None:
            continue
        with open(path, "rb") as data:
            # xclip stays running to serve the selection: do not wait for it.
            subprocess.Popen(command, stdin=data, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "PENNELLO_FILE": str(path)})
        return command[0]
    return None
