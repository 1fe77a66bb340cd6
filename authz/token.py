"""Token layer: strict compact parsing, JWE decryption, inner JWS verification.

The parsing and the orchestration are ours, because the library's high-level
objects are lenient where we must be strict (base64url, duplicate JSON keys,
``crit``, per-key algorithm pinning, signature lengths) and slow where we must
be fast (a deep copy of a header registry per object).

The cryptography is jwcrypto's keys and algorithms, or the very pyca/cryptography
call a jwcrypto algorithm makes, made directly where jwcrypto's implementation
adds per-token work on the cold path. Key material is derived once, at key load
(``Key.material``: the pyca key object, or the raw bytes of an ``oct`` key,
obtained through jwcrypto's ``get_op_key``, which checks ``use``/``key_ops``;
``Key.aead``: the AESGCM object of a ``dir`` key). Everything shared between
requests is immutable: pyca key and AEAD objects (which copy a base context
per call), and jwcrypto's stateless algorithm objects.

==========================  =================================================
step                        who does it, and why
==========================  =================================================
RSA-OAEP, RSA-OAEP-256,     jwcrypto: ``JWA.keymgmt_alg(alg).unwrap``, a new
A*KW, A*GCMKW               object per token (tests spy on it): its cost is
                            small beside RSA, and AES key wrap is rare
ECDH-ES, ECDH-ES+A*KW       pyca direct: jwcrypto's ``_EcdhEs.unwrap`` builds
                            a ``JWK`` of the epk and one of the KEK per call.
                            We build the epk with
                            ``EllipticCurvePublicNumbers(x, y, crv).public_key()``
                            (coordinates of the curve's size; pyca refuses a
                            point off the curve) or ``X25519/X448PublicKey.
                            from_public_bytes``, then ``exchange``,
                            ``ConcatKDFHash`` and ``aes_key_unwrap`` with the
                            same inputs as ``_EcdhEs``
dir                         no call: the key bytes and their AESGCM, made at
                            load (jwcrypto's ``_Direct`` decodes base64 per
                            call)
A*GCM content               pyca ``AESGCM`` one-shot (jwcrypto: Cipher API)
A*CBC-HS* content           jwcrypto's ``_AesCbcHmacSha2.decrypt`` (one object
                            per name): MAC check and unpadding stay there
ES256, ES384, ES512         pyca direct: R || S of exactly twice the curve
                            size to DER with ``int.from_bytes`` (jwcrypto:
                            hexlify, any length), ``verify`` with a prepared
                            ``ECDSA``, on the key object made at load
RS*, PS*, EdDSA, HS*        jwcrypto's algorithm objects (one per name)
==========================  =================================================

Strict base64url is ``binascii.a2b_base64(strict_mode=True)`` on the part with
the url-safe alphabet translated and every other character made invalid, plus
an O(1) check that the last character's unused bits are zero (canonical form).
JSON is parsed by one shared decoder whose hooks refuse duplicate members
(``dict(pairs)`` shorter than ``pairs``), NaN/Infinity and infinite floats; the
depth walk runs only when the text holds 16 or more brackets.

Order of checks, cheapest and most selective first:
  size -> five parts -> strict base64url -> header JSON -> alg/enc/zip/crit ->
  key by kid (pinned alg) -> unwrap CEK -> decrypt (authenticated) ->
  cty -> inner JWS parts -> inner header -> claims JSON -> issuer -> key by kid
  -> signature.
Every failure raises AuthzError with its reason code; anything unexpected is
turned into ``token_invalid`` by :func:`validate_token`.
"""

from __future__ import annotations

import binascii
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, x448, x25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap
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

