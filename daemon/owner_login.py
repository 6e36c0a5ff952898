"""The owner's browser: one-time login links, and the session cookie a link gives.

A browser cannot read the owner token file (:mod:`pennello.owner_token`), so the owner's CLI
asks the daemon for a *login link* with it (``pennello open``, the tray's "Open web page"):
``/login?token=…`` works once and for :data:`LOGIN_LINK_TTL_S`, as Jupyter's token links do.
Using it gives a session value for an HttpOnly cookie, signed with the owner token (itsdangerous),
so sessions survive a daemon restart and all end when the owner deletes ``owner.token``.

    >>> login = OwnerLogin("the owner token")
    >>> link = login.new_link()
    >>> session = login.redeem_link(link.token)
    >>> login.session_valid(session), OwnerLogin("another owner token").session_valid(session)
    (True, False)

This module has no HTTP in it; :mod:`pennello.daemon.http.routes.auth` serves the links.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable

import itsdangerous

from pennello.errors import AuthError

from .auth import TOKEN_BYTES, hash_token

LOGIN_LINK_TTL_S = 120.0  # long enough to switch to the browser, short enough to be useless later
MAX_LOGIN_LINKS = 16  # unused links kept at once; the oldest goes first
SESSION_MAX_AGE_S = 30 * 24 * 3600.0  # a browser logs in again (`pennello open`) after this


@dataclass(frozen=True)
class LoginLink:
    token: str
    expires_in_s: float


class OwnerLogin:
    """The owner's credentials: the owner token itself, one-time login links, browser sessions.

    A login link's token works once and for :data:`LOGIN_LINK_TTL_S`; redeeming it gives a
    session value for a cookie, signed with the owner token (so it survives a daemon restart and
    dies with the token when the owner deletes ``owner.token``).
    """

    def __init__(self, owner_token: str, link_ttl_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._owner_token = owner_token
        self._signer = itsdangerous.TimestampSigner(owner_token, salt="pennello-owner-session")
        self.link_ttl_s = LOGIN_LINK_TTL_S if link_ttl_s is None else link_ttl_s
        self._clock = clock
        self._links: dict[str, float] = {}  # sha256 of an unused link token -> when it expires
        self._lock = threading.Lock()

    def is_owner_token(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self._owner_token.encode())

    def new_link(self) -> LoginLink:
        """A fresh one-time login token (earlier unused ones stay valid until they expire)."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        with self._lock:
            self._forget_expired()
            while len(self._links) >= MAX_LOGIN_LINKS:
                del self._links[next(iter(self._links))]
            self._links[hash_token(token)] = self._clock() + self.link_ttl_s
        return LoginLink(token, self.link_ttl_s)

    def redeem_link(self, token: str | None) -> str:
        """Use up a login link's token and return a new session value for the owner's cookie.

        Raises:
            AuthError: the token is missing, unknown, already used or expired.
        """
        with self._lock:
            self._forget_expired()
            valid = token is not None and self._links.pop(hash_token(token), None) is not None
        if not valid:
            raise AuthError("this login link is not valid: each works once and for "
                            f"{int(self.link_ttl_s)} seconds; run `pennello open` for a new one",
                            field="token")
        return self._signer.sign(secrets.token_urlsafe(16)).decode("ascii")

    def session_valid(self, value: str | None) -> bool:
        if not value:
            return False
        try:
            self._signer.unsign(value, max_age=SESSION_MAX_AGE_S)
        except itsdangerous.BadSignature:  # forged, from another owner token, or too old
            return False
        return True

    def _forget_expired(self) -> None:
        now = self._clock()
        for digest in [d for d, expires in self._links.items() if expires <= now]:
            del self._links[digest]
