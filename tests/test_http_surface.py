"""The HTTP surface (issue 8): Host and Origin checks, the page secret, scopes, per-device privacy
and prompts out of the logs. Real waitress servers; "remote" callers connect to this machine's
non-loopback address (``lan_address``), so the server sees another device."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from _fixtures_daemon import config_with
from pennello.daemon.auth import TokenStore, hash_token
from pennello.daemon.http.surface import (ENDPOINT_SCOPES, PAGE_HEADER, STATE_CHANGING, HostPolicy,
                                     OriginNotAllowedError, check_origin, host_name,
                                     normalize_origin, origin_allowed, scope_of)

DOC = Path(__file__).resolve().parents[1] / "docs" / "security-scopes.md"
FOREIGN_HOST = "rebind.example"
FOREIGN_ORIGIN = "http://evil.example"
_ARG = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def _kind(response: requests.Response) -> str:
    """The error kind: ``error.type``, or ``error.code`` in the OpenAI routes' shape."""
    error = response.json()["error"]
    return error["code"] if "code" in error else error["type"]


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _pair(url: str, lan: str, name: str) -> dict:
    code = requests.post(f"{url}/api/pair/code").json()["code"]
    response = requests.post(f"{lan}/api/pair", json={"code": code, "name": name})
    assert response.status_code == 201, response.text
    return response.json()


def _admin(url: str, name: str = "admin laptop") -> dict:
    response = requests.post(f"{url}/api/tokens", json={"name": name, "scope": "owner"})
    assert response.status_code == 201, response.text
    return response.json()


# --- the rules, as pure functions ----------------------------------------------------------------

@pytest.fixture
def policy():
    return HostPolicy(allowed=("pennello.home.arpa", "[fd00::5]", "10.9.9.9"), hostname="Studio.lan",
                      mdns_name="pennello-0123456789ab.local.", addresses=lambda: ["192.168.1.20", "fe80::1"])


@pytest.mark.parametrize("host", [
    "localhost", "localhost:8420", "LOCALHOST:1", "127.0.0.1:8420", "127.9.9.9", "[::1]:8420", "[::1]",
    "app.localhost:8420", "studio.lan", "studio", "studio.local:8420", "Studio.Local.",
    "pennello-0123456789ab.local:8420", "192.168.1.20:8420", "[fe80::1]:8420", "[fe80::1%25eth0]:1",
    "pennello.home.arpa:443", "[fd00::5]:8420", "10.9.9.9", "[::ffff:127.0.0.1]:8420"])
def test_hosts_that_name_this_machine_are_allowed(policy, host):
    assert policy.allows(host)


@pytest.mark.parametrize("host", [
    "rebind.example", "rebind.example:8420", "localhost.rebind.example", "studio.lan.evil.example",
    "192.168.1.21:8420", "[fe80::2]:8420", "10.9.9.8", "", "::1", "localhost:notaport",
    "localhost:99999", "[::1", "evil.example@localhost", None])
def test_other_hosts_are_refused(policy, host):
    assert not policy.allows(host)


def test_new_interface_addresses_are_seen():
    addresses = ["192.168.1.20"]
    clock = [0.0]
    policy = HostPolicy(hostname="studio", addresses=lambda: list(addresses), clock=lambda: clock[0])
    assert policy.allows("192.168.1.20") and not policy.allows("192.168.1.30")
    addresses.append("192.168.1.30")  # DHCP gave another address
    clock[0] += 10
    assert policy.allows("192.168.1.30:8420")


def test_host_name_parsing():
    assert host_name("[::1]:8420") == "::1"
    assert host_name("Example.COM.:80") == "example.com"
    assert host_name("a:b") is None


@pytest.mark.parametrize("origin, expected", [
    ("http://127.0.0.1:8420", True), ("HTTP://127.0.0.1:8420", True), ("http://127.0.0.1:8421", False),
    ("https://127.0.0.1:8420", False), ("http://localhost:8420", False), ("null", False),
    ("http://ui.example", True), ("http://ui.example:80", True), ("file://", False), ("", False)])
def test_origin_must_be_ours_or_listed(origin, expected):
    assert origin_allowed(origin, "http", "127.0.0.1:8420", ("http://ui.example",)) is expected


def test_normalize_origin():
    assert normalize_origin("https://[::1]:443") == "https://[::1]"
    assert normalize_origin("http://[::1]:8420") == "http://[::1]:8420"
    assert normalize_origin("javascript:alert(1)") is None


