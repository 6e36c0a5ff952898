"""The owner's credential for the tests that talk to a daemon on loopback, given in one place.

Loopback is no credential (docs/threat-model.md): a daemon wants the owner token, the owner's
browser session, or a paired token. The pennello ``Client`` (CLI, tray) reads the owner token
itself. Tests written as "a program of the owner on this machine" (plain ``requests``, webuiapi,
Flask's test client) get the owner's session cookie here, as the owner's browser holds it after
``pennello open``: a browser-like request still needs the page secret, and a token a test sends
on purpose does not change who it is. Tests about callers without it mark themselves
``@pytest.mark.no_owner_session``; SDKs that send their own key (openai) take :func:`owner_token`.

    def test_x(url):
        requests.get(f"{url}/api/outputs")      # the owner's, as before
        openai.OpenAI(base_url=f"{url}/v1", api_key=owner_token(url))
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator

import pytest
import requests
from flask.testing import FlaskClient

from pennello.daemon.auth import is_loopback
from pennello.daemon.owner_login import OwnerLogin
from pennello.daemon.http.routes.auth import SESSION_COOKIE, owner_login
from pennello.owner_token import is_loopback_url, read_owner_token
from pennello.paths import Paths, get_paths

#: base URL -> the home of the in-process daemon serving it (filled as servers start, whatever
#: fixture or test starts them; others, such as `pennello serve` subprocesses, use PENNELLO_HOME)
SERVED: dict[str, Paths] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Note every in-process server's home as it starts, module-scoped fixtures' included."""
    from pennello.daemon import server

    server.start_background_server = _registering(server.start_background_server)


def _registering(start: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(start)
    def start_and_register(app: Any, *args: Any, **kwargs: Any) -> Any:
        thread, url, stop = start(app, *args, **kwargs)
        if "pennello" not in getattr(app, "extensions", {}):
            return thread, url, stop  # a stand-in WSGI app, not a daemon
        SERVED[url] = app.extensions["pennello"]["paths"]

        def stop_and_forget() -> None:
            SERVED.pop(url, None)  # the port may serve another home later
            stop()

        return thread, url, stop_and_forget

    return start_and_register


def owner_token(url: str) -> str:
    """The owner token of the daemon at ``url`` (one a fixture started, else PENNELLO_HOME's)."""
    token = _owner_token_or_none(url)
    assert token is not None, f"no owner token for {url}: has that daemon started?"
    return token


def _owner_token_or_none(url: str) -> str | None:
    paths = next((home for base, home in SERVED.items() if url.startswith(base)), None)
    return read_owner_token(paths or get_paths())


def owner_session(token: str) -> str:
    """A session cookie value of the owner's, as a login link gives one."""
    login = OwnerLogin(token)
    return login.redeem_link(login.new_link().token)


def login_link(url: str) -> str:
    """A one-time login link for the daemon at ``url``, as ``pennello open`` gets one."""
    response = requests.post(f"{url}/api/login-link", headers={"Authorization": f"Bearer {owner_token(url)}"})
    assert response.status_code == 201, response.text
    return response.json()["url"]


def assert_logs_in(link: str) -> None:
    """``link`` is a working login link: it sets the owner's session cookie and leads to the page."""
    browser = requests.Session()
    answer = browser.get(link, allow_redirects=False)
    assert answer.status_code == 303 and answer.headers["Location"] == "/", answer.text
    assert SESSION_COOKIE in browser.cookies


@pytest.fixture(autouse=True)
def owner_session_on_loopback(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Requests to a loopback daemon carry the owner's session cookie, unless the test is marked."""
    if request.node.get_closest_marker("no_owner_session"):
        yield
        return
    plain_request, test_open = requests.Session.request, FlaskClient.open

    def with_session(self: requests.Session, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if is_loopback_url(url):
            token = _owner_token_or_none(url)  # None: a stand-in server, or not started yet
            if token is not None:
                cookies = dict(kwargs.get("cookies") or {})
                cookies.setdefault(SESSION_COOKIE, owner_session(token))
                kwargs["cookies"] = cookies
        return plain_request(self, method, url, *args, **kwargs)

    def open_with_session(self: FlaskClient, *args: Any, **kwargs: Any) -> Any:
        remote = (kwargs.get("environ_base") or {}).get("REMOTE_ADDR", "127.0.0.1")
        if is_loopback(remote):
            login = owner_login(self.application)
            self.set_cookie(SESSION_COOKIE, login.redeem_link(login.new_link().token))
        return test_open(self, *args, **kwargs)

    monkeypatch.setattr(requests.Session, "request", with_session)
    monkeypatch.setattr(FlaskClient, "open", open_with_session)
    yield

