"""Token layer: strict compact parsing, JWE decryption, inner JWS verification.

jwcrypto is the cryptographic engine (its JWK keys and JWA algorithm
implementations); the parsing and the orchestration are ours, because the
library's high-level objects are lenient where we must be strict (base64url,
duplicate JSON keys, ``crit``, per-key algorithm pinning, signature lengths)
and slow where we must be fast (a deep copy of a header registry per object).

Order of checks, cheapest and most selective first:
  size -> five parts -> strict base64url -> header JSON -> alg/enc/zip/crit ->
  key by kid (pinned alg) -> unwrap CEK -> decrypt (authenticated) ->
  cty -> inner JWS parts -> inner header -> claims JSON -> issuer -> key by kid
  -> signature.
Every failure raises AuthzError with its reason code; anything unexpected is
turned into ``token_invalid`` by :func:`validate_token`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jwcrypto.jwa import JWA

from authz.errors import AuthzError
from authz.keys import KEY_MANAGEMENT_ALGS, SIGNATURE_ALGS, Key, KeyLookup, KeySet

__all__ = [
    "DecryptedToken",
    "TokenKeys",
    "VerifiedToken",
    "decrypt_compact",
    "decrypt_token",
    "open_token",
    "parse_json_object",
    "validate_token",
    "verify_compact",
]

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_MAX_HEADER_CHARS = 2048
_MAX_JSON_DEPTH = 16
_GCM_IV_BYTES = 12
_GCM_TAG_BYTES = 16
_CBC_IV_BYTES = 16
# RFC 7518 3.4: an ECDSA signature is R || S, each the size of the curve order.
_EC_SIGNATURE_BYTES = {"ES256": 64, "ES384": 96, "ES512": 132}
_DIRECT_KEY_AGREEMENT = frozenset({"dir", "ECDH-ES"})
_EPK_MEMBERS = {"EC": ("kty", "crv", "x", "y"), "OKP": ("kty", "crv", "x")}
_NESTED_CTY = frozenset({"jwt", "application/jwt"})


@dataclass(frozen=True, slots=True)
class TokenKeys:
    """Everything the token layer needs from a configuration snapshot."""

    decryption: KeySet
    content_encryption: frozenset[str]
    issuers: Mapping[str, KeyLookup]
    max_bytes: int
    allowed_typ: frozenset[str]  # empty: the inner ``typ`` is not checked


@dataclass(frozen=True, slots=True)
class DecryptedToken:
    header: Mapping[str, Any]
    plaintext: bytes
    key: Key


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A token whose every layer checked out; ``claims`` are what was protected."""

    claims: Mapping[str, Any]
    nested: bool
    decryption_kid: str
    decryption_symmetric: bool
    signing_kid: str | None
    issuer: str | None


def validate_token(token: str, keys: TokenKeys) -> VerifiedToken:
    """Decrypt and verify a compact nested JWE; every failure is an AuthzError."""
    return open_token(decrypt_token(token, keys), keys)


def decrypt_token(token: str, keys: TokenKeys) -> DecryptedToken:
    """The outer layer: size limit, then strict JWE decryption with a configured key."""
    try:
        if len(token) > keys.max_bytes:
            raise AuthzError("token_too_large")
        return decrypt_compact(token, keys.decryption, keys.content_encryption)
    except AuthzError:
        raise
    except Exception as exc:  # noqa: BLE001 - fail closed on anything unexpected
        raise AuthzError("token_invalid", f"unexpected {type(exc).__name__}") from None


def open_token(outer: DecryptedToken, keys: TokenKeys) -> VerifiedToken:
    """The inner layer of a decrypted token: the JWS verified, or the encrypt-only claims."""
    try:
        return _open(outer, keys)
    except AuthzError:
        raise
    except Exception as exc:  # noqa: BLE001 - fail closed on anything unexpected
        raise AuthzError("token_invalid", f"unexpected {type(exc).__name__}") from None


def _open(outer: DecryptedToken, keys: TokenKeys) -> VerifiedToken:
    cty = outer.header.get("cty")
    if "cty" not in outer.header:  # a JSON null is a bad cty, not an absent one
        # Encrypt-only: the plaintext is the claims set. Encryption to a public
        # key authenticates nothing, so only a shared symmetric key may do this.
        if _looks_like_jws(outer.plaintext):
            raise AuthzError("cty_invalid", "nested token without cty JWT")
        if not outer.key.symmetric:
            raise AuthzError("encrypt_only_not_allowed", "public-key JWE without inner JWS")
        claims = _parse_claims(outer.plaintext)
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or issuer not in keys.issuers:
            raise AuthzError("issuer_unknown")
        return VerifiedToken(claims, False, outer.key.kid, True, None, issuer)
    if not isinstance(cty, str) or cty.lower() not in _NESTED_CTY:
        raise AuthzError("cty_invalid")
    try:
        inner = outer.plaintext.decode("ascii")
    except UnicodeDecodeError:
        raise AuthzError("inner_token_malformed", "inner token is not ASCII") from None
    header, claims, signing_input, signature = _split_jws(inner)
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or issuer not in keys.issuers:
        raise AuthzError("issuer_unknown")
    if keys.allowed_typ:
        _check_typ(header.get("typ"), keys.allowed_typ)
    try:
        key = _verify_signature(header, signing_input, signature, keys.issuers[issuer])
    except AuthzError as exc:
        if exc.code == "signing_key_unknown":
            raise AuthzError(exc.code, exc.detail, issuer=issuer) from None
        raise
    return VerifiedToken(claims, True, outer.key.kid, outer.key.symmetric, key.kid, issuer)


