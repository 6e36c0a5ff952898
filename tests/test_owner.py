"""The owner is this machine's user, not anyone on loopback (issue 19, item 6).

Every test here talks to a real daemon on a real loopback socket without the fixtures' owner
session (``no_owner_session``): what a caller gets is what its own credential gives it.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import requests

from pennello.client import Client
from pennello.config import Config
from pennello.daemon.auth import TOKENS_FILE, TokenStore
from pennello.daemon.http.routes.auth import SESSION_COOKIE
from pennello.daemon.http.surface import PAGE_HEADER
from pennello.errors import AuthError, ForbiddenError
from pennello.owner_token import owner_token_path, read_owner_token
from pennello.paths import get_paths
from pennello.runtime import write_daemon_info

pytestmark = pytest.mark.no_owner_session
FOREIGN_ORIGIN = "http://127.0.0.1:9"  # another port of this machine: same site, another origin


@pytest.fixture
def owner_server(api_engine, tmp_path, monkeypatch):
    """A loopback daemon over the shared engine whose state lives in a home anyone may traverse
    (as a home folder often is), so only the owner token file's own mode keeps others out; the
    test process is its owner (PENNELLO_HOME, daemon.json)."""
    stops = []

    def start(**server):
        from pennello.daemon.http.app import create_app
        from pennello.daemon.server import start_background_server

        root = Path(tempfile.mkdtemp(prefix="pennello-owner-"))
        root.chmod(0o755)
        paths = get_paths(root).ensure()
        for folder in (paths.state_dir, *paths.state_dir.parents):
            if folder == root.parent:
                break
            folder.chmod(0o755)
        monkeypatch.setenv("PENNELLO_HOME", str(root))
        app = create_app(Config().replace("server", **server), api_engine, paths)
        _, url, stop = start_background_server(app, "127.0.0.1", 0)
        write_daemon_info(paths.runtime_dir, url)
        stops.append((stop, root))
        return url, paths

    yield start
    for stop, root in stops:
        stop()
        shutil.rmtree(root, ignore_errors=True)


def _kind(response: requests.Response) -> str:
    return response.json()["error"]["type"]


def _login(url: str) -> requests.Session:
    """A browser-like session logged in through a login link, as `pennello open` does it."""
    browser = requests.Session()
    link = Client(url).call("POST", "/api/login-link")["url"]
    assert browser.get(link).status_code == 200
    return browser


# --- the owner token file ----------------------------------------------------------------------

def test_the_owner_token_is_made_at_first_start_private_and_never_logged(owner_server, caplog):
    caplog.set_level("DEBUG")
    url, paths = owner_server()
    token = read_owner_token(paths)
    assert token and len(token) >= 40
    mode = stat.S_IMODE(owner_token_path(paths).stat().st_mode)
    assert mode == 0o600, oct(mode)
    Client(url).call("GET", "/api/tokens")
    assert token not in caplog.text
    log_files = list(paths.log_dir.glob("*")) if paths.log_dir.exists() else []
    assert not any(token in f.read_text(errors="replace") for f in log_files if f.is_file())


# --- the owner keeps working without any extra step ----------------------------------------------

def test_the_owners_client_and_cli_need_no_extra_step(owner_server, api_engine):
    url, paths = owner_server()
    client = Client()  # finds the daemon through daemon.json and reads the owner token
    assert client.call("GET", "/api/tokens") == {"tokens": []}  # an owner route
    assert client.generate("a small red square", seed=3, steps=2)[0]["bytes"]
    status = client.call("GET", "/api/pair/status")
    assert status["owner"] is True and status["scope"] == "owner"

    opened = subprocess.run([sys.executable, "-m", "pennello", "open", "--no-browser"], capture_output=True,
                            text=True, env={**os.environ, "PENNELLO_HOME": str(paths.config_dir.parent)}, timeout=120)
    assert opened.returncode == 0, opened.stderr
    link = opened.stdout.split()[-1]
    assert link.startswith(f"{url}/login?token=")
    browser = requests.Session()
    assert browser.get(link).status_code == 200
    assert browser.get(f"{url}/api/pair/status").json()["owner"] is True


def test_the_tray_finds_the_owners_daemon_and_opens_the_page_logged_in(owner_server, tmp_path):
    from pennello.tray import DaemonSupervisor, TrayController, login_item

    from test_tray import FakeDesktop

    url, paths = owner_server()
    desktop = FakeDesktop()
    autostart = login_item("linux", {"HOME": str(tmp_path / "userhome")}, ["/opt/pennello/bin/pennello", "tray"])
    controller = TrayController(DaemonSupervisor(paths), desktop, autostart, paths)  # via daemon.json
    assert controller.start().state == "ready"
    assert len(controller.run("pair").code) == 8  # an owner route
    link = controller.run("open_web")
    assert link.startswith(f"{url}/login?token=") and desktop.last("open_url") == link
    browser = requests.Session()
    assert browser.get(link).status_code == 200
    assert browser.get(f"{url}/api/pair/status").json()["owner"] is True


def test_pennello_open_without_a_daemon_says_so(tmp_path):
    opened = subprocess.run([sys.executable, "-m", "pennello", "open", "--no-browser"], capture_output=True,
                            text=True, env={**os.environ, "PENNELLO_HOME": str(tmp_path)}, timeout=120)
    assert opened.returncode != 0 and "pennello serve" in opened.stderr
    assert "Traceback" not in opened.stderr


# --- the login link ------------------------------------------------------------------------------

def test_a_login_link_logs_in_once_with_a_strict_httponly_cookie(owner_server):
    url, _ = owner_server()
    link = Client(url).call("POST", "/api/login-link")
    assert link["url"].startswith(f"{url}/login?token=") and link["expires_in_s"] == 120
    browser = requests.Session()
    answer = browser.get(link["url"], allow_redirects=False)
    assert answer.status_code == 303 and answer.headers["Location"] == "/"
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert answer.headers["Cache-Control"] == "no-store"
    assert browser.get(f"{url}/api/outputs").status_code == 200
    page = browser.get(f"{url}/").text
    assert '<meta name="pennello-page" content="">' not in page  # the owner's page has the secret

    again = requests.get(link["url"], allow_redirects=False)
    assert again.status_code == 401 and _kind(again) == "unauthorized"
    assert "pennello open" in again.json()["error"]["message"] and SESSION_COOKIE not in again.headers.get(
        "Set-Cookie", "")
    assert requests.get(f"{url}/login?token=guess", allow_redirects=False).status_code == 401
    missing = requests.get(f"{url}/login", allow_redirects=False)
    assert missing.status_code == 400 and missing.json()["error"]["field"] == "token"
    forged = requests.get(f"{url}/api/outputs", cookies={SESSION_COOKIE: "x.y.z"})
    assert forged.status_code == 401


def test_a_login_link_expires(owner_server, monkeypatch):
    monkeypatch.setattr("pennello.daemon.owner_login.LOGIN_LINK_TTL_S", 0.5)
    url, _ = owner_server()
    link = Client(url).call("POST", "/api/login-link")["url"]
    time.sleep(1.0)
    late = requests.get(link, allow_redirects=False)
    assert late.status_code == 401 and "pennello open" in late.json()["error"]["message"]


def test_only_the_owner_gets_a_login_link(owner_server):
    url, paths = owner_server()
    device_token, _ = TokenStore(paths.state_dir / TOKENS_FILE).issue("same-pc app")
    with pytest.raises(ForbiddenError):
        Client(url, token=device_token).call("POST", "/api/login-link")
    with pytest.raises(AuthError):
        Client(url, token="not-a-token").call("POST", "/api/login-link")


# --- CSRF: the cookie does not make another site's page the owner --------------------------------

def test_the_session_cookie_does_not_work_cross_site(owner_server):
    url, _ = owner_server()
    browser = _login(url)
    for headers in ({"Origin": FOREIGN_ORIGIN}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
        refused = browser.post(f"{url}/api/pair/code", headers=headers)
        assert refused.status_code == 403 and _kind(refused) == "origin_not_allowed", headers
    own = {"Origin": url, "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}
    refused = browser.post(f"{url}/api/pair/code", headers=own)  # no page secret: a forged form?
    assert refused.status_code == 403 and _kind(refused) == "page_token_required"
    page = browser.get(f"{url}/").text
    secret = page.split('<meta name="pennello-page" content="', 1)[1].split('"', 1)[0]
    assert browser.post(f"{url}/api/pair/code", headers={**own, PAGE_HEADER: secret}).status_code == 201
    # Without the cookie the page carries no secret, and the secret alone is no credential.
    assert '<meta name="pennello-page" content="">' in requests.get(f"{url}/").text
    alone = requests.post(f"{url}/api/pair/code", headers={**own, PAGE_HEADER: secret})
    assert alone.status_code == 401


# --- everyone else on loopback is like a LAN device ----------------------------------------------

def test_other_loopback_callers_need_a_paired_token(owner_server):
    url, paths = owner_server()
    mine = Client(url).generate("the owner's private prompt", seed=5, steps=2)[0]["id"]
    for method, path in (("GET", "/api/tokens"), ("GET", "/api/outputs"), ("GET", f"/api/images/{mine}"),
                         ("POST", "/api/pair/code"), ("POST", "/api/login-link"), ("GET", "/api/progress")):
        refused = requests.request(method, f"{url}{path}")
        assert refused.status_code == 401, (path, refused.text)
        message = refused.json()["error"]["message"]
        assert "pennello open" in message and "pennello pair" in message and "Bearer" in message
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.get(f"{url}/api/health").status_code == 200  # public routes stay public

    device_token, _ = TokenStore(paths.state_dir / TOKENS_FILE).issue("same-pc app")
    device = Client(url, token=device_token)
    assert mine not in json.dumps(device.call("GET", "/api/outputs"))  # not the owner's gallery
    theirs = device.generate("a device's picture", seed=6, steps=2)[0]["id"]
    assert theirs in json.dumps(device.call("GET", "/api/outputs"))
    with pytest.raises(ForbiddenError):
        device.call("GET", "/api/tokens")


def test_trust_loopback_makes_every_local_caller_the_owner_again(owner_server):
    url, _ = owner_server(trust_loopback=True)
    assert requests.get(f"{url}/api/tokens").status_code == 200
    own = {"Origin": url, "Sec-Fetch-Site": "same-origin"}  # a browser still needs the page secret
    assert _kind(requests.post(f"{url}/api/pair/code", headers=own)) == "page_token_required"


# --- another OS user on this machine ----------------------------------------------------------------

OTHER_USER_SCRIPT = r"""
import json, site, sys, urllib.error, urllib.request
token_file, url, image, packages = sys.argv[1:5]  # PENNELLO_HOME is the owner's: the Client looks there
site.addsitedir(packages)  # this environment's packages, pennello's editable install included
try:
    open(token_file).read()
    read = "read it"
