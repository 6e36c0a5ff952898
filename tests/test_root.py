"""Root rotation as TUF does it (spec §5.3; python-tuf's test_updater_key_rotations), with real keys.

Each test ships its own root v1 (the package's shipped root is replaced by monkeypatching
``shipped_root_raw``: the release private key never comes near the tests), applies later roots
the way ``pennello keys root update`` does, and asserts the exact refusal a user would read,
what was persisted, and what a fresh process then trusts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from _fixtures_installer import load_script
from _fixtures_trust import envelope, manifest_dict, policy_for
from pennello.cli import cli
from pennello.errors import (BadSignatureError, ExpiredManifestError, RevokedKeyError, RollbackError,
                             ThresholdError, TrustError, UntrustedKeyError)
from pennello.installer import root as rootring
from pennello.installer.keys import key_id, public_pem, raw_public_bytes, sign_signed
from pennello.installer.manifest import dump_envelope
from pennello.installer.root import MAX_ROOT_UPDATES, load_trusted_root, update_root

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Key:
    """A throwaway Ed25519 key with a name, as a root lists it."""

    name: str
    private_key: Ed25519PrivateKey

    @property
    def keyid(self) -> str:
        return key_id(self.private_key.public_key())


def keys(*names: str) -> list[Key]:
    return [Key(name, Ed25519PrivateKey.generate()) for name in names]


def root_signed(version: int, root_keys: list[Key], threshold: int = 1, manifest_keys: list[Key] | None = None,
                manifest_threshold: int = 1, expires: str = "2099-01-01T00:00:00Z") -> dict:
    manifest_keys = root_keys if manifest_keys is None else manifest_keys
    listed = {k.keyid: {"keytype": "ed25519", "public": raw_public_bytes(k.private_key.public_key()).hex(),
                        "name": k.name} for k in [*root_keys, *manifest_keys]}
    return {"_type": "pennello-root", "spec_version": 1, "version": version, "expires": expires, "keys": listed,
            "roles": {"root": {"keyids": [k.keyid for k in root_keys], "threshold": threshold},
                      "manifests": {"keyids": [k.keyid for k in manifest_keys], "threshold": manifest_threshold}}}


def signed_by(signed: dict, *signers: Key) -> bytes:
    return dump_envelope(signed, [sign_signed(signed, k.private_key) for k in signers])


def manifest_by(*signers: Key, version: int = 1) -> bytes:
    signed = manifest_dict(version=version)
    return dump_envelope(signed, [sign_signed(signed, k.private_key) for k in signers])


@pytest.fixture
def ship(monkeypatch):
    """``ship(raw)``: make ``raw`` the root that ships with pennello, for this test."""
    def install(raw: bytes) -> bytes:
        monkeypatch.setattr(rootring, "shipped_root_raw", lambda: raw)
        return raw
    return install


def trusted_version(home) -> int:
    return load_trusted_root(home).root.version  # read from disk, as a new process would


# --- the chain -------------------------------------------------------------------------------

def test_a_valid_chain_1_2_3_is_applied_in_order_and_persisted(home, ship):
    a, b, c = keys("a", "b", "c")
    ship(signed_by(root_signed(1, [a]), a))
    v2 = signed_by(root_signed(2, [b]), a, b)  # rotate the root key: old and new sign
    v3 = signed_by(root_signed(3, [b], manifest_keys=[c]), b)  # a new manifest key, same root key
    with pytest.raises(UntrustedKeyError):
        policy_for(home).verify(manifest_by(c))

    applied = [r.version for r in update_root(home, [v3, v2, signed_by(root_signed(1, [a]), a)], now=NOW)]
    assert applied == [2, 3]  # any order; the older v1 is skipped
    assert (home.state_dir / "root.json").read_bytes() == v3
    assert (trusted_version(home), load_trusted_root(home).origin) == (3, "updated")
    assert policy_for(home).verify(manifest_by(c)).name == "demo"
    assert update_root(home, [v3], now=NOW) == []  # the same root again: nothing to do


def test_an_expired_intermediate_root_is_fine(home, ship):
    a, b = keys("a", "b")
    ship(signed_by(root_signed(1, [a]), a))
    v2 = signed_by(root_signed(2, [b], expires="2020-01-01T00:00:00Z"), a, b)
    v3 = signed_by(root_signed(3, [b]), b)
    assert [r.version for r in update_root(home, [v2, v3], now=NOW)] == [2, 3]


def test_a_skipped_version_is_refused(home, ship):
    a, = keys("a")
    ship(signed_by(root_signed(1, [a]), a))
    with pytest.raises(TrustError) as e:
        update_root(home, [signed_by(root_signed(3, [a]), a)], now=NOW)
    assert str(e.value) == ("root v3 does not follow the trusted root v1: the next root must be v2; "
                            "give every root in between, in order")
    assert not (home.state_dir / "root.json").exists()


def test_a_root_signed_only_by_the_new_keys_is_refused(home, ship):
    a, b = keys("a", "b")
    ship(signed_by(root_signed(1, [a]), a))
    with pytest.raises(ThresholdError) as e:
        update_root(home, [signed_by(root_signed(2, [b]), b)], now=NOW)
    assert str(e.value) == ("root v2 has 0 of the 1 signature(s) it needs by root keys of the trusted root v1; "
                            "a new root must be signed by the old root's keys and by its own")
    assert trusted_version(home) == 1


def test_a_root_signed_only_by_the_old_keys_is_refused(home, ship):
    a, b = keys("a", "b")
    ship(signed_by(root_signed(1, [a]), a))
    with pytest.raises(ThresholdError) as e:
        update_root(home, [signed_by(root_signed(2, [b]), a)], now=NOW)
    assert str(e.value) == ("root v2 has 0 of the 1 signature(s) it needs by its own root keys; "
                            "a new root must be signed by the old root's keys and by its own")
    assert trusted_version(home) == 1


def test_a_threshold_change_2_of_3_to_1_of_1_and_back(home, ship):
    a, b, c, d = keys("a", "b", "c", "d")
    ship(signed_by(root_signed(1, [a, b, c], threshold=2), a, b))
    one_of_one = root_signed(2, [d])
    with pytest.raises(ThresholdError) as e:  # one old key is not the old threshold
        update_root(home, [signed_by(one_of_one, a, d)], now=NOW)
    assert str(e.value) == ("root v2 has 1 of the 2 signature(s) it needs by root keys of the trusted root v1; "
                            "a new root must be signed by the old root's keys and by its own")
    assert [r.version for r in update_root(home, [signed_by(one_of_one, a, c, d)], now=NOW)] == [2]

    back = root_signed(3, [a, b, c], threshold=2)
    with pytest.raises(ThresholdError) as e:  # the old 1-of-1 signed, but not 2 of the new root's keys
        update_root(home, [signed_by(back, d, b)], now=NOW)
    assert str(e.value) == ("root v3 has 1 of the 2 signature(s) it needs by its own root keys; "
                            "a new root must be signed by the old root's keys and by its own")
    assert [r.version for r in update_root(home, [signed_by(back, d, b, c)], now=NOW)] == [3]
    assert load_trusted_root(home).root.roles["root"].threshold == 2


def test_a_bad_signature_by_a_root_key_refuses_the_root(home, ship):
    a, b = keys("a", "b")
    ship(signed_by(root_signed(1, [a]), a))
    signed = root_signed(2, [a])
    signature = sign_signed(signed, a.private_key)
    signed["roles"]["manifests"]["keyids"] = [b.keyid]  # the attacker's key, under a's signature
    signed["keys"][b.keyid] = {"keytype": "ed25519", "name": "b",
                               "public": raw_public_bytes(b.private_key.public_key()).hex()}
    with pytest.raises(BadSignatureError) as e:
        update_root(home, [dump_envelope(signed, [signature])], now=NOW)
    assert str(e.value) == (f"root v2: the signature by root key {a.keyid} (a) does not match; the root was "
                            f"changed after it was signed (tampered or damaged)")


def test_a_bad_link_stops_the_chain_but_keeps_the_roots_before_it(home, ship):
    a, b = keys("a", "b")
    ship(signed_by(root_signed(1, [a]), a))
    v2 = signed_by(root_signed(2, [a], manifest_keys=[b]), a)
    v3 = signed_by(root_signed(3, [b]), b)  # not signed by v2's root key
    with pytest.raises(ThresholdError, match="^root v3 has 0 of the 1 signature"):
        update_root(home, [v2, v3], now=NOW)
    assert trusted_version(home) == 2  # v2 revoked nothing yet, but it may have: it is kept


# --- revocation ------------------------------------------------------------------------------

def test_a_key_dropped_by_a_root_update_is_revoked_even_where_it_was_trusted_locally(home, ship, tmp_path):
    root, old, new = keys("root", "old-signer", "new-signer")
    ship(signed_by(root_signed(1, [root], manifest_keys=[old]), root))
    raw = manifest_by(old)
    policy_for(home).trust(public_pem(old.private_key.public_key()), "old-copy")  # also trusted here
    assert policy_for(home).verify(raw).name == "demo"

    update_root(home, [signed_by(root_signed(2, [root], manifest_keys=[new]), root)], now=NOW)  # one update
    with pytest.raises(RevokedKeyError) as e:
        policy_for(home).verify(raw)
    assert str(e.value) == (f"manifest 'demo' v1 is signed by key {old.keyid} (old-signer), which the trusted "
                            f"root v2 dropped (revoked by its publisher); ask the publisher for one signed "
                            f"with a current key")
    assert policy_for(home).verify(manifest_by(new)).name == "demo"
    assert json.loads((home.state_dir / "root-retired.json").read_text()) == \
        {old.keyid: {"version": 2, "name": "old-signer"}}

    pem = public_pem(old.private_key.public_key())
    with pytest.raises(RevokedKeyError) as e:  # a bundle cannot bring it back
        policy_for(home).trust(pem, "again")
    assert str(e.value) == (f"key {old.keyid} was dropped by the trusted root v2 (revoked by its publisher); "
                            f"trust it again only if you are sure it is safe (`pennello keys trust --unrevoke`)")
    policy_for(home).trust(pem, "again", unrevoke=True)  # the admin's decision, on this machine only
    assert policy_for(home).verify(raw).name == "demo"


def test_a_root_key_that_is_not_a_manifest_key_cannot_sign_manifests(home, ship):
    offline, online = keys("offline-root", "online")
    ship(signed_by(root_signed(1, [offline], manifest_keys=[online]), offline))
    with pytest.raises(UntrustedKeyError, match=f"^manifest 'demo' v1 is signed only by keys not trusted here: "
                                                f"{offline.keyid};"):
        policy_for(home).verify(manifest_by(offline))


def test_the_publishers_threshold_applies_unless_a_local_key_signed(home, ship, signer):
    root, m1, m2 = keys("root", "m1", "m2")
    ship(signed_by(root_signed(1, [root], manifest_keys=[m1, m2], manifest_threshold=2), root))
    with pytest.raises(ThresholdError) as e:
        policy_for(home).verify(manifest_by(m1))
    assert str(e.value) == ("manifest 'demo' v1 needs 2 signatures from the publisher's keys (the manifests "
                            "role of trusted root v1), has 1")
    assert policy_for(home).verify(manifest_by(m1, m2)).name == "demo"
    office = signer("office")  # the admin's own key: this machine's rule, trust.threshold = 1
    assert policy_for(home).verify(envelope(manifest_dict(), office)).name == "demo"


# --- rollback, endless chains, expiry --------------------------------------------------------

def test_a_root_rollback_is_refused_after_a_restart(home, ship):
    a, = keys("a")
    v1 = ship(signed_by(root_signed(1, [a]), a))
    update_root(home, [signed_by(root_signed(2, [a]), a), signed_by(root_signed(3, [a]), a)], now=NOW)
    with pytest.raises(RollbackError) as e:
        update_root(home, [signed_by(root_signed(2, [a]), a)], now=NOW)
    assert str(e.value) == "root v2 is not newer than the trusted root v3; refusing a rollback"
    with pytest.raises(RollbackError) as e:
        update_root(home, [signed_by(root_signed(3, [a], expires="2098-01-01T00:00:00Z"), a)], now=NOW)
    assert str(e.value) == "root v3 differs from the trusted root v3; one version must name one root, refusing it"
    assert load_trusted_root(home).raw != v1 and trusted_version(home) == 3  # the shipped v1 does not win


def test_a_chain_longer_than_the_cap_is_refused_before_anything_is_applied(home, ship):
    a, = keys("a")
    ship(signed_by(root_signed(1, [a]), a))
    chain = [signed_by(root_signed(v, [a]), a) for v in range(2, MAX_ROOT_UPDATES + 3)]
    assert len(chain) == MAX_ROOT_UPDATES + 1
    with pytest.raises(TrustError) as e:
        update_root(home, chain, now=NOW)
    assert str(e.value) == (f"{MAX_ROOT_UPDATES + 1} roots given; at most {MAX_ROOT_UPDATES} root updates are "
                            f"applied at once (a longer chain is refused as endless data): apply them in steps")
    assert trusted_version(home) == 1
    assert len(update_root(home, chain[:MAX_ROOT_UPDATES], now=NOW)) == MAX_ROOT_UPDATES


def test_an_expired_final_root_is_recorded_but_its_keys_sign_nothing(home, ship, signer):
    a, = keys("a")
    ship(signed_by(root_signed(1, [a]), a))
    expired = signed_by(root_signed(2, [a], expires="2026-01-01T00:00:00Z"), a)
    with pytest.raises(ExpiredManifestError) as e:
        update_root(home, [expired], now=NOW)
    assert str(e.value) == ("root v2 expired on 2026-01-01T00:00:00Z; it is now the trusted root (a newer one "
                            "must follow it), but nothing signed by the publisher's keys is used until "
                            "`pennello keys root update` applies a newer root (or this machine's clock is fixed)")
    assert trusted_version(home) == 2  # v1 was superseded: going back to it would undo v2
    with pytest.raises(ExpiredManifestError) as e:
        policy_for(home).verify(manifest_by(a))
    assert str(e.value) == ("manifest 'demo' v1 is signed by the publisher's keys of the trusted root v2, which "
                            "expired on 2026-01-01T00:00:00Z; apply a newer root (`pennello keys root update "
                            "FILE`) or check this machine's clock")
    by_office = envelope(manifest_dict(), signer("office"))
    assert policy_for(home).verify(by_office).name == "demo"  # keys added here still work
    update_root(home, [signed_by(root_signed(3, [a]), a)], now=NOW)
    assert policy_for(home).verify(manifest_by(a)).name == "demo"


def test_two_different_roots_for_one_version_are_both_refused(home, ship):
    a, b = keys("a", "b")
    ship(signed_by(root_signed(1, [a]), a))
    with pytest.raises(TrustError) as e:
        update_root(home, [signed_by(root_signed(2, [a]), a), signed_by(root_signed(2, [b]), a, b)], now=NOW)
    assert str(e.value) == "two different roots claim version 2; refusing both (ask the publisher which one is genuine)"


def test_a_damaged_stored_root_is_an_error_not_a_fresh_start(home, ship):
    a, = keys("a")
    ship(signed_by(root_signed(1, [a]), a))
    (home.state_dir / "root.json").write_text("{not json")
    with pytest.raises(TrustError, match=r"root.json is damaged \(root file is not valid UTF-8 JSON: .*\); "
                                         r"restore it from a backup, or delete it to fall back to the shipped "
                                         r"root v1 and apply root updates again$"):
        policy_for(home)


# --- `pennello keys root` --------------------------------------------------------------------

def _key_file(tmp_path, key: Key) -> str:
    path = tmp_path / f"{key.name}.key"
    path.write_bytes(key.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    (tmp_path / f"{key.name}.pub").write_bytes(public_pem(key.private_key.public_key()))
    return str(path)


def test_the_publishers_rotation_through_the_cli(home, ship, tmp_path):
    old, new = keys("release-2026", "release-2027")
    ship(signed_by(root_signed(1, [old]), old))
    run = CliRunner().invoke
    old_key, new_key = _key_file(tmp_path, old), _key_file(tmp_path, new)
    draft = tmp_path / "root-2.json"

    made = run(cli, ["keys", "root", "draft", str(draft), "--remove", old.keyid[:8],
                     "--add", f"root={tmp_path / 'release-2027.pub'}",
                     "--add", f"manifests={tmp_path / 'release-2027.pub'}"])
    assert made.exit_code == 0, made.output
    assert made.output.splitlines()[0] == (
        f"draft root v2 written to {draft} (unsigned): root +{new.keyid[:16]} (release-2027), root "
        f"-{old.keyid[:16]} (release-2026), manifests +{new.keyid[:16]} (release-2027), manifests "
        f"-{old.keyid[:16]} (release-2026)")
    refused = run(cli, ["keys", "root", "update", str(draft)])
    assert refused.exit_code == 3 and "root v2 has 0 of the 1 signature(s)" in refused.output

    for key in (old_key, new_key):
        assert run(cli, ["keys", "root", "sign", str(draft), "--key", key]).exit_code == 0
    applied = run(cli, ["keys", "root", "update", str(draft)])
    assert applied.exit_code == 0, applied.output
    assert applied.output.splitlines()[-1].startswith("trusted root is now v2, expires ")
    shown = run(cli, ["keys", "root", "show"]).output.splitlines()
    assert shown[0].startswith("trusted root v2 (applied here), expires ")
    assert f"    {new.keyid}  release-2027" in shown
    assert shown[-2:] == ["  dropped by root updates (refused):", f"    {old.keyid}  release-2026 (from v2)"]
    listed = run(cli, ["keys", "list"]).output.splitlines()
    assert listed[1].split() == [new.keyid, "release-2027", "root"]
    assert listed[2].split() == [old.keyid, "release-2026", "-", "dropped", "by", "root", "v2"]


def test_keys_root_help_teaches_the_rules(home):
    shown = CliRunner().invoke(cli, ["keys", "root", "--help"]).output
    for phrase in ("exactly one more", "AND of its", "rollback", "keys root update root-2.json",
                   "keys root draft", "keys root sign"):
        assert phrase in " ".join(shown.split()), phrase


def test_the_signing_script_writes_a_root_only_where_told(home, tmp_path):
    from pennello.installer.keys import generate_key
    from pennello.installer.root import parse_root

    sign_catalog = load_script("sign_catalog")
    shipped = sign_catalog.ROOT_PATH.read_bytes()
    generate_key(home, "test-release")
    out, root_out = tmp_path / "catalog", tmp_path / "root.json"
    sign_catalog.main(["--key", "test-release", "--out", str(out)])
    assert not list(out.glob("root*")) and not root_out.exists()

    sign_catalog.main(["--key", "test-release", "--out", str(out), "--root-out", str(root_out)])
    first = root_out.read_bytes()
    assert parse_root(first)[0].version == 1
    sign_catalog.main(["--key", "test-release", "--out", str(out), "--root-out", str(root_out)])
    assert root_out.read_bytes() == first  # nothing changed, nothing re-signed
    assert sign_catalog.ROOT_PATH.read_bytes() == shipped