_KEY_MANAGEMENT_ALGS = frozenset(KEY_MANAGEMENT_ALGS)  # a frozenset: faster than the mapping proxy
_SIGNATURE_ALGS = frozenset(SIGNATURE_ALGS)
_MAX_HEADER_CHARS = 2048
_MAX_JSON_DEPTH = 16
_GCM_IV_BYTES = 12
_GCM_TAG_BYTES = 16
_CBC_IV_BYTES = 16
# RFC 7518 3.4: an ECDSA signature is R || S, each the size of the curve order.
_EC_SIGNATURE_BYTES = {"ES256": 64, "ES384": 96, "ES512": 132}
_ECDSA = {
    "ES256": ec.ECDSA(hashes.SHA256()),
    "ES384": ec.ECDSA(hashes.SHA384()),
    "ES512": ec.ECDSA(hashes.SHA512()),
}
_DIRECT_KEY_AGREEMENT = frozenset({"dir", "ECDH-ES"})
_EPK_MEMBERS = {"EC": ("kty", "crv", "x", "y"), "OKP": ("kty", "crv", "x")}
_NESTED_CTY = frozenset({"jwt", "application/jwt"})
# Content encryption: CEK size in bytes, and whether it is AES-GCM (else AES-CBC-HMAC).
_ENC = {
    "A128GCM": (16, True),
    "A192GCM": (24, True),
    "A256GCM": (32, True),
    "A128CBC-HS256": (32, False),
    "A192CBC-HS384": (48, False),
    "A256CBC-HS512": (64, False),
}
# RFC 7518 6.2.1.2: EC coordinates are the full length of the curve's field size.
_EC_CURVES: dict[str, tuple[ec.EllipticCurve, int]] = {
    "P-256": (ec.SECP256R1(), 32),
    "P-384": (ec.SECP384R1(), 48),
    "P-521": (ec.SECP521R1(), 66),
}
_OKP_CURVES: dict[str, Callable[[bytes], Any]] = {
    "X25519": x25519.X25519PublicKey.from_public_bytes,
    "X448": x448.X448PublicKey.from_public_bytes,
}
_ECDH = ec.ECDH()
_SHA256 = hashes.SHA256()
# Stateless jwcrypto algorithm objects, one per name: shared read-only by requests.
_SIGNING = {alg: JWA.signing_alg(alg) for alg in SIGNATURE_ALGS}
_CBC_HMAC = {enc: JWA.encryption_alg(enc) for enc, (_, gcm) in _ENC.items() if not gcm}

# Strict base64url (RFC 7515 2: no padding, no other alphabet). "-" and "_" are
# translated to the standard alphabet's "+" and "/"; those two and "=" become "!",
# which strict decoding refuses like every other character outside the alphabet.
_TO_STANDARD = bytes.maketrans(b"-_+/=", b"+/!!!")
_PADDING = (b"", b"", b"==", b"=")
# Canonical encodings only: the unused low bits of the last character are zero
# (4 bits when len % 4 == 2, 2 bits when len % 4 == 3), so one part has one form.
_CANONICAL_LAST = (b"", b"", b"AQgw", b"AEIMQUYcgkosw048")


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
    # The issuer key that verified the inner JWS (None: encrypt-only). The token cache
    # keeps an entry while the issuer still serves this very key (authz.cache).
    signing_key: Key | None = field(default=None, repr=False, compare=False)


def validate_token(token: str, keys: TokenKeys) -> VerifiedToken:
    """Decrypt and verify a compact nested JWE; every failure is an AuthzError.

    What decrypt_token then open_token do, without the DecryptedToken in between.
    """
    try:
        if len(token) > keys.max_bytes:
            raise AuthzError("token_too_large")
        header, plaintext, key = _decrypt(token, keys.decryption, keys.content_encryption)
        return _open(header, plaintext, key, keys)
    except AuthzError:
        raise
    except Exception as exc:  # noqa: BLE001 - fail closed on anything unexpected
        raise AuthzError("token_invalid", f"unexpected {type(exc).__name__}") from None


def decrypt_token(token: str, keys: TokenKeys) -> DecryptedToken:
    """The outer layer: size limit, then strict JWE decryption with a configured key."""
    try:
        if len(token) > keys.max_bytes:
            raise AuthzError("token_too_large")
        return DecryptedToken(*_decrypt(token, keys.decryption, keys.content_encryption))
    except AuthzError:
        raise
    except Exception as exc:  # noqa: BLE001 - fail closed on anything unexpected
        raise AuthzError("token_invalid", f"unexpected {type(exc).__name__}") from None


