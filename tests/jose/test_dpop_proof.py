"""DPoP proof verification (authz.jose.dpop): RFC 9449 vectors, other libraries' proofs, one
case per check.

A refused case names the reason code and a fragment of the log detail, so each case
pins the check that refused it: with that check removed, a later one may still refuse
the proof, but with another detail, and the case fails.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz.errors import REASONS, AuthzError, Outcome
from authz.jose.dpop import (
    DEFAULT_ALGORITHMS,
    MAX_PROOF_CHARS,
    SUPPORTED_ALGORITHMS,
    VerifiedProof,
    check_algorithms,
    verify_proof,
)
from authz.jose.thumbprint import jwk_thumbprint
from testkit.dpop import (
    ALL_ALGS,
    HTU,
    NOW,
    TOKEN,
    Expect,
    ath,
    b64,
    b64json,
    claims,
    header,
    joserfc_proof,
    jwcrypto_proof,
    mint,
    new_key,
    private_jwk,
    public_jwk,
    sign,
)

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "rfc" / "rfc9449.json").read_text("utf-8"))
EXPECT = Expect()


def verify(proof: str, **over) -> VerifiedProof:
    return verify_proof(proof, **EXPECT.kwargs(**over))


def refused(proof, code: str, fragment: str, **over) -> AuthzError:
    with pytest.raises(AuthzError) as caught:
        verify(proof, **over)
    assert caught.value.code == code, caught.value
    assert fragment in caught.value.detail, caught.value.detail
    return caught.value


@pytest.fixture(scope="module")
def es256():
    return new_key("ES256")


# --- reason codes ---------------------------------------------------------------------------


def test_new_reason_codes_are_401_but_the_full_cache():
    """The issue's nine codes are 401 / UNAUTHENTICATED; a full replay cache is 503, not the client's fault."""
    for code in (
        "dpop_proof_missing",
        "dpop_proof_invalid",
        "dpop_proof_replayed",
        "dpop_nonce_required",
        "dpop_key_mismatch",
        "client_certificate_missing",
        "client_certificate_mismatch",
        "cnf_unsupported",
        "sender_constraint_required",
    ):
        assert REASONS[code] is Outcome.UNAUTHENTICATED
    assert REASONS["dpop_replay_cache_full"] is Outcome.UNAVAILABLE


# --- RFC 9449's own proofs ------------------------------------------------------------------


def _rfc(name: str) -> dict:
    return next(p for p in VECTORS["proofs"] if p["name"] == name)


def test_rfc9449_resource_request_proof_verifies_with_its_clock():
    """Section 7.1's proof at its own iat: the key's thumbprint is section 6.1's cnf.jkt."""
    case = _rfc("section-7.1-protected-resource")
    result = verify_proof(
        case["proof"],
        method="GET",
        htu={case["htu"]},
        now=case["iat"],
        max_age=60,
        skew=5,
        access_token=case["access_token"],
        algorithms={"ES256"},
    )
    assert result == VerifiedProof(VECTORS["jkt"], case["jti"], case["iat"], None)
    assert result.jkt == VECTORS["cnf_claims"]["claims"]["cnf"]["jkt"]
    assert ath(case["access_token"]) == case["ath"]


@pytest.mark.parametrize("name", ["section-4.1-token-request", "section-5-refresh-request"])
def test_rfc9449_token_request_proofs_verify_without_access_token(name):
    """Sections 4.1 and 5 (no ath: no access token goes with them) verify at their iat."""
    case = _rfc(name)
    result = verify_proof(
        case["proof"],
        method=case["method"],
        htu={case["htu"]},
        now=case["iat"],
        max_age=60,
        skew=5,
        access_token=None,
        algorithms={"ES256"},
    )
    assert (result.jkt, result.jti, result.iat) == (VECTORS["jkt"], case["jti"], case["iat"])


def test_rfc9449_signatures_are_high_s_and_accepted():
    """The 7.1 proof's s is above n/2: high-s ECDSA must pass (the RFC's own examples)."""
    signature = base64.urlsafe_b64decode(_rfc("section-7.1-protected-resource")["proof"].split(".")[2] + "==")
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    assert int.from_bytes(signature[32:], "big") > order // 2


def test_rfc9449_token_request_proof_at_a_resource_lacks_ath():
    """Section 4.1's proof presented with an access token: no ath, refused."""
    case = _rfc("section-4.1-token-request")
    refused(
        case["proof"],
        "dpop_proof_invalid",
        "ath missing",
        method="POST",
        htu={case["htu"]},
        now=case["iat"],
        algorithms={"ES256"},
    )


