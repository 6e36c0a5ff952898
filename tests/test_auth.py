"""Pairing and tokens: the pure logic, then the access check on a real server, including a real
non-loopback client address on this machine."""

from __future__ import annotations

import json
import threading

import pytest
import requests

from pennello.daemon.auth import (CODE_ALPHABET, CODE_LENGTH, MAX_CODE_GUESSES, MAX_FAILURES, Pairing,
                                  RateLimiter, TokenStore, client_key, hash_token, is_loopback,
                                  needs_token, normalize_code)
from pennello.errors import AuthError, BusyError, NotFoundError, RequestError, StoreError


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def store(tmp_path, clock):
    return TokenStore(tmp_path / "state" / "tokens.json", clock=clock)


@pytest.fixture
def pairing(store, clock):
    return Pairing(store, clock=clock)


# --- the access decision ---------------------------------------------------------------------

@pytest.mark.parametrize("addr, needed", [
    ("127.0.0.1", False), ("127.8.9.10", False), ("::1", False), ("::ffff:127.0.0.1", False),
    ("192.168.1.20", True), ("10.0.0.5", True), ("::ffff:192.168.1.20", True), ("fe80::1%eth0", True),
    ("0.0.0.0", True), ("", True), (None, True), ("localhost", True), ("not an address", True)])
def test_only_loopback_goes_without_a_token_and_only_when_trusted(addr, needed):
    assert needs_token(addr, trust_loopback=True) is needed
    assert needs_token(addr) is True  # by default loopback is no credential (a shared computer)
    assert is_loopback(addr) is not needed


# --- codes -------------------------------------------------------------------------------------

def test_codes_are_short_unambiguous_and_random(pairing):
    codes = {pairing.new_code().code for _ in range(200)}
    assert len(codes) == 200
    for code in codes:
        assert len(code) == CODE_LENGTH and set(code) <= set(CODE_ALPHABET)
    assert not set("0O1IL") & set(CODE_ALPHABET)


def test_a_code_buys_one_token_once(pairing, store):
    offer = pairing.new_code()
    token, record = pairing.redeem(offer.code.lower()[:4] + "-" + offer.code[4:], "phone", "192.0.2.7")
    assert store.verify(token).id == record.id
    with pytest.raises(AuthError, match="wrong or already used"):
        pairing.redeem(offer.code, "phone again", "192.0.2.7")
    assert [r.name for r in store.list()] == ["phone"]


def test_a_node_code_buys_only_a_node_token_and_survives_a_device_trying_it(pairing, store):
    offer = pairing.new_code("node")
    with pytest.raises(AuthError, match="pairs a node of the cluster"):
        pairing.redeem(offer.code, "phone", "192.0.2.7")
    token, record = pairing.redeem(offer.code, "node 192.0.2.8", "192.0.2.8", scope="node")
    assert store.verify(token).scope == "node" == record.scope
    device_code = pairing.new_code()
    with pytest.raises(AuthError, match="pairs a device, not a node"):
        pairing.redeem(device_code.code, "node 192.0.2.9", "192.0.2.9", scope="node")


def test_wrong_code_is_refused_and_the_right_one_still_works(pairing):
    offer = pairing.new_code()
    wrong = "".join(CODE_ALPHABET[(CODE_ALPHABET.index(c) + 1) % len(CODE_ALPHABET)] for c in offer.code)
    with pytest.raises(AuthError) as e:
        pairing.redeem(wrong, "tablet", "192.0.2.7")
    assert e.value.field == "code" and e.value.http_status == 401
    token, _ = pairing.redeem(offer.code, "tablet", "192.0.2.7")
    assert token


def test_expired_code_is_refused_and_spent(pairing, clock):
    offer = pairing.new_code()
    assert pairing.active_code().code == offer.code
    clock.now += 299
    assert pairing.active_code().expires_in_s == pytest.approx(1.0)
    clock.now += 2
    assert pairing.active_code() is None
    with pytest.raises(AuthError, match="expired"):
        pairing.redeem(offer.code, "tablet", "192.0.2.7")
    with pytest.raises(AuthError, match="wrong or already used"):
        pairing.redeem(offer.code, "tablet", "192.0.2.7")


def test_a_new_code_replaces_the_old_one(pairing):
    first = pairing.new_code()
    pairing.new_code()
    with pytest.raises(AuthError):
        pairing.redeem(first.code, "tablet", "192.0.2.7")


@pytest.mark.parametrize("code, name, field", [
    ("", "tablet", "code"), (None, "tablet", "code"), ("ABCDEFGH", "", "name"),
    ("ABCDEFGH", "x" * 65, "name"), ("ABCDEFGH", "bad\nname", "name"), ("ABCDEFGH", 7, "name")])
