"""Pairing and tokens over HTTP, on a real server with a real non-loopback client address on this
machine, and through the ``pennello pair`` / ``tokens`` commands. The pure logic (codes, rate
limits, the token store) is tests/test_auth.py."""

from __future__ import annotations

import json

import requests

from pennello.daemon.auth import MAX_FAILURES, Pairing, TokenStore
from pennello.daemon.http.routes.auth import COOKIE
from pennello.errors import NotFoundError
from test_auth import FakeClock


# --- over HTTP: a real server, a real non-loopback client ------------------------------------

def _pair(owner_url: str, device_url: str, name: str = "tablet") -> dict:
    code = requests.post(f"{owner_url}/api/pair/code").json()["code"]
    response = requests.post(f"{device_url}/api/pair", json={"code": code, "name": name})
    assert response.status_code == 201, response.text
    return response.json()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_loopback_needs_no_token_and_is_the_owner(api_server):
    url = api_server()
    assert requests.get(f"{url}/api/jobs").status_code == 200
    status = requests.get(f"{url}/api/pair/status").json()
    assert status["owner"] is True and status["paired"] is True and status["lan"] is False


def test_lan_caller_needs_a_token_except_for_public_routes(api_server):
    _, lan = api_server(lan=True)
    response = requests.get(f"{lan}/api/jobs")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"]["type"] == "unauthorized"
    assert "pennello pair" in response.json()["error"]["message"]
    assert requests.get(f"{lan}/api/jobs", headers=_bearer("made-up")).status_code == 401
    assert requests.get(f"{lan}/api/health").json()["ready"] is True
    assert requests.get(f"{lan}/api/pair/status").json() == {
        "owner": False, "paired": False, "device": None, "lan": True, "scope": "anonymous",
        "code_expires_in_s": None}
    assert requests.get(f"{lan}/").status_code == 200  # the page itself, to pair from
    # Unknown routes answer 401 too: an unpaired caller learns nothing about what exists.
    assert requests.get(f"{lan}/api/no-such-route").status_code == 401


def test_pairing_over_the_lan_gives_a_working_token_filed_under_the_device(api_server, api_engine):
    url, lan = api_server(lan=True)
    paired = _pair(url, lan, "kitchen tablet")
    assert paired["name"] == "kitchen tablet" and paired["last_used"] is None
    headers = _bearer(paired["token"])
    status = requests.get(f"{lan}/api/pair/status", headers=headers).json()
    assert status["paired"] and not status["owner"] and status["device"]["id"] == paired["id"]

    job = requests.post(f"{lan}/api/generate", json={"prompt": "a kite", "wait": True}, headers=headers).json()
    assert job["status"] == "done"
    assert api_engine.get_job(job["id"]).request.owner == f"device:{paired['id']}"
    image = requests.get(f"{lan}{job['images'][0]['url']}", headers=headers)
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")

    # Another device sees neither the job nor the picture; the owner sees both.
    other = _bearer(_pair(url, lan, "laptop")["token"])
    assert requests.get(f"{lan}/api/jobs/{job['id']}", headers=other).status_code == 404
    assert requests.get(f"{lan}{job['images'][0]['url']}", headers=other).status_code == 404
    assert job["id"] not in [j["id"] for j in requests.get(f"{lan}/api/jobs", headers=other).json()["jobs"]]
    assert requests.get(f"{url}/api/jobs/{job['id']}").status_code == 200


def test_devices_cannot_use_owner_routes(api_server):
    url, lan = api_server(lan=True)
    headers = _bearer(_pair(url, lan)["token"])
    for method, path in [("post", "/api/pair/code"), ("get", "/api/tokens"), ("get", "/api/pair/qr.png"),
                         ("delete", "/api/tokens/abc"), ("post", "/api/models/pennello-tiny/unload")]:
        response = requests.request(method, f"{lan}{path}", headers=headers)
        assert response.status_code == 403, path
        assert response.json()["error"]["type"] == "forbidden"