except PermissionError:
    read = "refused"
answers = {}
for path in ("/api/tokens", "/api/outputs", "/api/images/" + image, "/"):
    try:
        with urllib.request.urlopen(url + path, timeout=30) as response:
            answers[path] = [response.status, response.read().decode(errors="replace")]
    except urllib.error.HTTPError as e:
        answers[path] = [e.code, e.read().decode(errors="replace")]
from pennello.client import Client
from pennello.errors import AuthError
try:
    Client(url).call("GET", "/api/outputs")
    client = "served"
except AuthError as e:
    client = "401: " + str(e)
print(json.dumps({"read": read, "answers": answers, "client": client}))
"""


@pytest.fixture
def other_user():
    """Another account on this machine (made here, removed afterwards); root only."""
    if os.geteuid() != 0:
        pytest.skip("needs root to add another OS user (useradd) and switch to it")
    if not shutil.which("useradd"):
        pytest.skip("needs useradd to add another OS user")
    name = f"pnother{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True,
                   capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def _python_others_can_run() -> str:
    """This Python's version from a system path (a virtual environment's may sit in root's home)."""
    found = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}", path="/usr/local/bin:/usr/bin")
    if found is None:
        pytest.skip("needs a system python of this version that another user may run")
    return found


def test_another_os_user_cannot_read_the_token_and_is_refused(owner_server, other_user):
    url, paths = owner_server()
    mine = Client(url).generate("the owner's private prompt", seed=7, steps=2)[0]["id"]
    assert Client(url).call("GET", "/api/outputs")  # the owner is served

    def become_other() -> None:
        os.setgroups([])
        os.setgid(other_user.pw_gid)
        os.setuid(other_user.pw_uid)

    env = {"PATH": os.environ["PATH"], "PENNELLO_HOME": str(paths.config_dir.parent), "HOME": "/nonexistent"}
    packages = next(p for p in sys.path if p.endswith("site-packages"))
    run = subprocess.run([_python_others_can_run(), "-c", OTHER_USER_SCRIPT, str(owner_token_path(paths)), url,
                          mine, packages],
                         preexec_fn=become_other, env=env, capture_output=True, text=True, timeout=120,
                         cwd="/")
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen["read"] == "refused"
    for path in ("/api/tokens", "/api/outputs", f"/api/images/{mine}"):
        status, body = seen["answers"][path]
        assert status == 401, (path, body)
        assert "pennello open" in json.loads(body)["error"]["message"]
    status, page = seen["answers"]["/"]
    assert status == 200 and '<meta name="pennello-page" content="">' in page  # no page secret
    assert seen["client"].startswith("401: ") and "pennello pair" in seen["client"]
