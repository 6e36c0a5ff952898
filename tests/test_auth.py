"""Pairing and tokens: the pure logic (the access decision, codes, rate limits, the token store).
The same over HTTP on a real server, and the commands, are tests/test_auth_http.py."""

from __future__ import annotations

import json
import threading

import pytest

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
