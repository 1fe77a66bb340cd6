"""Key and certificate thumbprints: RFC 7638 (``cnf.jkt``) and RFC 8705 (``cnf["x5t#S256"]``).

Both are base64url(SHA-256(...)) without padding, 43 characters. A JWK's hash input is
the JSON object of its key type's required members only, in lexicographic order, with
no whitespace (RFC 7638 §3.2-3.3; RFC 8037 §2 for OKP). A certificate's is its DER
(RFC 8705 §3.1), which Envoy hands over as URL-encoded PEM (gRPC door,
``attributes.source.certificate``) or as the lowercase hex SHA-256 of the DER (the
``Hash`` of ``x-forwarded-client-cert``, or ``%DOWNSTREAM_PEER_FINGERPRINT_256%``).
Every parser here is strict: anything malformed is an AuthzError, never a guess.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from authz.errors import AuthzError, Reason
from authz.jose.encoding import b64decode

__all__ = [
    "EC_COORDINATE_BYTES",
    "OKP_KEY_BYTES",
    "PublicJwk",
    "certificate_thumbprint",
    "decode_sha256_thumbprint",
    "jwk_thumbprint",
    "parse_public_jwk",
    "sha256_b64url",
    "x5t_from_envoy_certificate",
    "x5t_from_fingerprint",
    "x5t_from_xfcc",
]

# RFC 7518 6.2.1.2: an EC coordinate is the full size of the curve's field.
EC_COORDINATE_BYTES = {"P-256": 32, "P-384": 48, "P-521": 66}

# RFC 8037 2 and RFC 8032 / RFC 7748: the public key sizes of the OKP curves.
OKP_KEY_BYTES = {"Ed25519": 32, "Ed448": 57, "X25519": 32, "X448": 56}

_THUMBPRINT_CHARS = 43  # 32 bytes, unpadded base64url

_MISSING = Reason.CLIENT_CERTIFICATE_MISSING

# Bounds on what Envoy may send: a leaf certificate of a few KiB, its PEM, percent-encoded.
_MAX_CERT_VALUE = 32768
_MAX_PEM = 16384
_MAX_XFCC = 65536  # Cert= and Chain= (URL-encoded PEMs) may ride along with Hash=

_PEM = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n((?:[A-Za-z0-9+/=]{1,76}\r?\n)+)-----END CERTIFICATE-----(?:\r?\n)?"
)
_PEM_LINE_END = re.compile(rb"\r?\n")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_XFCC_KEY = re.compile(r"[A-Za-z]+")
_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")


def sha256_b64url(data: bytes) -> str:
    """base64url(SHA-256(data)) without padding: the form of ``jkt``, ``x5t#S256`` and ``ath``."""
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class PublicJwk:
    """A JWK's thumbprint members, validated; equal (and hashed) by its RFC 7638 hash input.

    The key material (``x``, ``y`` for EC and OKP; ``n``, ``e`` for RSA) is decoded from
    exactly the members that make ``thumbprint_input``, so a key built from it is the
    key the thumbprint names (PyJWT GHSA-x33g-cr3x-6449 built it from other members).
    """

    kty: str
    crv: str | None
    thumbprint_input: str
    x: bytes = field(default=b"", repr=False, compare=False)
    y: bytes = field(default=b"", repr=False, compare=False)
    n: bytes = field(default=b"", repr=False, compare=False)
    e: bytes = field(default=b"", repr=False, compare=False)

    @property
    def thumbprint(self) -> str:
        return sha256_b64url(self.thumbprint_input.encode("ascii"))


