"""No-network mode in this process: the audit-hook guard refuses, counts and reports what it must,
lets loopback and mDNS through, and the daemon shows it over HTTP and in ``pennello offline``.

Nothing here needs a packet to leave the machine: a refused attempt never reaches the kernel, and
the allowed ones go to loopback or to the mDNS group.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
import threading
import time

import ifaddr
import pytest
import requests
from click.testing import CliRunner

from pennello.daemon.net import offline
from pennello.daemon.net.offline import OFFLINE_ENV, NetworkGuard, apply_offline_env
from pennello.errors import OfflineViolationError


PUBLIC = "192.0.2.1"  # TEST-NET-1: never routed; and on some CI hosts the (public) gateway itself


@pytest.fixture
def guard():
    installed = NetworkGuard(lan=True).install()
    yield installed
    installed.uninstall()


@pytest.fixture
def hf_flags(monkeypatch):
    """Let a test change the offline environment and huggingface_hub's flags; all undone after."""
    import huggingface_hub.constants as constants

    for name in OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, module in list(sys.modules.items()):
        if module is not None and name.startswith(("huggingface_hub", "diffusers", "transformers")):
            for flag in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "HF_HUB_DISABLE_XET",
                         "HF_HUB_DISABLE_UPDATE_CHECK", "HF_HUB_DISABLE_IMPLICIT_TOKEN"):
                if isinstance(getattr(module, flag, None), bool):
                    monkeypatch.setattr(module, flag, getattr(module, flag))
    return constants


# --- refused -------------------------------------------------------------------------------------

def test_a_connect_to_a_public_address_is_refused_counted_and_logged(guard, caplog):
    caplog.set_level(logging.WARNING, logger="pennello.daemon.net.offline")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock, pytest.raises(OfflineViolationError) as refused:
        sock.connect((PUBLIC, 443))
    assert isinstance(refused.value, PermissionError) and refused.value.errno == errno.EPERM
    assert f"{PUBLIC}:443" in str(refused.value)
    with pytest.raises(OSError):  # what libraries see: an unreachable network
        socket.create_connection((PUBLIC, 443), timeout=1)
    assert guard.refused == 2
    assert guard.status()["refused_by_destination"] == {f"{PUBLIC}:443": 2}
    attempt = guard.attempts()[0]
    assert attempt.event == "socket.connect" and attempt.destination == f"{PUBLIC}:443"
    assert "test_offline.py" in attempt.where and "sock.connect" in attempt.stack
    # The stack is logged the first time a destination is refused, not on every repeat.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "test_offline.py" in warnings[0].getMessage()


def test_datagrams_and_name_lookups_are_refused(guard):
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with udp:
        with pytest.raises(OfflineViolationError):
            udp.sendto(b"x", (PUBLIC, 53))
        with pytest.raises(OfflineViolationError):  # a connected UDP socket's send() is unaudited
            udp.connect(("8.8.8.8", 53))
        with pytest.raises(OfflineViolationError):  # the mDNS group, but not the mDNS port
            udp.sendto(b"x", ("224.0.0.251", 53))
    for lookup in (lambda: socket.getaddrinfo("huggingface.co", 443),
                   lambda: socket.gethostbyname("example.com"),
                   lambda: socket.gethostbyaddr(PUBLIC),
                   lambda: socket.getaddrinfo("pennello-host.local", 80)):
        with pytest.raises(OfflineViolationError):
            lookup()
    refused = set(guard.status()["refused_by_destination"])
    assert {f"{PUBLIC}:53", "8.8.8.8:53", "224.0.0.251:53", "huggingface.co", "example.com",
            f"reverse lookup of {PUBLIC}", "pennello-host.local"} == refused


def test_a_huggingface_hub_call_is_stopped_by_the_environment_first(guard, hf_flags):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import OfflineModeIsEnabled

    apply_offline_env()
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_HUB_DISABLE_XET"] == "1"
    assert hf_flags.HF_HUB_OFFLINE is True  # imported before: its copied flag was patched too
    with pytest.raises(OfflineModeIsEnabled):
        HfApi().model_info("stabilityai/sd-turbo")
    assert guard.refused == 0  # the library never tried