def open_token(outer: DecryptedToken, keys: TokenKeys) -> VerifiedToken:
    """The inner layer of a decrypted token: the JWS verified, or the encrypt-only claims."""
    try:
        return _open(outer.header, outer.plaintext, outer.key, keys)
    except AuthzError:
        raise
    except Exception as exc:  # noqa: BLE001 - fail closed on anything unexpected
        raise AuthzError("token_invalid", f"unexpected {type(exc).__name__}") from None


def _open(header: Mapping[str, Any], plaintext: bytes, outer_key: Key, keys: TokenKeys) -> VerifiedToken:
    if "cty" not in header:  # a JSON null is a bad cty, not an absent one
        # Encrypt-only: the plaintext is the claims set. Encryption to a public
        # key authenticates nothing, so only a shared symmetric key may do this.
        if _looks_like_jws(plaintext):
            raise AuthzError("cty_invalid", "nested token without cty JWT")
        if not outer_key.symmetric:
            raise AuthzError("encrypt_only_not_allowed", "public-key JWE without inner JWS")
        claims = _parse_claims(plaintext)
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or issuer not in keys.issuers:
            raise AuthzError("issuer_unknown")
        return VerifiedToken(claims, False, outer_key.kid, True, None, issuer)
    cty = header["cty"]
    if not isinstance(cty, str) or cty.lower() not in _NESTED_CTY:
        raise AuthzError("cty_invalid")
    if not plaintext.isascii():
        raise AuthzError("inner_token_malformed", "inner token is not ASCII")
    parts = plaintext.split(b".")
    if len(parts) != 3:
        raise AuthzError("inner_token_malformed")
    protected, payload, signature_b64 = parts
    if len(protected) > _MAX_HEADER_CHARS:
        raise AuthzError("inner_token_malformed", "header too large")
    inner_header = _parse_header(protected, "inner_token_malformed", "inner_token_malformed")
    claims = _parse_claims(_b64decode(payload, "inner_token_malformed"))
    signature = _b64decode(signature_b64, "inner_token_malformed")
    # The signing input is the plaintext up to the second dot: a slice, no join.
    signing_input = plaintext[: len(protected) + len(payload) + 1]
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or issuer not in keys.issuers:
        raise AuthzError("issuer_unknown")
    if keys.allowed_typ:
        _check_typ(inner_header.get("typ"), keys.allowed_typ)
    try:
        key = _verify_signature(inner_header, signing_input, signature, keys.issuers[issuer])
    except AuthzError as exc:
        if exc.code == "signing_key_unknown":
            raise AuthzError(exc.code, exc.detail, issuer=issuer) from None
        raise
    return VerifiedToken(claims, True, outer_key.kid, outer_key.symmetric, key.kid, issuer, key)


def decrypt_compact(token: str, keyset: KeySet, allowed_enc: frozenset[str]) -> DecryptedToken:
    """Decrypt a compact JWE with a key from ``keyset``, all checks strict."""
    return DecryptedToken(*_decrypt(token, keyset, allowed_enc))


