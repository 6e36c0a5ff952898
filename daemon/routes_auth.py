"""Pairing, tokens, and the access check every request passes through.

Loopback callers are the owner and need nothing. Anyone else needs a paired token, sent as
``Authorization: Bearer <token>`` (or, for the web page on a paired browser, the ``pennello_token``
cookie that pairing can set). A device pairs with the code ``pennello pair`` shows:

    $ curl -s http://192.168.1.20:8420/api/pair -H 'Content-Type: application/json' \\
        -d '{"code": "K7M2QX9P", "name": "kitchen tablet"}'
    {"token": "…", "id": "3f9a1c2b", "name": "kitchen tablet", "created": …}

The few routes anyone may call are listed in :data:`PUBLIC_ENDPOINTS`; those only the owner may
call in :data:`OWNER_ONLY_ENDPOINTS`. CORS headers are sent only to origins listed in
``server.cors_origins``.
"""

from __future__ import annotations

import io
import logging
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request, send_file

from pennello.errors import AuthError, ForbiddenError, NotFoundError

from ._http import json_body
from .app import current_config
from .auth import (TOKENS_FILE, Pairing, TokenRecord, TokenStore, is_loopback, needs_token,
                   owner_of)

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__, url_prefix="/api")

COOKIE = "pennello_token"
COOKIE_MAX_AGE_S = 400 * 24 * 3600  # the longest browsers keep a cookie
# Anyone may call these: the health probe, pairing itself, the API description and the web page
# (which holds no data until the browser is paired).
PUBLIC_ENDPOINTS: frozenset[str] = frozenset({
    "native.health", "auth.pair", "auth.pair_status", "openapi.spec", "web.index", "web.static"})
# Only the owner (loopback) may call these, even with a valid device token.
OWNER_ONLY_ENDPOINTS: frozenset[str] = frozenset({
    "auth.new_code", "auth.qr_png", "auth.list_tokens", "auth.revoke_token",
    "native.load_model", "native.unload_model", "offline.offline_status",
    "tools.save_pipeline", "tools.delete_pipeline", "tools.copyright_status"})
_EXT = "pennello_auth"
_CORS_HEADERS = {"Access-Control-Allow-Headers": "Authorization, Content-Type",
                 "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
                 "Access-Control-Max-Age": "600"}


def init_app(app: Flask, pairing: Pairing | None = None) -> None:
    """Install the access check and CORS on ``app``.

    Args:
        pairing: the pairing state to use (tests inject one with a fake clock); by default one
            over ``state_dir/tokens.json``.
    """
    paths = app.extensions["pennello"]["paths"]
    app.extensions[_EXT] = pairing or Pairing(TokenStore(paths.state_dir / TOKENS_FILE))
    app.before_request(authenticate)
    app.after_request(_response_headers)


def current_pairing() -> Pairing:
    return current_app.extensions[_EXT]


def is_owner_request() -> bool:
    """Whether the caller is the machine's owner. Today: it connected over loopback.

    This is the one place that decides it, so stricter checks (Host and Origin headers against
    DNS rebinding and cross-site pages) belong here.
    """
    return not needs_token(request.remote_addr)


def request_token() -> str | None:
    """The token the caller presented, from the Authorization header or the pairing cookie."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(COOKIE) or None


def authenticate() -> None:
    """Before every request: let public routes and the owner through; others need a token.

    Raises:
        AuthError: no token or an unknown (e.g. revoked) one.
        ForbiddenError: a device token on a route only the owner may use.
    """
    if request.method == "OPTIONS" or request.endpoint in PUBLIC_ENDPOINTS or is_owner_request():
        return
    token = request_token()
    if token is None:
        raise AuthError("this address needs a token: pair this device with the code that "
                        "`pennello pair` shows on the host, then send Authorization: Bearer <token>")
    record = current_pairing().store.verify(token)
    if record is None:
        raise AuthError("the token is not valid (it may have been revoked); pair this device again")
    if request.endpoint in OWNER_ONLY_ENDPOINTS:
        raise ForbiddenError("only the owner, on the host itself, may do this")
    g.pennello_owner = owner_of(record)
    g.pennello_device = record


def _response_headers(response: Response) -> Response:
    if response.status_code == 401:
        response.headers.setdefault("WWW-Authenticate", 'Bearer realm="pennello"')
    origin = request.headers.get("Origin")
    allowed = current_config().server.cors_origins
    if origin and (origin in allowed or "*" in allowed):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers.add("Vary", "Origin")
        response.headers.update(_CORS_HEADERS)
    return response


# --- pairing ---------------------------------------------------------------------------------------

@bp.post("/pair/code")
def new_code() -> Any:
    """A fresh one-time code (the previous one stops working) and where a device can use it."""
    offer = current_pairing().new_code()
    return jsonify({"code": offer.code, "expires_in_s": offer.expires_in_s, "pair_url": _pair_url(offer.code),
                    "qr_png_url": "/api/pair/qr.png", "lan": current_config().server.lan}), 201


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
    owner = is_owner_request()
    token = None if owner else request_token()
    record: TokenRecord | None = current_pairing().store.verify(token) if token else None
    offer = current_pairing().active_code() if owner else None
    return jsonify({"owner": owner, "paired": owner or record is not None,
                    "device": record.public() if record else None, "lan": current_config().server.lan,
                    "code_expires_in_s": offer.expires_in_s if offer else None})


# --- tokens ----------------------------------------------------------------------------------------

@bp.get("/tokens")
def list_tokens() -> Any:
    return jsonify({"tokens": [record.public() for record in current_pairing().store.list()]})


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
    from .advertise import lan_address

    return lan_address(current_config().server.interfaces) or "127.0.0.1"