def parse_public_jwk(jwk: Mapping[str, Any], code: Reason) -> PublicJwk:
    """The required members of an EC, OKP or RSA JWK, each strictly checked.

    Only the thumbprint members are read: private and optional members are the caller's
    business. Every accepted value is a known curve name or canonical base64url, so the
    hash input needs no JSON escaping and has exactly one form.
    """
    kty = jwk.get("kty")
    if kty == "EC":
        crv = jwk.get("crv")
        size = EC_COORDINATE_BYTES.get(crv) if isinstance(crv, str) else None
        if crv is None or size is None:
            raise AuthzError(code, "jwk: unsupported EC curve")
        x, y = _member(jwk, "x", code), _member(jwk, "y", code)
        if len(x) != size or len(y) != size:
            raise AuthzError(code, "jwk: EC coordinate of the wrong size")
        text = f'{{"crv":"{crv}","kty":"EC","x":"{jwk["x"]}","y":"{jwk["y"]}"}}'
        return PublicJwk("EC", crv, text, x=x, y=y)
    if kty == "OKP":
        crv = jwk.get("crv")
        size = OKP_KEY_BYTES.get(crv) if isinstance(crv, str) else None
        if crv is None or size is None:
            raise AuthzError(code, "jwk: unsupported OKP curve")
        x = _member(jwk, "x", code)
        if len(x) != size:
            raise AuthzError(code, "jwk: OKP key of the wrong size")
        return PublicJwk("OKP", crv, f'{{"crv":"{crv}","kty":"OKP","x":"{jwk["x"]}"}}', x=x)
    if kty == "RSA":
        n, e = _member(jwk, "n", code), _member(jwk, "e", code)
        # RFC 7518 2 (Base64urlUInt): the minimum number of octets, so one value, one form.
        if not n or not e or n[0] == 0 or e[0] == 0:
            raise AuthzError(code, "jwk: RSA n or e not a minimal unsigned integer")
        return PublicJwk("RSA", None, f'{{"e":"{jwk["e"]}","kty":"RSA","n":"{jwk["n"]}"}}', n=n, e=e)
    raise AuthzError(code, "jwk: unsupported key type")


def jwk_thumbprint(jwk: Mapping[str, Any], code: Reason = Reason.DPOP_PROOF_INVALID) -> str:
    """The RFC 7638 SHA-256 thumbprint of an EC, OKP or RSA JWK (its public part)."""
    return parse_public_jwk(jwk, code).thumbprint


def _member(jwk: Mapping[str, Any], name: str, code: Reason) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str) or not value.isascii():
        raise AuthzError(code, f"jwk: {name} is not a base64url string")
    return b64decode(value.encode("ascii"), code)


def decode_sha256_thumbprint(value: Any, code: Reason) -> bytes:
    """The 32 bytes of a ``jkt`` or ``x5t#S256`` value: 43 canonical base64url characters.

    RFC 8705 3.1's example ``...dN-dg2`` is refused: its last character carries non-zero
    padding bits (the canonical spelling of those bytes ends ``dg0``).
    """
    if not isinstance(value, str) or len(value) != _THUMBPRINT_CHARS or not value.isascii():
        raise AuthzError(code, "not a SHA-256 thumbprint")
    return b64decode(value.encode("ascii"), code)


def certificate_thumbprint(der: bytes) -> str:
    """RFC 8705 ``x5t#S256``: base64url SHA-256 of the certificate's DER."""
    return sha256_b64url(der)


def x5t_from_envoy_certificate(value: str) -> str | None:
    """``x5t#S256`` of the URL-encoded PEM leaf certificate of gRPC ``source.certificate``.

    An empty value (no client certificate, or no TLS) is None. The DER is hashed exactly
    as delivered: parsing and re-encoding would hash our idea of the certificate.
    """
    if not value:
        return None
    if len(value) > _MAX_CERT_VALUE or not value.isascii():
        raise AuthzError(_MISSING, "peer certificate too large or not ASCII")
    pem = _percent_decode(value.encode("ascii"))
    if len(pem) > _MAX_PEM:
        raise AuthzError(_MISSING, "peer certificate too large")
    match = _PEM.fullmatch(pem)
    if match is None:
        raise AuthzError(_MISSING, "peer certificate is not one PEM certificate")
    try:
        der = binascii.a2b_base64(_PEM_LINE_END.sub(b"", match.group(1)), strict_mode=True)
    except binascii.Error:
        raise AuthzError(_MISSING, "peer certificate PEM is not base64") from None
    if not _is_der_sequence(der):
        raise AuthzError(_MISSING, "peer certificate is not a DER sequence")
    return certificate_thumbprint(der)


