"""Nested tokens: a JWE whose plaintext is a signed JWT (or, by opt-in, the claims)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from authz.errors import AuthzError, Reason
from authz.jose.encoding import b64decode
from authz.jose.header import MAX_HEADER_CHARS, check_typ, parse_claims, parse_header
from authz.jose.jwe import DecryptedToken, decrypt
from authz.jose.jws import verify_signature
from authz.jose.keys import IssuerKeys, Key, KeySet

__all__ = ["TokenKeys", "VerifiedToken", "decrypt_token", "open_token", "validate_token"]

_NESTED_CTY = frozenset({"jwt", "application/jwt"})


@dataclass(frozen=True, slots=True)
class TokenKeys:
    """Everything the token layer needs from a configuration snapshot."""

    decryption: KeySet
    content_encryption: frozenset[str]
    issuers: Mapping[str, IssuerKeys]
    max_bytes: int
    allowed_typ: frozenset[str]  # empty: the inner ``typ`` is not checked


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A token whose every layer checked out; ``claims`` are what was protected."""

    claims: Mapping[str, Any]
    nested: bool
    decryption_kid: str
    decryption_symmetric: bool
    signing_kid: str | None
    issuer: str | None
    # The issuer key that verified the inner JWS (None: encrypt-only). The token cache
    # keeps an entry while the issuer still serves this very key (authz.cache).
    signing_key: Key | None = field(default=None, repr=False, compare=False)


def validate_token(token: str, keys: TokenKeys) -> VerifiedToken:
    """Decrypt and verify a compact nested JWE; every failure is an AuthzError.

    What decrypt_token then open_token do, without the DecryptedToken in between.
    """
    try:
        if len(token) > keys.max_bytes:
            raise AuthzError(Reason.TOKEN_TOO_LARGE)
        header, plaintext, key = decrypt(token, keys.decryption, keys.content_encryption)
        return _open(header, plaintext, key, keys)
    except AuthzError:
        raise
    except Exception as exc:  # noqa: BLE001 - fail closed on anything unexpected
        raise AuthzError(Reason.TOKEN_INVALID, f"unexpected {type(exc).__name__}") from None


def decrypt_token(token: str, keys: TokenKeys) -> DecryptedToken:
    """The outer layer: size limit, then strict JWE decryption with a configured key."""
    try:
        if len(token) > keys.max_bytes:
            raise AuthzError(Reason.TOKEN_TOO_LARGE)
        return DecryptedToken(*decrypt(token, keys.decryption, keys.content_encryption))
    except AuthzError:
        raise
    except Exception as exc:  # noqa: BLE001 - fail closed on anything unexpected
        raise AuthzError(Reason.TOKEN_INVALID, f"unexpected {type(exc).__name__}") from None


def open_token(outer: DecryptedToken, keys: TokenKeys) -> VerifiedToken:
    """The inner layer of a decrypted token: the JWS verified, or the encrypt-only claims."""
    try:
        return _open(outer.header, outer.plaintext, outer.key, keys)
    except AuthzError:
        raise
    except Exception as exc:  # noqa: BLE001 - fail closed on anything unexpected
        raise AuthzError(Reason.TOKEN_INVALID, f"unexpected {type(exc).__name__}") from None


def _open(header: Mapping[str, Any], plaintext: bytes, outer_key: Key, keys: TokenKeys) -> VerifiedToken:
    if "cty" not in header:  # a JSON null is a bad cty, not an absent one
        # Encrypt-only: the plaintext is the claims set. Encryption to a public
        # key authenticates nothing, so only a shared symmetric key may do this.
        if _looks_like_jws(plaintext):
            raise AuthzError(Reason.CTY_INVALID, "nested token without cty JWT")
        if not outer_key.symmetric:
            raise AuthzError(Reason.ENCRYPT_ONLY_NOT_ALLOWED, "public-key JWE without inner JWS")
        claims = parse_claims(plaintext)
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or issuer not in keys.issuers:
            raise AuthzError(Reason.ISSUER_UNKNOWN)
        return VerifiedToken(claims, False, outer_key.kid, True, None, issuer)
    cty = header["cty"]
    if not isinstance(cty, str) or cty.lower() not in _NESTED_CTY:
        raise AuthzError(Reason.CTY_INVALID)
    if not plaintext.isascii():
        raise AuthzError(Reason.INNER_TOKEN_MALFORMED, "inner token is not ASCII")
    parts = plaintext.split(b".")
    if len(parts) != 3:
        raise AuthzError(Reason.INNER_TOKEN_MALFORMED)
    protected, payload, signature_b64 = parts
    if len(protected) > MAX_HEADER_CHARS:
        raise AuthzError(Reason.INNER_TOKEN_MALFORMED, "header too large")
    inner_header = parse_header(protected, Reason.INNER_TOKEN_MALFORMED, Reason.INNER_TOKEN_MALFORMED)
    claims = parse_claims(b64decode(payload, Reason.INNER_TOKEN_MALFORMED))
    signature = b64decode(signature_b64, Reason.INNER_TOKEN_MALFORMED)
    # The signing input is the plaintext up to the second dot: a slice, no join.
    signing_input = plaintext[: len(protected) + len(payload) + 1]
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or issuer not in keys.issuers:
        raise AuthzError(Reason.ISSUER_UNKNOWN)
    if keys.allowed_typ:
        check_typ(inner_header.get("typ"), keys.allowed_typ)
    try:
        key = verify_signature(inner_header, signing_input, signature, keys.issuers[issuer])
    except AuthzError as exc:
        if exc.code == Reason.SIGNING_KEY_UNKNOWN:
            raise AuthzError(exc.code, exc.detail, issuer=issuer) from None
        raise
    return VerifiedToken(claims, True, outer_key.kid, outer_key.symmetric, key.kid, issuer, key)


def _looks_like_jws(plaintext: bytes) -> bool:
    return plaintext.count(b".") == 2 and plaintext.startswith(b"ey")
