"""Pairing, tokens, the owner's login, and the access check every request passes through.

Before any route runs, :func:`authenticate` applies the rules of :mod:`pennello.daemon.http.surface`:
the Host header must name this machine (DNS rebinding), a state-changing request from a browser
page must come from this daemon's own origin or a listed one (CSRF), and the caller must hold the
scope the route's entry in :data:`~pennello.daemon.http.surface.ENDPOINT_SCOPES` asks for.

Who the caller is: on this machine, the *owner* is whoever sends the owner token (the pennello
CLI and the tray read it from a file only this OS user can read, :mod:`pennello.owner_token`) or
a browser holding the owner's session cookie, which a one-time login link sets
(``pennello open`` makes one: ``GET /login?token=…``). A browser acting on that cookie must also
send the web page's per-run secret in ``X-Pennello-Page`` to change anything (only the page
served by this daemon knows it). Being on loopback is no credential, since every account on the
computer is there, unless the owner set ``server.trust_loopback`` for a single-user computer.
Anyone else, on loopback or the LAN, needs a token, sent as ``Authorization: Bearer <token>``, or
as the password of HTTP Basic credentials (any user name) for front-ends that can only send those
(Open WebUI's and SillyTavern's A1111 settings), or, for the web page on a paired browser, the
``pennello_token`` cookie that pairing can set; its scope is ``device`` or ``owner``, whichever
way it came. A device pairs with the code ``pennello pair`` shows:

    $ curl -s http://192.168.1.20:8420/api/pair -H 'Content-Type: application/json' \\
        -d '{"code": "K7M2QX9P", "name": "kitchen tablet"}'
    {"token": "…", "id": "3f9a1c2b", "name": "kitchen tablet", "created": …, "scope": "device"}

CORS headers are sent only to origins listed in ``server.cors_origins``, and never on the page
itself (it carries the page secret).
"""

from __future__ import annotations

import hmac
import io
import logging
import secrets
from dataclasses import dataclass
from typing import Any, Literal

from flask import Blueprint, Flask, Response, current_app, g, jsonify, redirect, request, send_file

from pennello.errors import AuthError, ForbiddenError, NotFoundError, PageTokenError, RequestError
from pennello.owner_token import ensure_owner_token

from ..request import json_body
from ..context import LOCAL_OWNER, current_config, current_network
from ...auth import TOKENS_FILE, Pairing, TokenRecord, TokenStore, is_loopback, needs_token, owner_of
from ...owner_login import SESSION_MAX_AGE_S, OwnerLogin
from ..surface import (PAGE_HEADER, STATE_CHANGING, HostPolicy, check_origin, host_refusal, looks_like_browser,
                      scope_of)

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__, url_prefix="/api")
login_bp = Blueprint("login", __name__)  # /login sits beside the page, not under /api

COOKIE = "pennello_token"
SESSION_COOKIE = "pennello_session"  # the owner's browser session, set by a login link
COOKIE_MAX_AGE_S = 400 * 24 * 3600  # the longest browsers keep a cookie
ANONYMOUS_OWNER = "anonymous"  # files nothing and matches nobody's jobs
_EXT = "pennello_auth"
_SURFACE_EXT = "pennello_surface"
_CORS_HEADERS = {"Access-Control-Allow-Headers": "Authorization, Content-Type",
                 "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, OPTIONS",
                 "Access-Control-Max-Age": "600"}


@dataclass(frozen=True)
class Caller:
    """Who is asking, as :func:`authenticate` found out.

    Attributes:
        scope: ``owner`` (the owner token or login session on this machine, or an owner token),
            ``device``, ``node`` (a cluster node, :mod:`.cluster`) or ``anonymous``.
        owner: what the caller's jobs and pictures are filed under.
        device: the token record, when a token was used.
        needs_page_token: a browser on loopback changing something without the page's secret.
        bad_token: it sent a token that is not (or no longer) valid.
    """

    scope: Literal["owner", "device", "node", "anonymous"]
    owner: str
    device: TokenRecord | None = None
    needs_page_token: bool = False
    bad_token: bool = False


@dataclass(frozen=True)
class _Surface:
    hosts: HostPolicy
    page_token: str
    login: OwnerLogin