def _decrypt(token: str, keyset: KeySet, allowed_enc: frozenset[str]) -> tuple[Mapping[str, Any], bytes, Key]:
    dots = token.count(".")
    if dots != 4:
        raise AuthzError("token_not_jwe" if dots == 2 else "token_malformed")
    if token.index(".") > _MAX_HEADER_CHARS:
        raise AuthzError("header_malformed", "header too large")
    if not token.isascii():
        raise AuthzError("token_malformed", "bad base64url")
    protected, ek_b64, iv_b64, ct_b64, tag_b64 = token.encode("ascii").split(b".")
    header = _parse_header(protected, "token_malformed", "header_malformed")
    encrypted_key = _b64decode(ek_b64, "token_malformed")
    iv = _b64decode(iv_b64, "token_malformed")
    ciphertext = _b64decode(ct_b64, "token_malformed")
    tag = _b64decode(tag_b64, "token_malformed")

    alg, enc = header.get("alg"), header.get("enc")
    if not isinstance(alg, str) or alg not in _KEY_MANAGEMENT_ALGS:
        raise AuthzError("alg_not_allowed")
    if not isinstance(enc, str) or enc not in allowed_enc:
        raise AuthzError("enc_not_allowed")
    if "zip" in header:
        raise AuthzError("zip_not_allowed")
    _check_common_header(header, "header_malformed")
    if (alg in _DIRECT_KEY_AGREEMENT) != (not encrypted_key):
        raise AuthzError("token_malformed", "encrypted key presence does not fit alg")
    cek_bytes, gcm = _ENC[enc]
    if gcm:
        if len(iv) != _GCM_IV_BYTES or len(tag) != _GCM_TAG_BYTES:
            raise AuthzError("token_malformed", "bad GCM iv or tag length")
    elif len(iv) != _CBC_IV_BYTES or len(tag) * 8 != int(enc[1:4]):
        raise AuthzError("token_malformed", "bad CBC iv or tag length")

    kid = header.get("kid")
    candidates = keyset.select(kid, alg)
    if not candidates:
        raise AuthzError("decryption_key_unknown")
    unwrap = _UNWRAP.get(alg, _jwcrypto_unwrap)
    params = _key_management_params(header, alg, cek_bytes)
    sealed = ciphertext + tag  # AESGCM's one-shot input
    for key in candidates:
        try:
            cek = unwrap(key, cek_bytes, encrypted_key, params)
            if gcm:
                # Only a dir key has its AESGCM (the key is the CEK, of the size unwrap checked).
                plaintext = (key.aead or AESGCM(cek)).decrypt(iv, sealed, protected)
            else:
                plaintext = _CBC_HMAC[enc].decrypt(cek, protected, iv, ciphertext, tag)
        except Exception:  # noqa: BLE001, S112 - one code for every failure: no oracle
            continue
        return header, plaintext, key
    raise AuthzError("decryption_failed")


def verify_compact(token: str, keyset: KeySet) -> tuple[Mapping[str, Any], bytes, Key]:
    """Verify a compact JWS with a key from ``keyset``; returns header, payload, key."""
    if not token.isascii():
        raise AuthzError("inner_token_malformed")
    parts = token.encode("ascii").split(b".")
    if len(parts) != 3:
        raise AuthzError("inner_token_malformed")
    header = _parse_header(parts[0], "inner_token_malformed", "inner_token_malformed")
    payload = _b64decode(parts[1], "inner_token_malformed")
    signing_input = b"%s.%s" % (parts[0], parts[1])
    signature = _b64decode(parts[2], "inner_token_malformed")
    key = _verify_signature(header, signing_input, signature, keyset)
    return header, payload, key


def _verify_signature(
    header: Mapping[str, Any], signing_input: bytes, signature: bytes, keyset: KeyLookup
) -> Key:
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in _SIGNATURE_ALGS:
        raise AuthzError("signature_alg_not_allowed")
    _check_common_header(header, "inner_token_malformed")
    candidates = keyset.select(header.get("kid"), alg)
    if not candidates:
        raise AuthzError("signing_key_unknown")
    expected_len = _EC_SIGNATURE_BYTES.get(alg)
    if expected_len is not None:
        if len(signature) != expected_len:
            raise AuthzError("signature_invalid", "ECDSA signature of the wrong length")
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
        raise AuthzError("signature_invalid")
    impl = _SIGNING[alg]
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


def _check_typ(typ: Any, allowed: frozenset[str]) -> None:
    if not isinstance(typ, str):
        raise AuthzError("typ_not_allowed")
    # RFC 7515 4.1.9: "application/" may be omitted; media types are case-insensitive.
    normal = typ.lower().removeprefix("application/")
    if normal not in allowed:
        raise AuthzError("typ_not_allowed")


# -- key management ---------------------------------------------------------------


class _Agreement(NamedTuple):
    """The ECDH-ES inputs of a header, validated and decoded once per token."""

    kty: str
    crv: str
    x: bytes
    y: bytes  # empty for an OKP key
    other_info: bytes  # the Concat KDF's OtherInfo (RFC 7518 4.6.2)
    derived_bytes: int  # the KDF's output: the KEK for alg with key wrap, else the CEK for enc
    wrapped: bool