def decrypt_compact(token: str, keyset: KeySet, allowed_enc: frozenset[str]) -> DecryptedToken:
    """Decrypt a compact JWE with a key from ``keyset``, all checks strict."""
    parts = token.split(".")
    if len(parts) != 5:
        raise AuthzError("token_not_jwe" if len(parts) == 3 else "token_malformed")
    protected, ek_b64, iv_b64, ct_b64, tag_b64 = parts
    if len(protected) > _MAX_HEADER_CHARS:
        raise AuthzError("header_malformed", "header too large")
    header = _parse_header(protected)
    encrypted_key, iv = _b64decode(ek_b64), _b64decode(iv_b64)
    ciphertext, tag = _b64decode(ct_b64), _b64decode(tag_b64)

    alg, enc = header.get("alg"), header.get("enc")
    if not isinstance(alg, str) or alg not in KEY_MANAGEMENT_ALGS:
        raise AuthzError("alg_not_allowed")
    if not isinstance(enc, str) or enc not in allowed_enc:
        raise AuthzError("enc_not_allowed")
    if "zip" in header:
        raise AuthzError("zip_not_allowed")
    _check_common_header(header, "header_malformed")
    if (alg in _DIRECT_KEY_AGREEMENT) != (not encrypted_key):
        raise AuthzError("token_malformed", "encrypted key presence does not fit alg")
    if enc.endswith("GCM"):
        if len(iv) != _GCM_IV_BYTES or len(tag) != _GCM_TAG_BYTES:
            raise AuthzError("token_malformed", "bad GCM iv or tag length")
    elif len(iv) != _CBC_IV_BYTES or len(tag) * 8 != int(enc[1:4]):
        raise AuthzError("token_malformed", "bad CBC iv or tag length")

    candidates = keyset.select(_kid(header), alg)
    if not candidates:
        raise AuthzError("decryption_key_unknown")
    key_header = _key_management_header(header, alg)
    aad = protected.encode("ascii")
    alg_impl, enc_impl = JWA.keymgmt_alg(alg), JWA.encryption_alg(enc)
    for key in candidates:
        if alg.startswith("ECDH-ES") and key_header["epk"]["crv"] != key.crv:
            continue
        try:
            cek = alg_impl.unwrap(key.jwk, enc_impl.wrap_key_size, encrypted_key, key_header)
            plaintext = enc_impl.decrypt(cek, aad, iv, ciphertext, tag)
        except Exception:  # noqa: BLE001, S112 - one code for every failure: no oracle
            continue
        return DecryptedToken(header, plaintext, key)
    raise AuthzError("decryption_failed")


def verify_compact(token: str, keyset: KeySet) -> tuple[Mapping[str, Any], bytes, Key]:
    """Verify a compact JWS with a key from ``keyset``; returns header, payload, key."""
    parts = token.split(".")
    if len(parts) != 3:
        raise AuthzError("inner_token_malformed")
    header = _parse_header(parts[0], inner=True)
    payload = _b64decode(parts[1], inner=True)
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    key = _verify_signature(header, signing_input, _b64decode(parts[2], inner=True), keyset)
    return header, payload, key


def _split_jws(inner: str) -> tuple[Mapping[str, Any], Mapping[str, Any], bytes, bytes]:
    parts = inner.split(".")
    if len(parts) != 3:
        raise AuthzError("inner_token_malformed")
    if len(parts[0]) > _MAX_HEADER_CHARS:
        raise AuthzError("inner_token_malformed", "header too large")
    header = _parse_header(parts[0], inner=True)
    claims = _parse_claims(_b64decode(parts[1], inner=True))
    signature = _b64decode(parts[2], inner=True)
    return header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), signature


def _verify_signature(
    header: Mapping[str, Any], signing_input: bytes, signature: bytes, keyset: KeyLookup
) -> Key:
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in SIGNATURE_ALGS:
        raise AuthzError("signature_alg_not_allowed")
    _check_common_header(header, "inner_token_malformed")
    candidates = keyset.select(_kid(header), alg)
    if not candidates:
        raise AuthzError("signing_key_unknown")
    expected_len = _EC_SIGNATURE_BYTES.get(alg)
    if expected_len is not None and len(signature) != expected_len:
        raise AuthzError("signature_invalid", "ECDSA signature of the wrong length")
    impl = JWA.signing_alg(alg)
    for key in candidates:
        try:
            impl.verify(key.jwk, signing_input, signature)
        except Exception:  # noqa: BLE001, S112 - any failure is a bad signature
            continue
        return key
    raise AuthzError("signature_invalid")


