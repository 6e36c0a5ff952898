"""The tray for real: ``pennello tray`` under Xvfb with Debian's ``trayer`` as the system tray.

xdotool clicks the icon, picks Quick generate from the menu, types a prompt and presses Return;
screenshots (Pillow's ImageGrab on the Xvfb display) are checked: the icon is drawn in the
tray, the menu opens, and the quick-generate window shows the very picture the daemon made.
Needs ``xvfb``, ``trayer`` and ``xdotool`` (Debian packages); skipped without them.

``PENNELLO_SCREENSHOTS_TO_DOCS=1`` also copies the screenshots to ``docs/screenshots/``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import requests
from PIL import Image, ImageGrab

from pennello.paths import Paths

MISSING = [tool for tool in ("Xvfb", "trayer", "xdotool") if shutil.which(tool) is None]
pytestmark = [pytest.mark.display,
              pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)} (Debian: xvfb trayer xdotool)")]

DOCS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
SCREEN = (1024, 768)
START_TIMEOUT_S = 180
PREVIEW_PX = 384


class Display:
    """An Xvfb server, optionally with trayer docked at the top right."""

    def __init__(self, tmp: Path, tray: bool) -> None:
        self.number = next(n for n in range(90, 190) if not Path(f"/tmp/.X11-unix/X{n}").exists()
                           and not Path(f"/tmp/.X{n}-lock").exists())
        self.name = f":{self.number}"
        self.processes = [subprocess.Popen(["Xvfb", self.name, "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24",
                                            "-nolisten", "tcp"], stdout=subprocess.DEVNULL,
                                           stderr=open(tmp / "xvfb.log", "w"))]
        deadline = time.monotonic() + 30
        while not Path(f"/tmp/.X11-unix/X{self.number}").exists():
            assert time.monotonic() < deadline, (tmp / "xvfb.log").read_text()
            time.sleep(0.1)
        time.sleep(0.3)
        if tray:
            self.processes.append(subprocess.Popen(
                ["trayer", "--edge", "top", "--align", "right", "--widthtype", "pixel", "--width", "160",
                 "--height", "32", "--transparent", "false", "--tint", "0x444444"],
                env=self.env(), stdout=subprocess.DEVNULL, stderr=open(tmp / "trayer.log", "w")))
            time.sleep(1.0)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYSTRAY_BACKEND", "WAYLAND_DISPLAY")}
        return {**env, "DISPLAY": self.name, **extra}

    def xdotool(self, *args: str) -> str:
        result = subprocess.run(["xdotool", *args], capture_output=True, text=True, errors="replace", env=self.env(),
                                timeout=30)
        return result.stdout.strip()

    def wait_window(self, *search: str, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while True:
            found = self.xdotool("search", *search).split()
            if found:
                return int(found[0])
            assert time.monotonic() < deadline, f"no window for xdotool search {' '.join(search)}"
            time.sleep(0.2)

    def geometry(self, window: int) -> dict[str, int]:
        shell = self.xdotool("getwindowgeometry", "--shell", str(window))
        return {k: int(v) for k, v in (line.split("=") for line in shell.splitlines()) if k in "XYWIDTHHEIGHT"}

    def click(self, x: int, y: int) -> None:
        self.xdotool("mousemove", str(x), str(y))
        time.sleep(0.2)
        self.xdotool("click", "1")

    def screenshot(self) -> Image.Image:
        return ImageGrab.grab(xdisplay=self.name).convert("RGB")

    def close(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
            process.wait(timeout=10)


@pytest.fixture
def display(tmp_path) -> Iterator[Display]:
    running = Display(tmp_path, tray=True)
    yield running
    running.close()


@pytest.fixture
def bare_display(tmp_path) -> Iterator[Display]:
    running = Display(tmp_path, tray=False)
    yield running
    running.close()


class Lines:
    """A process's stdout, read in a thread: the windows report JSON events there."""

    def __init__(self, stream: Any) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.queue.put(line) for line in stream], daemon=True).start()

    def wait_event(self, name: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.queue.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {name!r} event within {timeout} s") from None
            if line.startswith("{") and json.loads(line).get("event") == name:
                return json.loads(line)


def keep(image: Image.Image, name: str, tmp: Path) -> None:
    image.save(tmp / name)
    if os.environ.get("PENNELLO_SCREENSHOTS_TO_DOCS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        image.save(DOCS / name)


def not_blank(image: Image.Image) -> bool:
    return float(np.asarray(image.convert("L"), dtype=np.float32).std()) > 10


def stop_daemon_of(home: Paths) -> None:
    """Stop a daemon the tray started and left behind (it runs in its own session)."""
    info = home.runtime_dir / "daemon.json"
    if info.exists():
        with contextlib.suppress(OSError, ValueError, KeyError):
            os.kill(int(json.loads(info.read_text())["pid"]), signal.SIGTERM)


def open_menu(display, g: dict) -> None:
    """Click the tray icon and wait until the pop-up menu has been drawn."""
    before = np.asarray(display.screenshot().crop((SCREEN[0] - 300, 0, SCREEN[0], 260)), dtype=np.int16)
    display.click(g["X"] + g["WIDTH"] // 2, g["Y"] + g["HEIGHT"] // 2)
    deadline = time.monotonic() + 30
    while True:
        region = np.asarray(display.screenshot().crop((SCREEN[0] - 300, 0, SCREEN[0], 260)), dtype=np.int16)
        if np.abs(region - before).mean() > 20:
            return
        assert time.monotonic() < deadline, "the menu did not open"
        time.sleep(0.3)


def test_tray_icon_menu_and_quick_generate_under_a_real_tray(display, home: Paths, tmp_path):
    env = display.env(PENNELLO_HOME=str(home.runtime_dir.parent), PENNELLO_SERVER_PORT="0")
    tray = subprocess.Popen([sys.executable, "-m", "pennello", "tray"], env=env, stdout=subprocess.PIPE,
                            stderr=open(tmp_path / "tray.log", "w"), text=True)
    events = Lines(tray.stdout)
    try:
        # The icon docks in trayer and turns from "starting" to ready once the daemon answers.
        icon = display.wait_window("--classname", "pennelloSystemTrayIcon")
        deadline = time.monotonic() + START_TIMEOUT_S
        while "on cpu" not in display.xdotool("getwindowname", str(icon)):
            assert time.monotonic() < deadline and tray.poll() is None, (tmp_path / "tray.log").read_text()
            time.sleep(0.5)
        g = display.geometry(icon)
        assert g["X"] > SCREEN[0] - 200 and g["Y"] < 32, f"icon not docked in the tray: {g}"
        time.sleep(0.5)
        shot = display.screenshot()
        icon_pixels = np.asarray(shot.crop((g["X"], g["Y"], g["X"] + g["WIDTH"], g["Y"] + g["HEIGHT"])))
        green = (icon_pixels[..., 1] > 130) & (icon_pixels[..., 0] < 90) & (icon_pixels[..., 2] < 130)
        assert green.mean() > 0.2, "the ready icon (a green disc) is not drawn in the tray"
        keep(shot.crop((SCREEN[0] - 240, 0, SCREEN[0], 40)).resize((480, 80), Image.NEAREST), "tray-icon.png",
             tmp_path)

        # A click opens the menu (trayer is an XEmbed tray: pennello draws its own pop-up menu).
        open_menu(display, g)
        time.sleep(0.5)
        menu_shot = display.screenshot()
        assert not_blank(menu_shot.crop((SCREEN[0] - 300, 0, SCREEN[0], 260)))
        keep(menu_shot.crop((SCREEN[0] - 420, 0, SCREEN[0], 260)), "tray-menu.png", tmp_path)

        # Down selects the first enabled entry, Quick generate.
        display.xdotool("key", "Down")
        time.sleep(0.3)
        display.xdotool("key", "Return")
        window = display.wait_window("--name", "Quick generate")
        events.wait_event("ready", timeout=30)
        time.sleep(0.5)
        w = display.geometry(window)
        display.click(w["X"] + 150, w["Y"] + 50)  # the prompt field
        display.xdotool("type", "--delay", "15", "a red circle on a blue background")
        display.xdotool("key", "Return")
        done = events.wait_event("done", timeout=START_TIMEOUT_S)
        time.sleep(1.0)
        shot = display.screenshot().crop((w["X"], w["Y"], w["X"] + w["WIDTH"], w["Y"] + w["HEIGHT"]))
        keep(shot, "quick-generate.png", tmp_path)
        assert not_blank(shot)

        # The preview is the picture the daemon made: compare with the image from the API.
        url = json.loads((home.runtime_dir / "daemon.json").read_text())["url"]
        made = Image.open(io.BytesIO(requests.get(f"{url}/api/images/{done['id']}", timeout=30).content))
        assert made.size == (done["width"], done["height"])
        expected = np.asarray(made.convert("RGB").resize((PREVIEW_PX, PREVIEW_PX), Image.NEAREST), dtype=np.int16)
        screen = np.asarray(shot, dtype=np.int16)
        best = _best_match(screen, expected)
        assert best < 12, f"the preview does not show the generated picture (mean difference {best:.1f})"

        # Upscale (Alt+U) enlarges that picture on the daemon and the preview follows it.
        display.xdotool("key", "alt+u")
        upscaled = events.wait_event("upscaled", timeout=START_TIMEOUT_S)
        assert (upscaled["width"], upscaled["height"]) == (done["width"] * 4, done["height"] * 4)
        big = Image.open(io.BytesIO(requests.get(f"{url}/api/images/{upscaled['id']}", timeout=30).content))
        assert big.size == (upscaled["width"], upscaled["height"])
        shrunk = np.asarray(big.convert("RGB").resize(made.size, Image.BOX), dtype=np.int16)
        difference = np.abs(shrunk - np.asarray(made.convert("RGB"), dtype=np.int16)).mean()
        assert difference < 6, f"the upscaled picture is not the generated one (mean difference {difference:.1f})"

        # Quit from the menu (Up wraps to the last entry) stops the tray and the daemon it started.
        open_menu(display, g)  # keys sent before it shows would go to the quick-generate window
        display.xdotool("key", "Up")
        time.sleep(0.3)
        display.xdotool("key", "Return")
        assert tray.wait(timeout=120) == 0
        assert not (home.runtime_dir / "daemon.json").exists()
    finally:
        if tray.poll() is None:
            tray.kill()
            tray.wait()
        stop_daemon_of(home)


def _best_match(screen: np.ndarray, expected: np.ndarray) -> float:
    """Smallest mean difference of ``expected`` placed anywhere in ``screen`` (coarse, then fine)."""
    h, w = expected.shape[:2]
    small = expected[::8, ::8]
    candidates = []
    for y in range(0, screen.shape[0] - h + 1, 4):
        for x in range(0, screen.shape[1] - w + 1, 4):
            candidates.append((float(np.abs(screen[y:y + h:8, x:x + w:8] - small).mean()), y, x))
    _, y0, x0 = min(candidates)
    return min(float(np.abs(screen[y:y + h, x:x + w] - expected).mean())
               for y in range(max(0, y0 - 4), min(screen.shape[0] - h, y0 + 4) + 1)
               for x in range(max(0, x0 - 4), min(screen.shape[1] - w, x0 + 4) + 1))


def test_quick_generate_shows_errors_in_the_window(bare_display, tmp_path):
    window = subprocess.Popen([sys.executable, "-m", "pennello.tray._tk", "quick", "--url", "http://127.0.0.1:9"],
                              env=bare_display.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events = Lines(window.stdout)
    try:
        found = bare_display.wait_window("--name", "Quick generate")
        events.wait_event("ready", timeout=30)
        w = bare_display.geometry(found)
        bare_display.click(w["X"] + 150, w["Y"] + 50)
        bare_display.xdotool("key", "Return")  # empty prompt: told what to do, nothing sent
        time.sleep(0.5)
        bare_display.xdotool("type", "a kite")
        bare_display.xdotool("key", "Return")
        error = events.wait_event("error", timeout=60)
        assert "not reachable" in error["message"]
        time.sleep(0.5)
        shot = bare_display.screenshot().crop((w["X"], w["Y"], w["X"] + w["WIDTH"], w["Y"] + w["HEIGHT"]))
        keep(shot, "quick-generate-error.png", tmp_path)
        pixels = np.asarray(shot, dtype=np.int16)
        red = (pixels[..., 0] > 150) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
        assert red.sum() > 100, "the error is not shown in red in the window"
    finally:
        window.terminate()
        window.wait(timeout=10)


def test_no_tray_manager_is_detected_on_a_bare_x_display(bare_display):
    probe = subprocess.run([sys.executable, "-c", "from pennello.tray import tray_host; print(tray_host())"],
                           capture_output=True, text=True, env=bare_display.env(), timeout=60)
    assert probe.stdout.startswith("(False, ") and "no system tray" in probe.stdout, probe.stderr
