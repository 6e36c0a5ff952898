"""LAN discovery with real mDNS on this machine, and TLS pinning on real sockets.

Other pennello daemons may be answering on the same network (other people's tests, a real
install), so every check picks out its own service by instance id or by a unique name.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

import pytest
import requests
from zeroconf import ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

from pennello.config import Config
from pennello.daemon.net.mdns import Advertiser, advertiser_for, instance_id, interface_addresses
from pennello.daemon.http.app import create_app
from pennello.daemon.server import make_lan_server, start_background_server
from pennello.daemon.net.tls import ensure_certificate
from pennello.client.discover import browse, pinned_session
from pennello.errors import TrustError
from pennello.lan import SERVICE_TYPE, Service, encode_txt, zeroconf_interfaces
from pennello.paths import get_paths

from _fixtures_lan import ServeProcess, host_pairing_code, run_cli
from _fixtures_owner import SERVED

if not interface_addresses():
    pytest.skip("no network interface besides loopback for mDNS", allow_module_level=True)

WRONG_PIN = "sha256:" + "0" * 64


def find(instance: str, timeout: float = 10.0) -> Service | None:
    """Browse until the service with this instance id answers."""
    found = browse(timeout, stop_when=lambda s: s.id == instance)
    return next((s for s in found if s.id == instance), None)


def wait_for(instance: str, check: Any, timeout: float = 20.0) -> Service:
    """Browse again and again until the service's record satisfies ``check``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        service = find(instance, timeout=3.0)
        if service is not None and check(service):
            return service
    raise AssertionError(f"the record of {instance} never satisfied the check (last: {service})")


@dataclass
class LanDaemon:
    url: str  # https on loopback: the owner
    port: int
    fingerprint: str
    advertiser: Advertiser


