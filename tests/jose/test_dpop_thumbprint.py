"""Thumbprints (authz.jose.thumbprint): RFC 7638 for JWKs, RFC 8705 ``x5t#S256`` for client
certificates as Envoy delivers them (URL-encoded PEM, XFCC ``Hash=``, hex fingerprint)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import urllib.parse
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.errors import AuthzError
from authz.jose.thumbprint import (
    certificate_thumbprint,
    decode_sha256_thumbprint,
    jwk_thumbprint,
    parse_public_jwk,
    x5t_from_envoy_certificate,
    x5t_from_fingerprint,
    x5t_from_xfcc,
)
from testkit.dpop import b64, new_key, private_jwk, public_jwk

RFC = Path(__file__).parents[1] / "vectors" / "rfc"


def load(name: str) -> dict:
    return json.loads((RFC / name).read_text("utf-8"))


# --- RFC 7638 ------------------------------------------------------------------------------


def test_rfc7638_example():
    """Section 3.1: the RSA key's hash input, SHA-256 octets and thumbprint."""
    vector = load("rfc7638.json")
    parsed = parse_public_jwk(vector["jwk"], "dpop_proof_invalid")
    assert parsed.thumbprint_input == vector["hash_input"]
    assert list(hashlib.sha256(parsed.thumbprint_input.encode()).digest()) == vector["sha256_octets"]
    assert jwk_thumbprint(vector["jwk"]) == vector["thumbprint"]


def test_rfc8037_okp_example():
    vector = load("rfc8037.json")
    assert (
        hashlib.sha256(parse_public_jwk(vector["jwk"], "x").thumbprint_input.encode()).hexdigest()
        == (vector["sha256_hex"])
    )
    assert jwk_thumbprint(vector["jwk"]) == vector["thumbprint"]


def test_rfc9449_example_key():
    vector = load("rfc9449.json")
    assert jwk_thumbprint(vector["jwk"]) == vector["jkt"]


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512", "PS256", "EdDSA", "Ed448"])
def test_thumbprint_agrees_with_joserfc_and_jwcrypto(alg):
    """The same key, three implementations; private members and optional ones do not count."""
    from joserfc import jwk as jjwk
    from jwcrypto import jwk as cjwk

    key = new_key(alg)
    jwk = public_jwk(key)
    ours = jwk_thumbprint(jwk)
    assert ours == jjwk.import_key(jwk).thumbprint()
    assert ours == cjwk.JWK(**jwk).thumbprint()
    assert jwk_thumbprint(private_jwk(key)) == ours
    assert jwk_thumbprint(jwk | {"kid": "k", "alg": alg, "use": "sig"}) == ours
    assert jwk_thumbprint(dict(reversed(list(jwk.items())))) == ours


@pytest.mark.parametrize(
    ("jwk", "fragment"),
    [
        ({"kty": "oct", "k": "AAAA"}, "key type"),
        ({"kty": "ec", "crv": "P-256", "x": "", "y": ""}, "key type"),
        ({"crv": "P-256", "x": "AA", "y": "AA"}, "key type"),
        ({"kty": "EC", "crv": "P-512", "x": "AA", "y": "AA"}, "curve"),
        ({"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA"}, "curve"),
        ({"kty": "EC", "crv": ["P-256"], "x": "AA", "y": "AA"}, "curve"),
        ({"kty": "EC", "crv": "P-256", "x": b64(bytes(32))}, "y is not"),
        ({"kty": "EC", "crv": "P-256", "x": b64(bytes(31)), "y": b64(bytes(32))}, "wrong size"),
        ({"kty": "EC", "crv": "P-256", "x": b64(bytes(33)), "y": b64(bytes(32))}, "wrong size"),
        ({"kty": "EC", "crv": "P-256", "x": b64(bytes(32)) + "=", "y": b64(bytes(32))}, "base64url"),
        (
            {
                "kty": "EC",
                "crv": "P-256",
                "x": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB",
                "y": b64(bytes(32)),
            },
            "base64url",
        ),
        ({"kty": "EC", "crv": "P-256", "x": 5, "y": b64(bytes(32))}, "x is not"),
        ({"kty": "EC", "crv": "P-256", "x": "é" * 43, "y": b64(bytes(32))}, "x is not"),
        ({"kty": "OKP", "crv": "Ed25519", "x": b64(bytes(31))}, "wrong size"),
        ({"kty": "OKP", "crv": "Ed25519"}, "x is not"),
        ({"kty": "OKP", "crv": "Curve25519", "x": b64(bytes(32))}, "curve"),
        ({"kty": "RSA", "n": "", "e": "AQAB"}, "minimal"),
        ({"kty": "RSA", "n": "AKE", "e": "AQAB"}, "minimal"),
        ({"kty": "RSA", "n": "oQ", "e": "AAEAAQ"}, "minimal"),
        ({"kty": "RSA", "n": "oQ"}, "e is not"),
    ],
)
def test_malformed_jwks_are_refused(jwk, fragment):
    """Strict: a wrong or non-canonical member is the caller's code, with a precise detail."""
    with pytest.raises(AuthzError) as caught:
        jwk_thumbprint(jwk, "cnf_unsupported")
    assert caught.value.code == "cnf_unsupported"
    assert fragment in caught.value.detail


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["kty", "crv", "x", "y", "n", "e"]),
        st.sampled_from(["EC", "OKP", "RSA", "P-256", "Ed25519", "AQAB", "AA", "", "AAAA"])
        | st.text(max_size=50)
        | st.integers(),
    )
)
def test_any_jwk_is_a_thumbprint_or_an_authz_error(jwk):
    try:
        value = jwk_thumbprint(jwk)
    except AuthzError as exc:
        code = exc.code
    else:
        code = ""
        assert len(value) == 43
    if code:
        assert code == "dpop_proof_invalid"
        return
    # Whatever was accepted hashes a JSON object that json itself reads back the same.
    parsed = parse_public_jwk(jwk, "x")
    assert json.loads(parsed.thumbprint_input) == {k: jwk[k] for k in json.loads(parsed.thumbprint_input)}


