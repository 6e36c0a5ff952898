"""Making roots, the publisher's side of :mod:`pennello.installer.root`.

A rotation is drafted from the current root (``pennello keys root draft``: version + 1, keys
added or removed, thresholds changed), then signed in turn by the old root's keys and the new
one's, each on its own machine (``pennello keys root sign``). Nothing is drafted or signed that
:func:`pennello.installer.root.parse_root` would refuse, so a mistake shows here and not on
every machine that applies the root.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pennello.errors import ManifestFormatError
from pennello.installer.keys import TrustedKey, sign_signed
from pennello.installer.manifest import dump_envelope
from pennello.installer.root import ROLE_NAMES, Role, Root, parse_root


def draft_root(base: Root, expires: datetime, add: Sequence[tuple[str, TrustedKey]] = (),
               remove: Sequence[str] = (), thresholds: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The ``signed`` part of the root that follows ``base``: version + 1, with these changes.

    Args:
        add: (role, key) pairs; a key may be added to both roles.
        remove: key ids dropped from every role (and so revoked on machines that apply it).
        thresholds: new thresholds by role name.

    Raises:
        ManifestFormatError: the result is not a valid root (an empty role, a threshold higher
            than its number of keys, an unknown role or key id).
    """
    keys = {k: v for k, v in base.keys.items() if k not in remove}
    unknown = [k for k in remove if k not in base.keys]
    if unknown:
        raise ManifestFormatError(f"key(s) {unknown} are not in root v{base.version}")
    roles = {name: list(k for k in base.roles[name].keyids if k not in remove) for name in ROLE_NAMES}
    for role, key in add:
        if role not in ROLE_NAMES:
            raise ManifestFormatError(f"unknown role {role!r}; roles are {', '.join(ROLE_NAMES)}")
        keys.setdefault(key.keyid, TrustedKey(key.keyid, key.name, key.public_key, "root"))
        if key.keyid not in roles[role]:
            roles[role].append(key.keyid)
    wanted = {name: base.roles[name].threshold for name in ROLE_NAMES} | dict(thresholds or {})
    if set(wanted) - set(ROLE_NAMES):
        raise ManifestFormatError(f"unknown role(s) {sorted(set(wanted) - set(ROLE_NAMES))}; roles are "
                                  f"{', '.join(ROLE_NAMES)}")
    used = {k for ids in roles.values() for k in ids}
    keys = {k: v for k, v in keys.items() if k in used}
    signed = Root(base.version + 1, expires, keys,
                  {name: Role(tuple(roles[name]), wanted[name]) for name in ROLE_NAMES}).to_signed()
    Root.from_signed(signed)  # refuse to write what no pennello would accept
    return signed


def add_root_signature(envelope: bytes, private_key: Ed25519PrivateKey) -> bytes:
    """Sign a root envelope: replace this key's earlier signature, keep everyone else's.

    Raises:
        ManifestFormatError: not a valid root (nothing invalid is signed).
    """
    _, signed, signatures = parse_root(envelope)
    new = sign_signed(signed, private_key)
    return dump_envelope(signed, [s for s in signatures if s["keyid"] != new["keyid"]] + [new])