def test_a_node_pairs_gets_the_cluster_token_and_is_shut_out_when_revoked(api_server, api_engine):
    from pennello import __version__
    from pennello.daemon.cluster.ray_env import TOKEN_FILE, new_token

    url, lan = api_server(lan=True)
    code = requests.post(f"{url}/api/pair/code", json={"scope": "node"}).json()["code"]
    node = {"name": "node 192.0.2.8", "version": __version__, "models": []}
    token_file = api_engine.paths.state_dir / TOKEN_FILE
    token_file.unlink(missing_ok=True)
    missing = requests.post(f"{lan}/api/cluster/join", json={**node, "code": code})
    assert missing.status_code == 404 and "pennello node --head" in missing.json()["error"]["message"]
    new_token(token_file)
    older = requests.post(f"{lan}/api/cluster/join", json={**node, "code": code, "version": "0.0.1"})
    assert older.status_code == 409, older.text
    assert f"runs pennello 0.0.1 and the front {__version__}" in older.json()["error"]["message"]
    malformed = requests.post(f"{lan}/api/cluster/join", json={**node, "code": code, "models": [7]})
    assert malformed.status_code == 400 and malformed.json()["error"]["field"] == "models", malformed.text
    tiny = requests.get(f"{url}/api/models").json()["models"][0]
    other = f"pennello:{tiny['name']}@{tiny['version'] + 1}:0123456789abcdef"
    catalog = requests.post(f"{lan}/api/cluster/join", json={**node, "code": code, "models": [other]})
    assert catalog.status_code == 409 and f"this node holds {other} and the front pennello:{tiny['name']}@" \
        in catalog.json()["error"]["message"]
    as_device = requests.post(f"{lan}/api/pair", json={"code": code, "name": "phone"})  # still valid after all
    assert as_device.status_code == 401 and "pairs a node" in as_device.json()["error"]["message"]

    joined = requests.post(f"{lan}/api/cluster/join", json={**node, "code": code})
    assert joined.status_code == 201, joined.text
    assert joined.json()["cluster_token"] == token_file.read_text().strip()
    headers = _bearer(joined.json()["node_token"])
    listed = {t["id"]: t for t in requests.get(f"{url}/api/tokens").json()["tokens"]}
    assert listed[joined.json()["id"]]["scope"] == "node"
    assert requests.get(f"{lan}/api/jobs", headers=headers).status_code == 403  # joining is all it may do
    again = requests.post(f"{lan}/api/cluster/join", json=node, headers=headers)
    assert again.status_code == 200 and again.json()["cluster_token"] == joined.json()["cluster_token"]
    assert requests.delete(f"{url}/api/tokens/{joined.json()['id']}").status_code == 200
    revoked = requests.post(f"{lan}/api/cluster/join", json=node, headers=headers)
    assert revoked.status_code == 401 and "pairing was revoked" in revoked.json()["error"]["message"]


def test_wrong_reused_and_rate_limited_codes_over_http(api_server):
    url, lan = api_server(lan=True)
    code = requests.post(f"{url}/api/pair/code").json()["code"]
    wrong = requests.post(f"{lan}/api/pair", json={"code": "ZZZZZZZZ", "name": "x"})
    assert wrong.status_code == 401 and wrong.json()["error"]["field"] == "code"
    assert requests.post(f"{lan}/api/pair", json={"code": code, "name": "x"}).status_code == 201
    reused = requests.post(f"{lan}/api/pair", json={"code": code, "name": "y"})
    assert reused.status_code == 401 and "already used" in reused.json()["error"]["message"]
    for _ in range(MAX_FAILURES - 2):
        assert requests.post(f"{lan}/api/pair", json={"code": "ZZZZZZZZ", "name": "x"}).status_code == 401
    fresh = requests.post(f"{url}/api/pair/code").json()["code"]
    limited = requests.post(f"{lan}/api/pair", json={"code": fresh, "name": "x"})
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert "too many failed pairing attempts" in limited.json()["error"]["message"]


def test_expired_code_over_http(api_server, api_engine):
    url, lan = api_server(lan=True)
    clock = FakeClock()
    store = TokenStore(api_engine.paths.state_dir / "tokens.json")
    api_server.app.extensions["pennello_auth"] = Pairing(store, clock=clock)
    code = requests.post(f"{url}/api/pair/code").json()["code"]
    clock.now += 301
    response = requests.post(f"{lan}/api/pair", json={"code": code, "name": "x"})
    assert response.status_code == 401 and "expired" in response.json()["error"]["message"]


def test_revoked_token_is_refused_at_once(api_server, api_engine):
    url, lan = api_server(lan=True)
    paired = _pair(url, lan)
    headers = _bearer(paired["token"])
    assert requests.get(f"{lan}/api/jobs", headers=headers).status_code == 200
    listed = requests.get(f"{url}/api/tokens").json()["tokens"]
    mine = next(t for t in listed if t["id"] == paired["id"])
    assert mine["last_used"] is not None and "sha256" not in mine and "token" not in mine
    revoked = requests.delete(f"{url}/api/tokens/{paired['id']}")
    assert revoked.json()["revoked"]["id"] == paired["id"]
    assert requests.get(f"{lan}/api/jobs", headers=headers).status_code == 401
    assert requests.delete(f"{url}/api/tokens/{paired['id']}").status_code == 404
    assert paired["token"] not in (api_engine.paths.state_dir / "tokens.json").read_text()