@pytest.fixture(scope="module")
def lan_daemon(api_engine) -> Iterator[LanDaemon]:  # noqa: F811
    """What ``serve --lan`` runs, in this process: TLS server + advertiser over a shared engine."""
    config = Config().replace("server", lan=True)
    app = create_app(config, api_engine, api_engine.paths)
    server, fingerprint, ipv6 = make_lan_server(app, api_engine.paths, 0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    advertiser = advertiser_for(config, api_engine.paths, api_engine, server.port, fingerprint, ipv6=ipv6)
    advertiser.start()
    SERVED[server.url] = api_engine.paths  # not started by start_background_server: noted here
    yield LanDaemon(server.url, server.port, fingerprint, advertiser)
    SERVED.pop(server.url, None)
    advertiser.stop()
    server.stop()
    thread.join()
    server.close()


def static_advertiser(tmp_path, hostname: str, port: int = 9, fingerprint: str | None = None) -> Advertiser:
    return Advertiser(get_paths(tmp_path / secrets.token_hex(4)).ensure(), port, fingerprint,
                      lambda: (["pennello-tiny"], []), hostname=hostname)


# --- found, with the documented TXT ----------------------------------------------------------------

def test_a_lan_daemon_is_found_with_its_txt_record(lan_daemon, api_engine):  # noqa: F811
    service = find(lan_daemon.advertiser.instance_id)
    assert service is not None, "the daemon was not found over mDNS"
    assert service.name == lan_daemon.advertiser.name and service.name.startswith("Pennello on ")
    assert service.port == lan_daemon.port and service.path == "/api"
    assert service.apis == ("native", "openai", "a1111")
    assert service.auth is True and service.tls is True and service.fingerprint == lan_daemon.fingerprint
    assert service.models == ("pennello-tiny",) and service.loaded == ("pennello-tiny",)
    assert set(service.addresses) & set(interface_addresses())  # this machine's addresses
    # The advertised address and fingerprint are enough to reach it over pinned TLS, on every
    # advertised address: IPv4 and IPv6 (link-local ones would need a scope; left out here).
    health = pinned_session(service.fingerprint).get(service.url + "/api/health", timeout=10).json()
    assert health["ready"] is True
    for address in service.addresses:
        if "%" in address or address.startswith("fe80"):
            continue
        host = f"[{address}]" if ":" in address else address
        url = f"https://{host}:{service.port}/api/health"
        assert pinned_session(service.fingerprint).get(url, timeout=10).json()["ready"], url
    # The instance id is this installation's, kept in the state directory.
    assert (api_engine.paths.state_dir / "instance-id").read_text().strip() == service.id
    assert instance_id(api_engine.paths) == service.id


def test_the_record_follows_model_unload_and_load(lan_daemon):
    owner = pinned_session(lan_daemon.fingerprint)
    before = lan_daemon.advertiser.announcements
    response = owner.post(f"{lan_daemon.url}/api/models/pennello-tiny/unload", timeout=30)
    assert response.json()["unloaded"] is True
    service = wait_for(lan_daemon.advertiser.instance_id, lambda s: s.loaded == ())
    assert service.models == ("pennello-tiny",)  # still installed
    owner.post(f"{lan_daemon.url}/api/models/pennello-tiny/load", timeout=60).raise_for_status()
    wait_for(lan_daemon.advertiser.instance_id, lambda s: s.loaded == ("pennello-tiny",))
    deadline = time.monotonic() + 5  # the re-announcement is still being sent when browsers see it
    while lan_daemon.advertiser.announcements < before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lan_daemon.advertiser.announcements == before + 2


def test_stopping_withdraws_the_service_at_once(tmp_path):
    advertiser = static_advertiser(tmp_path, f"stop-{secrets.token_hex(3)}")
    events: list[tuple[str, ServiceStateChange]] = []
    zc = Zeroconf(interfaces=zeroconf_interfaces(())[0])
    try:
        def on_change(zeroconf: Any, service_type: str, name: str, state_change: ServiceStateChange) -> None:
            events.append((name, state_change))

        browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
        advertiser.start()
        mine = advertiser.service_name
        deadline = time.monotonic() + 10
        while (mine, ServiceStateChange.Added) not in events and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (mine, ServiceStateChange.Added) in events
        stopped_at = time.monotonic()
        advertiser.stop()
        while (mine, ServiceStateChange.Removed) not in events and time.monotonic() < stopped_at + 5:
            time.sleep(0.05)
        # Goodbye packets, not the 75-minute TTL, tell browsers it is gone.
        assert (mine, ServiceStateChange.Removed) in events, events
        browser.cancel()
    finally:
        zc.close()
    assert find(advertiser.instance_id, timeout=2.0) is None


def test_a_name_already_taken_gets_a_numbered_suffix(tmp_path):
    host = f"twin-{secrets.token_hex(3)}"
    first, second = static_advertiser(tmp_path, host, 1111), static_advertiser(tmp_path, host, 2222)
    try:
        assert first.start() == f"Pennello on {host}"
        time.sleep(1.2)  # mDNS answers a record at most once a second after announcing it
        assert second.start() == f"Pennello on {host}-2"
        seen: set[str] = set()

        def both_seen(service: Service) -> bool:
            seen.add(service.name)
            return {f"Pennello on {host}", f"Pennello on {host}-2"} <= seen

        both = {s.name: s.port for s in browse(6.0, stop_when=both_seen) if host in s.name}
        assert both == {f"Pennello on {host}": 1111, f"Pennello on {host}-2": 2222}
    finally:
        first.stop()
        second.stop()


# --- what is not a pennello daemon -----------------------------------------------------------------

def test_malformed_records_and_other_programs_services_are_ignored(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="pennello.client.discover")
    tag = secrets.token_hex(3)
    good_id = secrets.token_hex(16)
    valid = encode_txt(good_id, "sha256:" + "ab" * 32, ["pennello-tiny"], tls=True, auth_required=True)
    bad: dict[str, dict[str, Any]] = {
        "v2": {**valid, "v": "2"},
        "noversion": {k: v for k, v in valid.items() if k != "v"},
        "badid": {**valid, "id": "not-an-id"},
        "tls-without-fp": {k: v for k, v in valid.items() if k != "fp"},
        "badfp": {**valid, "fp": "sha256:xyz"},
        "badflag": {**valid, "auth": "yes"},
        "notutf8": {**valid, "models": b"\xff\xfe"},
        "empty": {},
        "other-program": {"path": "/", "version": "3.2"},
    }
    address = interface_addresses()[0]
    zc = Zeroconf(interfaces=zeroconf_interfaces(())[0])
    infos = [ServiceInfo(SERVICE_TYPE, f"fake-{tag}-{label}.{SERVICE_TYPE}", port=8420, properties=txt,
                         server=f"fake-{tag}.local.", parsed_addresses=[address])
             for label, txt in bad.items()]
    infos.append(ServiceInfo(SERVICE_TYPE, f"fake-{tag}-good.{SERVICE_TYPE}", port=8420, properties=valid,
                             server=f"fake-{tag}.local.", parsed_addresses=[address]))
    infos.append(ServiceInfo("_http._tcp.local.", f"Pennello on {tag}._http._tcp.local.", port=80,
                             properties={"v": "1"}, server=f"fake-{tag}.local.", parsed_addresses=[address]))
    try:
        for info in infos:  # no probing, and no waiting for the announcements to go out
            asyncio.run_coroutine_threadsafe(zc.async_register_service(info, cooperating_responders=True),
                                             zc.loop).result(5)
        found = [s for s in browse(3.0) if tag in s.name]
    finally:
        zc.unregister_all_services()
        zc.close()
    assert [(s.name, s.id) for s in found] == [(f"fake-{tag}-good", good_id)]
    # Each was resolved and then refused for what is wrong with it, not merely missed.
    ignored = {r.getMessage().split(":")[0].removeprefix("ignoring ").removesuffix("." + SERVICE_TYPE)
               for r in caplog.records if r.getMessage().startswith(f"ignoring fake-{tag}-")}
    assert ignored == {f"fake-{tag}-{label}" for label in bad}


# --- pinned TLS ------------------------------------------------------------------------------------

def test_pinning_accepts_the_right_certificate_and_refuses_any_other(api_engine):  # noqa: F811
    from pennello.client import Client

    requests_seen: list[str] = []
    app = create_app(Config().replace("server", lan=True), api_engine, api_engine.paths)

    def counting(environ: dict[str, Any], start_response: Any) -> Any:
        requests_seen.append(environ["PATH_INFO"])
        return app(environ, start_response)

    files = ensure_certificate(api_engine.paths)
    _, url, stop = start_background_server(counting, "127.0.0.1", 0, tls=files)
    try:
        assert pinned_session(files.fingerprint).get(url + "/api/health", timeout=10).json()["ready"]
        assert Client(url, fingerprint=files.fingerprint).health()["ready"]
        assert requests_seen == ["/api/health", "/api/health"]
        with pytest.raises(TrustError, match="does not match the pinned"):
            pinned_session(WRONG_PIN).get(url + "/api/health", headers={"Authorization": "Bearer secret"},
                                          timeout=10)
        with pytest.raises(TrustError):
            Client(url, token="secret", fingerprint=WRONG_PIN).health()
        with pytest.raises(requests.exceptions.SSLError):  # without a pin: self-signed, refused
            requests.get(url + "/api/health", timeout=10)
        assert requests_seen == ["/api/health", "/api/health"]  # no byte of those requests arrived
        with pytest.raises(ValueError):
            pinned_session("md5:1234")
    finally:
        stop()


# --- the real command ------------------------------------------------------------------------------

def test_serve_lan_is_found_paired_with_used_and_withdrawn(home, tmp_path):
    client_home = get_paths(tmp_path / "client").ensure()
    daemon = ServeProcess(home)
    try:
        service = find(daemon.instance_id, timeout=15.0)
        assert service is not None, daemon.log_text()
        assert service.fingerprint == daemon.fingerprint and service.port == int(daemon.url.rsplit(":", 1)[1])
        listed = run_cli(client_home, "discover", "--timeout", "4")
        assert listed.returncode == 0, listed.stderr
        assert service.name in listed.stdout and daemon.fingerprint in listed.stdout

        code = host_pairing_code(home)
        paired = run_cli(client_home, "pair", service.id, "--code", code, "--as", "test laptop",
                         "--fingerprint", daemon.fingerprint)
        assert paired.returncode == 0, paired.stderr
        assert f"Pinned certificate: {daemon.fingerprint}" in paired.stdout
        out = tmp_path / "pictures"
        made = run_cli(client_home, "generate", "a red kite", "--remote", service.name, "--steps", "2",
                       "--size", "64x64", "--seed", "3", "--out", str(out))
        assert made.returncode == 0, made.stderr + daemon.log_text()
        assert "seed=3" in made.stdout and len(list(out.iterdir())) == 1
        tokens = run_cli(home, "tokens", "list")
        assert "test laptop" in tokens.stdout
        # Nothing the session did needed the network beyond this machine.
        report = run_cli(home, "offline", "status")
        assert "no-network mode: on" in report.stdout and "refused: 0 attempts" in report.stdout, report.stdout
    finally:
        code = daemon.terminate()
    assert code == 0, daemon.log_text()
    assert find(daemon.instance_id, timeout=2.0) is None
