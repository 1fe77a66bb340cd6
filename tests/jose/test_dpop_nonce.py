"""Stateless DPoP server nonces (authz.jose.nonce): windows, keys, rotation, the key file."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.errors import ConfigError
from authz.jose.nonce import NONCE_CHARS, NonceIssuer, NonceKey, load_nonce_keys, parse_nonce_keys

A = NonceKey("a", b"A" * 32)
B = NonceKey("b", b"B" * 32)
C = NonceKey("c", b"C" * 32)
W = 120
T0 = 1_760_000_040.0  # an instant inside a window
START = T0 // W * W  # the window's first second


def issuer(*keys: NonceKey, skew: float = 5.0) -> NonceIssuer:
    return NonceIssuer(keys or (A,), W, skew)


def test_format_is_28_nqchar_and_reference_mac():
    """base64url(0x01 || u32be(w) || HMAC-SHA256(K, context || 0x01 || u32be(w))[:16])."""
    nonce = issuer().issue(T0)
    assert len(nonce) == NONCE_CHARS
    assert all(c.isalnum() or c in "-_" for c in nonce)
    raw = base64.urlsafe_b64decode(nonce)
    window = int(T0 // W)
    body = bytes([1]) + window.to_bytes(4, "big")
    expected = hmac.new(A.secret, b"envoy-jwe-authz/dpop-nonce/v1" + body, hashlib.sha256).digest()[:16]
    assert raw == body + expected


def test_same_nonce_on_every_replica_within_a_window():
    one, two = issuer(A, B), issuer(A, C)  # same signing key, other verify-only keys
    assert one.issue(START) == one.issue(START + W - 0.001) == two.issue(START + 3)
    assert one.issue(START + W) != one.issue(START)


@pytest.mark.parametrize(
    ("issued", "checked", "ok"),
    [
        (START, START, True),
        (START, START + W - 0.001, True),  # same window
        (START, START + W, True),  # next window: w - 1
        (START, START + 2 * W - 0.001, True),
        (START, START + 2 * W, False),  # w - 2: expired
        (START, START + 10 * W, False),
        (START + W, START + W - 5, True),  # w + 1 within the skew (a replica ahead of us)
        (START + W, START + W - 5.001, False),
        (START + 2 * W, START + W - 1, False),  # w + 2
    ],
)
def test_windows(issued, checked, ok):
    nonces = issuer()
    assert nonces.verify(nonces.issue(issued), checked) is ok


def test_every_listed_key_verifies_only_the_first_signs():
    old = issuer(A)
    rotating = issuer(B, A)  # step 1 of a rotation: B signs, A still verifies
    assert rotating.verify(old.issue(T0), T0)
    assert old.verify(rotating.issue(T0), T0) is False
    assert issuer(B).verify(old.issue(T0), T0) is False


def test_forged_or_malformed_nonces_are_refused():
    nonces = issuer()
    good = nonces.issue(T0)
    raw = bytearray(base64.urlsafe_b64decode(good))
    raw[-1] ^= 1
    forged = base64.urlsafe_b64encode(bytes(raw)).decode()
    other_version = base64.urlsafe_b64encode(bytes([2]) + bytes(raw[1:])).decode()
    # The standard alphabet ("+", "/" for "-", "_"): find a window whose nonce has one.
    window_start = next(
        t for t in range(int(START), int(START) + 500 * W, W) if set(nonces.issue(t)) & set("-_")
    )
    urlsafe = nonces.issue(window_start)
    standard = urlsafe.replace("-", "+").replace("_", "/")
    assert nonces.verify(urlsafe, window_start)
    assert nonces.verify(standard, window_start) is False
    for bad in (forged, other_version, good[:-1], good + "A", good.swapcase(), "", "é" * 28):
        assert bad != good
        assert nonces.verify(bad, T0) is False, bad
    assert nonces.verify(good, T0)


def test_other_versions_are_refused_before_any_mac(monkeypatch):
    """A nonce of another format version costs no HMAC (and would not match one anyway)."""
    nonces = issuer(A, B)
    raw = base64.urlsafe_b64decode(nonces.issue(T0))
    other = base64.urlsafe_b64encode(bytes([2]) + raw[1:]).decode()
    calls: list[bytes] = []
    real = hmac.digest
    monkeypatch.setattr(hmac, "digest", lambda *a: calls.append(a[1]) or real(*a))
    assert nonces.verify(other, T0) is False
    assert calls == []
    assert nonces.verify(nonces.issue(T0), T0)
    assert calls


def test_the_tag_covers_the_window():
    """A nonce's window bytes changed to the current window: the tag no longer fits."""
    nonces = issuer()
    raw = base64.urlsafe_b64decode(nonces.issue(START - 5 * W))
    moved = raw[:1] + int(T0 // W).to_bytes(4, "big") + raw[5:]
    assert nonces.verify(base64.urlsafe_b64encode(moved).decode(), T0) is False


def test_compare_is_constant_time(monkeypatch):
    """hmac.compare_digest decides, for every key (no early == on secrets)."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    nonces = issuer(A, B, C)
    assert nonces.verify(nonces.issue(T0), T0)
    assert len(calls) == 3


@pytest.mark.parametrize(
    ("issued", "checked", "keys", "refresh"),
    [
        (START, START + 10, (A,), False),  # current window, signing key: fine
        (START, START + W + 1, (A,), True),  # previous window: at most one lifetime left
        (START + W, START + W - 2, (A,), False),  # next window (a replica ahead)
        (START, START + 10, (B, A), True),  # verified under a key that no longer signs
    ],
)
def test_needs_refresh(issued, checked, keys, refresh):
    nonce = issuer(A).issue(issued)
    nonces = issuer(*keys)
    assert nonces.verify(nonce, checked)
    assert nonces.needs_refresh(nonce, checked) is refresh


def test_needs_refresh_for_garbage():
    assert issuer().needs_refresh("nope", T0)


def test_successor_keeps_the_dropped_signing_key_for_two_lifetimes():
    """A one-step key replacement: nonces of the old key keep working for their whole life."""
    before = issuer(A, B)
    nonce = before.issue(T0)
    after = before.successor([C], now=T0)
    assert after.verify(nonce, T0 + 1)
    assert after.verify(nonce, START + 2 * W - 0.5)
    assert after.retired == ((A, T0 + 2 * W),)
    assert after.issue(T0) == issuer(C).issue(T0)
    # B never signed here: no nonce of ours used it, so it goes at once.
    assert after.verify(issuer(B).issue(T0), T0) is False


def test_retired_key_is_rejected_after_its_time():
    before = issuer(A)
    after = before.successor([C], now=START)
    nonce = issuer(A).issue(START + W)  # someone still minting with A later (a stale replica)
    assert after.verify(nonce, START + W + 1)
    assert after.verify(nonce, START + 2 * W) is False  # retired until START + 2W


def test_successor_chain_forgets_expired_retirees_and_readded_keys():
    first = issuer(A).successor([B], now=T0)
    second = first.successor([C], now=T0 + 3 * W)
    assert [k.kid for k, _ in second.retired] == ["b"]  # A expired, B just retired
    third = second.successor([B], now=T0 + 3 * W + 1)
    assert [k.kid for k, _ in third.retired] == ["c"]  # B is back in the file: not retired; C signed


def test_constructor_rules():
    with pytest.raises(ValueError):  # noqa: PT011
        NonceIssuer((), W)
    with pytest.raises(ValueError):  # noqa: PT011
        NonceIssuer((A,), 0)
    with pytest.raises(ValueError):  # noqa: PT011
        NonceIssuer((A,), 10, 10)


def test_secrets_are_not_in_reprs():
    assert "AAAA" not in repr(A)
    assert "AAAA" not in repr(issuer(A))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.floats(min_value=0, max_value=4e9))
def test_any_text_is_accepted_or_not_never_an_exception(text, now):
    assert issuer().verify(text, now) in (True, False)


# --- key file -----------------------------------------------------------------------------


def _jwks(*keys: dict) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


def _k(secret: bytes) -> str:
    return base64.urlsafe_b64encode(secret).rstrip(b"=").decode()


GOOD = {"kty": "oct", "kid": "n1", "k": _k(b"x" * 32), "alg": "HS256", "use": "sig"}


def test_key_file_loads_in_order(tmp_path):
    path = tmp_path / "nonce.jwks.json"
    second = GOOD | {"kid": "n2", "k": _k(b"y" * 48)}
    path.write_bytes(_jwks(GOOD, second))
    keys = load_nonce_keys(path)
    assert [k.kid for k in keys] == ["n1", "n2"]
    assert keys[0].secret == b"x" * 32


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\xff", "not UTF-8"),
        (b"{", "not valid JSON"),
        (b"[]", '"keys" list'),
        (_jwks(), "1 to 4 keys"),
        (_jwks(*[GOOD | {"kid": f"n{i}", "k": _k(bytes([i]) * 32)} for i in range(5)]), "1 to 4 keys"),
        (_jwks(GOOD | {"kty": "EC"}), "oct"),
        (_jwks(GOOD | {"alg": "HS512"}), "HS256"),
        (_jwks(GOOD | {"use": "enc"}), '"use"'),
        (_jwks(GOOD | {"kid": ""}), '"kid"'),
        (_jwks(GOOD | {"k": _k(b"x" * 31)}), "at least 32 bytes"),
        (_jwks(GOOD | {"k": _k(b"x" * 32) + "="}), "canonical base64url"),
        (_jwks(GOOD | {"k": 5}), "canonical base64url"),
        (_jwks(GOOD, GOOD | {"k": _k(b"z" * 32)}), "duplicate kid"),
        (_jwks(GOOD, GOOD | {"kid": "n2"}), "same secret"),
        (_jwks("key"), "JSON object"),
    ],
)
def test_bad_key_files_are_config_errors(content, reason):
    with pytest.raises(ConfigError) as caught:
        parse_nonce_keys(content, "keys/nonce.jwks.json")
    assert caught.value.file == "keys/nonce.jwks.json"
    assert reason in caught.value.reason


def test_json_error_names_the_line():
    with pytest.raises(ConfigError) as caught:
        parse_nonce_keys(b'{\n"keys": [\n,]}', "f")
    assert caught.value.line == 3


def test_missing_key_file(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_nonce_keys(tmp_path / "absent.json")
    assert "cannot read" in caught.value.reason