def test_a_huggingface_hub_call_that_ignores_the_environment_is_refused_and_reported(guard, hf_flags, tmp_path,
                                                                                   monkeypatch):
    import huggingface_hub.utils._http as hub_http
    from huggingface_hub import HfApi, hf_hub_download

    hf_flags.HF_HUB_OFFLINE = False  # a library that does not honour HF_HUB_OFFLINE
    # hf_hub_download retries a refused call 5 times, 23 s of back-off in all; every retry is
    # refused the same way, so the waits prove nothing here
    monkeypatch.setattr(hub_http, "time", _NoWaiting())
    with pytest.raises(Exception) as failed:
        HfApi().model_info("stabilityai/sd-turbo")
    assert "no-network mode refused" in str(failed.value)
    with pytest.raises(Exception):
        hf_hub_download("stabilityai/sd-turbo", "model_index.json", cache_dir=tmp_path)
    status = guard.status()
    assert status["refused"] >= 2 and set(status["refused_by_destination"]) == {"huggingface.co"}
    assert any("huggingface_hub" in attempt["stack"] for attempt in status["attempts"])


class _NoWaiting:
    """The ``time`` module, but ``sleep`` returns at once (a library's retry back-off)."""

    @staticmethod
    def sleep(seconds: float) -> None:
        return None

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


# --- allowed -------------------------------------------------------------------------------------

def test_loopback_is_allowed(guard):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        with socket.create_connection(("localhost", port), timeout=5):
            pass
    if socket.has_ipv6:
        try:
            v6 = socket.create_server(("::1", 0), family=socket.AF_INET6)
        except OSError:
            v6 = None
        if v6 is not None:
            with v6, socket.create_connection(("::1", v6.getsockname()[1]), timeout=5):
                pass
    assert guard.refused == 0


def test_mdns_is_allowed_and_discovery_works_under_the_guard(guard):
    from pennello.client.discover import browse

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
        try:
            udp.sendto(b"\0" * 12, ("224.0.0.251", 5353))
        except OfflineViolationError:
            raise
        except OSError:
            pass  # no multicast route on this machine: the guard let it through, which is the point
    browse(timeout=1.0)  # a real zeroconf browse: sockets, joins, queries
    assert guard.refused == 0, guard.status()["refused_by_destination"]


def test_lan_mode_allows_only_private_on_link_networks(monkeypatch):
    adapters = [
        ifaddr.Adapter("lo", "lo", [ifaddr.IP("127.0.0.1", 8, "lo")], index=1),
        ifaddr.Adapter("eth0", "eth0", [ifaddr.IP("192.168.1.20", 24, "eth0"),
                                        ifaddr.IP("203.0.113.7", 24, "eth0"),
                                        ifaddr.IP(("fd12:3456::20", 0, 0), 64, "eth0")], index=2),
        ifaddr.Adapter("wg0", "wg0", [ifaddr.IP("10.8.0.2", 24, "wg0")], index=3),
    ]
    monkeypatch.setattr(offline.ifaddr, "get_adapters", lambda: adapters)
    lan = NetworkGuard(lan=True)
    assert lan.address_allowed("192.168.1.30", 443) and lan.address_allowed("10.8.0.9", 80)
    assert lan.address_allowed("fd12:3456::99", 443) and lan.address_allowed("fe80::1%eth0", 443)
    assert lan.address_allowed("203.0.113.7", 443)  # this machine's own address
    assert not lan.address_allowed("203.0.113.8", 443)  # on-link, but a public network
    assert not lan.address_allowed("192.168.2.1", 443)  # private, but not on any interface
    assert not lan.address_allowed("::ffff:8.8.8.8", 443)
    assert lan.address_allowed("::ffff:127.0.0.1", 80) and lan.address_allowed("0.0.0.0", 80)
    only_wg = NetworkGuard(lan=True, interfaces=("wg0",))
    assert only_wg.address_allowed("10.8.0.9", 80) and not only_wg.address_allowed("192.168.1.30", 80)
    loopback_only = NetworkGuard(lan=False)
    assert not loopback_only.address_allowed("192.168.1.30", 443)
    assert loopback_only.address_allowed("224.0.0.251", 5353) and loopback_only.address_allowed("ff02::fb", 5353)
    extra = NetworkGuard(lan=True, allow=("198.51.100.0/24",))
    assert extra.address_allowed("198.51.100.5", 443)
    assert "198.51.100.0/24 (offline.allow)" in extra.allowed()
    assert "192.168.1.0/24 (eth0)" in lan.allowed() and not any("203.0.113" in rule for rule in lan.allowed())