def _check_common_header(header: Mapping[str, Any], malformed: str) -> None:
    # We implement no critical extension, so any crit (even an empty one) is fatal.
    if "crit" in header:
        raise AuthzError("crit_unsupported")
    # A JSON null is not "no kid": it must not open the kid-less lookup.
    if "kid" in header and not isinstance(header["kid"], str):
        raise AuthzError(malformed, "kid is not a string")


def _kid(header: Mapping[str, Any]) -> str | None:
    kid = header.get("kid")
    return kid if isinstance(kid, str) else None


def _check_typ(typ: Any, allowed: frozenset[str]) -> None:
    if not isinstance(typ, str):
        raise AuthzError("typ_not_allowed")
    # RFC 7515 4.1.9: "application/" may be omitted; media types are case-insensitive.
    normal = typ.lower().removeprefix("application/")
    if normal not in allowed:
        raise AuthzError("typ_not_allowed")


def _key_management_header(header: Mapping[str, Any], alg: str) -> dict[str, Any]:
    """The header members a key-management algorithm reads, validated and nothing more."""
    out: dict[str, Any] = {"alg": alg, "enc": header["enc"]}
    if alg.startswith("ECDH-ES"):
        epk = header.get("epk")
        if not isinstance(epk, dict):
            raise AuthzError("header_malformed", "epk missing or not an object")
        kty = epk.get("kty")
        # A kty that is a list or an object is unhashable: check the type before the lookup.
        members = _EPK_MEMBERS.get(kty) if isinstance(kty, str) else None
        if members is None or not all(isinstance(epk.get(m), str) for m in members):
            raise AuthzError("header_malformed", "epk is not a public EC or OKP key")
        # Only the public members: an attacker-supplied "d" or "x5c" is never read.
        out["epk"] = {m: epk[m] for m in members}
        for name in ("apu", "apv"):
            if name in header:
                value = header[name]
                if not isinstance(value, str):
                    raise AuthzError("header_malformed", f"{name} is not a string")
                _b64decode(value)
                out[name] = value
    elif alg.endswith("GCMKW"):
        iv, tag = header.get("iv"), header.get("tag")
        if not isinstance(iv, str) or not isinstance(tag, str):
            raise AuthzError("header_malformed", "GCMKW needs iv and tag")
        if len(_b64decode(iv)) != _GCM_IV_BYTES or len(_b64decode(tag)) != _GCM_TAG_BYTES:
            raise AuthzError("header_malformed", "bad GCMKW iv or tag length")
        out["iv"], out["tag"] = iv, tag
    return out


def _looks_like_jws(plaintext: bytes) -> bool:
    return plaintext.count(b".") == 2 and plaintext.startswith(b"ey")


def _b64decode(part: str, *, inner: bool = False) -> bytes:
    """Strict, canonical base64url without padding (jwcrypto's decoder is lenient)."""
    code = "inner_token_malformed" if inner else "token_malformed"
    if len(part) % 4 == 1 or _B64URL.fullmatch(part) is None:
        raise AuthzError(code, "bad base64url")
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise AuthzError(code, "bad base64url") from None
    # Reject non-canonical encodings (stray bits in the last character).
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != part.encode("ascii"):
        raise AuthzError(code, "non-canonical base64url")
    return raw


def _parse_header(part: str, *, inner: bool = False) -> Mapping[str, Any]:
    code = "inner_token_malformed" if inner else "header_malformed"
    try:
        return parse_json_object(_b64decode(part, inner=inner))
    except ValueError:
        raise AuthzError(code, "header is not a strict JSON object") from None


def _parse_claims(raw: bytes) -> Mapping[str, Any]:
    try:
        return parse_json_object(raw)
    except ValueError:
        raise AuthzError("claims_malformed", "claims are not a strict JSON object") from None


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Parse UTF-8 JSON strictly: an object, no duplicate keys, no NaN, bounded depth.

    Raises ValueError for anything else (including deep nesting and huge numbers).
    """
    try:
        text = raw.decode("utf-8")
        value = json.loads(
            text,
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(type(exc).__name__) from None
    if not isinstance(value, dict):
        raise ValueError("not an object")
    if _depth(value) > _MAX_JSON_DEPTH:
        raise ValueError("nested too deeply")
    return value


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise ValueError("duplicate key")
        out[name] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _depth(value: Any, level: int = 1) -> int:
    if level > _MAX_JSON_DEPTH:
        return level
    children: Any = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return max((_depth(child, level + 1) for child in children), default=level)