def init_app(app: Flask, pairing: Pairing | None = None) -> None:
    """Install the access check and CORS on ``app``.

    Args:
        pairing: the pairing state to use (tests inject one with a fake clock); by default one
            over ``state_dir/tokens.json``.
    """
    from ...net.mdns import instance_id, srv_target

    paths = app.extensions["pennello"]["paths"]
    config = app.extensions["pennello"]["config"]
    network = app.extensions["pennello"]["network"]
    app.extensions[_EXT] = pairing or Pairing(TokenStore(paths.state_dir / TOKENS_FILE))
    try:
        mdns_name: str | None = srv_target(instance_id(paths))
    except OSError:  # a read-only state directory: no advertised name to answer to
        mdns_name = None
    # In an isolated worker, the server's addresses (it sees only loopback); else read here.
    hosts = HostPolicy(config.server.allowed_hosts, mdns_name=mdns_name,
                       addresses=network.addresses if network is not None else None)
    # A new secret every run: a page left open across a restart must be reloaded to act.
    app.extensions[_SURFACE_EXT] = _Surface(hosts, secrets.token_urlsafe(32),
                                            OwnerLogin(ensure_owner_token(paths)))
    app.register_blueprint(login_bp)
    app.before_request(authenticate)
    app.after_request(_response_headers)


def owner_login(app: Flask) -> OwnerLogin:
    """The owner's login links and sessions of ``app``."""
    return app.extensions[_SURFACE_EXT].login


def current_pairing() -> Pairing:
    return current_app.extensions[_EXT]


def current_caller() -> Caller:
    """The caller of this request (set by :func:`authenticate`)."""
    return g.get("pennello_caller") or Caller("anonymous", ANONYMOUS_OWNER)


def page_token_for_request() -> str | None:
    """The web page's secret, for the page served to the owner on this machine; None for others
    (they act with their own tokens)."""
    caller = current_caller()
    owner_here = caller.scope == "owner" and caller.device is None and is_loopback(request.remote_addr)
    return current_app.extensions[_SURFACE_EXT].page_token if owner_here else None


def is_owner_request() -> bool:
    """Whether the caller acts as the machine's owner: the owner token or the owner's browser
    session on this machine (a browser also needs the page secret to change things), or an owner
    token from ``pennello tokens issue --admin``. Host and Origin are checked before this."""
    return current_caller().scope == "owner"


def request_token() -> str | None:
    """The token the caller presented: ``Bearer``, Basic's password, or the pairing cookie."""
    return _header_token() or request.cookies.get(COOKIE) or None