def test_uninstalled_guard_lets_everything_through_and_threads_share_it():
    guard = NetworkGuard(lan=False).install()
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            socket.getaddrinfo("example.org", 80)
        except OfflineViolationError as e:
            errors.append(e)
        except OSError:
            pass

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert len(errors) == 1 and guard.status()["attempts"][0]["thread"] == thread.name
    guard.uninstall()
    assert offline.active_guard() is None and guard.summary()["mode"] == "off"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        try:
            udp.connect((PUBLIC, 9))  # no packet: a UDP connect only picks a route
        except OfflineViolationError:
            pytest.fail("an uninstalled guard still refused")
        except OSError:
            pass


# --- reported ------------------------------------------------------------------------------------

def test_the_daemon_reports_mode_allowed_and_refused_over_http_and_the_cli(home, engine):  # noqa: F811
    from pennello.cli import cli
    from pennello.config import Config
    from pennello.daemon.http.app import create_app
    from pennello.daemon.server import start_background_server
    from pennello.runtime import write_daemon_info

    guard = NetworkGuard(lan=False).install()
    try:
        app = create_app(Config(), engine, home, guard=guard)
        _, url, stop = start_background_server(app, "127.0.0.1", 0)
        try:
            with pytest.raises(OSError):
                socket.create_connection((PUBLIC, 443), timeout=1)
            health = requests.get(f"{url}/api/health", timeout=10).json()
            assert health["offline"]["mode"] == "on" and health["offline"]["refused"] == 1
            assert any("mDNS 224.0.0.251:5353" == rule for rule in health["offline"]["allowed"])
            report = requests.get(f"{url}/api/offline", timeout=10).json()
            assert report["refused_by_destination"] == {f"{PUBLIC}:443": 1}
            assert report["attempts"][0]["event"] == "socket.getaddrinfo"
            assert "test_offline.py" in report["attempts"][0]["stack"]
            assert report["env"]["HF_HUB_OFFLINE"] == "1"
            # Other devices see the summary in /api/health but not the stacks.
            lan_client = app.test_client().get("/api/offline", environ_base={"REMOTE_ADDR": "192.168.1.9"})
            assert lan_client.status_code == 401

            write_daemon_info(home.runtime_dir, url)
            result = CliRunner().invoke(cli, ["offline", "status"])
            assert result.exit_code == 0, result.output
            assert "no-network mode: on (running daemon" in result.output
            assert f"1 x {PUBLIC}:443" in result.output and "test_offline.py" in result.output
            as_json = json.loads(CliRunner().invoke(cli, ["offline", "status", "--json"]).output)
            assert as_json["refused"] == 1 and as_json["configured"] == "on"
        finally:
            stop()
    finally:
        guard.uninstall()
    plain = create_app(Config(), engine, home)  # no guard: says so instead of pretending
    report = plain.test_client().get("/api/offline").get_json()
    assert report["mode"] == "off" and "does not enforce" in report["reason"]


def test_offline_on_and_off_write_the_config(home):
    from pennello.cli import cli
    from pennello.config import load_config

    home.config_file.write_text("# mine\n[server]\nport = 9000\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["offline", "off", "--yes"])  # asking: tests/test_consent.py
    assert result.exit_code == 0, result.output
    assert load_config().offline.enabled is False
    assert "no-network mode: off in the config" in CliRunner().invoke(cli, ["offline", "status"]).output
    CliRunner().invoke(cli, ["offline", "on"])
    assert load_config().offline.enabled is True and load_config().server.port == 9000
    assert home.config_file.read_text().startswith("# mine\n")