@pytest.mark.parametrize(
    ("over", "fragment"),
    [
        ({"method": "POST"}, "htm"),
        ({"htu": {"https://resource.example.org/other"}}, "htu"),
        ({"now": 1562262618 + 61}, "iat too old"),
        ({"now": 1562262618 - 6}, "iat in the future"),
        ({"access_token": "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxV"}, "ath"),
        ({"algorithms": {"ES384", "EdDSA"}}, "alg not allowed"),
    ],
)
def test_rfc9449_resource_proof_with_other_expectations_is_refused(over, fragment):
    """The 7.1 proof against another method, URI, clock, token or allow-list."""
    case = _rfc("section-7.1-protected-resource")
    expected = {
        "method": "GET",
        "htu": {case["htu"]},
        "now": case["iat"],
        "max_age": 60,
        "skew": 5,
        "access_token": case["access_token"],
        "algorithms": {"ES256"},
    }
    expected.update(over)
    with pytest.raises(AuthzError) as caught:
        verify_proof(case["proof"], **expected)
    assert caught.value.code == "dpop_proof_invalid"
    assert fragment in caught.value.detail


# --- proofs from our minter and two other libraries ---------------------------------------


@pytest.mark.parametrize("alg", sorted(ALL_ALGS))
def test_proof_of_every_algorithm_verifies(alg):
    """Our own minter (pyca), every supported algorithm: jkt is the key's RFC 7638 thumbprint."""
    key = new_key(alg)
    body = claims()
    result = verify(mint(alg, key, body=body))
    assert result == VerifiedProof(jwk_thumbprint(public_jwk(key)), body["jti"], NOW, None)


@pytest.mark.parametrize("alg", sorted(ALL_ALGS))
def test_joserfc_proofs_verify_with_joserfc_thumbprint(alg):
    """Proofs minted by joserfc (a second JOSE library); its thumbprint is our jkt."""
    proof, thumbprint = joserfc_proof(alg)
    assert verify(proof).jkt == thumbprint


@pytest.mark.parametrize("alg", sorted(ALL_ALGS))
def test_jwcrypto_proofs_verify_with_jwcrypto_thumbprint(alg):
    """Proofs minted by jwcrypto (a third); its thumbprint is our jkt."""
    proof, thumbprint = jwcrypto_proof(alg)
    assert verify(proof).jkt == thumbprint


def test_joserfc_proof_with_nonce():
    """A nonce from the proof reaches the verifier and comes back in the result."""
    proof, _ = joserfc_proof("ES256", nonce="n-1")
    seen: list[str] = []
    result = verify(proof, nonce=lambda n: seen.append(n) is None)
    assert (result.nonce, seen) == ("n-1", ["n-1"])


def test_webcrypto_style_jwk_with_optional_members_is_accepted(es256):
    """ext, key_ops ["verify"], alg, use sig and kid are fine; the thumbprint ignores them."""
    jwk = public_jwk(es256) | {"ext": True, "key_ops": ["verify"], "alg": "ES256", "use": "sig", "kid": "k1"}
    result = verify(mint("ES256", es256, head=header("ES256", es256, jwk=jwk)))
    assert result.jkt == jwk_thumbprint(public_jwk(es256))


def test_unknown_header_and_claim_members_are_ignored(es256):
    """RFC 7515/7519: members we do not know are ignored (kid, exp, a private one)."""
    head = header("ES256", es256, kid="x", x_custom=1)
    verify(mint("ES256", es256, head=head, body=claims(exp=NOW + 10, other="y")))


def test_default_algorithms_leave_out_pkcs1():
    """RS* only by configuration; the defaults are all verifiable."""
    assert set(DEFAULT_ALGORITHMS) <= SUPPORTED_ALGORITHMS
    assert not {"RS256", "RS384", "RS512"} & set(DEFAULT_ALGORITHMS)
    key = new_key("RS256")
    refused(
        mint("RS256", key), "dpop_proof_invalid", "alg not allowed", algorithms=frozenset(DEFAULT_ALGORITHMS)
    )


@pytest.mark.parametrize("names", [["none"], ["HS256"], ["ES256", "HS512"], []])
def test_check_algorithms_refuses_symmetric_none_and_empty(names):
    with pytest.raises(ValueError):  # noqa: PT011 - the message is for the config error
        check_algorithms(names)


def test_check_algorithms_accepts_supported():
    assert check_algorithms(["ES256", "Ed25519"]) == {"ES256", "Ed25519"}


# --- framing and encoding -------------------------------------------------------------------