# --- x5t#S256 values ----------------------------------------------------------------------


def test_rfc8705_example_is_not_canonical_and_refused():
    """The RFC's own x5t#S256 carries non-zero padding bits: a negative vector."""
    vector = load("rfc8705.json")
    value = vector["claims"]["cnf"]["x5t#S256"]
    with pytest.raises(AuthzError) as caught:
        decode_sha256_thumbprint(value, "cnf_unsupported")
    assert caught.value.code == "cnf_unsupported"
    twin = decode_sha256_thumbprint(vector["canonical_twin"], "cnf_unsupported")
    assert base64.urlsafe_b64decode(value + "=") == twin
    assert len(twin) == 32


@pytest.mark.parametrize("value", [None, 7, "", "A" * 42, "A" * 44, "A" * 43 + "=", "é" * 43, "+" * 43])
def test_thumbprint_values_must_be_43_canonical_characters(value):
    with pytest.raises(AuthzError) as caught:
        decode_sha256_thumbprint(value, "cnf_unsupported")
    assert caught.value.code == "cnf_unsupported"


# --- certificates -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client.acme.test")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def test_certificate_thumbprint_is_the_der_sha256(certificate):
    der = certificate.public_bytes(serialization.Encoding.DER)
    assert certificate_thumbprint(der) == b64(certificate.fingerprint(hashes.SHA256()))


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


def test_envoy_certificate_fully_url_encoded(certificate):
    """What newer Envoys send: PercentEncoding::urlEncode of the PEM (everything reserved encoded)."""
    value = urllib.parse.quote(_pem(certificate), safe="")
    assert x5t_from_envoy_certificate(value) == b64(certificate.fingerprint(hashes.SHA256()))


def test_envoy_certificate_partly_encoded(certificate):
    """What older Envoys send: only newline, space, "+", "/" and "=" encoded."""
    pem = _pem(certificate)
    table = {"\n": "%0A", " ": "%20", "+": "%2B", "/": "%2F", "=": "%3D"}
    value = "".join(table.get(c, c) for c in pem)
    assert x5t_from_envoy_certificate(value) == b64(certificate.fingerprint(hashes.SHA256()))


def test_envoy_certificate_empty_is_none():
    assert x5t_from_envoy_certificate("") is None


def test_plus_is_not_a_space(certificate):
    """unquote, not unquote_plus: a raw "+" is a base64 character, never a space."""
    pem = _pem(certificate)
    value = urllib.parse.quote(pem, safe="+")
    if "+" in pem:
        assert x5t_from_envoy_certificate(value) == b64(certificate.fingerprint(hashes.SHA256()))


def _refused_certificate(value: str, fragment: str) -> None:
    with pytest.raises(AuthzError) as caught:
        x5t_from_envoy_certificate(value)
    assert caught.value.code == "client_certificate_missing"
    assert fragment in caught.value.detail


def test_malformed_envoy_certificates_are_refused(certificate):
    pem = _pem(certificate)
    quote = lambda text: urllib.parse.quote(text, safe="")  # noqa: E731
    _refused_certificate(quote(pem + pem), "one PEM certificate")
    _refused_certificate(quote(pem.replace("CERTIFICATE", "PUBLIC KEY")), "one PEM certificate")
    _refused_certificate(quote("junk" + pem), "one PEM certificate")
    _refused_certificate(quote(pem) + "%zz", "percent escape")
    _refused_certificate(quote(pem)[:-1] + "%0", "percent escape")
    _refused_certificate("é", "not ASCII")
    _refused_certificate("A" * 40000, "too large")
    body = pem.splitlines()[1]
    _refused_certificate(quote(pem.replace(body, body[:-2] + "!!")), "one PEM certificate")
    _refused_certificate(quote(pem.replace(body, body[:-1] + "=")), "not base64")
    not_der = (
        "-----BEGIN CERTIFICATE-----\n"
        + base64.b64encode(b"hello world!").decode()
        + "\n-----END CERTIFICATE-----\n"
    )
    _refused_certificate(quote(not_der), "DER sequence")


