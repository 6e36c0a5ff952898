"""The tray's menu and state logic against a real daemon, drawn through pystray's dummy backend.

No display is needed: ``PYSTRAY_BACKEND=dummy`` gives pystray's own ``Icon`` and ``Menu``
classes without a toolkit, so the translation layer is exercised for real. Windows and the
desktop are replaced by :class:`FakeDesktop`, which records what the tray asked for; the real
windows are tested under Xvfb in ``test_tray_display.py``.
"""

from __future__ import annotations

import io
import json
import os
import plistlib
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import requests
from PIL import Image

from pennello.daemon import GenerateRequest
from pennello.paths import Paths
from pennello.tray import (TRAY_STATES, DaemonSupervisor, MenuEntry, PairOffer, Status, TrayController,
                           draw_icon, login_item, status_from_health)
from _fixtures_installer import TINY_LABEL
from pennello.config import write_setting
from _fixtures_daemon import SLOW_STEPS, wait_until_running
from _fixtures_owner import assert_logs_in

START_TIMEOUT_S = 180


class FakeDesktop:
    """Records what the tray asked the desktop to do; answers confirmations with ``answer``."""

    def __init__(self, answer: bool = True) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.answer = answer

    def confirm(self, question: str, facts: Any) -> bool:
        self.calls.append(("confirm", (question, list(facts))))
        return self.answer

    def open_url(self, url: str) -> None:
        self.calls.append(("open_url", url))

    def open_path(self, path: Path) -> None:
        self.calls.append(("open_path", path))

    def quick_generate(self, base_url: str, model: str | None) -> None:
        self.calls.append(("quick_generate", (base_url, model)))

    def show_pairing(self, offer: PairOffer) -> None:
        self.calls.append(("show_pairing", offer))

    def notify(self, title: str, message: str) -> None:
        self.calls.append(("notify", message))

    def quit(self) -> None:
        self.calls.append(("quit", None))

    def last(self, name: str) -> Any:
        return next(arg for call, arg in reversed(self.calls) if call == name)


@pytest.fixture
def dummy_pystray(monkeypatch):
    """pystray with its dummy backend (chosen when pystray is first imported)."""
    monkeypatch.setenv("PYSTRAY_BACKEND", "dummy")
    import pystray

    from pennello.tray._desktop import pystray_backend

    if pystray_backend() != "dummy":
        pytest.skip(f"pystray was already imported with its {pystray_backend()} backend")
    return pystray


@pytest.fixture
def autostart(tmp_path):
    return login_item("linux", {"HOME": str(tmp_path / "userhome")}, ["/opt/pennello/bin/pennello", "tray"])


@pytest.fixture
def tray_for(home: Paths, autostart) -> Callable[..., tuple[TrayController, FakeDesktop, list[Status]]]:
    def make(url: str) -> tuple[TrayController, FakeDesktop, list[Status]]:
        desktop, changes = FakeDesktop(), []
        controller = TrayController(DaemonSupervisor(home, url=url), desktop, autostart, home,
                                    on_change=changes.append)
        return controller, desktop, changes

    return make


def texts(entries: list[MenuEntry]) -> list[str]:
    return [entry.text for entry in entries if not entry.separator]


def entry(entries: list[MenuEntry], text: str) -> MenuEntry:
    found = next((e.find(text) for e in entries if e.find(text)), None)
    assert found is not None, f"no menu entry {text!r} in {texts(entries)}"
    return found


# --- status from /api/health ---------------------------------------------------------------------

def test_health_maps_to_states_and_a_status_line():
    base = {"ready": True, "default_model": "pennello-tiny", "device": "cpu", "running": 0, "queue_depth": 0}
    assert status_from_health({**base, "ready": False}).state == "starting"
    ready = status_from_health(base)
    assert ready.state == "ready" and ready.line() == "pennello-tiny on cpu · idle"
    busy = status_from_health({**base, "running": 1, "queue_depth": 3}, progress=0.25)
    assert busy.state == "busy" and busy.progress == 0.25 and "1 running, 3 waiting" in busy.line()
    offline = status_from_health({**base, "offline": {"mode": "on", "lan": False, "refused": 2}})
    assert offline.state == "offline" and offline.line().endswith("offline · 2 refused connections")
    assert status_from_health({**base, "offline": {"mode": "on", "refused": 1}}).line().endswith(
        "offline · 1 refused connection")
    off = status_from_health({**base, "offline": {"mode": "off", "refused": 0}})
    assert off.state == "ready" and off.line().endswith("network allowed")
    assert status_from_health(base).offline is None  # a daemon without no-network mode
    assert Status("error", message="boom").line() == "Error: boom"