def _header_token() -> str | None:
    """The token in the Authorization header: ``Bearer``, or Basic's password."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return basic_auth_token()


def basic_auth_token() -> str | None:
    """The password of ``Authorization: Basic base64(user:password)``, taken as a token.

    A1111's ``--api-auth user:pass`` made Basic the only credential many front-ends can send; the
    user name says nothing here (any is accepted), the token alone decides, exactly as Bearer.
    Werkzeug decodes the header (a malformed one reads as absent, so it is answered 401).
    """
    credentials = request.authorization
    if credentials is None or credentials.type != "basic":
        return None
    return (credentials.password or "").strip() or None


def authenticate() -> None:
    """Before every request: Host, then Origin, then who is asking, then the route's scope.

    Raises:
        HostNotAllowedError: the Host header does not name this machine.
        OriginNotAllowedError: a state-changing request from another origin's page.
        AuthError: no token or an unknown (e.g. revoked) one where one is needed.
        PageTokenError: a browser on loopback changing something without the page's secret.
        ForbiddenError: a device token on a route only the owner may use.
    """
    surface: _Surface = current_app.extensions[_SURFACE_EXT]
    # No Host header at all (HTTP/1.0 clients) is no rebinding page; a wrong one is refused.
    if "Host" in request.headers and not surface.hosts.allows(request.headers["Host"]):
        raise host_refusal(request.headers.get("Host"))
    check_origin(request.method, request.headers, request.scheme, request.host,
                 current_config().server.cors_origins)
    caller = _identify(surface)
    g.pennello_caller = caller
    g.pennello_owner = caller.owner
    g.pennello_sees_all = caller.scope == "owner"
    needed = scope_of(request.endpoint)
    if request.method == "OPTIONS" or needed == "public":
        return
    if caller.scope == "anonymous":
        if caller.needs_page_token:
            raise PageTokenError(f"a browser on this computer must send the web page's {PAGE_HEADER} "
                                 "header to change anything; reload the pennello page", field=PAGE_HEADER)
        if caller.bad_token:
            raise AuthError("the token is not valid (it may have been revoked); pair this device again")
        if is_loopback(request.remote_addr):
            raise AuthError(_LOOPBACK_REFUSAL)
        raise AuthError("this address needs a token: pair this device with the code that "
                        "`pennello pair` shows on the host, then send Authorization: Bearer <token> "
                        "(or the token as a Basic password: `pennello pair --for-basic-auth`)")
    if caller.scope == "node":  # a cluster node's token fetches the cluster token, nothing else
        raise ForbiddenError("a cluster node's token only joins the cluster (POST /api/cluster/join)")
    if needed == "owner" and caller.scope != "owner":
        raise ForbiddenError("only the owner may do this: on the host itself, or with an owner "
                             "token (`pennello tokens issue --admin`)")


_LOOPBACK_REFUSAL = (
    "a token is needed on this computer too (other accounts and programs reach it as well): the "
    "owner's pennello CLI and tray send the owner token by themselves, and the owner's browser logs "
    "in with the link `pennello open` shows; any other client needs a device token, from "
    "`pennello pair` (or `pennello tokens issue NAME` on the owner's account), sent as "
    "Authorization: Bearer <token>")


def _identify(surface: _Surface) -> Caller:
    """The owner by owner token or session on this machine; tokens say who others are; the rest
    are anonymous."""
    needs_page_token = False
    ambient = _owner_credential(surface.login)
    if ambient is not None:
        # Credentials a browser sends by itself (cookie, trust in loopback) could be a forged
        # request's: to change anything, a browser must also show the page's secret.
        acting = ambient and request.method in STATE_CHANGING and looks_like_browser(request.headers)
        sent = request.headers.get(PAGE_HEADER, "")
        if not acting or hmac.compare_digest(sent.encode(), surface.page_token.encode()):
            return Caller("owner", LOCAL_OWNER)
        needs_page_token = True
    token = request_token()
    if token is None:
        return Caller("anonymous", ANONYMOUS_OWNER, needs_page_token=needs_page_token)
    record = current_pairing().store.verify(token)
    if record is None:  # refused later unless the route is public (a revoked browser can re-pair)
        return Caller("anonymous", ANONYMOUS_OWNER, needs_page_token=needs_page_token, bad_token=True)
    return Caller(record.scope, owner_of(record), record)


def _owner_credential(login: OwnerLogin) -> bool | None:
    """Whether the caller is the owner on this machine: None if not, else whether it proved it with
    a credential its browser would send by itself (True) rather than the owner token (False)."""
    if not is_loopback(request.remote_addr):
        return None  # the owner token and sessions are for this machine; elsewhere, paired tokens
    if not needs_token(request.remote_addr, current_config().server.trust_loopback):
        return True
    if login.is_owner_token(_header_token()):
        return False
    return True if login.session_valid(request.cookies.get(SESSION_COOKIE)) else None


def _response_headers(response: Response) -> Response:
    if response.status_code == 401:
        response.headers.setdefault("WWW-Authenticate", 'Bearer realm="pennello"')
    origin = request.headers.get("Origin")
    allowed = current_config().server.cors_origins
    # Never on the page: another origin that could read it would learn the page secret.
    if origin and (origin in allowed or "*" in allowed) and request.endpoint != "web.index":
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers.add("Vary", "Origin")
        response.headers.update(_CORS_HEADERS)
    return response


# --- pairing ---------------------------------------------------------------------------------------

@bp.post("/pair/code")
def new_code() -> Any:
    """A fresh one-time code (the previous one stops working) and where a device can use it;
    ``{"scope": "node"}`` makes one for a node of the cluster (``pennello pair --node``)."""
    body = json_body({"scope": str}) if request.get_data() else {}
    scope = body.get("scope", "device")
    if scope not in ("device", "node"):
        raise RequestError("scope must be device or node", field="scope")
    offer = current_pairing().new_code(scope)
    return jsonify({"code": offer.code, "expires_in_s": offer.expires_in_s, "pair_url": _pair_url(offer.code),
                    "qr_png_url": "/api/pair/qr.png", "lan": current_config().server.lan,
                    "scope": offer.scope}), 201


@bp.get("/pair/qr.png")
def qr_png() -> Response:
    """The current code's pairing address as a QR code, for a phone's camera."""
    import qrcode

    offer = current_pairing().active_code()
    if offer is None:
        raise NotFoundError("no pairing code is active; POST /api/pair/code (`pennello pair`) first")
    buffer = io.BytesIO()
    qrcode.make(_pair_url(offer.code), border=2).save(buffer, format="PNG")
    buffer.seek(0)
    return send_file(buffer, mimetype="image/png", max_age=0)


@bp.post("/pair")
def pair() -> Any:
    """Exchange a code for a token; ``"cookie": true`` also sets it as this browser's cookie."""
    body = json_body({"code": str, "name": str, "cookie": bool}, required=("code", "name"))
    token, record = current_pairing().redeem(body["code"], body["name"], client=request.remote_addr or "?")
    response = jsonify({"token": token, **record.public()})
    response.status_code = 201
    if body.get("cookie"):
        response.set_cookie(COOKIE, token, max_age=COOKIE_MAX_AGE_S, httponly=True, samesite="Strict")
    return response