def _key_management_params(header: Mapping[str, Any], alg: str, cek_bytes: int) -> Any:
    """The header members ``alg`` reads, validated before any key is tried, and nothing more.

    For ECDH-ES an _Agreement; for jwcrypto's algorithms the header they may read.
    """
    if alg == "dir":
        return None
    if alg.startswith("ECDH-ES"):
        return _agreement(header, alg, cek_bytes)
    if alg.endswith("GCMKW"):
        iv, tag = header.get("iv"), header.get("tag")
        if not isinstance(iv, str) or not isinstance(tag, str):
            raise AuthzError("header_malformed", "GCMKW needs iv and tag")
        if len(_b64decode_text(iv)) != _GCM_IV_BYTES or len(_b64decode_text(tag)) != _GCM_TAG_BYTES:
            raise AuthzError("header_malformed", "bad GCMKW iv or tag length")
        return {"alg": alg, "enc": header["enc"], "iv": iv, "tag": tag}
    return {"alg": alg, "enc": header["enc"]}


def _agreement(header: Mapping[str, Any], alg: str, cek_bytes: int) -> _Agreement:
    epk = header.get("epk")
    if not isinstance(epk, dict):
        raise AuthzError("header_malformed", "epk missing or not an object")
    kty = epk.get("kty")
    # A kty that is a list or an object is unhashable: check the type before the lookup.
    members = _EPK_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None or not isinstance(kty, str):
        raise AuthzError("header_malformed", "epk is not a public EC or OKP key")
    for member in members:
        if not isinstance(epk.get(member), str):
            raise AuthzError("header_malformed", "epk is not a public EC or OKP key")
    # Only the public members: an attacker-supplied "d" or "x5c" is never read.
    x = _b64decode_text(epk["x"])
    y = _b64decode_text(epk["y"]) if kty == "EC" else b""
    wrapped = alg != "ECDH-ES"
    # Key agreement with key wrap derives the KEK for alg; direct agreement the CEK for enc.
    algorithm_id = (alg if wrapped else header["enc"]).encode("ascii")
    size = int(alg[-5:-2]) // 8 if wrapped else cek_bytes
    # OtherInfo (RFC 7518 4.6.2): AlgorithmID, PartyUInfo, PartyVInfo, each length-prefixed, then keydatalen.
    other_info = b"".join(
        (
            len(algorithm_id).to_bytes(4, "big"),
            algorithm_id,
            _party_info(header, "apu"),
            _party_info(header, "apv"),
            (size * 8).to_bytes(4, "big"),
        )
    )
    return _Agreement(kty, epk["crv"], x, y, other_info, size, wrapped)


def _party_info(header: Mapping[str, Any], name: str) -> bytes:
    """``apu`` or ``apv`` as the KDF takes it: its length, then its bytes (none when absent)."""
    value = header.get(name, "")
    if not isinstance(value, str):
        raise AuthzError("header_malformed", f"{name} is not a string")
    raw = _b64decode_text(value)
    return len(raw).to_bytes(4, "big") + raw


def _jwcrypto_unwrap(key: Key, cek_bytes: int, encrypted_key: bytes, params: Any) -> bytes:
    """RSA-OAEP*, A*KW, A*GCMKW: jwcrypto's algorithm, which checks the CEK size."""
    return bytes(JWA.keymgmt_alg(params["alg"]).unwrap(key.jwk, cek_bytes * 8, encrypted_key, params))


def _unwrap_direct(key: Key, cek_bytes: int, encrypted_key: bytes, params: Any) -> bytes:
    secret: bytes = key.material
    if len(secret) != cek_bytes:
        raise ValueError("dir key does not fit enc")
    return secret


