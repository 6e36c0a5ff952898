"""Fixtures for the API-surface tests (auth, OpenAI, A1111, OpenAPI, web): real waitress servers on
an ephemeral port, and a real non-loopback address of this machine for LAN clients.

    def test_x(api_server):
        url = api_server()                      # loopback, default config
        url, lan_url = api_server(lan=True)     # bound to 0.0.0.0; lan_url uses a LAN address
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from typing import Any, Callable, Iterator

import pytest

from pennello.config import Config
from pennello.daemon.auth import is_loopback

DUMMY_INTERFACE, DUMMY_ADDRESS = "pn0", "10.254.254.1"


def _default_route_address() -> str | None:
    try:
        # A connected UDP socket only chooses the outgoing interface; nothing is sent.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.254.254.254", 9))
            return probe.getsockname()[0]
    except OSError:
        return None


def _bindable(address: str) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((address, 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def lan_address() -> Iterator[str]:
    """A non-loopback IPv4 address that belongs to this machine, so a client connecting to it
    looks like another device to the server while no traffic leaves the machine. Uses the
    default route's address, else a dummy interface (root only), else skips."""
    address = _default_route_address()
    if address and not is_loopback(address) and _bindable(address):
        yield address
        return
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("no non-loopback address on this machine and not root to add a dummy interface")
    made = subprocess.run(["ip", "link", "add", DUMMY_INTERFACE, "type", "dummy"], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot add a dummy interface: {made.stderr.decode().strip()}")
    try:
        subprocess.run(["ip", "addr", "add", f"{DUMMY_ADDRESS}/32", "dev", DUMMY_INTERFACE], check=True)
        subprocess.run(["ip", "link", "set", DUMMY_INTERFACE, "up"], check=True)
        yield DUMMY_ADDRESS
    finally:
        subprocess.run(["ip", "link", "del", DUMMY_INTERFACE], capture_output=True)


@pytest.fixture(scope="module")
def api_engine(tmp_path_factory):
    """An engine on the installed embedded tiny model, shared by a test module (loading a model per
    test would triple these tests' time; ``make_engine`` in _fixtures_daemon is the per-test one)."""
    from pennello.daemon.engine.engine import Engine
    from pennello.installer import ensure_embedded_default
    from pennello.paths import get_paths

    paths = get_paths(tmp_path_factory.mktemp("home")).ensure()
    ensure_embedded_default(paths, Config())
    engine = Engine(Config(), paths)
    engine.start()
    yield engine
    engine.stop()


@pytest.fixture
def api_server(api_engine, request) -> Iterator[Callable[..., Any]]:
    """Start apps over the shared engine on real waitress servers; all are stopped afterwards.

    Call with ``lan=True`` (needs ``lan_address``) to bind 0.0.0.0 and get ``(url, lan_url)``;
    ``offline=False`` for a daemon with no-network mode off (one that may install models);
    ``**server`` sets ``[server]`` config fields (e.g. ``cors_origins``).
    """
    from pennello.daemon.http.app import create_app
    from pennello.daemon.server import start_background_server

    stops: list[Callable[[], None]] = []

    def start(lan: bool = False, offline: bool = True, **server: Any) -> Any:
        config = Config().replace("server", lan=lan, **server).replace("offline", enabled=offline)
        app = create_app(config, api_engine, api_engine.paths)
        _, url, stop = start_background_server(app, "0.0.0.0" if lan else "127.0.0.1", 0)
        stops.append(stop)
        start.app = app  # type: ignore[attr-defined]
        if not lan:
            return url
        port = url.rsplit(":", 1)[1]
        return url, f"http://{request.getfixturevalue('lan_address')}:{port}"

    yield start
    for stop in stops:
        stop()


@pytest.fixture
def url(api_server) -> str:
    """A loopback server over the shared engine."""
    return api_server()


@pytest.fixture(scope="module")
def drawn(api_engine):
    """A real picture of the embedded model, for the image tools (their checks do not depend on
    its exact pixels)."""
    from PIL import Image

    from pennello.daemon.engine.jobs import GenerateRequest

    job = api_engine.submit(GenerateRequest(prompt="a red circle on a blue background", seed=21))
    assert job.wait(120) and job.status == "done"
    with Image.open(job.images[0].path) as image:
        return image.convert("RGB")


def png_bytes(image) -> bytes:
    """``image`` encoded as PNG, as an upload would carry it."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


class StoreWithExtras:
    """The real store plus entries a test adds (models it builds, since it cannot install them)."""

    def __init__(self, store: Any, **extra: Any) -> None:
        self.store, self.extra = store, extra

    def installed(self) -> list[Any]:
        return self.store.installed() + list(self.extra.values())

    def get(self, name: str, verify: bool = False) -> Any:
        return self.extra[name] if name in self.extra else self.store.get(name, verify)


def installed_as(tiny: Any, target: Any, name: str, family: str, cls: str) -> Any:
    """``tiny``'s store record for the files at ``target``, under another name, class and family."""
    from dataclasses import replace

    # defaults and the native size are the embedded model's own (its 64x64), not the stand-in's
    pipeline = replace(tiny.manifest.pipeline, cls=cls, family=family, defaults={}, max_native_size=None)
    return replace(tiny, name=name, path=target, manifest=replace(tiny.manifest, name=name, pipeline=pipeline))