def test_cross_site_fetches_cannot_change_anything():
    headers = {"Sec-Fetch-Site": "cross-site"}
    check_origin("GET", headers, "http", "127.0.0.1:1", ())  # reading is not refused
    for method in STATE_CHANGING:
        with pytest.raises(OriginNotAllowedError):
            check_origin(method, headers, "http", "127.0.0.1:1", ())
    check_origin("POST", {"Sec-Fetch-Site": "cross-site", "Origin": "http://ui.example"}, "http",
                 "127.0.0.1:1", ("http://ui.example",))
    check_origin("POST", {"Sec-Fetch-Site": "same-origin", "Origin": "http://127.0.0.1:1"}, "http",
                 "127.0.0.1:1", ())


def test_unknown_endpoints_need_the_owner_and_unrouted_paths_a_device():
    assert scope_of("tools.some_new_route") == "owner"
    assert scope_of(None) == "device"


# --- the one table: code, app and docs agree -------------------------------------------------------

def _doc_rows() -> set[tuple[str, str, str, str]]:
    rows = set()
    for line in DOC.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`") and cells[3] in ("public", "device", "owner"):
            rows.add((cells[0].strip("`"), cells[1], cells[2].strip("`"), cells[3]))
    return rows


def _app_rows(app) -> set[tuple[str, str, str, str]]:
    return {(rule.endpoint, ", ".join(sorted(rule.methods - {"HEAD", "OPTIONS"})), rule.rule,
             ENDPOINT_SCOPES.get(rule.endpoint, "MISSING")) for rule in app.url_map.iter_rules()}


def test_every_endpoint_is_in_the_table_and_the_doc_matches(api_server):
    api_server()
    app = api_server.app
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}
    assert endpoints - set(ENDPOINT_SCOPES) == set(), "routes missing from surface.ENDPOINT_SCOPES"
    assert set(ENDPOINT_SCOPES) - endpoints == set(), "table entries for routes the app does not have"
    assert _doc_rows() == _app_rows(app), "docs/security-scopes.md's table differs from the code"


# --- every route over real HTTP, as every kind of caller --------------------------------------------

def _routes(app):
    for rule in app.url_map.iter_rules():
        path = _ARG.sub("nothing-here", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield rule.endpoint, method, path, ENDPOINT_SCOPES.get(rule.endpoint, "owner")


def _call(method: str, url: str, headers: dict[str, str] | None = None) -> requests.Response:
    headers = dict(headers or {})
    if method not in STATE_CHANGING:
        return requests.request(method, url, headers=headers, timeout=60)
    # A JSON array is refused by every route that reads a body, so no work is started.
    headers["Content-Type"] = "application/json"
    return requests.request(method, url, data=b"[]", headers=headers, timeout=60)


def test_every_route_as_every_caller(api_server):
    url, lan = api_server(lan=True)
    app = api_server.app
    port = url.rsplit(":", 1)[1]
    device = _bearer(_pair(url, lan, "walker device")["token"])
    admin = _bearer(_admin(url)["token"])
    wrong: list[str] = []

    def expect(ok: bool, who: str, method: str, path: str, response: requests.Response) -> None:
        if not ok:
            wrong.append(f"{who}: {method} {path} -> {response.status_code} {response.text[:120]}")

    for endpoint, method, path, scope in _routes(app):
        anonymous = _call(method, f"{lan}{path}")
        if scope == "public":
            expect(anonymous.status_code not in (401, 403), "unpaired", method, path, anonymous)
        else:
            expect(anonymous.status_code == 401 and _kind(anonymous) == "unauthorized", "unpaired",
                   method, path, anonymous)
        as_device = _call(method, f"{lan}{path}", headers=device)
        if scope == "owner":
            expect(as_device.status_code == 403 and _kind(as_device) == "forbidden", "device", method,
                   path, as_device)
        else:
            expect(as_device.status_code not in (401, 403), "device", method, path, as_device)
        as_admin = _call(method, f"{lan}{path}", headers=admin)
        expect(as_admin.status_code not in (401, 403), "admin", method, path, as_admin)
        for any_method in (method, "HEAD", "OPTIONS"):
            rebound = requests.request(any_method, f"{url}{path}", headers={"Host": f"{FOREIGN_HOST}:{port}"},
                                       timeout=60)
            expect(rebound.status_code == 421, "foreign Host", any_method, path, rebound)
        if method in STATE_CHANGING:
            foreign = _call(method, f"{url}{path}", headers={"Origin": FOREIGN_ORIGIN})
            expect(foreign.status_code == 403 and _kind(foreign) == "origin_not_allowed", "foreign Origin",
                   method, path, foreign)
            cross = _call(method, f"{url}{path}", headers={"Sec-Fetch-Site": "cross-site"})
            expect(cross.status_code == 403 and _kind(cross) == "origin_not_allowed", "cross-site",
                   method, path, cross)
            # The same request as a plain loopback client passes every check.
            plain = _call(method, f"{url}{path}")
            expect(plain.status_code not in (401, 403, 421), "plain loopback", method, path, plain)
    assert not wrong, "\n".join(wrong)


# --- Host over HTTP -------------------------------------------------------------------------------

def test_a_foreign_host_is_refused_with_a_message_that_says_what_to_do(api_server):
    url = api_server()
    port = url.rsplit(":", 1)[1]
    response = requests.get(f"{url}/api/health", headers={"Host": f"{FOREIGN_HOST}:{port}"})
    assert response.status_code == 421
    error = response.json()["error"]
    assert error["type"] == "host_not_allowed" and error["field"] == "Host"
    assert FOREIGN_HOST in error["message"] and "server.allowed_hosts" in error["message"]
    page = requests.get(f"{url}/", headers={"Host": FOREIGN_HOST})
    assert page.status_code == 421 and "pennello-page" not in page.text


def test_this_machines_names_and_listed_hosts_are_served(api_server, api_engine):
    import socket

    from pennello.daemon.net.mdns import instance_id, srv_target

    url = api_server(allowed_hosts=("pennello.home.arpa",))
    port = url.rsplit(":", 1)[1]
    short = socket.gethostname().split(".")[0]
    mdns = srv_target(instance_id(api_engine.paths)).rstrip(".")
    for host in ("localhost", "127.0.0.1", "[::1]", "pennello.localhost", short, f"{short}.local", mdns,
                 "pennello.home.arpa"):
        response = requests.get(f"{url}/api/health", headers={"Host": f"{host}:{port}"})
        assert response.status_code == 200, (host, response.text)
    assert requests.get(f"{url}/api/health", headers={"Host": "pennello.home.arpa.evil.example"}).status_code == 421


def test_the_lan_address_is_ours(api_server):
    _, lan = api_server(lan=True)
    assert requests.get(f"{lan}/api/health").status_code == 200  # Host: <our address>:<port>


def test_allowed_hosts_can_come_from_the_config_file(tmp_path):
    from pennello.config import load_config

    path = tmp_path / "config.toml"
    path.write_text('[server]\nallowed_hosts = ["pennello.home.arpa"]\n')
    assert load_config(path, environ={}).server.allowed_hosts == ("pennello.home.arpa",)
    assert load_config(None, environ={"PENNELLO_SERVER_ALLOWED_HOSTS": "a.lan, b.lan"}).server.allowed_hosts == (
        "a.lan", "b.lan")


# --- Origin and the page secret over HTTP -------------------------------------------------------------

def _page_token(url: str) -> str:
    match = re.search(r'<meta name="pennello-page" content="([^"]*)">', requests.get(f"{url}/").text)
    assert match is not None
    return match.group(1)


def test_the_page_carries_a_per_run_secret_only_on_this_machine(api_server):
    url, lan = api_server(lan=True)
    token = _page_token(url)
    assert len(token) >= 40
    assert _page_token(url) == token  # the same for the whole run...
    assert _page_token(api_server()) != token  # ...and another for the next one
    assert _page_token(lan) == ""  # other devices act with their own tokens
    page = requests.get(f"{url}/")
    assert page.headers["Cache-Control"] == "no-store"


def test_no_cors_headers_on_the_page_even_for_listed_origins(api_server):
    url = api_server(cors_origins=("http://ui.example",))
    page = requests.get(f"{url}/", headers={"Origin": "http://ui.example"})
    assert "Access-Control-Allow-Origin" not in page.headers
    api = requests.get(f"{url}/api/health", headers={"Origin": "http://ui.example"})
    assert api.headers["Access-Control-Allow-Origin"] == "http://ui.example"


def test_a_browser_on_loopback_needs_the_page_secret_to_change_things(api_server):
    url = api_server()
    own = {"Origin": url, "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}
    refused = requests.post(f"{url}/api/pair/code", headers=own)
    assert refused.status_code == 403 and _kind(refused) == "page_token_required"
    assert PAGE_HEADER in refused.json()["error"]["message"]
    wrong = requests.post(f"{url}/api/pair/code", headers={**own, PAGE_HEADER: "guess"})
    assert wrong.status_code == 403
    assert requests.get(f"{url}/api/pair/status").json()["code_expires_in_s"] is None  # nothing made
    good = requests.post(f"{url}/api/pair/code", headers={**own, PAGE_HEADER: _page_token(url)})
    assert good.status_code == 201
    # Reading stays open to the browser (another origin cannot read the answer without CORS).
    assert requests.get(f"{url}/api/tokens", headers=own).status_code == 200
    # Only Sec-Fetch-Mode, as a navigation or form post sends it, also counts as a browser.
    assert requests.post(f"{url}/api/pair/code", headers={"Sec-Fetch-Mode": "navigate"}).status_code == 403
    # Plain clients (curl, the CLI, the tray) keep working without anything.
    assert requests.post(f"{url}/api/pair/code").status_code == 201


def test_a_foreign_origin_is_refused_before_anything_happens(api_server):
    url = api_server()
    for headers in ({"Origin": FOREIGN_ORIGIN}, {"Origin": "null"},
                    {"Origin": url.replace("127.0.0.1", "localhost")},
                    {"Sec-Fetch-Site": "cross-site"}):
        response = requests.post(f"{url}/api/pair/code", headers={**headers, PAGE_HEADER: _page_token(url)})
        assert response.status_code == 403 and _kind(response) == "origin_not_allowed", headers
        assert response.json()["error"]["field"] == "Origin"
    assert requests.get(f"{url}/api/pair/status").json()["code_expires_in_s"] is None
    job = requests.post(f"{url}/api/generate", json={"prompt": "x"}, headers={"Origin": FOREIGN_ORIGIN})
    assert job.status_code == 403
    # Reads with a foreign Origin are answered (without CORS headers, so a page cannot read them).
    read = requests.get(f"{url}/api/health", headers={"Origin": FOREIGN_ORIGIN})
    assert read.status_code == 200 and "Access-Control-Allow-Origin" not in read.headers


def test_a_listed_origin_may_call_with_a_token(api_server):
    url, lan = api_server(lan=True, cors_origins=("http://ui.example",))
    device = _pair(url, lan, "ui")
    headers = {"Origin": "http://ui.example", "Sec-Fetch-Site": "cross-site", **_bearer(device["token"])}
    response = requests.post(f"{url}/api/generate", json={"prompt": "x", "steps": 1}, headers=headers)
    assert response.status_code == 202, response.text
    assert response.headers["Access-Control-Allow-Origin"] == "http://ui.example"
    # On loopback, such a page is a browser: without a token it is not the owner.
    bare = requests.post(f"{url}/api/generate", json={"prompt": "x"},
                         headers={"Origin": "http://ui.example", "Sec-Fetch-Site": "cross-site"})
    assert bare.status_code == 403 and _kind(bare) == "page_token_required"


def test_plain_clients_keep_working_on_loopback(api_server):
    from pennello.client import Client

    url = api_server()
    client = Client(url)
    assert client.pair_code()["code"]
    assert requests.delete(f"{url}/api/tokens/nothing").status_code == 404


# --- scopes ---------------------------------------------------------------------------------------

def test_old_token_records_read_as_device_scope(tmp_path):
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"version": 1, "tokens": [
        {"id": "0a0b0c0d", "name": "old phone", "sha256": hash_token("old-token"), "created": 1.0,
         "last_used": None}]}))
    store = TokenStore(path)
    assert store.verify("old-token").scope == "device"
    assert store.list()[0].public()["scope"] == "device"


def test_an_unknown_scope_in_the_file_is_refused(tmp_path):
    from pennello.errors import StoreError

    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"version": 1, "tokens": [
        {"id": "0a0b0c0d", "name": "x", "sha256": hash_token("t"), "created": 1.0, "scope": "root"}]}))
    with pytest.raises(StoreError, match="scope"):
        TokenStore(path).verify("t")


def test_an_admin_token_is_the_owner_from_another_device(api_server):
    url, lan = api_server(lan=True)
    device = _pair(url, lan, "phone")
    assert device["scope"] == "device"
    admin = _admin(url)
    assert admin["scope"] == "owner"
    headers = _bearer(admin["token"])
    status = requests.get(f"{lan}/api/pair/status", headers=headers).json()
    assert status["owner"] is True and status["scope"] == "owner" and status["device"]["id"] == admin["id"]
    listed = requests.get(f"{lan}/api/tokens", headers=headers).json()["tokens"]
    assert {t["id"]: t["scope"] for t in listed}[device["id"]] == "device"
    assert requests.post(f"{lan}/api/pair/code", headers=headers).status_code == 201
    # A device may not issue tokens, least of all owner ones; the scope is checked.
    refused = requests.post(f"{lan}/api/tokens", json={"name": "me", "scope": "owner"},
                            headers=_bearer(device["token"]))
    assert refused.status_code == 403
    bad = requests.post(f"{url}/api/tokens", json={"name": "x", "scope": "root"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "scope"
    assert requests.delete(f"{lan}/api/tokens/{device['id']}", headers=headers).status_code == 200
    assert requests.get(f"{lan}/api/jobs", headers=_bearer(device["token"])).status_code == 401


def test_pennello_tokens_issue_admin(home):
    from pennello.daemon.cli.auth import tokens

    runner = CliRunner()
    result = runner.invoke(tokens, ["issue", "--admin", "laptop admin"])
    assert result.exit_code == 0, result.output
    token = result.output.splitlines()[1].strip()
    record = TokenStore(home.state_dir / "tokens.json").verify(token)
    assert record.scope == "owner" and record.name == "laptop admin"
    plain = runner.invoke(tokens, ["issue", "render box"])
    assert TokenStore(home.state_dir / "tokens.json").verify(plain.output.splitlines()[1].strip()).scope == "device"
    listed = runner.invoke(tokens, ["list"]).output
    assert "SCOPE" in listed and "owner" in listed and "device" in listed
    assert runner.invoke(tokens, ["issue", ""]).exit_code != 0


# --- per-device privacy ---------------------------------------------------------------------------

def test_two_devices_see_only_their_own_work(api_server, api_engine):
    url, lan = api_server(lan=True)
    a = _bearer(_pair(url, lan, "device a")["token"])
    b = _bearer(_pair(url, lan, "device b")["token"])
    secret = "PRIVATE-A violet heron"
    job = requests.post(f"{lan}/api/generate", json={"prompt": secret, "negative_prompt": "PRIVATE-A-NEG",
                                                     "steps": 2, "wait": True}, headers=a).json()
    assert job["status"] == "done"
    image_id = job["images"][0]["id"]

    for path in (f"/api/jobs/{job['id']}", f"/api/jobs/{job['id']}/events", f"/api/images/{image_id}"):
        assert requests.get(f"{lan}{path}", headers=b).status_code == 404, path
        assert requests.get(f"{lan}{path}", headers=a).status_code == 200, path
    assert requests.delete(f"{lan}/api/jobs/{job['id']}", headers=b).status_code == 404
    for path in ("/api/jobs", "/api/outputs?limit=500", "/api/progress", "/api/health", "/api/ps",
                 "/sdapi/v1/progress", "/api/pair/status", "/v1/models", "/api/models"):
        text = requests.get(f"{lan}{path}", headers=b).text
        assert secret not in text and job["id"] not in text and image_id not in text, path
    # B cannot edit, upscale or check A's picture by its id.
    edit = requests.post(f"{lan}/api/edit", files={"prompt": (None, "x"), "image_id": (None, image_id)},
                         headers=b)
    assert edit.status_code == 404, edit.text
    upscale = requests.post(f"{lan}/api/upscale", files={"scale": (None, "2"), "image_id": (None, image_id)},
                            headers=b)
    assert upscale.status_code == 404, upscale.text

    # B's batch is B's: A does not see its jobs or pictures.
    batch = requests.post(f"{lan}/api/batch", json={"subject": "PRIVATE-B lantern", "styles": 1, "steps": 2},
                          headers=b)
    assert batch.status_code == 200, batch.text
    b_job = batch.json()["styles"][0]["job"]["id"]
    assert requests.get(f"{lan}/api/jobs/{b_job}", headers=a).status_code == 404
    for path in ("/api/jobs", "/api/outputs?limit=500"):
        assert "PRIVATE-B" not in requests.get(f"{lan}{path}", headers=a).text, path

    # The owner (loopback) and an admin token see both.
    admin = _bearer(_admin(url)["token"])
    for base, headers in ((url, {}), (lan, admin)):
        jobs = requests.get(f"{base}/api/jobs", headers=headers).json()["jobs"]
        assert {job["id"], b_job} <= {j["id"] for j in jobs}
        assert requests.get(f"{base}/api/images/{image_id}", headers=headers).status_code == 200


def test_progress_shows_a_device_only_its_own_jobs(api_server, api_engine):
    url, lan = api_server(lan=True)
    a = _bearer(_pair(url, lan, "device a")["token"])
    b = _bearer(_pair(url, lan, "device b")["token"])
    slow = requests.post(f"{lan}/api/generate", json={"prompt": "PRIVATE-A slow", "steps": 100}, headers=a).json()
    try:
        deadline = time.monotonic() + 60
        while slow["id"] not in requests.get(f"{lan}/api/progress", headers=a).json()["jobs"]:
            assert time.monotonic() < deadline, "the slow job never showed as running"
            time.sleep(0.05)
        seen_by_b = requests.get(f"{lan}/api/progress", headers=b).json()
        assert seen_by_b["state"] == "running" and seen_by_b["jobs"] == []
        assert slow["id"] in requests.get(f"{url}/api/progress").json()["jobs"]  # the owner sees it
        a1111 = requests.get(f"{lan}/sdapi/v1/progress", headers=b)
        assert a1111.status_code == 200 and a1111.json()["state"]["job_timestamp"] == "0"
        events = requests.get(f"{lan}/api/jobs/{slow['id']}/events", headers=b, timeout=10)
        assert events.status_code == 404
    finally:
        requests.delete(f"{url}/api/jobs/{slow['id']}")


# --- prompts out of the logs ----------------------------------------------------------------------

PROMPT, NEGATIVE = "zebra-quokka-7731", "blurry-marmot-4419"  # distinctive; one suffix per route
ROUTES_WITH_NEGATIVE = ("generate", "a1111", "edit", "batch")


def _exercise(url: str) -> None:
    """Every kind of request that carries a prompt: generate, OpenAI, A1111, edit, batch."""
    job = requests.post(f"{url}/api/generate", json={"prompt": f"{PROMPT}-generate", "steps": 2, "wait": True,
                                                     "negative_prompt": f"{NEGATIVE}-generate"})
    assert job.status_code == 200, job.text
    image_id = job.json()["images"][0]["id"]
    openai = requests.post(f"{url}/v1/images/generations", json={"prompt": f"{PROMPT}-openai", "size": "64x64"})
    assert openai.status_code == 200, openai.text
    a1111 = requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": f"{PROMPT}-a1111", "steps": 2,
                                                          "negative_prompt": f"{NEGATIVE}-a1111"})
    assert a1111.status_code == 200, a1111.text
    edit = requests.post(f"{url}/api/edit", files={
        "prompt": (None, f"{PROMPT}-edit"), "negative_prompt": (None, f"{NEGATIVE}-edit"),
        "image_id": (None, image_id), "steps": (None, "2")})
    assert edit.status_code == 200, edit.text
    batch = requests.post(f"{url}/api/batch", json={"subject": f"{PROMPT}-batch", "styles": 1, "steps": 2,
                                                    "negative_prompt": f"{NEGATIVE}-batch"})
    assert batch.status_code == 200, batch.text
    # A refused request carrying a prompt must not log it either.
    refused = requests.post(f"{url}/api/generate", json={"prompt": f"{PROMPT}-refused", "steps": 10**6})
    assert refused.status_code == 400


def _logged(caplog) -> str:
    return caplog.text + "\n".join(str(r.args) for r in caplog.records)


def test_prompts_never_reach_the_logs_by_default(api_server, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, every level, from every thread of the server
    url = api_server()
    _exercise(url)
    text = _logged(caplog)
    assert text.count("queued") >= 5  # the queue lines were logged, without the prompts
    assert "zebra-quokka" not in text and "blurry-marmot" not in text


def test_prompts_are_logged_when_configured(make_engine, make_server, caplog):
    caplog.set_level(logging.DEBUG)
    config = config_with(engine={"log_prompts": True})
    server = make_server(config, make_engine(config))
    _exercise(server.url)
    text = _logged(caplog)
    for route in ("generate", "openai", "a1111", "edit", "batch"):
        assert f"{PROMPT}-{route}" in text, route
    for route in ROUTES_WITH_NEGATIVE:
        assert f"{NEGATIVE}-{route}" in text, route