def test_every_state_has_its_own_icon():
    pictures = {state: draw_icon(state, 32).tobytes() for state in TRAY_STATES}
    assert len(set(pictures.values())) == len(TRAY_STATES)
    assert draw_icon("busy", 32, 0.1).tobytes() != draw_icon("busy", 32, 0.9).tobytes()
    image = draw_icon("ready", 64)
    assert image.mode == "RGBA" and image.getpixel((32, 32))[3] == 255 and image.getpixel((0, 0))[3] == 0


# --- the controller against a real daemon --------------------------------------------------------

def test_menu_follows_the_daemon_through_ready_busy_offline_and_error(server, tray_for, monkeypatch):
    controller, desktop, changes = tray_for(server.url)
    status = controller.start()
    assert status.state == "ready" and status.model == "pennello-tiny" and status.device == "cpu"
    menu = controller.menu()
    assert menu[0].text.startswith("pennello-tiny on cpu · idle") and not menu[0].enabled
    assert texts(menu)[1:] == ["Quick generate…", "Open web page", "Pair a device…",
                           "Models", "Outputs folder", "No-network mode", "Start at login", "Quit"]
    assert entry(menu, "Quick generate").default and entry(menu, "Quick generate").enabled
    models = entry(menu, "Models").submenu
    assert [(m.text, m.checked, m.radio) for m in models] == [(TINY_LABEL, True, True)]

    job = server.engine.submit(GenerateRequest(prompt="a slow kite", steps=SLOW_STEPS))
    wait_until_running(job)
    busy = controller.refresh()
    assert busy.state == "busy" and busy.running == 1 and 0 < busy.progress < 1
    assert "1 running" in controller.menu()[0].text
    server.engine.cancel(job.id)
    job.wait(timeout=60)

    wait_for_state(controller, ("ready",), timeout=30)

    server.stop()
    error = controller.refresh()
    assert error.state == "error" and "not reachable" in error.message
    menu = controller.menu()
    assert texts(menu)[:2] == [error.line(), "Try again"] and not entry(menu, "Quick generate").enabled
    assert [s.state for s in changes] == ["ready", "busy", "ready", "error"]
    assert controller.default_action() == "retry"


class FakeGuard:
    """What ``pennello serve`` installs in no-network mode, as /api/health reports it."""

    refused = 3

    def summary(self) -> dict[str, Any]:
        return {"mode": "on", "lan": False, "allowed": ["loopback"], "refused": self.refused}

    def status(self) -> dict[str, Any]:
        return {**self.summary(), "attempts": []}


def test_no_network_mode_and_refused_connections_show_in_icon_and_menu(home, engine, tray_for):
    from pennello.config import Config
    from pennello.daemon import create_app, start_background_server

    _, url, stop = start_background_server(create_app(Config(), engine, home, guard=FakeGuard()))
    try:
        controller, _, _ = tray_for(url)
        status = controller.start()
        assert status.state == "offline" and status.offline is True and status.refused == 3
        assert controller.menu()[0].text == "pennello-tiny on cpu · idle · offline · 3 refused connections"
    finally:
        stop()


def test_actions_reach_the_daemon_and_the_desktop(server, tray_for, home):
    controller, desktop, _ = tray_for(server.url)
    controller.start()

    link = controller.run("open_web")
    assert link.startswith(server.url + "/login?token=") and desktop.last("open_url") == link
    assert_logs_in(link)
    assert controller.run("open_outputs") == home.outputs_dir and desktop.last("open_path") == home.outputs_dir
    controller.run("quick_generate")
    assert desktop.last("quick_generate") == (server.url, None)

    offer = controller.run("pair")
    assert isinstance(offer, PairOffer) and desktop.last("show_pairing") is offer
    assert len(offer.code) == 8 and offer.code in offer.pair_url and offer.lan is False
    assert Image.open(io.BytesIO(offer.qr_png)).size[0] > 100
    assert offer.fingerprint is None  # plain HTTP on loopback, no LAN certificate made yet
    status = requests.get(server.api("/pair/status"), timeout=10).json()
    assert status["code_expires_in_s"] > 0

    # Errors become notifications, not exceptions in the tray's thread.
    controller.run("set_default_model", "no-such-model")
    assert "no-such-model" in desktop.last("notify")