def test_malformed_pairing_requests_name_the_field(pairing, code, name, field):
    pairing.new_code()
    with pytest.raises(RequestError) as e:
        pairing.redeem(code, name, "192.0.2.7")
    assert e.value.field == field and type(e.value) is RequestError


def test_normalize_code_ignores_case_and_separators():
    assert normalize_code(" k7m2-qx9p ") == "K7M2QX9P"


# --- rate limiting -----------------------------------------------------------------------------

def test_failures_are_rate_limited_per_client_then_recover(pairing, clock):
    offer = pairing.new_code()
    for _ in range(MAX_FAILURES):
        with pytest.raises(AuthError):
            pairing.redeem("WRONGWRONG", "x", "192.0.2.7")
    with pytest.raises(BusyError) as e:
        pairing.redeem(offer.code, "x", "192.0.2.7")  # even the right code: nothing is checked
    assert e.value.http_status == 429 and 1 <= e.value.retry_after <= 60
    clock.now += 61
    token, _ = pairing.redeem(offer.code, "x", "192.0.2.7")
    assert token


def test_many_addresses_retire_the_code_instead_of_locking_everyone_out(pairing, clock):
    """There was a shared budget (5 failures from anyone locked all out); now each address has its
    own, and a code retires after MAX_CODE_GUESSES wrong guesses from all addresses together."""
    offer = pairing.new_code()
    for i in range(MAX_CODE_GUESSES):
        with pytest.raises(AuthError):
            pairing.redeem("WRONGWRONG", "x", f"10.0.0.{i}")
    assert pairing.active_code() is None
    with pytest.raises(AuthError, match="already used"):
        pairing.redeem(offer.code, "x", "10.0.0.99")  # a new address, not refused, but the code is gone
    token, _ = pairing.redeem(pairing.new_code().code, "x", "10.0.0.98")
    assert token


def test_the_per_address_limit_counts_an_ipv6_slash_64_as_one_client(clock):
    limiter = RateLimiter(limit=5, window_s=60, clock=clock)
    for i in range(5):
        key = client_key(f"2001:db8:0:1::{i + 1}")
        limiter.check(key)
        limiter.fail(key)
    with pytest.raises(BusyError) as e:
        limiter.check(client_key("2001:db8:0:1::99"))
    assert e.value.retry_after == 60
    limiter.check(client_key("2001:db8:0:2::1"))  # another network is not held back
    limiter.check(client_key("::ffff:10.0.0.1"))
    assert client_key("::ffff:10.0.0.1") == "10.0.0.1"
    clock.now += 60
    limiter.check(client_key("2001:db8:0:1::99"))


# --- the token store ---------------------------------------------------------------------------

def test_tokens_are_hashed_at_rest_and_the_file_is_private(pairing, store):
    token, record = pairing.redeem(pairing.new_code().code, "laptop", "192.0.2.7")
    text = store.path.read_text()
    assert token not in text
    assert hash_token(token) in text
    assert json.loads(text)["tokens"][0]["name"] == "laptop"
    assert store.path.stat().st_mode & 0o077 == 0
    assert len(token) >= 43  # 32 random bytes, base64url


def test_revoked_token_stops_working_even_from_another_process_view(pairing, store, tmp_path, clock):
    token, record = pairing.redeem(pairing.new_code().code, "laptop", "192.0.2.7")
    cli_view = TokenStore(store.path, clock=clock)  # what `pennello tokens revoke` opens
    assert store.verify(token) is not None
    cli_view.revoke(record.id)
    assert store.verify(token) is None
    with pytest.raises(NotFoundError):
        cli_view.revoke(record.id)


def test_last_used_is_recorded_but_not_written_on_every_request(store, clock):
    token, record = store.issue("laptop")
    assert record.last_used is None
    store.verify(token)
    first = store.list()[0].last_used
    assert first == clock.now
    clock.now += 5
    store.verify(token)
    assert store.list()[0].last_used == first
    clock.now += 60
    store.verify(token)
    assert store.list()[0].last_used == clock.now


def test_wrong_tokens_are_refused(store):
    store.issue("laptop")
    assert store.verify("not-a-token") is None
    assert store.verify("") is None


def test_concurrent_issues_all_survive(store):
    threads = [threading.Thread(target=store.issue, args=(f"device {i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.name for r in TokenStore(store.path).list()) == sorted(f"device {i}" for i in range(8))


def test_a_damaged_token_file_refuses_rather_than_guesses(store):
    store.path.parent.mkdir(parents=True, exist_ok=True)
    store.path.write_text("{not json")
    with pytest.raises(StoreError, match="unreadable"):
        store.verify("anything")


# --- over HTTP: a real server, a real non-loopback client ------------------------------------


from pennello.daemon.http.routes.auth import COOKIE  # noqa: E402


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