def _unwrap_ecdh(key: Key, cek_bytes: int, encrypted_key: bytes, params: Any) -> bytes:
    """ECDH-ES (RFC 7518 4.6) as jwcrypto's ``_EcdhEs.unwrap``, with the epk decoded once."""
    agreement: _Agreement = params
    if agreement.kty != key.kty or agreement.crv != key.crv:
        raise ValueError("epk is not on the key's curve")
    if key.kty == "EC":
        curve, size = _EC_CURVES[key.crv]
        x, y = agreement.x, agreement.y
        # RFC 7518 6.2.1.2: each coordinate is the full size of the field (a P-384
        # point labelled P-256 fails here); pyca refuses a point that is not on the
        # curve (invalid-curve attacks).
        if len(x) != size or len(y) != size:
            raise ValueError("epk coordinates are not the curve's size")
        public = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
        ).public_key()
        shared = key.material.exchange(_ECDH, public)
    else:
        shared = key.material.exchange(_OKP_CURVES[agreement.crv](agreement.x))
    derived = ConcatKDFHash(_SHA256, agreement.derived_bytes, agreement.other_info).derive(shared)
    if not agreement.wrapped:
        return derived
    cek = aes_key_unwrap(derived, encrypted_key)
    if len(cek) != cek_bytes:
        raise ValueError("unwrapped CEK does not fit enc")
    return cek


_UNWRAP: dict[str, Callable[[Key, int, bytes, Any], bytes]] = {
    "dir": _unwrap_direct,
    "ECDH-ES": _unwrap_ecdh,
    "ECDH-ES+A128KW": _unwrap_ecdh,
    "ECDH-ES+A192KW": _unwrap_ecdh,
    "ECDH-ES+A256KW": _unwrap_ecdh,
}


# -- strict decoding ----------------------------------------------------------------


def _looks_like_jws(plaintext: bytes) -> bool:
    return plaintext.count(b".") == 2 and plaintext.startswith(b"ey")


def _b64decode(part: bytes, code: str) -> bytes:
    """Strict, canonical base64url without padding (jwcrypto's decoder is lenient)."""
    rem = len(part) & 3
    if rem:
        if rem == 1 or part[-1] not in _CANONICAL_LAST[rem]:
            raise AuthzError(code, "bad or non-canonical base64url")
        part = part.translate(_TO_STANDARD) + _PADDING[rem]
    else:
        part = part.translate(_TO_STANDARD)
    try:
        return binascii.a2b_base64(part, strict_mode=True)
    except binascii.Error:
        raise AuthzError(code, "bad base64url") from None


def _b64decode_text(value: str) -> bytes:
    """A base64url header member of the outer layer."""
    if not value.isascii():
        raise AuthzError("token_malformed", "bad base64url")
    return _b64decode(value.encode("ascii"), "token_malformed")


def _parse_header(part: bytes, b64_code: str, json_code: str) -> Mapping[str, Any]:
    raw = _b64decode(part, b64_code)
    try:
        return parse_json_object(raw)
    except ValueError:
        raise AuthzError(json_code, "header is not a strict JSON object") from None


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
        # raw_decode: the C scanner straight away (decode adds two regex matches for
        # whitespace). Text with whitespace around the value, or that is not JSON,
        # goes through decode, which accepts the former and makes the error of the
        # latter. The hooks' ValueErrors (duplicates, NaN) are not JSONDecodeError.
        try:
            value, end = _DECODER.raw_decode(text)
        except json.JSONDecodeError:
            end = -1
        if end != len(text):
            value = _DECODER.decode(text)
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(type(exc).__name__) from None
    if type(value) is not dict:
        raise ValueError("not an object")
    # Every container opens with "{" or "[" (a byte no other UTF-8 sequence holds):
    # with fewer than the bound, no value can be nested too deeply; count first.
    if raw.count(b"{") + raw.count(b"[") >= _MAX_JSON_DEPTH and _too_deep(value):
        raise ValueError("nested too deeply")
    return value


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key")
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


# One decoder, shared (as json.loads shares its default one): its hooks hold no state.
_DECODER = json.JSONDecoder(
    object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant, parse_float=_finite_float
)


def _too_deep(value: dict[str, Any]) -> bool:
    """Whether any value sits deeper than the bound (the top-level object is depth 1).

    Iterative, and visits containers only: a container at depth d with any member
    puts that member at depth d + 1.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if children and level >= _MAX_JSON_DEPTH:
            return True
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return False