def test_set_default_model_writes_config_and_loads_it(server, tray_for, home):
    home.config_file.write_text("# my settings\n[server]\nport = 9000  # LAN port\n\n[engine]\nmax_n = 4\n")
    controller, desktop, _ = tray_for(server.url)
    controller.start()
    server.engine.unload("pennello-tiny")
    controller.run("set_default_model", "pennello-tiny")
    text = home.config_file.read_text()
    assert "# my settings" in text and "port = 9000  # LAN port" in text and 'default_model = "pennello-tiny"' in text
    assert controller.configured_default() == "pennello-tiny"
    assert next(m for m in controller.models if m["name"] == "pennello-tiny")["loaded"]
    controller.run("quick_generate")
    assert desktop.last("quick_generate") == (server.url, "pennello-tiny")


def test_setting_the_default_model_keeps_other_lines_and_refuses_broken_files(tmp_path):
    # What Models > (a model) does: pennello.config.write_setting, shared with `pennello offline`.
    path = tmp_path / "config.toml"
    write_setting(path, "engine", "default_model", "sd-turbo")
    assert path.read_text() == '[engine]\ndefault_model = "sd-turbo"\n'
    write_setting(path, "engine", "default_model", 'we"ird')
    assert path.read_text() == '[engine]\ndefault_model = "we\\"ird"\n'
    path.write_text("[engine]\nmax_n = 2\n[server]\nlan = true\n")
    write_setting(path, "engine", "default_model", "x")
    assert path.read_text() == '[engine]\nmax_n = 2\ndefault_model = "x"\n[server]\nlan = true\n'
    path.write_text("engine.default_model = 'a'\n")  # a dotted key: rewritten as a whole
    write_setting(path, "engine", "default_model", "b")
    import tomllib

    assert tomllib.loads(path.read_text()) == {"engine": {"default_model": "b"}}
    path.write_text("[engine\n")
    from pennello.errors import ConfigError

    with pytest.raises(ConfigError, match="not valid TOML"):
        write_setting(path, "engine", "default_model", "x")
    assert path.read_text() == "[engine\n"


def test_start_at_login_toggles_the_registrations(server, tray_for, autostart, tmp_path):
    controller, desktop, _ = tray_for(server.url)
    controller.start()
    assert entry(controller.menu(), "Start at login").checked is False
    desktop.answer = False  # turning it on asks first; a no changes nothing
    assert controller.run("toggle_autostart") is False and not autostart.path.exists()
    question, facts = desktop.last("confirm")
    assert question == "Start Pennello when you log in?" and str(autostart.path) in " ".join(facts)
    desktop.answer = True
    assert controller.run("toggle_autostart") is True
    text = autostart.path.read_text()
    assert autostart.path == tmp_path / "userhome" / ".config" / "autostart" / "pennello.desktop"
    assert "Exec=/opt/pennello/bin/pennello tray" in text and "Type=Application" in text
    assert entry(controller.menu(), "Start at login").checked is True
    asked = len([call for call, _ in desktop.calls if call == "confirm"])
    assert controller.run("toggle_autostart") is False and not autostart.path.exists()
    assert len([call for call, _ in desktop.calls if call == "confirm"]) == asked  # off: no question

    env = {"HOME": str(tmp_path / "mac"), "APPDATA": str(tmp_path / "win")}
    agent = login_item("darwin", env, ["/Users/a/pennello", "tray"])
    agent.enable()
    plist = plistlib.loads(agent.path.read_bytes())
    assert plist["ProgramArguments"] == ["/Users/a/pennello", "tray"] and plist["RunAtLoad"] is True
    assert agent.path.parent == tmp_path / "mac" / "Library" / "LaunchAgents"
    agent.disable()
    assert not agent.enabled()
    windows = login_item("win32", env)
    assert windows.path.parts[-2:] == ("Startup", "Pennello.lnk") and not windows.enabled()