def _swap_last(segment: str) -> str:
    """The same bytes spelled non-canonically: a non-zero padding bit in the last character."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    assert len(segment) % 4 in (2, 3)
    return segment[:-1] + alphabet[alphabet.index(segment[-1]) | 1]


def test_framing_cases(es256):
    """Size, ASCII, part count, header size: each refused by its own check."""
    good = mint("ES256", es256)
    h, p, s = good.split(".")
    refused(good.encode(), "dpop_proof_invalid", "ASCII string")
    refused("e" * (MAX_PROOF_CHARS + 1), "dpop_proof_invalid", "bounded size")
    refused(good[:-1] + "é", "dpop_proof_invalid", "bounded size")
    refused(f"{h}.{p}", "dpop_proof_invalid", "compact JWS")
    refused(f"{h}.{p}.{s}.{s}", "dpop_proof_invalid", "compact JWS")
    refused(f"{h}.AA.AA.AA.{s}", "dpop_proof_invalid", "compact JWS")  # JWE shape
    refused(json.dumps({"protected": h, "payload": p, "signature": s}), "dpop_proof_invalid", "compact JWS")
    big = mint("ES256", es256, head=header("ES256", es256, pad="x" * 1200))
    refused(big, "dpop_proof_invalid", "header too large")


def test_max_size_proof_is_accepted_and_one_more_is_not(es256):
    """The bound is exact: a proof of MAX_PROOF_CHARS passes (a long claim), one more does not."""

    def sized(kid: int, pad: int) -> str:
        head = header("ES256", es256, kid="k" * kid)
        return mint("ES256", es256, head=head, body=claims(pad="x" * pad))

    base = len(sized(0, 0))
    pad = (MAX_PROOF_CHARS - base) * 3 // 4 - 6

    def exactly(length: int) -> str:
        # A base64url part is never 1 more than a multiple of 4 characters long, so one
        # part cannot reach every total: vary the header's length as well.
        return next(
            p for kid in range(4) for extra in range(12) if len(p := sized(kid, pad + extra)) == length
        )

    verify(exactly(MAX_PROOF_CHARS))
    refused(exactly(MAX_PROOF_CHARS + 1), "dpop_proof_invalid", "bounded size")


@pytest.mark.parametrize("segment", [0, 1, 2])
def test_non_canonical_base64url_is_refused(segment):
    """Each part: the same bytes spelled with non-zero padding bits, or with "=" padding."""
    alg = "ES256"  # a 64-byte signature is 86 characters: a last character with spare bits
    key = new_key(alg)
    for attempt in range(8):
        head = header(alg, key, kid="k" * attempt)
        parts = mint(alg, key, head=head, body=claims(jti="j" * (attempt + 1))).split(".")
        if len(parts[segment]) % 4 in (2, 3):
            break
    swapped = list(parts)
    swapped[segment] = _swap_last(parts[segment])
    assert base64.urlsafe_b64decode(swapped[segment] + "==") == base64.urlsafe_b64decode(
        parts[segment] + "=="
    )
    refused(".".join(swapped), "dpop_proof_invalid", "base64url")
    padded = list(parts)
    padded[segment] += "=" * (-len(parts[segment]) % 4)
    fragment = "base64url" if segment != 2 else "wrong length"
    refused(".".join(padded), "dpop_proof_invalid", fragment)


def test_standard_alphabet_is_refused(es256):
    for _ in range(50):
        proof = mint("ES256", es256)
        signature = proof.split(".")[2]
        if "-" in signature or "_" in signature:
            break
    bad = proof[: proof.rindex(".") + 1] + signature.replace("-", "+").replace("_", "/")
    refused(bad, "dpop_proof_invalid", "base64url")


def test_duplicate_members_are_refused(es256):
    """In the header, in the jwk, in the claims: strict JSON has no duplicate members."""
    jwk = public_jwk(es256)
    head = json.dumps(header("ES256", es256))
    refused(
        mint("ES256", es256, header_json=head[:-1] + ', "typ": "dpop+jwt"}'),
        "dpop_proof_invalid",
        "header is",
    )
    jwk_text = json.dumps(jwk)
    dup_jwk = jwk_text[:-1] + f', "x": "{jwk["x"]}"}}'
    text = f'{{"typ": "dpop+jwt", "alg": "ES256", "jwk": {dup_jwk}}}'
    refused(mint("ES256", es256, header_json=text), "dpop_proof_invalid", "header is")
    body = json.dumps(claims())
    refused(
        mint("ES256", es256, claims_json=body[:-1] + ', "htm": "GET"}'), "dpop_proof_invalid", "claims is"
    )


def test_non_object_json_is_refused(es256):
    refused(mint("ES256", es256, header_json="[]"), "dpop_proof_invalid", "header is")
    refused(mint("ES256", es256, claims_json='"x"'), "dpop_proof_invalid", "claims is")
    refused(mint("ES256", es256, claims_json="{bad"), "dpop_proof_invalid", "claims is")


# --- header ----------------------------------------------------------------------------------


@pytest.mark.parametrize("typ", ["JWT", "DPoP+JWT", "application/dpop+jwt", "dpop+jwt ", ["dpop+jwt"], None])
def test_typ_must_be_exactly_dpop_jwt(es256, typ):
    """Only the canonical spelling; no case folding, no application/ prefix."""
    head = header("ES256", es256, typ=typ)
    refused(mint("ES256", es256, head=head), "dpop_proof_invalid", "typ")


def test_alg_none_is_refused(es256):
    head = {"typ": "dpop+jwt", "alg": "none", "jwk": public_jwk(es256)}
    refused(f"{b64json(head)}.{b64json(claims())}.", "dpop_proof_invalid", "alg not allowed")


def test_alg_hs256_with_oct_jwk_is_refused():
    """A MAC is not a proof of possession: HS256 with a symmetric jwk is refused by alg."""
    import hashlib
    import hmac

    secret = b"s" * 32
    head = {"typ": "dpop+jwt", "alg": "HS256", "jwk": {"kty": "oct", "k": b64(secret)}}
    signing_input = f"{b64json(head)}.{b64json(claims())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    proof = f"{signing_input}.{b64(mac)}"
    refused(proof, "dpop_proof_invalid", "alg not allowed")
    # Even a caller that lists HS256 cannot allow it: it is not a supported algorithm.
    refused(proof, "dpop_proof_invalid", "alg not allowed", algorithms={"HS256", "ES256"})


@pytest.mark.parametrize("alg", [None, 256, "es256", "ES256K"])
def test_alg_missing_or_unknown_is_refused(es256, alg):
    refused(
        mint("ES256", es256, head=header("ES256", es256, alg=alg)), "dpop_proof_invalid", "alg not allowed"
    )


def test_alg_outside_the_allow_list_is_refused():
    key = new_key("ES384")
    refused(mint("ES384", key), "dpop_proof_invalid", "alg not allowed", algorithms={"ES256"})


def test_crit_is_refused(es256):
    head = header("ES256", es256, crit=["exp"], exp=1)
    refused(mint("ES256", es256, head=head), "dpop_proof_invalid", "crit")


@pytest.mark.parametrize("jwk", [None, "key", ["k"], 1])
def test_jwk_missing_or_not_an_object_is_refused(es256, jwk):
    refused(mint("ES256", es256, head=header("ES256", es256, jwk=jwk)), "dpop_proof_invalid", "jwk missing")


@pytest.mark.parametrize("alg", ["ES256", "ES512", "EdDSA", "Ed448"])
def test_private_jwk_is_refused(alg):
    """The full private JWK in the header (liboauth2 CVE-2026-54431): refused by name.

    (A full RSA private JWK does not fit the header bound; each RSA member alone is below.)
    """
    key = new_key(alg)
    refused(
        mint(alg, key, head=header(alg, key, jwk=private_jwk(key))),
        "dpop_proof_invalid",
        "private or symmetric",
    )


@pytest.mark.parametrize("member", ["d", "p", "q", "dp", "dq", "qi", "oth", "k"])
def test_any_private_member_alone_is_refused(member):
    """Each private member name on its own, even with a junk value, on a key that would verify."""
    key = new_key("PS256")
    jwk = public_jwk(key) | {member: "AQAB"}
    refused(
        mint("PS256", key, head=header("PS256", key, jwk=jwk)), "dpop_proof_invalid", "private or symmetric"
    )


@pytest.mark.parametrize("member", ["x5c", "x5u", "x5t", "x5t#S256"])
def test_certificate_members_in_jwk_are_refused(es256, member):
    jwk = public_jwk(es256) | {member: "AA"}
    refused(mint("ES256", es256, head=header("ES256", es256, jwk=jwk)), "dpop_proof_invalid", "certificate")


@pytest.mark.parametrize(
    ("alg", "key_alg", "fragment"),
    [
        ("ES256", "PS256", "key type"),  # RSA jwk with an EC alg
        ("PS256", "ES256", "key type"),  # EC jwk with an RSA alg
        ("ES256", "EdDSA", "key type"),
        ("EdDSA", "ES256", "key type"),
        ("ES256", "ES384", "curve does not fit"),  # P-384 key, ES256
        ("ES384", "ES512", "curve does not fit"),
        ("ES512", "ES256", "curve does not fit"),
        ("Ed25519", "Ed448", "curve does not fit"),
        ("Ed448", "Ed25519", "curve does not fit"),
    ],
)
def test_key_type_and_curve_must_fit_alg(alg, key_alg, fragment):
    """The signature is made with the key's own algorithm, so only the fit check can refuse."""
    key = new_key(key_alg)
    proof = mint(alg, key, head=header(alg, key), sign_alg=key_alg)
    refused(proof, "dpop_proof_invalid", fragment)