def test_pairing_can_set_a_cookie_for_the_web_page(api_server):
    url, lan = api_server(lan=True)
    code = requests.post(f"{url}/api/pair/code").json()["code"]
    browser = requests.Session()
    response = browser.post(f"{lan}/api/pair", json={"code": code, "name": "browser", "cookie": True})
    cookie = response.headers["Set-Cookie"]
    assert COOKIE in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert browser.get(f"{lan}/api/outputs").status_code == 200
    assert browser.get(f"{lan}/api/pair/status").json()["device"]["name"] == "browser"


def test_qr_code_png_for_the_current_code(api_server):
    import io

    from PIL import Image

    url = api_server()
    assert requests.get(f"{url}/api/pair/qr.png").status_code == 404
    offer = requests.post(f"{url}/api/pair/code").json()
    assert offer["pair_url"].endswith(f"/?pair={offer['code']}")
    assert offer["qr_png_url"] == "/api/pair/qr.png"
    response = requests.get(f"{url}/api/pair/qr.png")
    assert response.headers["Content-Type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.width == image.height >= 21  # the smallest QR code is 21 modules
    assert sorted(c for _, c in image.convert("L").getcolors()) == [0, 255]


def test_cors_only_for_listed_origins(api_server):
    closed = api_server()
    assert "Access-Control-Allow-Origin" not in requests.get(
        f"{closed}/api/health", headers={"Origin": "http://app.example"}).headers
    opened = api_server(cors_origins=("http://app.example",))
    allowed = requests.get(f"{opened}/api/health", headers={"Origin": "http://app.example"}).headers
    assert allowed["Access-Control-Allow-Origin"] == "http://app.example"
    assert "Authorization" in allowed["Access-Control-Allow-Headers"]
    preflight = requests.options(f"{opened}/api/generate", headers={
        "Origin": "http://app.example", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 200 and preflight.headers["Access-Control-Allow-Origin"] == "http://app.example"
    other = requests.get(f"{opened}/api/health", headers={"Origin": "http://evil.example"}).headers
    assert "Access-Control-Allow-Origin" not in other


# --- the commands -------------------------------------------------------------------------------

def test_pennello_pair_shows_a_code_that_works(api_server, api_engine, monkeypatch):
    from click.testing import CliRunner

    from pennello.daemon.cli.auth import pair

    url, lan = api_server(lan=True)
    monkeypatch.setenv("PENNELLO_HOME", str(api_engine.paths.data_dir.parent))
    (api_engine.paths.runtime_dir / "daemon.json").write_text(json.dumps({"pid": 1, "url": url}))
    try:
        result = CliRunner().invoke(pair, [])
    finally:
        (api_engine.paths.runtime_dir / "daemon.json").unlink()
    assert result.exit_code == 0, result.output
    code = result.output.split("Pairing code: ")[1].split()[0]
    assert f"/?pair={code}" in result.output and f"{url}/api/pair/qr.png" in result.output
    assert "█" in result.output or "▀" in result.output  # the QR code, drawn in the terminal
    response = requests.post(f"{lan}/api/pair", json={"code": code, "name": "from the cli"})
    assert response.status_code == 201


def test_pennello_pair_without_a_daemon_says_so(home):
    from click.testing import CliRunner

    from pennello.daemon.cli.auth import pair

    result = CliRunner().invoke(pair, [])
    assert result.exit_code != 0 and "not running" in str(result.exception)


def test_pennello_tokens_list_and_revoke(home):
    from click.testing import CliRunner

    from pennello.daemon.cli.auth import tokens

    store = TokenStore(home.state_dir / "tokens.json")
    token, record = store.issue("garden pi")
    runner = CliRunner()
    listed = runner.invoke(tokens, ["list"])
    assert listed.exit_code == 0 and record.id in listed.output and "garden pi" in listed.output
    assert token not in listed.output
    as_json = json.loads(runner.invoke(tokens, ["list", "--json"]).output)
    assert as_json == [record.public()]
    revoked = runner.invoke(tokens, ["revoke", record.id])
    assert revoked.exit_code == 0 and "Revoked" in revoked.output
    assert store.verify(token) is None
    again = runner.invoke(tokens, ["revoke", record.id])
    assert again.exit_code != 0 and isinstance(again.exception, NotFoundError)
    assert "No devices are paired" in runner.invoke(tokens, ["list"]).output
