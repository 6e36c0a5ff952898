"""Fixtures for trust tests: throwaway Ed25519 signers and signed manifest envelopes.

``signer(name)`` makes a real key with ``pennello keys generate``'s code, so it is trusted in
``home``; ``stranger()`` makes one that is not. ``manifest_dict(**changes)`` is a valid
``signed`` object; ``envelope(signed, *signers)`` signs it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pennello.config import TrustConfig
from pennello.installer.keys import TrustedKey, generate_key, key_id, load_private_key, sign_signed
from pennello.installer.manifest import dump_envelope, example_signed
from pennello.installer.trust import TrustPolicy
from pennello.paths import Paths

RELEASE_KEYID = "33e3ec9e18c333a6e5c35c3b68766711cdda9d28816bf667784679ac85de1b7b"


@dataclass(frozen=True)
class Signer:
    keyid: str
    private_key: Ed25519PrivateKey

    def sign(self, signed: dict[str, Any]) -> dict[str, str]:
        return sign_signed(signed, self.private_key)


def manifest_dict(**changes: Any) -> dict[str, Any]:
    """A valid ``signed`` object named ``demo``, version 1, valid until 2099, with ``changes``."""
    signed = {**example_signed(), "name": "demo", "expires": "2099-01-01T00:00:00Z", **changes}
    return json.loads(json.dumps(signed))  # a deep copy: tests edit nested parts freely


def envelope(signed: dict[str, Any], *signers: Signer) -> bytes:
    return dump_envelope(signed, [s.sign(signed) for s in signers])


def policy_for(paths: Paths, threshold: int = 1, max_file_bytes: int = 1024**3) -> TrustPolicy:
    """A freshly loaded policy: what a new pennello process would see."""
    return TrustPolicy.load(paths, TrustConfig(threshold=threshold, max_file_bytes=max_file_bytes))


@pytest.fixture
def signer(home: Paths) -> Callable[[str], Signer]:
    """``signer(name)``: a new key made by :func:`generate_key`, trusted in ``home``."""
    def make(name: str) -> Signer:
        key: TrustedKey = generate_key(home, name)
        return Signer(key.keyid, load_private_key(name, home))
    return make


def stranger() -> Signer:
    """A key nobody trusts."""
    private_key = Ed25519PrivateKey.generate()
    return Signer(key_id(private_key.public_key()), private_key)
