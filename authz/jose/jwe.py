"""Compact JWE decryption: strict parts, pinned algorithms, one failure code (no oracle)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, x448, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap
from jwcrypto.jwa import JWA

from authz.errors import AuthzError, Reason
from authz.jose.encoding import b64decode, b64decode_text
from authz.jose.header import MAX_HEADER_CHARS, check_common_header, parse_header
from authz.jose.keys import KEY_MANAGEMENT_ALGS, Key, KeySet

__all__ = ["DecryptedToken", "decrypt", "decrypt_compact"]

_KEY_MANAGEMENT_ALGS = frozenset(KEY_MANAGEMENT_ALGS)  # a frozenset: faster than the mapping proxy

_GCM_IV_BYTES = 12

_GCM_TAG_BYTES = 16

_CBC_IV_BYTES = 16

_DIRECT_KEY_AGREEMENT = frozenset({"dir", "ECDH-ES"})

_EPK_MEMBERS = {"EC": ("kty", "crv", "x", "y"), "OKP": ("kty", "crv", "x")}

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

_CBC_HMAC = {enc: JWA.encryption_alg(enc) for enc, (_, gcm) in _ENC.items() if not gcm}


@dataclass(frozen=True, slots=True)
class DecryptedToken:
    header: Mapping[str, Any]
    plaintext: bytes
    key: Key


def decrypt_compact(token: str, keyset: KeySet, allowed_enc: frozenset[str]) -> DecryptedToken:
    """Decrypt a compact JWE with a key from ``keyset``, all checks strict."""
    return DecryptedToken(*decrypt(token, keyset, allowed_enc))


def decrypt(token: str, keyset: KeySet, allowed_enc: frozenset[str]) -> tuple[Mapping[str, Any], bytes, Key]:
    dots = token.count(".")
    if dots != 4:
        raise AuthzError(Reason.TOKEN_NOT_JWE if dots == 2 else Reason.TOKEN_MALFORMED)
    if token.index(".") > MAX_HEADER_CHARS:
        raise AuthzError(Reason.HEADER_MALFORMED, "header too large")
    if not token.isascii():
        raise AuthzError(Reason.TOKEN_MALFORMED, "bad base64url")
    protected, ek_b64, iv_b64, ct_b64, tag_b64 = token.encode("ascii").split(b".")
    header = parse_header(protected, Reason.TOKEN_MALFORMED, Reason.HEADER_MALFORMED)
    encrypted_key = b64decode(ek_b64, Reason.TOKEN_MALFORMED)
    iv = b64decode(iv_b64, Reason.TOKEN_MALFORMED)
    ciphertext = b64decode(ct_b64, Reason.TOKEN_MALFORMED)
    tag = b64decode(tag_b64, Reason.TOKEN_MALFORMED)

    alg, enc = header.get("alg"), header.get("enc")
    if not isinstance(alg, str) or alg not in _KEY_MANAGEMENT_ALGS:
        raise AuthzError(Reason.ALG_NOT_ALLOWED)
    if not isinstance(enc, str) or enc not in allowed_enc:
        raise AuthzError(Reason.ENC_NOT_ALLOWED)
    if "zip" in header:
        raise AuthzError(Reason.ZIP_NOT_ALLOWED)
    check_common_header(header, Reason.HEADER_MALFORMED)
    if (alg in _DIRECT_KEY_AGREEMENT) != (not encrypted_key):
        raise AuthzError(Reason.TOKEN_MALFORMED, "encrypted key presence does not fit alg")
    cek_bytes, gcm = _ENC[enc]
    if gcm:
        if len(iv) != _GCM_IV_BYTES or len(tag) != _GCM_TAG_BYTES:
            raise AuthzError(Reason.TOKEN_MALFORMED, "bad GCM iv or tag length")
    elif len(iv) != _CBC_IV_BYTES or len(tag) * 8 != int(enc[1:4]):
        raise AuthzError(Reason.TOKEN_MALFORMED, "bad CBC iv or tag length")

    kid = header.get("kid")
    candidates = keyset.select(kid, alg)
    if not candidates:
        raise AuthzError(Reason.DECRYPTION_KEY_UNKNOWN)
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
    raise AuthzError(Reason.DECRYPTION_FAILED)


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
            raise AuthzError(Reason.HEADER_MALFORMED, "GCMKW needs iv and tag")
        if len(b64decode_text(iv)) != _GCM_IV_BYTES or len(b64decode_text(tag)) != _GCM_TAG_BYTES:
            raise AuthzError(Reason.HEADER_MALFORMED, "bad GCMKW iv or tag length")
        return {"alg": alg, "enc": header["enc"], "iv": iv, "tag": tag}
    return {"alg": alg, "enc": header["enc"]}


def _agreement(header: Mapping[str, Any], alg: str, cek_bytes: int) -> _Agreement:
    epk = header.get("epk")
    if not isinstance(epk, dict):
        raise AuthzError(Reason.HEADER_MALFORMED, "epk missing or not an object")
    kty = epk.get("kty")
    # A kty that is a list or an object is unhashable: check the type before the lookup.
    members = _EPK_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None or not isinstance(kty, str):
        raise AuthzError(Reason.HEADER_MALFORMED, "epk is not a public EC or OKP key")
    for member in members:
        if not isinstance(epk.get(member), str):
            raise AuthzError(Reason.HEADER_MALFORMED, "epk is not a public EC or OKP key")
    # Only the public members: an attacker-supplied "d" or "x5c" is never read.
    x = b64decode_text(epk["x"])
    y = b64decode_text(epk["y"]) if kty == "EC" else b""
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
        raise AuthzError(Reason.HEADER_MALFORMED, f"{name} is not a string")
    raw = b64decode_text(value)
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