def test_der_sequence_check_wants_exactly_one_sequence(certificate):
    """Trailing bytes after the certificate's SEQUENCE are refused (and so is a short one)."""
    der = certificate.public_bytes(serialization.Encoding.DER)
    short_form = (b"\x30\x05" + bytes(4), b"\x30\x03" + bytes(4), b"\x31\x02\x05\x00")
    for bad in (der + b"\x00", der[:-1], b"\x30\x81\x05" + bytes(5), b"\x30\x80" + der[2:], *short_form):
        text = base64.b64encode(bad).decode()
        lines = "\n".join(text[i : i + 64] for i in range(0, len(text), 64))
        pem = f"-----BEGIN CERTIFICATE-----\n{lines}\n-----END CERTIFICATE-----\n"
        _refused_certificate(urllib.parse.quote(pem, safe=""), "DER sequence")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_certificate_value_is_a_thumbprint_none_or_an_authz_error(value):
    code = "client_certificate_missing"
    try:
        x5t_from_envoy_certificate(value)
    except AuthzError as exc:
        code = exc.code
    assert code == "client_certificate_missing"


# --- XFCC and fingerprints ----------------------------------------------------------------


def test_xfcc_hash_is_the_certificate_thumbprint(certificate):
    """Envoy's Hash= is the lowercase hex SHA-256 of the DER: the same x5t#S256."""
    digest = certificate.fingerprint(hashes.SHA256())
    xfcc = f'By=spiffe://acme/authz;Hash={digest.hex()};Subject="CN=client,O=Acme; Inc.";URI=spiffe://acme/c'
    assert x5t_from_xfcc(xfcc) == b64(digest)
    assert x5t_from_xfcc(f"hash={digest.hex()}") == b64(digest)  # keys are case-insensitive
    assert x5t_from_fingerprint(digest.hex()) == b64(digest)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("Hash=" + "a" * 64 + ",Hash=" + "b" * 64, "more than one element"),  # a client's XFCC forwarded
        ("By=x,By=y;Hash=" + "a" * 64, "more than one element"),
        ("Hash=" + "a" * 64 + ";Hash=" + "a" * 64, "not exactly one Hash"),
        ("By=spiffe://x", "not exactly one Hash"),
        ("Hash=" + "A" * 64, "64 lowercase hex"),
        ("Hash=" + "a" * 63, "64 lowercase hex"),
        ('Hash="' + "a" * 64 + '"', "64 lowercase hex"),
        ("Hash=", "Hash is empty"),
        ("Hash=-", "Hash is empty"),
        ('Subject="CN=x;Hash=' + "a" * 64, "unterminated quote"),
        ('Subject="x\\";Hash=' + "a" * 64, "unterminated quote"),
        ("Hash=" + "a" * 64 + ";", "malformed pair"),
        ("Hash=" + "a" * 64 + ";;By=x", "malformed pair"),
        ("Hash=" + "a" * 64 + ";Key With Space=x", "malformed pair"),
        ("", "malformed pair"),
        ("é", "not ASCII"),
        ("By=" + "x" * 70000 + ";Hash=" + "a" * 64, "too large"),
    ],
)
def test_malformed_xfcc_is_refused(value, fragment):
    with pytest.raises(AuthzError) as caught:
        x5t_from_xfcc(value)
    assert caught.value.code == "client_certificate_missing"
    assert fragment in caught.value.detail


def test_quoted_values_may_hold_separators():
    digest = "c" * 64
    assert x5t_from_xfcc(f'Subject="a,b;c=d \\"q\\"";Hash={digest};DNS=x') == b64(bytes.fromhex(digest))


@pytest.mark.parametrize("value", ["", "-"])
def test_fingerprint_absent(value):
    """What Envoy's formatter gives without a client certificate: no certificate."""
    assert x5t_from_fingerprint(value) is None


@pytest.mark.parametrize("value", ["a" * 63, "g" * 64, "A" * 64, " " + "a" * 64, "a" * 66])
def test_fingerprint_malformed(value):
    with pytest.raises(AuthzError) as caught:
        x5t_from_fingerprint(value)
    assert caught.value.code == "client_certificate_missing"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('Hash=ab0,;"\\ xBy')), max_size=120))
def test_any_xfcc_is_a_thumbprint_or_an_authz_error(value):
    try:
        result = x5t_from_xfcc(value)
    except AuthzError as exc:
        code = exc.code
    else:
        code = ""
        assert len(result) == 43
    assert code in ("", "client_certificate_missing")