def test_leaving_no_network_mode_asks_and_coming_back_does_not(server, tray_for, home):
    from pennello.config import load_config

    controller, desktop, _ = tray_for(server.url)
    controller.start()
    assert entry(controller.menu(), "No-network mode").checked is True  # the default

    desktop.answer = False
    assert controller.run("toggle_offline") is True and load_config().offline.enabled is True
    question, facts = desktop.last("confirm")
    assert question == "Turn no-network mode off?" and "reach the internet" in facts[0]
    assert not home.config_file.exists()  # a no writes nothing

    desktop.answer = True
    assert controller.run("toggle_offline") is False and load_config().offline.enabled is False
    assert entry(controller.menu(), "No-network mode").checked is False
    assert "off from pennello's next start" in desktop.last("notify")

    desktop.calls.clear()
    assert controller.run("toggle_offline") is True and load_config().offline.enabled is True
    assert not [call for call, _ in desktop.calls if call == "confirm"]  # back to safety: no question


def test_a_confirmation_dialog_that_cannot_open_is_a_no(monkeypatch):
    from pennello.tray._desktop import SystemDesktop

    for name in ("DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    assert SystemDesktop(Path("/nonexistent")).confirm("Turn no-network mode off?", ["facts"]) is False


@pytest.mark.display
@pytest.mark.skipif(not (shutil.which("Xvfb") and shutil.which("xdotool")), reason="needs Xvfb and xdotool")
def test_the_confirmation_dialog_says_yes_only_when_yes_is_chosen(tmp_path, monkeypatch):
    from pennello.tray._desktop import SystemDesktop
    from test_tray_display import Display

    display = Display(tmp_path, tray=False)
    try:
        monkeypatch.setenv("DISPLAY", display.name)
        desktop = SystemDesktop(Path("/nonexistent"))
        # Cancel has the focus: Return and Escape are a no; Tab then space chooses Yes.
        for keys, expected in ((["Return"], False), (["Escape"], False), (["Tab", "space"], True)):
            answers: list[bool] = []
            asking = threading.Thread(target=lambda: answers.append(
                desktop.confirm("Turn no-network mode off?", ["It may reach the internet."])))
            asking.start()
            window = display.wait_window("--class", "PennelloConfirm")
            time.sleep(0.5)
            g = display.geometry(window)
            display.click(g["X"] + 20, g["Y"] + 20)  # the question's label: focus the window
            for key in keys:
                display.xdotool("key", key)
                time.sleep(0.2)
            asking.join(timeout=60)
            assert answers == [expected], keys
    finally:
        display.close()


# --- the pystray layer with the dummy backend ------------------------------------------------------

def test_pystray_layer_draws_state_and_builds_the_menu(server, tray_for, dummy_pystray, monkeypatch):
    from pennello.tray._desktop import SystemDesktop
    from pennello.tray._pystray import PystrayTray

    controller, desktop, _ = tray_for(server.url)
    system = SystemDesktop(Path("/nonexistent"))
    tray = PystrayTray(controller, system)
    monkeypatch.setattr(PystrayTray, "_in_thread", staticmethod(lambda function, *args: function(*args)))
    controller.desktop = desktop
    assert tray.native_menu and isinstance(tray.icon, dummy_pystray.Icon)
    before = tray.icon.icon.tobytes()
    controller.start()
    assert tray.icon.title == controller.status.line().replace('…', '...') and tray.icon.title.startswith("pennello-tiny on cpu") and tray.icon.icon.tobytes() != before

    menu = tray.icon.menu
    items = list(menu)
    assert [str(i) for i in items if i is not dummy_pystray.Menu.SEPARATOR][:2] == [
        controller.status.line(), "Quick generate…"]
    assert items[0].enabled is False and items[2].default
    models = next(i for i in items if i.text == "Models")
    assert [(i.text, i.checked, i.radio) for i in models.submenu] == [(TINY_LABEL, True, True)]
    login = next(i for i in items if i.text == "Start at login")
    assert login.checked is False

    menu(tray.icon)  # a click on the icon runs the default item: Quick generate
    assert desktop.last("quick_generate") == (server.url, None)
    next(i for i in items if i.text == "Open web page")(tray.icon)
    assert desktop.last("open_url").startswith(server.url + "/login?token=")
    assert_logs_in(desktop.last("open_url"))
    login(tray.icon)
    assert next(i for i in tray.icon.menu if i.text == "Start at login").checked is True

    # A tray without native menus gets one hidden default item that opens the pop-up menu.
    shown: list[list[MenuEntry]] = []
    monkeypatch.setattr(system, "popup_menu", lambda entries: shown.append(entries) or ("open_outputs", None))
    tray.native_menu = False
    tray.icon.menu(tray.icon)
    assert texts(shown[0])[1] == "Quick generate…" and desktop.last("open_path") == controller.paths.outputs_dir


# --- starting and stopping the daemon ---------------------------------------------------------------

def wait_for_state(controller: TrayController, states: tuple[str, ...], timeout: float = START_TIMEOUT_S) -> Status:
    deadline = time.monotonic() + timeout
    status = controller.refresh()
    while status.state not in states:
        assert time.monotonic() < deadline, f"tray stayed {status.state}: {status.line()}"
        time.sleep(0.2)
        status = controller.refresh()
    return status


def test_tray_starts_the_daemon_attaches_to_it_and_quit_stops_only_its_own(home, autostart):
    command = [sys.executable, "-m", "pennello", "serve", "--port", "0"]
    desktop = FakeDesktop()
    first = TrayController(DaemonSupervisor(home, command=command), desktop, autostart, home)
    assert first.start().state == "starting"
    assert wait_for_state(first, ("ready", "offline", "error")).state != "error", first.status.line()
    assert first.daemon.started_here and texts(first.menu())[-1] == "Quit (stops pennello)"
    info = json.loads((home.runtime_dir / "daemon.json").read_text())
    assert info["pid"] == first.daemon.process.pid

    second = TrayController(DaemonSupervisor(home, command=command), FakeDesktop(), autostart, home)
    assert second.start().state in ("ready", "offline") and not second.daemon.started_here
    second.run("quit")  # attached: the daemon keeps running
    assert requests.get(info["url"] + "/api/health", timeout=10).json()["ready"]

    process = first.daemon.process
    first.run("quit")
    assert process.poll() == 0 and desktop.last("quit") is None
    assert not (home.runtime_dir / "daemon.json").exists()


def test_a_daemon_that_cannot_start_shows_an_error_with_its_log(home, autostart):
    command = [sys.executable, "-c", "import sys; print('port 8420 is taken'); sys.exit(3)"]
    controller = TrayController(DaemonSupervisor(home, command=command), FakeDesktop(), autostart, home)
    controller.start()
    status = wait_for_state(controller, ("error",), timeout=30)
    assert "exit status 3" in status.message and "port 8420 is taken" in status.message
    assert "tray-serve.log" in status.message
    assert texts(controller.menu())[1] == "Try again"


def _clean_env(home: Paths, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "PYSTRAY_BACKEND")}
    return {**env, "PENNELLO_HOME": str(home.runtime_dir.parent), **extra}