def test_x25519_key_is_refused_for_eddsa():
    from cryptography.hazmat.primitives.asymmetric import x25519

    public = x25519.X25519PrivateKey.generate().public_key()
    jwk = {"kty": "OKP", "crv": "X25519", "x": b64(public.public_bytes_raw())}
    signer = new_key("EdDSA")
    proof = mint("EdDSA", signer, head=header("EdDSA", signer, jwk=jwk))
    refused(proof, "dpop_proof_invalid", "curve does not fit")


@pytest.mark.parametrize(
    ("member", "value", "fragment"),
    [
        ("alg", "ES384", "jwk alg"),
        ("use", "enc", "use"),
        ("key_ops", ["sign"], "key_ops"),
        ("key_ops", ["verify", "sign"], "key_ops"),
        ("key_ops", "verify", "key_ops"),
        ("kid", 7, "kid"),
        ("kid", "k" * 129, "kid"),
        ("ext", "true", "ext"),
    ],
)
def test_optional_jwk_members_must_fit_a_public_verification_key(es256, member, value, fragment):
    jwk = public_jwk(es256) | {member: value}
    refused(mint("ES256", es256, head=header("ES256", es256, jwk=jwk)), "dpop_proof_invalid", fragment)


def test_ec_coordinate_of_short_encoding_is_refused():
    """RFC 7518 6.2.1.2: coordinates are full size; a leading zero byte must not be dropped."""
    for _ in range(2000):
        key = ec.generate_private_key(ec.SECP256R1())
        if key.public_key().public_numbers().x < 1 << 248:
            break
    else:
        pytest.fail("no key with a short x in 2000 tries")
    jwk = public_jwk(key)
    short = jwk | {"x": b64(key.public_key().public_numbers().x.to_bytes(31, "big"))}
    verify(mint("ES256", key))
    refused(mint("ES256", key, head=header("ES256", key, jwk=short)), "dpop_proof_invalid", "wrong size")


