"""DPoP proofs for tests, fuzz targets and benchmarks: our own minter (any header, any claims,
any signer) and the same proofs from two other JOSE libraries (joserfc, jwcrypto).

The own minter signs with pyca directly, so a test can build exactly the malformed
proof it needs (a private ``jwk``, another signer, a wrong ``typ``, ...).
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from testkit.world import NOW

METHOD = "GET"
HTU = "https://api.acme.test/orders"
TOKEN = "eyJhbGciOiJkaXIi.fake-access-token.for-ath"  # any token68: ath is its SHA-256

_HASHES = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}
_EC_SIZES = {"P-256": 32, "P-384": 48, "P-521": 66}
_CURVES = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}

# alg -> how to make a key for it
ALG_KEYS = {
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "PS256": ("RSA", 2048),
    "PS384": ("RSA", 3072),
    "PS512": ("RSA", 4096),
    "RS256": ("RSA", 2048),
    "RS384": ("RSA", 2048),
    "RS512": ("RSA", 2048),
    "EdDSA": ("OKP", "Ed25519"),
    "Ed25519": ("OKP", "Ed25519"),
    "Ed448": ("OKP", "Ed448"),
}
ALL_ALGS = frozenset(ALG_KEYS)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def ath(token: str = TOKEN) -> str:
    return b64(hashlib.sha256(token.encode("ascii")).digest())


def _uint(value: int) -> str:
    return b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))


_KEY_CACHE: dict[tuple[str, object], Any] = {}


def new_key(alg: str, *, fresh: bool = False) -> Any:
    """A private key for ``alg`` (RSA keys are cached per size unless ``fresh``: slow to make)."""
    kty, param = ALG_KEYS[alg]
    if kty == "RSA" and not fresh and (kty, param) in _KEY_CACHE:
        return _KEY_CACHE[(kty, param)]
    if kty == "EC":
        key: Any = ec.generate_private_key(_CURVES[str(param)])
    elif kty == "RSA":
        key = rsa.generate_private_key(65537, int(param))  # type: ignore[call-overload]
        _KEY_CACHE[(kty, param)] = key
    elif param == "Ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        key = ed448.Ed448PrivateKey.generate()
    return key


def public_jwk(key: Any) -> dict[str, Any]:
    """The public JWK (required members only) of a pyca private or public key."""
    public = key.public_key() if hasattr(key, "public_key") else key
    if isinstance(public, ec.EllipticCurvePublicKey):
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[public.curve.name]
        numbers = public.public_numbers()
        size = _EC_SIZES[crv]
        return {
            "kty": "EC",
            "crv": crv,
            "x": b64(numbers.x.to_bytes(size, "big")),
            "y": b64(numbers.y.to_bytes(size, "big")),
        }
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        return {"kty": "RSA", "n": _uint(numbers.n), "e": _uint(numbers.e)}
    if isinstance(public, ed25519.Ed25519PublicKey):
        return {"kty": "OKP", "crv": "Ed25519", "x": b64(public.public_bytes_raw())}
    return {"kty": "OKP", "crv": "Ed448", "x": b64(public.public_bytes_raw())}


def private_jwk(key: Any) -> dict[str, Any]:
    jwk = public_jwk(key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        jwk["d"] = b64(key.private_numbers().private_value.to_bytes(_EC_SIZES[jwk["crv"]], "big"))
    elif isinstance(key, rsa.RSAPrivateKey):
        numbers = key.private_numbers()
        jwk.update(
            d=_uint(numbers.d),
            p=_uint(numbers.p),
            q=_uint(numbers.q),
            dp=_uint(numbers.dmp1),
            dq=_uint(numbers.dmq1),
            qi=_uint(numbers.iqmp),
        )
    else:
        jwk["d"] = b64(key.private_bytes_raw())
    return jwk


def sign(key: Any, alg: str, data: bytes) -> bytes:
    """A JWS signature (RFC 7518) of ``data`` with ``key`` under ``alg``."""
    if alg.startswith("ES"):
        der = key.sign(data, ec.ECDSA(_HASHES[alg[2:]]))
        r, s = decode_dss_signature(der)
        size = (key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if alg.startswith("PS"):
        h = _HASHES[alg[2:]]
        return key.sign(data, padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), h)
    if alg.startswith("RS"):
        return key.sign(data, padding.PKCS1v15(), _HASHES[alg[2:]])
    return key.sign(data)


def claims(**over: Any) -> dict[str, Any]:
    """Good claims for METHOD HTU at NOW with TOKEN; keyword ``None`` removes a claim."""
    base: dict[str, Any] = {
        "jti": b64(uuid.uuid4().bytes),
        "htm": METHOD,
        "htu": HTU,
        "iat": NOW,
        "ath": ath(),
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def header(alg: str, key: Any, /, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"typ": "dpop+jwt", "alg": alg, "jwk": public_jwk(key)}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def mint(
    alg: str,
    key: Any,
    *,
    header_json: str | None = None,
    claims_json: str | None = None,
    signer: Any = None,
    head: Mapping[str, Any] | None = None,
    body: Mapping[str, Any] | None = None,
    sign_alg: str | None = None,
) -> str:
    """A compact proof; ``head``/``body`` replace the default header/claims, ``*_json``
    give the exact JSON text (duplicate members, odd spacing), ``signer`` another key."""
    h = header_json if header_json is not None else json.dumps(head if head is not None else header(alg, key))
    c = claims_json if claims_json is not None else json.dumps(body if body is not None else claims())
    signing_input = f"{b64(h.encode())}.{b64(c.encode())}"
    signature = sign(signer if signer is not None else key, sign_alg or alg, signing_input.encode())
    return f"{signing_input}.{b64(signature)}"


@dataclass(frozen=True)
class Expect:
    """The keyword arguments of verify_proof for the default request."""

    method: str = METHOD
    htu: frozenset[str] = frozenset({HTU})
    now: float = NOW
    max_age: float = 60
    skew: float = 5
    access_token: str | None = TOKEN
    algorithms: frozenset[str] = ALL_ALGS

    def kwargs(self, **over: Any) -> dict[str, Any]:
        values = {
            "method": self.method,
            "htu": self.htu,
            "now": self.now,
            "max_age": self.max_age,
            "skew": self.skew,
            "access_token": self.access_token,
            "algorithms": self.algorithms,
        }
        values.update(over)
        return values


def joserfc_proof(alg: str, *, nonce: str | None = None, **over: Any) -> tuple[str, str]:
    """A proof minted by joserfc (its own key), and the key's thumbprint by joserfc."""
    from joserfc import jwk as jjwk
    from joserfc import jwt as jjwt

    kty, param = ALG_KEYS[alg]
    key = jjwk.generate_key(kty, param, auto_kid=False)  # type: ignore[arg-type]
    body = claims(**over)
    if nonce is not None:
        body["nonce"] = nonce
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc warns that EdDSA is deprecated (RFC 9864)
        token = jjwt.encode(
            {"typ": "dpop+jwt", "alg": alg, "jwk": key.as_dict(private=False)}, body, key, algorithms=[alg]
        )
    return token, key.thumbprint()


def jwcrypto_proof(alg: str, **over: Any) -> tuple[str, str]:
    """A proof minted by jwcrypto (its own key), and the key's thumbprint by jwcrypto."""
    from jwcrypto import jwk as cjwk
    from jwcrypto import jwt as cjwt

    kty, param = ALG_KEYS[alg]
    params = {"size": param} if kty == "RSA" else {"crv": param}
    key = cjwk.JWK.generate(kty=kty, **params)
    token = cjwt.JWT(
        header={"typ": "dpop+jwt", "alg": alg, "jwk": key.export_public(as_dict=True)}, claims=claims(**over)
    )
    token.make_signed_token(key)
    return token.serialize(), key.thumbprint()


# The challenges of a 401 to a request that did not use the DPoP scheme, with the default
# dpop.algorithms: RFC 6750's Bearer challenge, then DPoP's (RFC 9449 7.1) in the same field.
DPOP_ALGS = 'algs="ES256 ES384 ES512 PS256 EdDSA Ed25519"'
NO_TOKEN_CHALLENGE = f"Bearer, DPoP {DPOP_ALGS}"
INVALID_TOKEN_CHALLENGE = f'Bearer error="invalid_token", DPoP {DPOP_ALGS}'