def test_without_a_tray_host_it_says_so_and_opens_the_web_page(home, tmp_path):
    probe = subprocess.run([sys.executable, "-c", "from pennello.tray import tray_host; print(tray_host())"],
                           capture_output=True, text=True, env=_clean_env(home), timeout=60)
    assert probe.stdout.startswith("(False, ") and "tray" in probe.stdout, probe.stderr

    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser"
    browser.write_text(f"#!/bin/sh\necho \"$1\" >> {opened}\n")
    browser.chmod(browser.stat().st_mode | stat.S_IEXEC)
    env = _clean_env(home, BROWSER=str(browser), PENNELLO_SERVER_PORT="0")
    process = subprocess.Popen([sys.executable, "-m", "pennello", "tray"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not line.startswith("pennello is running at"):
            assert time.monotonic() < deadline and process.poll() is None, process.stderr.read()
            line = process.stdout.readline()
        url = line.split()[-1]
        assert opened.read_text().strip().startswith(url + "login?token=")
        assert_logs_in(opened.read_text().strip())
        assert requests.get(url + "api/health", timeout=10).json()["ready"]
        assert json.loads((home.runtime_dir / "tray.json").read_text())["pid"] == process.pid
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0
        stderr = process.stderr.read()
        assert "no system tray" in stderr or "no tray toolkit" in stderr
        assert not (home.runtime_dir / "daemon.json").exists()  # it stopped the daemon it started
        assert not (home.runtime_dir / "tray.json").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
