"""What a token issuer and its clients do, for developers, tests and demos: make keys, mint
tokens (bound to a DPoP key or a client certificate, too) and DPoP proofs.

Minting uses jwcrypto's high-level API on purpose: the issuer side is not on
the request path, and an independent implementation makes tokens that our own
strict parser must accept.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from jwcrypto.jwe import JWE
from jwcrypto.jwk import JWK
from jwcrypto.jws import JWS

from authz.jose.keys import KEY_MANAGEMENT_ALGS, SIGNATURE_ALGS
from authz.jose.thumbprint import certificate_thumbprint, jwk_thumbprint

__all__ = [
    "certificate_x5t",
    "dpop_jkt",
    "dpop_proof",
    "generate_key",
    "mint",
    "public_jwks",
    "read_jwks",
    "write_jwks",
]

# A DPoP key's algorithm when its JWK names none.
_PROOF_ALGS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "Ed25519": "EdDSA", "Ed448": "EdDSA"}


def generate_key(alg: str, kid: str, *, size: int | None = None, crv: str | None = None) -> JWK:
    """A new private key (or secret) pinned to ``alg``, with ``kid`` and ``use`` set."""
    spec = KEY_MANAGEMENT_ALGS.get(alg) or SIGNATURE_ALGS.get(alg)
    if spec is None:
        raise ValueError(f"unsupported algorithm {alg}")
    use = "enc" if alg in KEY_MANAGEMENT_ALGS else "sig"
    params: dict[str, Any] = {"kid": kid, "alg": alg, "use": use}
    if spec.kty == "RSA":
        key = JWK.generate(kty="RSA", size=size or 2048, **params)
    elif spec.kty == "EC" and alg.startswith("ECDH-ES") and crv in ("X25519", "X448"):
        key = JWK.generate(kty="OKP", crv=crv, **params)  # ECDH-ES over an OKP curve
    elif spec.kty == "EC":
        key = JWK.generate(kty="EC", crv=crv or sorted(spec.curves)[0], **params)
    elif spec.kty == "OKP":
        key = JWK.generate(kty="OKP", crv=crv or "Ed25519", **params)
    else:
        default_bytes = min(spec.oct_sizes) if spec.oct_sizes else spec.oct_min
        key = JWK.generate(kty="oct", size=(size or default_bytes * 8), **params)
    return key


def public_jwks(keys: list[JWK]) -> dict[str, Any]:
    """The public half of asymmetric keys (symmetric keys have none and are skipped)."""
    return {"keys": [json.loads(k.export_public()) for k in keys if k.get("kty") != "oct"]}


def write_jwks(path: Path, jwks: Mapping[str, Any], *, private: bool) -> None:
    """Write a JWK Set; private files are created readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(jwks, indent=2) + "\n"
    if private:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        # The mode of os.open applies only to a new file: an existing one is tightened too.
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(data)
    else:
        path.write_text(data, encoding="utf-8")


def read_jwks(path: Path) -> list[JWK]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return [JWK(**entry) for entry in data["keys"]]


def mint(
    claims: Mapping[str, Any],
    *,
    encryption_key: JWK,
    signing_key: JWK | None,
    enc: str = "A256GCM",
    typ: str | None = "at+jwt",
    extra_outer: Mapping[str, Any] | None = None,
    extra_inner: Mapping[str, Any] | None = None,
) -> str:
    """A compact JWE; nested (``cty: JWT``) around a JWS unless ``signing_key`` is None."""
    payload = json.dumps(dict(claims), separators=(",", ":")).encode("utf-8")
    outer: dict[str, Any] = {"alg": encryption_key["alg"], "enc": enc, "kid": encryption_key["kid"]}
    if signing_key is not None:
        inner: dict[str, Any] = {"alg": signing_key["alg"], "kid": signing_key["kid"]}
        if typ:
            inner["typ"] = typ
        inner.update(extra_inner or {})
        jws = JWS(payload)
        jws.add_signature(signing_key, alg=inner["alg"], protected=json.dumps(inner))
        payload = jws.serialize(compact=True).encode("ascii")
        outer["cty"] = "JWT"
    outer.update(extra_outer or {})
    jwe = JWE(payload, protected=json.dumps(outer))
    jwe.add_recipient(_encryption_public(encryption_key))
    return str(jwe.serialize(compact=True))


def _encryption_public(key: JWK) -> JWK:
    if key.get("kty") == "oct" or not key.has_private:
        return key
    return JWK(**json.loads(key.export_public()))


def _public_members(key: JWK) -> dict[str, Any]:
    """The RFC 7638 members of a key's public JWK: what a proof's ``jwk`` carries, nothing else."""
    names = {"EC": ("kty", "crv", "x", "y"), "OKP": ("kty", "crv", "x"), "RSA": ("kty", "n", "e")}
    kty = key.get("kty", "")
    if kty not in names:
        raise ValueError(f"a DPoP key is EC, OKP or RSA, not {kty or 'a secret'}")
    public: dict[str, Any] = key.export_public(as_dict=True)
    return {name: public[name] for name in names[kty]}


def dpop_jkt(key: JWK) -> str:
    """``cnf.jkt`` for a token bound to ``key`` (RFC 7638 SHA-256 thumbprint of its public part)."""
    return jwk_thumbprint(_public_members(key))


def certificate_x5t(pem: bytes) -> str:
    """``cnf["x5t#S256"]`` for a token bound to the (first) certificate of a PEM file."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    certificate = x509.load_pem_x509_certificates(pem)[0]
    return certificate_thumbprint(certificate.public_bytes(Encoding.DER))


def dpop_proof(
    key: JWK,
    *,
    method: str,
    url: str,
    token: str,
    nonce: str | None = None,
    now: float | None = None,
) -> str:
    """A DPoP proof (RFC 9449 4.2) by ``key`` for ``method url`` with ``token``: a fresh jti,
    ``htu`` without query and fragment, ``ath`` of the token, ``nonce`` when given."""
    kty = key.get("kty")
    alg = key.get("alg") or (_PROOF_ALGS.get(key.get("crv", "")) if kty != "RSA" else "PS256")
    if not alg:
        raise ValueError("cannot tell the key's algorithm: give it an alg")
    parts = urlsplit(url)
    claims: dict[str, Any] = {
        "jti": base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode("ascii"),
        "htm": method,
        "htu": urlunsplit((parts.scheme, parts.netloc, parts.path or "/", "", "")),
        "iat": int(time.time() if now is None else now),
        "ath": base64.urlsafe_b64encode(hashlib.sha256(token.encode("ascii")).digest()).rstrip(b"=").decode(),
    }
    if nonce is not None:
        claims["nonce"] = nonce
    header = {"typ": "dpop+jwt", "alg": alg, "jwk": _public_members(key)}
    jws = JWS(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
    jws.add_signature(key, alg=alg, protected=json.dumps(header, separators=(",", ":")))
    return str(jws.serialize(compact=True))