@bp.get("/pair/status")
def pair_status() -> Any:
    """Who the caller is: the owner, a paired device, or an unpaired one (then ``paired`` false)."""
    caller = current_caller()
    owner = caller.scope == "owner"
    offer = current_pairing().active_code() if owner else None
    return jsonify({"owner": owner, "paired": caller.scope != "anonymous",
                    "device": caller.device.public() if caller.device else None,
                    "lan": current_config().server.lan, "scope": caller.scope,
                    "code_expires_in_s": offer.expires_in_s if offer else None})


# --- the owner's browser ---------------------------------------------------------------------------

@bp.post("/login-link")
def login_link() -> Any:
    """A one-time link that logs this machine's browser in as the owner (``pennello open``)."""
    link = owner_login(current_app).new_link()
    return jsonify({"url": f"{request.host_url}login?token={link.token}",
                    "expires_in_s": link.expires_in_s}), 201


@login_bp.get("/login")
def login() -> Response:
    """Use up a login link: set the owner's session cookie and go to the page."""
    token = request.args.get("token")
    if not token:  # as /api/pair answers a missing code: the request is malformed
        raise RequestError("token is required: open the whole link `pennello open` shows", field="token")
    if not is_loopback(request.remote_addr):
        raise ForbiddenError("login links work only in a browser on the daemon's computer; other "
                             "devices pair with the code `pennello pair` shows")
    session = owner_login(current_app).redeem_link(token)
    response = redirect("/", code=303)
    # Strict: no other site's page makes the browser send it, not even by a link. Pages on other
    # ports of this machine count as the same site, so the Origin check and page secret still apply.
    response.set_cookie(SESSION_COOKIE, session, max_age=int(SESSION_MAX_AGE_S), httponly=True,
                        samesite="Strict", secure=request.scheme == "https")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"  # the used token stays out of Referers
    return response


# --- tokens ----------------------------------------------------------------------------------------

@bp.get("/tokens")
def list_tokens() -> Any:
    return jsonify({"tokens": [record.public() for record in current_pairing().store.list()]})


@bp.post("/tokens")
def issue_token() -> Any:
    """Issue a token without pairing: ``{"name": …, "scope": "owner"}`` makes an admin token."""
    body = json_body({"name": str, "scope": str}, required=("name",))
    token, record = current_pairing().store.issue(body["name"], body.get("scope", "device"))  # type: ignore[arg-type]
    return jsonify({"token": token, **record.public()}), 201


@bp.delete("/tokens/<token_id>")
def revoke_token(token_id: str) -> Any:
    return jsonify({"revoked": current_pairing().store.revoke(token_id).public()})


def _pair_url(code: str) -> str:
    """The web page's address on the LAN, with the code filled in (https in LAN mode)."""
    default = "443" if request.scheme == "https" else "80"
    port = request.host.rpartition(":")[2] if ":" in request.host.rpartition("]")[2] else default
    host = _host_for_devices()
    host = f"[{host}]" if ":" in host else host
    return f"{request.scheme}://{host}:{port}/?pair={code}"


def _host_for_devices() -> str:
    """The address other devices reach this machine at: the configured one, else the LAN one.

    Read from the interfaces (no socket, no lookup), so it works in no-network mode.
    """
    configured = current_config().server.host
    if configured not in ("", "0.0.0.0", "::") and not is_loopback(configured):
        return configured
    from ...net.mdns import lan_address

    # An isolated model worker sees only loopback; the server finds the LAN address for it.
    network = current_network()
    found = network.lan_address() if network is not None else None
    return found or lan_address(current_config().server.interfaces) or "127.0.0.1"