def _percent_decode(raw: bytes) -> bytes:
    """RFC 3986 percent-decoding that refuses a ``%`` without two hex digits.

    urllib.parse.unquote would keep a bad escape as text and decode ``+``-free input
    leniently; here a bad escape is a malformed value.
    """
    if b"%" not in raw:
        return raw
    out = bytearray()
    i = 0
    while i < len(raw):
        byte = raw[i]
        if byte != 0x25:  # "%"
            out.append(byte)
            i += 1
            continue
        pair = raw[i + 1 : i + 3]
        if len(pair) != 2 or not set(pair) <= _HEXDIGITS:
            raise AuthzError(_MISSING, "peer certificate has a bad percent escape")
        out.append(int(pair, 16))
        i += 3
    return bytes(out)


def _is_der_sequence(der: bytes) -> bool:
    """Whether ``der`` is exactly one DER SEQUENCE (tag and definite length, nothing after).

    A cheap sanity check of what Envoy sent; the content is not parsed.
    """
    if len(der) < 2 or der[0] != 0x30:
        return False
    first = der[1]
    if first < 0x80:
        return len(der) == 2 + first
    octets = first & 0x7F
    if octets == 0 or octets > 4 or len(der) < 2 + octets or der[2] == 0:
        return False
    length = int.from_bytes(der[2 : 2 + octets], "big")
    return length >= 0x80 and len(der) == 2 + octets + length


def x5t_from_fingerprint(value: str) -> str | None:
    """``x5t#S256`` from a lowercase hex SHA-256 of the DER (``%DOWNSTREAM_PEER_FINGERPRINT_256%``).

    Empty or ``-`` (what Envoy's formatters give without a certificate) is None.
    """
    if value in ("", "-"):
        return None
    if _HEX64.fullmatch(value) is None:
        raise AuthzError(_MISSING, "certificate fingerprint is not 64 lowercase hex digits")
    return base64.urlsafe_b64encode(bytes.fromhex(value)).rstrip(b"=").decode("ascii")


def x5t_from_xfcc(value: str) -> str:
    """``x5t#S256`` from an ``x-forwarded-client-cert`` value: exactly one element, one ``Hash``.

    Envoy's format: elements separated by ``,``, key=value pairs by ``;``, keys
    case-insensitive, values with ``,;=`` double-quoted with ``\\"`` escapes. A second
    element means a proxy in front forwarded a client's own XFCC: refused.
    """
    if len(value) > _MAX_XFCC or not value.isascii():
        raise AuthzError(_MISSING, "x-forwarded-client-cert too large or not ASCII")
    hashes = [v for k, v in _xfcc_pairs(value) if k.lower() == "hash"]
    if len(hashes) != 1:
        raise AuthzError(_MISSING, "x-forwarded-client-cert has not exactly one Hash")
    found = x5t_from_fingerprint(hashes[0])
    if found is None:
        raise AuthzError(_MISSING, "x-forwarded-client-cert Hash is empty")
    return found


def _xfcc_pairs(value: str) -> list[tuple[str, str]]:
    fields: list[str] = []
    start, i, quoted = 0, 0, False
    while i < len(value):
        char = value[i]
        if quoted:
            if char == "\\":
                i += 2  # the escaped character, whatever it is
                continue
            if char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == ",":
            raise AuthzError(_MISSING, "x-forwarded-client-cert has more than one element")
        elif char == ";":
            fields.append(value[start:i])
            start = i + 1
        i += 1
    if quoted:
        raise AuthzError(_MISSING, "x-forwarded-client-cert has an unterminated quote")
    fields.append(value[start:])
    pairs: list[tuple[str, str]] = []
    for item in fields:
        key, eq, val = item.partition("=")
        if not eq or _XFCC_KEY.fullmatch(key) is None:
            raise AuthzError(_MISSING, "x-forwarded-client-cert has a malformed pair")
        pairs.append((key, val))
    return pairs
