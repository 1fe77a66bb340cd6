"""Compact JWS verification with keys pinned to one algorithm each; exact ECDSA lengths."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwcrypto.jwa import JWA

from authz.errors import AuthzError, Reason
from authz.jose.encoding import b64decode
from authz.jose.header import check_common_header, parse_header
from authz.jose.keys import SIGNATURE_ALGS, Key, KeyLookup, KeySet

__all__ = ["verify_compact", "verify_signature"]

_SIGNATURE_ALGS = frozenset(SIGNATURE_ALGS)

# RFC 7518 3.4: an ECDSA signature is R || S, each the size of the curve order.
_EC_SIGNATURE_BYTES = {"ES256": 64, "ES384": 96, "ES512": 132}

_ECDSA = {
    "ES256": ec.ECDSA(hashes.SHA256()),
    "ES384": ec.ECDSA(hashes.SHA384()),
    "ES512": ec.ECDSA(hashes.SHA512()),
}

# Stateless jwcrypto algorithm objects, one per name: shared read-only by requests.
_SIGNING = {alg: JWA.signing_alg(alg) for alg in SIGNATURE_ALGS}


def verify_compact(token: str, keyset: KeySet) -> tuple[Mapping[str, Any], bytes, Key]:
    """Verify a compact JWS with a key from ``keyset``; returns header, payload, key."""
    if not token.isascii():
        raise AuthzError(Reason.INNER_TOKEN_MALFORMED)
    parts = token.encode("ascii").split(b".")
    if len(parts) != 3:
        raise AuthzError(Reason.INNER_TOKEN_MALFORMED)
    header = parse_header(parts[0], Reason.INNER_TOKEN_MALFORMED, Reason.INNER_TOKEN_MALFORMED)
    payload = b64decode(parts[1], Reason.INNER_TOKEN_MALFORMED)
    signing_input = b"%s.%s" % (parts[0], parts[1])
    signature = b64decode(parts[2], Reason.INNER_TOKEN_MALFORMED)
    key = verify_signature(header, signing_input, signature, keyset)
    return header, payload, key


def verify_signature(
    header: Mapping[str, Any], signing_input: bytes, signature: bytes, keyset: KeyLookup
) -> Key:
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in _SIGNATURE_ALGS:
        raise AuthzError(Reason.SIGNATURE_ALG_NOT_ALLOWED)
    check_common_header(header, Reason.INNER_TOKEN_MALFORMED)
    candidates = keyset.select(header.get("kid"), alg)
    if not candidates:
        raise AuthzError(Reason.SIGNING_KEY_UNKNOWN)
    expected_len = _EC_SIGNATURE_BYTES.get(alg)
    if expected_len is not None:
        if len(signature) != expected_len:
            raise AuthzError(Reason.SIGNATURE_INVALID, "ECDSA signature of the wrong length")
        half = expected_len // 2
        der = encode_dss_signature(
            int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
        )
        ecdsa = _ECDSA[alg]
        for key in candidates:
            try:
                key.material.verify(der, signing_input, ecdsa)
            except Exception:  # noqa: BLE001, S112 - any failure is a bad signature
                continue
            return key
        raise AuthzError(Reason.SIGNATURE_INVALID)
    impl = _SIGNING[alg]
    for key in candidates:
        try:
            impl.verify(key.jwk, signing_input, signature)
        except Exception:  # noqa: BLE001, S112 - any failure is a bad signature
            continue
        return key
    raise AuthzError(Reason.SIGNATURE_INVALID)
