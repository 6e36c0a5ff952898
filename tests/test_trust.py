"""The trust policy against each attack it exists for, with real keys and real state files.

One test per attack, asserting the exact refusal a user would read; plus ``pennello manifest``
sign/verify through the real ``pennello`` command.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib.resources import files

import pytest
from click.testing import CliRunner

from _fixtures_trust import RELEASE_KEYID, envelope, manifest_dict, policy_for, stranger
from pennello.cli import cli
from pennello.config import TrustConfig
from pennello.errors import (BadSignatureError, ConfigError, ExpiredManifestError, ManifestFormatError,
                             RevokedKeyError, RollbackError, ThresholdError, TrustError,
                             UnsafePathError, UnsignedManifestError, UntrustedKeyError)
from pennello.installer.keys import key_id
from pennello.installer.manifest import Manifest, dump_envelope
from pennello.installer.trust import MAX_MANIFEST_BYTES, VERSIONS_FILE, TrustPolicy

SHA = "ab" * 32


def _at(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


# --- what is trusted -------------------------------------------------------------------------

def test_the_shipped_release_key_is_trusted(home):
    policy = policy_for(home)
    keys = policy.keys()
    assert [(k.keyid, k.name, k.origin) for k in keys] == [(RELEASE_KEYID, "pennello-release-2026", "root")]
    assert key_id(keys[0].public_key) == RELEASE_KEYID
    # It comes from the shipped root v1, in both roles, and matches the .pub shipped for people.
    assert (policy.root.origin, policy.root.root.version) == ("shipped", 1)
    assert policy.root.root.roles["root"].keyids == policy.root.root.roles["manifests"].keyids == (RELEASE_KEYID,)
    shipped_pub = (files("pennello.manifests") / "keys" / "pennello-release-2026.pub").read_bytes()
    assert keys[0].pem() == shipped_pub


def test_a_manifest_signed_by_a_trusted_key_is_accepted(home, signer):
    office = signer("office")
    signed = manifest_dict(version=4)
    verified = policy_for(home).verify_detailed(envelope(signed, office))
    assert (verified.manifest.name, verified.manifest.version) == ("demo", 4)
    assert [k.keyid for k in verified.signers] == [office.keyid]


def test_reindenting_an_envelope_keeps_it_valid(home, signer):
    # Signatures cover canonical bytes, not the file's formatting.
    raw = envelope(manifest_dict(), signer("office"))
    compact = json.dumps(json.loads(raw), separators=(",", ":")).encode()
    assert policy_for(home).verify(compact).digest == policy_for(home).verify(raw).digest


def test_a_co_signature_by_an_unknown_key_is_ignored_when_the_threshold_is_met(home, signer):
    raw = envelope(manifest_dict(), stranger(), signer("office"))
    assert policy_for(home).verify(raw).name == "demo"


# --- malformed input -------------------------------------------------------------------------

@pytest.mark.parametrize("raw, message", [
    (b"\xff\xfe not json", "manifest is not valid UTF-8 JSON"),
    (b"[1, 2]", "manifest must be a JSON object with only 'signed' and 'signatures'"),
    (b'{"signed": {}, "signatures": [], "note": "unsigned rider"}',
     "manifest must be a JSON object with only 'signed' and 'signatures'"),
    (b'{"signed": {}, "signatures": {}}', "'signatures' must be a list of {keyid, sig} objects"),
    (b'{"signed": {}, "signed": {}}', "manifest repeats the JSON key 'signed'"),
])
def test_what_is_not_an_envelope_is_refused(home, raw, message):
    with pytest.raises(ManifestFormatError, match="^" + message.replace("{", r"\{").replace("}", r"\}")):
        policy_for(home).verify(raw)


def test_a_bad_field_is_refused_naming_it(home, signer):
    raw = envelope(manifest_dict(version="3"), signer("office"))
    with pytest.raises(ManifestFormatError) as e:
        policy_for(home).verify(raw)
    assert str(e.value) == "manifest 'demo': version must be a positive integer"


def test_a_huge_manifest_is_refused_before_parsing(home):
    with pytest.raises(ManifestFormatError) as e:
        policy_for(home).verify(b" " * (MAX_MANIFEST_BYTES + 1))
    assert str(e.value) == f"manifest is {MAX_MANIFEST_BYTES + 1} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may have"


@pytest.mark.parametrize("path, why", [
    ("../x", "has an empty, '.' or '..' component"),
    ("a/../../x", "has an empty, '.' or '..' component"),
    ("/etc/passwd", "is absolute or not a POSIX path"),
    ("C:/x", "is absolute or not a POSIX path"),
    ("a\\b", "is absolute or not a POSIX path"),
    ("a//b", "has an empty, '.' or '..' component"),
    ("./a", "has an empty, '.' or '..' component"),
    ("a\x00b", "contains control characters"),
    ("nul.json", "has a component Windows cannot store as named"),
    ("manifest.json", "is reserved for the manifest itself"),
])
def test_unsafe_paths_are_refused_even_when_signed(home, signer, path, why):
    raw = envelope(manifest_dict(files=[{"path": path, "sha256": SHA, "size": 1}]), signer("office"))
    with pytest.raises(UnsafePathError) as e:
        policy_for(home).verify(raw)
    assert str(e.value) == f"file path {path!r} {why}"


@pytest.mark.parametrize("entry, message", [
    ({"keyid": "zz" * 32, "sig": "00" * 64}, "signature 1: keyid must be 64 lowercase hex digits, got 'zzzzzzzzzzzzzzzzzzzz'"),
    ({"keyid": "0" * 64, "sig": "abc"}, "signature 1: sig must be 128 lowercase hex digits, got 'abc'"),
    ({"keyid": "0" * 64}, "signature 1 must be an object with exactly 'keyid' and 'sig'"),
])
def test_malformed_signature_entries_are_refused(home, entry, message):
    raw = dump_envelope(manifest_dict(), [entry])
    with pytest.raises(ManifestFormatError) as e:
        policy_for(home).verify(raw)
    assert str(e.value) == message


# --- signatures ------------------------------------------------------------------------------

def test_an_unsigned_manifest_is_refused(home):
    with pytest.raises(UnsignedManifestError) as e:
        policy_for(home).verify(envelope(manifest_dict(version=2)))
    assert str(e.value) == ("manifest 'demo' v2 is not signed; only signed manifests are used "
                            "(a publisher signs with `pennello manifest sign`)")


def test_a_manifest_signed_by_an_unknown_key_is_refused_listing_the_key(home):
    mallory = stranger()
    with pytest.raises(UntrustedKeyError) as e:
        policy_for(home).verify(envelope(manifest_dict(), mallory))
    assert str(e.value) == (f"manifest 'demo' v1 is signed only by keys not trusted here: {mallory.keyid}; "
                            f"if you trust its publisher, confirm the key id with them and "
                            f"`pennello keys trust FILE.pub`")


def test_a_tampered_manifest_is_refused(home, signer):
    office = signer("office")
    signed = manifest_dict()
    signature = office.sign(signed)
    signed["files"][0]["sha256"] = SHA  # the attacker's bytes, under the publisher's signature
    with pytest.raises(BadSignatureError) as e:
        policy_for(home).verify(dump_envelope(signed, [signature]))
    assert str(e.value) == (f"manifest 'demo' v1: the signature by trusted key {office.keyid} (office) "
                            f"does not match; the manifest was changed after it was signed (tampered or damaged)")


def test_a_manifest_signed_by_a_revoked_key_is_refused_after_a_restart(home, signer):
    office = signer("office")
    raw = envelope(manifest_dict(), office)
    policy_for(home).untrust(office.keyid[:8])
    with pytest.raises(RevokedKeyError) as e:
        policy_for(home).verify(raw)
    revoked_at = json.loads((home.state_dir / "revoked-keys.json").read_text())[office.keyid]
    assert str(e.value) == (f"manifest 'demo' v1 is signed by revoked key {office.keyid} (revoked {revoked_at}); "
                            f"ask the publisher for one signed with a current key")
    assert not (home.trusted_keys_dir / "office.pub").exists()


def test_revoking_the_shipped_key_refuses_the_catalog(home):
    raw = (files("pennello.manifests") / "pennello-tiny.json").read_bytes()
    policy_for(home).verify(raw)
    policy_for(home).untrust(RELEASE_KEYID)
    with pytest.raises(RevokedKeyError, match=f"signed by revoked key {RELEASE_KEYID} "
                                              f"\\(pennello-release-2026, revoked "):
        policy_for(home).verify(raw)
    assert policy_for(home).public_key_pem(RELEASE_KEYID) is None


def test_threshold_counts_distinct_keys_not_signatures(home, signer):
    office = signer("office")
    signed = manifest_dict()
    twice = dump_envelope(signed, [office.sign(signed), office.sign(signed)])
    with pytest.raises(ThresholdError) as e:
        policy_for(home, threshold=2).verify(twice)
    assert str(e.value) == "manifest 'demo' v1 needs 2 signatures from trusted keys, has 1"
    both = envelope(signed, office, signer("lab"))
    assert policy_for(home, threshold=2).verify(both).name == "demo"


def test_threshold_error_names_the_signatures_it_did_not_count(home, signer):
    office, mallory = signer("office"), stranger()
    with pytest.raises(ThresholdError) as e:
        policy_for(home, threshold=2).verify(envelope(manifest_dict(), office, mallory))
    assert str(e.value) == (f"manifest 'demo' v1 needs 2 signatures from trusted keys, has 1 "
                            f"(not counted: untrusted {mallory.keyid})")


def test_a_threshold_below_one_is_a_config_error(home):
    with pytest.raises(ConfigError, match="trust.threshold must be at least 1, not 0"):
        TrustPolicy.load(home, TrustConfig(threshold=0))


# --- freeze, endless data --------------------------------------------------------------------

def test_an_expired_manifest_is_refused(home, signer):
    raw = envelope(manifest_dict(version=3, expires="2026-01-01T00:00:00Z"), signer("office"))
    with pytest.raises(ExpiredManifestError) as e:
        policy_for(home).verify(raw, now=_at("2026-01-01T00:00:01Z"))
    assert str(e.value) == ("manifest 'demo' v3 expired on 2026-01-01T00:00:00Z; ask the publisher for "
                            "a fresh one or check this machine's clock")
    assert policy_for(home).verify(raw, now=_at("2025-12-31T23:59:59Z")).version == 3


def test_a_manifest_created_after_it_expires_is_refused(home, signer):
    raw = envelope(manifest_dict(created="2027-01-01T00:00:00Z", expires="2026-06-01T00:00:00Z"),
                   signer("office"))
    with pytest.raises(ManifestFormatError) as e:
        policy_for(home).verify(raw, now=_at("2026-01-01T00:00:00Z"))
    assert str(e.value) == ("manifest 'demo' v1 expires (2026-06-01T00:00:00Z) before it was created "
                            "(2027-01-01T00:00:00Z)")


def test_a_file_larger_than_the_cap_is_refused(home, signer):
    raw = envelope(manifest_dict(files=[{"path": "unet/w.bin", "sha256": SHA, "size": 2049}]), signer("office"))
    with pytest.raises(TrustError) as e:
        policy_for(home, max_file_bytes=2048).verify(raw)
    assert str(e.value) == ("manifest 'demo' v1: file 'unet/w.bin' is 2049 bytes, over the 2048-byte "
                            "limit (trust.max_file_bytes); refusing endless data")
    assert policy_for(home, max_file_bytes=2049).verify(raw).total_size == 2049


# --- rollback and mix-and-match --------------------------------------------------------------

def test_a_rollback_is_refused_after_a_restart(home, signer):
    office = signer("office")
    policy_for(home).verify_and_record(envelope(manifest_dict(version=3), office))
    old = envelope(manifest_dict(version=1), office)
    with pytest.raises(RollbackError) as e:
        policy_for(home).verify(old)  # a new process: the version seen came from disk
    assert str(e.value) == "manifest 'demo' v1 is older than v3 already seen; refusing a rollback"


def test_verify_alone_records_nothing(home, signer):
    office = signer("office")
    policy = policy_for(home)
    policy.verify(envelope(manifest_dict(version=3), office))
    assert policy.seen_version("demo") is None
    assert policy.verify(envelope(manifest_dict(version=1), office)).version == 1


def test_record_never_lowers_the_version(home, signer):
    office = signer("office")
    policy = policy_for(home)
    policy.record(policy.verify(envelope(manifest_dict(version=5), office)))
    policy.record(policy.verify(envelope(manifest_dict(version=7), office)))
    with pytest.raises(RollbackError):
        policy.verify_and_record(envelope(manifest_dict(version=6), office))
    policy.record(Manifest.from_signed(manifest_dict(version=2)))
    assert policy_for(home).seen_version("demo") == 7
    state = json.loads((home.state_dir / VERSIONS_FILE).read_text())
    assert state["demo"]["version"] == 7 and len(state["demo"]["digest"]) == 64


def test_the_same_version_with_other_contents_is_refused(home, signer):
    office = signer("office")
    first = envelope(manifest_dict(version=3), office)
    seen = policy_for(home).verify_and_record(first).digest
    assert policy_for(home).verify(first).version == 3  # the same manifest again is fine
    other = manifest_dict(version=3, files=[{"path": "model_index.json", "sha256": SHA, "size": 2}])
    with pytest.raises(RollbackError) as e:
        policy_for(home).verify(envelope(other, office))
    new = Manifest.from_signed(other).digest
    assert str(e.value) == (f"manifest 'demo' v3 differs from the v3 already seen (digest {new[:16]}… vs "
                            f"{seen[:16]}…); one version must name one manifest, refusing a mix-and-match")


def test_a_machine_locked_version_may_be_locked_again(home, signer):
    # TOFU digests were this machine's, not the publisher's: re-locking is not equivocation.
    office = signer("office")
    policy_for(home).verify_and_record(envelope(manifest_dict(version=3, trust_on_first_use=True), office))
    relocked = manifest_dict(version=3, trust_on_first_use=True,
                             files=[{"path": "model_index.json", "sha256": SHA, "size": 2}])
    assert policy_for(home).verify_and_record(envelope(relocked, office)).files[0].sha256 == SHA


def test_a_damaged_versions_file_is_an_error_not_a_fresh_start(home, signer):
    signed = envelope(manifest_dict(), signer("office"))  # trusted before the policy is read
    (home.state_dir / VERSIONS_FILE).write_text("{not json")
    with pytest.raises(TrustError, match="versions.json is damaged .*restore it from a backup"):
        policy_for(home).verify(signed)


# --- keys through the policy -----------------------------------------------------------------

def test_a_revoked_key_is_not_trusted_again_by_accident(home, signer):
    office = signer("office")
    pem = policy_for(home).public_key_pem(office.keyid)
    policy_for(home).untrust(office.keyid)
    with pytest.raises(RevokedKeyError, match=f"key {office.keyid} was revoked on "):
        policy_for(home).trust(pem, "office-again")
    policy = policy_for(home)
    assert policy.trust(pem, "office-again", unrevoke=True).keyid == office.keyid
    assert policy_for(home).verify(envelope(manifest_dict(), office)).name == "demo"


@pytest.mark.parametrize("typed, message", [
    ("33e3", "'33e3' is not a key id: give at least 8 of its hex digits (see `pennello keys list`)"),
    ("nothex!!", "'nothex!!' is not a key id: give at least 8 of its hex digits (see `pennello keys list`)"),
    ("ffffffff", "key id prefix 'ffffffff' matches no known key; see `pennello keys list`"),
])
def test_untrust_needs_a_prefix_that_names_one_key(home, typed, message):
    with pytest.raises(TrustError) as e:
        policy_for(home).untrust(typed)
    assert str(e.value) == message


def test_a_full_unknown_keyid_can_be_revoked_in_advance(home):
    mallory = stranger()
    policy_for(home).untrust(mallory.keyid)
    with pytest.raises(RevokedKeyError):
        policy_for(home).verify(envelope(manifest_dict(), mallory))


# --- `pennello manifest` ---------------------------------------------------------------------

def test_manifest_sign_then_verify_through_the_cli(home, tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli, ["keys", "generate", "office"]).exit_code == 0
    unsigned = tmp_path / "demo.json"
    unsigned.write_bytes(dump_envelope(manifest_dict(version=2), []))
    out = tmp_path / "signed.json"
    signed = runner.invoke(cli, ["manifest", "sign", str(unsigned), "--key", "office", "--out", str(out)])
    assert signed.exit_code == 0, signed.output
    keyid = policy_for(home).keys()[-1].keyid
    assert f"with key {keyid}" in signed.output
    assert json.loads(unsigned.read_bytes())["signatures"] == []  # --out leaves FILE alone

    verified = runner.invoke(cli, ["manifest", "verify", str(out)])
    assert verified.exit_code == 0, verified.output
    assert verified.output.splitlines()[0] == "demo v2: OK"
    assert f"signer   office (user) {keyid}" in verified.output
    assert f"digest   {policy_for(home).verify(out.read_bytes()).digest}" in verified.output


def test_manifest_sign_by_path_replaces_its_own_signature_in_place(home, tmp_path, signer):
    lab = signer("lab")
    path = tmp_path / "demo.json"
    path.write_bytes(envelope(manifest_dict(), lab))
    key_file = home.private_keys_dir / "lab.key"
    for _ in range(2):
        result = CliRunner().invoke(cli, ["manifest", "sign", str(path), "--key", str(key_file)])
        assert result.exit_code == 0, result.output
    assert [s["keyid"] for s in json.loads(path.read_bytes())["signatures"]] == [lab.keyid]


def test_manifest_verify_fails_with_the_reason_and_exit_code_3(home, tmp_path):
    path = tmp_path / "demo.json"
    path.write_bytes(envelope(manifest_dict(), stranger()))
    result = CliRunner().invoke(cli, ["manifest", "verify", str(path)])
    assert result.exit_code == 3
    assert "is signed only by keys not trusted here" in result.output


def test_manifest_sign_refuses_an_invalid_manifest_and_leaves_the_file(home, tmp_path, signer):
    signer("office")
    path = tmp_path / "bad.json"
    before = dump_envelope(manifest_dict(files=[{"path": "../evil", "sha256": SHA, "size": 1}]), [])
    path.write_bytes(before)
    result = CliRunner().invoke(cli, ["manifest", "sign", str(path), "--key", "office"])
    assert result.exit_code == 3 and "file path '../evil' has an empty" in result.output
    assert path.read_bytes() == before