def test_ec_point_not_on_the_curve_is_refused(es256):
    jwk = public_jwk(es256)
    y = int.from_bytes(base64.urlsafe_b64decode(jwk["y"] + "="), "big")
    off = jwk | {"y": b64(((y + 1) % (1 << 256)).to_bytes(32, "big"))}
    refused(mint("ES256", es256, head=header("ES256", es256, jwk=off)), "dpop_proof_invalid", "not a point")


def _rsa_proof_with(n: int, e: int, *, key=None) -> str:
    key = key or new_key("PS256")
    jwk = {
        "kty": "RSA",
        "n": b64(n.to_bytes((n.bit_length() + 7) // 8, "big")),
        "e": b64(e.to_bytes(3, "big")),
    }
    return mint("PS256", key, head=header("PS256", key, jwk=jwk))


def test_rsa_exponent_must_be_65537():
    key = rsa.generate_private_key(3, 2048)
    numbers = key.public_key().public_numbers()
    jwk = {"kty": "RSA", "n": public_jwk(key)["n"], "e": b64(b"\x03")}
    proof = mint("PS256", key, head=header("PS256", key, jwk=jwk))
    refused(proof, "dpop_proof_invalid", "65537")
    assert numbers.e == 3


@pytest.mark.parametrize("bits", [1024, 1536, 2040])
def test_rsa_modulus_below_2048_bits_is_refused(bits):
    key = rsa.generate_private_key(65537, bits)
    refused(mint("PS256", key), "dpop_proof_invalid", "2048-4096")


def test_rsa_modulus_above_4096_bits_is_refused():
    key = new_key("PS256")
    n = (1 << 4096) | 1  # 4097 bits, odd
    refused(_rsa_proof_with(n, 65537, key=key), "dpop_proof_invalid", "2048-4096")


def test_rsa_even_modulus_is_refused():
    key = new_key("PS256")
    n = key.public_key().public_numbers().n ^ 1
    refused(_rsa_proof_with(n, 65537, key=key), "dpop_proof_invalid", "odd")


def test_rsa_modulus_with_a_leading_zero_octet_is_refused():
    key = new_key("PS256")
    numbers = key.public_key().public_numbers()
    jwk = {"kty": "RSA", "n": b64(b"\x00" + numbers.n.to_bytes(256, "big")), "e": "AQAB"}
    refused(mint("PS256", key, head=header("PS256", key, jwk=jwk)), "dpop_proof_invalid", "minimal")


def test_small_order_ed25519_key_would_verify_any_message_and_is_refused():
    """The identity point and an all-zero-ish signature verify for every message in OpenSSL:
    without the small-order check this forged proof would pass."""
    x = bytes([1]) + bytes(31)
    signature = bytes([1]) + bytes(63)
    public = ed25519.Ed25519PublicKey.from_public_bytes(x)
    public.verify(signature, b"any message at all")  # the trap is real: no exception
    head = {"typ": "dpop+jwt", "alg": "EdDSA", "jwk": {"kty": "OKP", "crv": "Ed25519", "x": b64(x)}}
    proof = f"{b64json(head)}.{b64json(claims())}.{b64(signature)}"
    refused(proof, "dpop_proof_invalid", "small-order")


@pytest.mark.parametrize(
    "hex_x",
    [
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000080",  # identity, sign bit set
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "efffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # y >= p
    ],
)
def test_ed25519_small_order_and_non_canonical_keys_are_refused(hex_x):
    head = {
        "typ": "dpop+jwt",
        "alg": "Ed25519",
        "jwk": {"kty": "OKP", "crv": "Ed25519", "x": b64(bytes.fromhex(hex_x))},
    }
    refused(f"{b64json(head)}.{b64json(claims())}.{b64(bytes(64))}", "dpop_proof_invalid", "small-order")


def test_ed25519_small_order_points_are_the_eight_torsion_points():
    """The list is what it says: each y is on the curve and [8]P is the identity (pure Python)."""
    p = 2**255 - 19
    d = (-121665 * pow(121666, p - 2, p)) % p

    def recover(y: int) -> tuple[int, int] | None:
        u, v = (y * y - 1) % p, (d * y * y + 1) % p
        x2 = u * pow(v, p - 2, p) % p
        x = pow(x2, (p + 3) // 8, p)
        if (x * x - x2) % p:
            x = x * pow(2, (p - 1) // 4, p) % p
        return (x, y) if (x * x - x2) % p == 0 else None

    def add(a, b):
        (x1, y1), (x2, y2) = a, b
        t = d * x1 * x2 * y1 * y2 % p
        return (
            (x1 * y2 + x2 * y1) * pow(1 + t, p - 2, p) % p,
            (y1 * y2 + x1 * x2) * pow(1 - t, p - 2, p) % p,
        )

    from authz.jose import dpop

    for raw in dpop._ED25519_SMALL_ORDER:
        y = int.from_bytes(raw, "little") % p
        point = recover(y)
        assert point is not None
        for _ in range(3):
            point = add(point, point)
        assert point == (0, 1)


@pytest.mark.parametrize("y", [0, 1, 2**448 - 2**224 - 2, 2**448 - 2**224 - 1])
def test_ed448_small_order_and_non_canonical_keys_are_refused(y):
    x = y.to_bytes(56, "little") + b"\x00"
    head = {"typ": "dpop+jwt", "alg": "Ed448", "jwk": {"kty": "OKP", "crv": "Ed448", "x": b64(x)}}
    refused(f"{b64json(head)}.{b64json(claims())}.{b64(bytes(114))}", "dpop_proof_invalid", "small-order")


def test_ed448_last_octet_with_more_than_the_sign_bit_is_refused():
    key = new_key("Ed448")
    jwk = public_jwk(key)
    raw = bytearray(base64.urlsafe_b64decode(jwk["x"] + "="))
    raw[56] |= 0x01
    bad = jwk | {"x": b64(bytes(raw))}
    refused(mint("Ed448", key, head=header("Ed448", key, jwk=bad)), "dpop_proof_invalid", "small-order")


# --- signature -------------------------------------------------------------------------------


def test_signature_by_another_key_is_refused(es256):
    """The jwk of one key, signed by another (the proof claims a key it does not hold)."""
    other = new_key("ES256")
    refused(mint("ES256", es256, signer=other), "dpop_proof_invalid", "does not verify")


def test_payload_changed_after_signing_is_refused(es256):
    h, _, s = mint("ES256", es256).split(".")
    refused(f"{h}.{b64json(claims())}.{s}", "dpop_proof_invalid", "does not verify")


def test_ecdsa_der_signature_is_refused(es256):
    """RFC 7518 3.4: raw R || S only; the DER form (what pyca produces) has another length."""
    h, p, _ = mint("ES256", es256).split(".")
    der = es256.sign(f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256()))
    refused(f"{h}.{p}.{b64(der)}", "dpop_proof_invalid", "wrong length")


@pytest.mark.parametrize("alg", ["ES256", "ES512", "PS256", "Ed25519", "Ed448"])
def test_signature_one_byte_longer_or_shorter_is_refused(alg):
    key = new_key(alg)
    h, p, s = mint(alg, key).split(".")
    raw = base64.urlsafe_b64decode(s + "==")
    zero = bytes(1)
    refused(f"{h}.{p}.{b64(raw + zero)}", "dpop_proof_invalid", "wrong length")
    refused(f"{h}.{p}.{b64(raw[:-1])}", "dpop_proof_invalid", "wrong length")
    refused(f"{h}.{p}.{b64(zero + raw[:-1])}", "dpop_proof_invalid", "does not verify")


def test_ecdsa_zero_signature_is_refused(es256):
    h, p, _ = mint("ES256", es256).split(".")
    refused(f"{h}.{p}.{b64(bytes(64))}", "dpop_proof_invalid", "does not verify")


def test_pss_with_other_salt_length_is_refused():
    """RFC 7518 3.5: the salt is as long as the hash; a max-length salt is another signature."""
    from cryptography.hazmat.primitives.asymmetric import padding

    key = new_key("PS256")
    h, p, _ = mint("PS256", key).split(".")
    signature = key.sign(
        f"{h}.{p}".encode(),
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH),
        hashes.SHA256(),
    )
    refused(f"{h}.{p}.{b64(signature)}", "dpop_proof_invalid", "does not verify")


def test_ps256_proof_signed_pkcs1_is_refused():
    key = new_key("PS256")
    proof = mint("PS256", key, sign_alg="RS256")
    refused(proof, "dpop_proof_invalid", "does not verify")


# --- claims ----------------------------------------------------------------------------------


@pytest.mark.parametrize("jti", [None, "", "j" * 129, "a b", "é", 12, ["x"], "tab\tx"])
def test_jti_must_be_1_to_128_printable_ascii(es256, jti):
    body = claims(jti=jti) if jti is not None else claims(jti=None)
    refused(mint("ES256", es256, body=body), "dpop_proof_invalid", "jti")


def test_jti_of_128_printable_characters_is_accepted(es256):
    jti = "".join(chr(c) for c in range(0x21, 0x7F))[:128].ljust(128, "~")
    assert verify(mint("ES256", es256, body=claims(jti=jti))).jti == jti


@pytest.mark.parametrize("htm", [None, "POST", "get", "GET ", "", 1, "G\x00T"])
def test_htm_must_be_the_request_method(es256, htm):
    refused(mint("ES256", es256, body=claims(htm=htm)), "dpop_proof_invalid", "htm")


def test_htm_is_compared_with_the_request_method_exactly(es256):
    proof = mint("ES256", es256, body=claims(htm="PATCH"))
    verify(proof, method="PATCH")
    refused(proof, "dpop_proof_invalid", "htm", method="patch")


@pytest.mark.parametrize(
    "htu",
    [
        "https://other.acme.test/orders",  # other host
        "https://api.acme.test/orders/1",  # other path
        "https://api.acme.test/orders/",  # trailing slash is another resource
        "http://api.acme.test/orders",  # other scheme
        "https://api.acme.test:8443/orders",  # other port
        "https://api.acme.test/Orders",  # paths are case-sensitive
        "https://api.acme.test/orders?x=1",  # with a query
        "https://api.acme.test/orders#f",  # with a fragment
        "https://user@api.acme.test/orders",  # userinfo
        "/orders",  # relative
        "",
        7,
        None,
    ],
)
def test_htu_must_be_the_target_uri(es256, htu):
    refused(mint("ES256", es256, body=claims(htu=htu)), "dpop_proof_invalid", "htu")


@pytest.mark.parametrize(
    "htu",
    [
        "HTTPS://API.Acme.TEST/orders",
        "https://api.acme.test:443/orders",
        "https://api.acme.test:/orders",
        "https://api.acme.test./orders",
        "https://api.acme.test/%6frders",
        "https://api.acme.test/x/../orders",
        "https://api.acme.test/./orders",
        "https://api.acme.test//orders",
    ],
)
def test_htu_equal_after_normalization_is_accepted(es256, htu):
    verify(mint("ES256", es256, body=claims(htu=htu)))


def test_htu_matches_any_of_the_acceptable_values(es256):
    proof = mint("ES256", es256, body=claims(htu="https://public.acme.test/orders"))
    verify(proof, htu=frozenset({HTU, "https://public.acme.test/orders"}))
    refused(proof, "dpop_proof_invalid", "htu")


def test_htu_path_parameters_follow_the_request_rule(es256):
    proof = mint("ES256", es256, body=claims(htu="https://api.acme.test/orders;v=1"))
    refused(proof, "dpop_proof_invalid", "segment parameters")
    verify(proof, path_parameters=True)


@pytest.mark.parametrize(
    ("iat", "ok"),
    [
        (NOW, True),
        (NOW - 60, True),  # exactly max_age old
        (NOW + 5, True),  # exactly skew ahead
        (NOW - 60.5, False),
        (NOW - 61, False),
        (NOW + 5.001, False),
        (NOW + 6, False),
        (NOW - 30.25, True),  # a fractional NumericDate
    ],
)
def test_iat_window(es256, iat, ok):
    proof = mint("ES256", es256, body=claims(iat=iat))
    if ok:
        assert verify(proof).iat == iat
    else:
        refused(proof, "dpop_proof_invalid", "iat")


@pytest.mark.parametrize("iat", [None, True, str(NOW), [NOW], {"t": NOW}])
def test_iat_must_be_a_number(es256, iat):
    body = claims(iat=iat) if iat is not None else claims(iat=None)
    refused(mint("ES256", es256, body=body), "dpop_proof_invalid", "iat missing or not a number")


def test_ath_missing_wrong_or_not_a_string(es256):
    refused(mint("ES256", es256, body=claims(ath=None)), "dpop_proof_invalid", "ath missing")
    refused(mint("ES256", es256, body=claims(ath=ath("another-token"))), "dpop_proof_invalid", "ath is not")
    refused(mint("ES256", es256, body=claims(ath=7)), "dpop_proof_invalid", "ath missing")
    # Over the token68 alone: the scheme or a space is not part of it.
    refused(mint("ES256", es256, body=claims(ath=ath(f"DPoP {TOKEN}"))), "dpop_proof_invalid", "ath is not")


def test_ath_with_another_token_as_expected_is_refused(es256):
    refused(mint("ES256", es256), "dpop_proof_invalid", "ath is not", access_token=TOKEN + "x")


def test_ath_without_an_access_token_is_refused(es256):
    refused(mint("ES256", es256), "dpop_proof_invalid", "ath without", access_token=None)
    verify(mint("ES256", es256, body=claims(ath=None)), access_token=None)


def test_nonce_required_and_missing(es256):
    error = refused(mint("ES256", es256), "dpop_nonce_required", "nonce missing", nonce=lambda n: True)
    assert error.outcome is Outcome.UNAUTHENTICATED


def test_nonce_required_and_not_accepted(es256):
    proof = mint("ES256", es256, body=claims(nonce="stale"))
    refused(proof, "dpop_nonce_required", "not accepted", nonce=lambda n: False)
    assert verify(proof, nonce=lambda n: n == "stale").nonce == "stale"


@pytest.mark.parametrize("value", ["", "a b", 'a"b', "a\\b", "é", 5, "n" * 257, None])
def test_nonce_must_be_nqchar(es256, value):
    """RFC 9449 8.1: 1*NQCHAR; a JSON null is not an absent nonce."""
    body = claims() | {"nonce": value}
    refused(mint("ES256", es256, body=body), "dpop_proof_invalid", "NQCHAR", nonce=lambda n: True)
    refused(mint("ES256", es256, body=body), "dpop_proof_invalid", "NQCHAR")


def test_nonce_not_required_is_not_checked_nor_returned(es256):
    result = verify(mint("ES256", es256, body=claims(nonce="whatever")))
    assert result.nonce is None


def test_nonce_checker_failure_is_a_deny_not_a_crash(es256):
    def broken(_: str) -> bool:
        raise RuntimeError("boom")

    proof = mint("ES256", es256, body=claims(nonce="n"))
    refused(proof, "dpop_proof_invalid", "unexpected RuntimeError", nonce=broken)


def test_cheap_checks_run_before_the_signature(es256):
    """A proof with a bad signature and a stale iat is refused for the iat: no crypto spent."""
    proof = mint("ES256", es256, body=claims(iat=NOW - 3600), signer=new_key("ES256"))
    refused(proof, "dpop_proof_invalid", "iat too old")


def test_key_cache_does_not_mix_keys():
    """Two keys, interleaved: each proof verifies with its own key only."""
    a, b = new_key("ES256"), new_key("ES256")
    for _ in range(3):
        assert verify(mint("ES256", a)).jkt == jwk_thumbprint(public_jwk(a))
        assert verify(mint("ES256", b)).jkt == jwk_thumbprint(public_jwk(b))
        refused(mint("ES256", a, signer=b), "dpop_proof_invalid", "does not verify")


# --- properties ------------------------------------------------------------------------------

CODES = {"dpop_proof_invalid", "dpop_nonce_required"}


def _outcome(proof, **over) -> str:
    try:
        verify(proof, **over)
    except AuthzError as exc:
        code, detail = exc.code, exc.detail
    else:
        return "ok"
    assert code in CODES
    assert not detail.startswith("unexpected"), detail
    return code


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400) | st.binary(max_size=400).map(lambda b: b.decode("latin-1")))
def test_any_text_is_refused_with_a_dpop_code(text):
    """Any input: an AuthzError with a DPoP code, never another exception nor an unexpected one."""
    assert _outcome(text, nonce=lambda n: True) != "ok"


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    head=st.dictionaries(st.sampled_from(["typ", "alg", "jwk", "crit", "kid"]), _JSON, max_size=5),
    jwk=st.dictionaries(st.sampled_from(["kty", "crv", "x", "y", "n", "e", "alg", "d", "key_ops"]), _JSON),
    body=st.dictionaries(st.sampled_from(["jti", "htm", "htu", "iat", "ath", "nonce"]), _JSON, max_size=6),
    signed=st.booleans(),
)
def test_structured_junk_is_refused_with_a_dpop_code(es256, head, jwk, body, signed):
    """Well-formed JWS of arbitrary header, jwk and claims values: refused cleanly."""
    head = {"typ": "dpop+jwt", "alg": "ES256", **head}
    if "jwk" not in head:
        head["jwk"] = jwk
    signing_input = f"{b64json(head)}.{b64json(body)}"
    signature = sign(es256, "ES256", signing_input.encode()) if signed else bytes(64)
    assert _outcome(f"{signing_input}.{b64(signature)}") != "ok"


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), char=st.sampled_from("AQgw-_xyz09.=+/ \x00é"))
def test_no_single_character_change_of_a_valid_proof_passes(es256, position, char):
    """Each character of a proof is covered: by the signature, or by a canonical encoding."""
    proof = _VALID_PROOFS[position % len(_VALID_PROOFS)]
    index = position % len(proof)
    if proof[index] == char:
        return
    changed = proof[:index] + char + proof[index + 1 :]
    assert _outcome(changed) != "ok"


_VALID_PROOFS: list[str] = []


@pytest.fixture(autouse=True, scope="module")
def _valid_proofs():
    for alg in ("ES256", "EdDSA", "PS256"):
        _VALID_PROOFS.append(mint(alg, new_key(alg)))
    for proof in _VALID_PROOFS:
        verify(proof)
    yield
    _VALID_PROOFS.clear()


def test_ed448_and_ed25519_keys_build_from_exactly_the_jwk():
    """The key that verifies is the jwk's: its x, nothing else (jkt is over the same x)."""
    for private in (ed25519.Ed25519PrivateKey.generate(), ed448.Ed448PrivateKey.generate()):
        alg = "Ed25519" if isinstance(private, ed25519.Ed25519PrivateKey) else "Ed448"
        result = verify(mint(alg, private))
        assert result.jkt == jwk_thumbprint(public_jwk(private))
