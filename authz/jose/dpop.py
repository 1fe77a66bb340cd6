"""DPoP proofs (RFC 9449 §4): strict parsing and verification of one proof, without state.

Two stages, cheapest first. ``parse_proof``: framing, sizes, canonical base64url; the
header (``typ`` exactly ``dpop+jwt``, a supported asymmetric ``alg`` in the caller's
allow-list, no ``crit``, a public ``jwk`` that fits ``alg``); the claims (``jti``,
``htm``, ``iat``, ``ath``; ``htu`` and ``nonce`` syntax). ``ParsedProof``: ``htu``, the
nonce, last the signature, with a key built only from the RFC 7638 thumbprint members;
between the two the caller compares ``jkt`` with the token's binding. ``verify_proof`` is
both. Failures are ``dpop_nonce_required`` (nonce missing or not accepted) or
``dpop_proof_invalid``. Whether the ``jti`` was seen before is authz.core.replay's.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from authz.errors import AuthzError, Reason
from authz.jose.encoding import b64decode, parse_json_object
from authz.jose.htu import canonical_htu
from authz.jose.thumbprint import PublicJwk, parse_public_jwk, sha256_b64url

__all__ = [
    "DEFAULT_ALGORITHMS",
    "MAX_PROOF_CHARS",
    "SUPPORTED_ALGORITHMS",
    "ParsedProof",
    "VerifiedProof",
    "check_algorithms",
    "parse_proof",
    "verify_proof",
]

_INVALID = Reason.DPOP_PROOF_INVALID
_NONCE = Reason.DPOP_NONCE_REQUIRED

# Real proofs: Ed25519 ~540 characters, ES256 ~600, PS256 with RSA-2048 ~1190, PS512 with
# RSA-4096 ~1980 (its header ~1000). The payload takes the rest, room for a long htu.
MAX_PROOF_CHARS = 8192
_MAX_HEADER_CHARS = 1536

_TYP = "dpop+jwt"

_JTI = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII: bounded, log-safe
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}")  # RFC 9110 token
_NONCE_SYNTAX = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,256}")  # RFC 9449 8.1: 1*NQCHAR
_KID = 128

# A JWK carrying any of these is (part of) a private or symmetric key: refused by name,
# before anything is built from it (RFC 9449 4.3 (7); liboauth2 CVE-2026-54431).
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# RFC 7517 4.7 would oblige us to check the certificate's key against the JWK's.
_CERTIFICATE_MEMBERS = frozenset({"x5u", "x5c", "x5t", "x5t#S256"})

_MIN_RSA_BITS, _MAX_RSA_BITS = 2048, 4096
_RSA_EXPONENT = b"\x01\x00\x01"  # 65537 only: what every mainstream client uses

# Ed25519 public keys of small order (the y of the 8 torsion points, bit 255 cleared).
# With such a key one signature verifies for every message (checked with OpenSSL), so
# a token bound to it would be a bearer token in disguise. libsodium refuses the same.
_ED25519_SMALL_ORDER = frozenset(
    bytes.fromhex(h)
    for h in (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    )
)
_ED25519_P = 2**255 - 19
_ED448_P = 2**448 - 2**224 - 1


@dataclass(frozen=True, slots=True)
class _Alg:
    kty: str
    curves: frozenset[str]  # EC and OKP: the curves this alg may use
    verify: Callable[[Any, bytes, bytes], None]  # key, signature, signing input; raises if bad
    signature_bytes: int = 0  # ECDSA: R || S; others: from the key


def _ecdsa(hash_alg: hashes.HashAlgorithm) -> Callable[[Any, bytes, bytes], None]:
    scheme = ec.ECDSA(hash_alg)

    def verify(key: Any, signature: bytes, data: bytes) -> None:
        # RFC 7518 3.4: R || S, each the size of the group order. High s is accepted:
        # RFC 9449's own example proofs have it, and replay is keyed on jti, not bytes.
        half = len(signature) // 2
        der = encode_dss_signature(
            int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
        )
        key.verify(der, data, scheme)

    return verify


def _pss(hash_alg: hashes.HashAlgorithm) -> Callable[[Any, bytes, bytes], None]:
    # RFC 7518 3.5: MGF1 with the same hash, salt as long as the hash; never AUTO/MAX_LENGTH.
    scheme = padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=hash_alg.digest_size)

    def verify(key: Any, signature: bytes, data: bytes) -> None:
        key.verify(signature, data, scheme, hash_alg)

    return verify


def _pkcs1(hash_alg: hashes.HashAlgorithm) -> Callable[[Any, bytes, bytes], None]:
    scheme = padding.PKCS1v15()

    def verify(key: Any, signature: bytes, data: bytes) -> None:
        key.verify(signature, data, scheme, hash_alg)

    return verify


def _eddsa(key: Any, signature: bytes, data: bytes) -> None:
    key.verify(signature, data)


_EC = "EC"
_RSA = "RSA"
_OKP = "OKP"

# Asymmetric signature algorithms only (RFC 9449 4.2: never none, never a MAC). The
# fully-specified Ed25519 and Ed448 are RFC 9864's; it deprecates the polymorphic EdDSA.
_ALGS: Mapping[str, _Alg] = {
    "ES256": _Alg(_EC, frozenset({"P-256"}), _ecdsa(hashes.SHA256()), 64),
    "ES384": _Alg(_EC, frozenset({"P-384"}), _ecdsa(hashes.SHA384()), 96),
    "ES512": _Alg(_EC, frozenset({"P-521"}), _ecdsa(hashes.SHA512()), 132),
    "PS256": _Alg(_RSA, frozenset(), _pss(hashes.SHA256())),
    "PS384": _Alg(_RSA, frozenset(), _pss(hashes.SHA384())),
    "PS512": _Alg(_RSA, frozenset(), _pss(hashes.SHA512())),
    "RS256": _Alg(_RSA, frozenset(), _pkcs1(hashes.SHA256())),
    "RS384": _Alg(_RSA, frozenset(), _pkcs1(hashes.SHA384())),
    "RS512": _Alg(_RSA, frozenset(), _pkcs1(hashes.SHA512())),
    "EdDSA": _Alg(_OKP, frozenset({"Ed25519", "Ed448"}), _eddsa),
    "Ed25519": _Alg(_OKP, frozenset({"Ed25519"}), _eddsa),
    "Ed448": _Alg(_OKP, frozenset({"Ed448"}), _eddsa),
}

SUPPORTED_ALGORITHMS: frozenset[str] = frozenset(_ALGS)

# The default plus Ed25519 (RFC 9864; panva's dpop library signs with it). RS*
# (PKCS#1 v1.5) only by explicit configuration.
DEFAULT_ALGORITHMS: tuple[str, ...] = ("ES256", "ES384", "ES512", "PS256", "EdDSA", "Ed25519")

_EC_CURVES: Mapping[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}

_OKP_SIGNATURE_BYTES = {"Ed25519": 64, "Ed448": 114}


@dataclass(frozen=True, slots=True)
class VerifiedProof:
    """A proof whose every stateless check passed.

    ``jkt``: the RFC 7638 thumbprint of its key (compare with the token's ``cnf.jkt``);
    ``jti`` and ``iat`` for the replay cache; ``nonce``: the accepted server nonce, None
    when nonces are not required (a ``nonce`` claim is then not looked at beyond syntax).
    """

    jkt: str
    jti: str
    iat: int | float
    nonce: str | None


def check_algorithms(names: Collection[str]) -> frozenset[str]:
    """A configured allow-list, or ValueError naming what cannot be allowed."""
    unknown = sorted(set(names) - SUPPORTED_ALGORITHMS)
    if unknown:
        raise ValueError(
            f"not an asymmetric DPoP algorithm we verify: {', '.join(unknown)} "
            f"(supported: {', '.join(sorted(SUPPORTED_ALGORITHMS))})"
        )
    if not names:
        raise ValueError("at least one algorithm: with none, bound tokens could not be used")
    return frozenset(names)


def verify_proof(
    proof: str,
    *,
    method: str,
    htu: Collection[str],
    now: float,
    max_age: float,
    skew: float,
    access_token: str | None,
    algorithms: Collection[str],
    nonce: Callable[[str], bool] | None = None,
    path_parameters: bool = False,
) -> VerifiedProof:
    """Verify one DPoP proof against what the request says; AuthzError on any failure.

    ``method``: the request method, compared exactly with ``htm``. ``htu``: the
    acceptable target URIs, each already canonical (authz.jose.htu). ``iat`` must lie
    in ``[now - max_age, now + skew]``. ``access_token``: the token68 the proof goes
    with (``ath`` must be its hash); None where there is none (a token request), and
    then ``ath`` must be absent. ``algorithms``: the allow-list (anything outside
    SUPPORTED_ALGORITHMS never passes). ``nonce``: given, nonces are required and it
    says whether a proof's nonce is accepted; one argument, so "required but nothing to
    check it with" cannot be expressed. ``path_parameters``: as canonical_htu.

    The two stages in one call: ``parse_proof`` (nothing that depends on the token's
    binding or the tenant), then ``ParsedProof.verify`` (target URI, nonce, signature).
    """
    parsed = parse_proof(
        proof,
        method=method,
        now=now,
        max_age=max_age,
        skew=skew,
        access_token=access_token,
        algorithms=algorithms,
    )
    return parsed.verify(htu=htu, nonce=nonce, path_parameters=path_parameters)


def parse_proof(
    proof: str,
    *,
    method: str,
    now: float,
    max_age: float,
    skew: float,
    access_token: str | None,
    algorithms: Collection[str],
) -> ParsedProof:
    """The checks of a proof that need neither the token's binding nor the tenant, cheapest first.

    Framing, sizes, canonical base64url, the header (``typ``, ``alg`` in ``algorithms``,
    a public ``jwk`` that fits it), ``jti``, ``htm``, ``iat``, ``ath`` and the syntax of
    ``htu`` and ``nonce``: no signature work (RFC 9449 4.3; the check sequence runs this
    before the access token is decrypted). AuthzError(dpop_proof_invalid) on any failure.
    """
    try:
        return _parse(proof, method, now, max_age, skew, access_token, algorithms)
    except AuthzError:
        raise
    except Exception as exc:  # noqa: BLE001 - fail closed on anything unexpected
        raise AuthzError(_INVALID, f"unexpected {type(exc).__name__}") from None


def _parse(  # noqa: PLR0917 - the private body of parse_proof, same arguments
    proof: str,
    method: str,
    now: float,
    max_age: float,
    skew: float,
    access_token: str | None,
    algorithms: Collection[str],
) -> ParsedProof:
    # Framing: one compact JWS of bounded size (a JWE has 5 parts, JSON serialization 1).
    if not isinstance(proof, str) or len(proof) > MAX_PROOF_CHARS or not proof.isascii():
        raise AuthzError(_INVALID, "proof is not an ASCII string of bounded size")
    parts = proof.encode("ascii").split(b".")
    if len(parts) != 3:
        raise AuthzError(_INVALID, "proof is not a compact JWS")
    protected, payload, signature_b64 = parts
    if len(protected) > _MAX_HEADER_CHARS:
        raise AuthzError(_INVALID, "proof header too large")

    header = _header(protected)
    if header.alg not in algorithms:
        raise AuthzError(_INVALID, "alg not allowed")
    if len(signature_b64) != header.signature_chars:
        raise AuthzError(_INVALID, "signature of the wrong length")
    signature = b64decode(signature_b64, _INVALID)

    claims = _json(b64decode(payload, _INVALID), "claims")
    jti = claims.get("jti")
    if not isinstance(jti, str) or _JTI.fullmatch(jti) is None:
        raise AuthzError(_INVALID, "jti missing or not 1-128 printable ASCII characters")
    htm = claims.get("htm")
    if not isinstance(htm, str) or _METHOD.fullmatch(htm) is None or htm != method:
        raise AuthzError(_INVALID, "htm is not the request method")
    htu = claims.get("htu")
    if not isinstance(htu, str):
        raise AuthzError(_INVALID, "htu missing or not a string")
    iat = claims.get("iat")
    if type(iat) is not int and type(iat) is not float:  # bool is an int: not a time
        raise AuthzError(_INVALID, "iat missing or not a number")
    if iat < now - max_age:
        raise AuthzError(_INVALID, "iat too old")
    if iat > now + skew:
        raise AuthzError(_INVALID, "iat in the future")
    _check_ath(claims, access_token)
    nonce = claims.get("nonce")
    if "nonce" in claims and (not isinstance(nonce, str) or _NONCE_SYNTAX.fullmatch(nonce) is None):
        raise AuthzError(_INVALID, "nonce is not 1-256 NQCHAR")
    return ParsedProof(header, protected + b"." + payload, signature, jti, htu, iat, nonce)


@dataclass(frozen=True, slots=True)
class ParsedProof:
    """A proof whose stateless checks up to ``ath`` passed; ``verify`` does the rest.

    ``jkt``: the RFC 7638 thumbprint of its ``jwk`` (no signature work yet: compare it with
    the token's ``cnf.jkt`` first, and a stolen token presented with another key costs no
    verification).
    """

    _header: _Header
    _signing_input: bytes = field(repr=False)
    _signature: bytes = field(repr=False)
    jti: str
    htu: str
    iat: int | float
    nonce: str | None  # the claim as sent (syntax checked), None without one

    @property
    def jkt(self) -> str:
        return self._header.key.thumbprint

    def check_htu(self, expected: Collection[str], *, path_parameters: bool = False) -> None:
        """``htu`` is one of ``expected`` (canonical target URIs); else dpop_proof_invalid."""
        # A canonical value is its own canonical form (a tested property): equal strings
        # need no parsing. canonical_htu raises for an htu that is no URI at all.
        value = self.htu
        if value in expected or canonical_htu(value, path_parameters=path_parameters) in expected:
            return
        raise AuthzError(_INVALID, "htu is not the request's target URI")

    def check_nonce(self, nonce_check: Callable[[str], bool] | None) -> str | None:
        """The accepted nonce (None when nonces are not required); else dpop_nonce_required."""
        if nonce_check is None:
            return None  # not required: a nonce claim is not looked at beyond syntax
        if self.nonce is None:
            raise AuthzError(_NONCE, "nonce missing")
        try:
            accepted = nonce_check(self.nonce)
        except Exception as exc:  # noqa: BLE001 - fail closed on the checker's faults too
            raise AuthzError(_INVALID, f"unexpected {type(exc).__name__}") from None
        if not accepted:
            raise AuthzError(_NONCE, "nonce not accepted")
        return self.nonce

    def check_signature(self) -> None:
        """The signature verifies with the ``jwk`` (built from its thumbprint members only)."""
        try:
            public_key, _ = _public_key(self._header.key)
            self._header.spec.verify(public_key, self._signature, self._signing_input)
        except AuthzError:
            raise
        except Exception:  # noqa: BLE001 - any failure is a bad signature
            raise AuthzError(_INVALID, "signature does not verify") from None

    def verify(
        self,
        *,
        htu: Collection[str],
        nonce: Callable[[str], bool] | None = None,
        path_parameters: bool = False,
    ) -> VerifiedProof:
        """The remaining checks in the check sequence's order: target URI, nonce, signature."""
        try:
            self.check_htu(htu, path_parameters=path_parameters)
            accepted = self.check_nonce(nonce)
            self.check_signature()
        except AuthzError:
            raise
        except Exception as exc:  # noqa: BLE001 - fail closed on anything unexpected
            raise AuthzError(_INVALID, f"unexpected {type(exc).__name__}") from None
        return VerifiedProof(self.jkt, self.jti, self.iat, accepted)


@dataclass(frozen=True, slots=True)
class _Header:
    alg: str
    spec: _Alg
    key: PublicJwk
    signature_chars: int  # the signature part's exact length for this alg and key


@functools.lru_cache(maxsize=1024)
def _header(protected: bytes) -> _Header:
    """The protected header's checks that depend on its bytes alone, cached by those bytes.

    A client sends the same header (typ, alg, jwk) with every proof, so its next
    proofs skip the decode, the strict parse and the jwk checks. Only a header that
    passed is cached (lru_cache keeps no exceptions); the caller's allow-list is
    checked on every call.
    """
    header = _json(b64decode(protected, _INVALID), "header")
    if header.get("typ") != _TYP:
        raise AuthzError(_INVALID, "typ is not dpop+jwt")
    alg = header.get("alg")
    spec = _ALGS.get(alg) if isinstance(alg, str) else None
    if spec is None or not isinstance(alg, str):
        raise AuthzError(_INVALID, "alg not allowed")
    if "crit" in header:  # we implement no extension, so any crit is fatal
        raise AuthzError(_INVALID, "crit")
    key = _proof_key(header.get("jwk"), alg, spec)
    return _Header(alg, spec, key, (4 * _signature_bytes(spec, key) + 2) // 3)


def _json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        return parse_json_object(raw)
    except ValueError:
        raise AuthzError(_INVALID, f"{what} is not a strict JSON object") from None


def _proof_key(jwk: Any, alg: str, spec: _Alg) -> PublicJwk:
    """The header's ``jwk``: public, of ``alg``'s type and curve or size, checked by name first."""
    if type(jwk) is not dict:
        raise AuthzError(_INVALID, "jwk missing or not an object")
    if not _PRIVATE_MEMBERS.isdisjoint(jwk):
        raise AuthzError(_INVALID, "jwk has a private or symmetric key member")
    if not _CERTIFICATE_MEMBERS.isdisjoint(jwk):
        raise AuthzError(_INVALID, "jwk has certificate members")
    if jwk.get("kty") != spec.kty:
        raise AuthzError(_INVALID, "jwk key type does not fit alg")
    _check_optional_members(jwk, alg)
    key = parse_public_jwk(jwk, _INVALID)
    if spec.curves and key.crv not in spec.curves:
        raise AuthzError(_INVALID, "jwk curve does not fit alg")
    if key.kty == _RSA:
        bits = (len(key.n) - 1) * 8 + key.n[0].bit_length()
        if not _MIN_RSA_BITS <= bits <= _MAX_RSA_BITS or not key.n[-1] & 1:
            raise AuthzError(_INVALID, "jwk RSA modulus not 2048-4096 bits and odd")
        if key.e != _RSA_EXPONENT:
            raise AuthzError(_INVALID, "jwk RSA exponent is not 65537")
    elif key.kty == _OKP and _small_order(key.crv, key.x):
        raise AuthzError(_INVALID, "jwk is a small-order or non-canonical EdDSA key")
    return key


def _check_optional_members(jwk: Mapping[str, Any], alg: str) -> None:
    # RFC 7517 4: unknown members are ignored; the known optional ones must fit a
    # public verification key for this alg. WebCrypto exports add ext and key_ops.
    if "kid" in jwk and (not isinstance(jwk["kid"], str) or len(jwk["kid"]) > _KID):
        raise AuthzError(_INVALID, "jwk kid is not a short string")
    if "use" in jwk and jwk["use"] != "sig":
        raise AuthzError(_INVALID, "jwk use is not sig")
    if "alg" in jwk and jwk["alg"] != alg:
        raise AuthzError(_INVALID, "jwk alg is not the header alg")
    ops = jwk.get("key_ops", ["verify"])
    if type(ops) is not list or any(op != "verify" for op in ops):
        raise AuthzError(_INVALID, "jwk key_ops other than verify")
    if "ext" in jwk and type(jwk["ext"]) is not bool:
        raise AuthzError(_INVALID, "jwk ext is not a boolean")


def _small_order(crv: str | None, x: bytes) -> bool:
    """Small-order points and non-canonical encodings of Ed25519 and Ed448 public keys."""
    if crv == "Ed25519":
        y = bytes(x[:31]) + bytes([x[31] & 0x7F])
        return y in _ED25519_SMALL_ORDER or int.from_bytes(y, "little") >= _ED25519_P
    # Ed448 (RFC 8032 5.2.2): 57 octets, the last holds only the sign bit. Cofactor 4:
    # the small-order points have y = 1, p - 1 or 0.
    if x[56] & 0x7F:
        return True
    y448 = int.from_bytes(x[:56], "little")
    return y448 >= _ED448_P or y448 in (0, 1, _ED448_P - 1)


def _signature_bytes(spec: _Alg, key: PublicJwk) -> int:
    if spec.signature_bytes:
        return spec.signature_bytes
    if key.kty == _RSA:
        return len(key.n)  # RFC 8017: a signature is as long as the modulus
    return _OKP_SIGNATURE_BYTES[key.crv or ""]


def _check_ath(claims: Mapping[str, Any], access_token: str | None) -> None:
    ath = claims.get("ath")
    if access_token is None:
        if "ath" in claims:
            raise AuthzError(_INVALID, "ath without an access token")
        return
    if not isinstance(ath, str):
        raise AuthzError(_INVALID, "ath missing or not a string")
    if not access_token.isascii():
        raise AuthzError(_INVALID, "access token is not ASCII")
    # RFC 9449 4.2: over the ASCII of the token as sent (the token68, no scheme, no spaces).
    if ath != sha256_b64url(access_token.encode("ascii")):
        raise AuthzError(_INVALID, "ath is not the access token's hash")


@functools.lru_cache(maxsize=1024)
def _public_key(key: PublicJwk) -> tuple[Any, str]:
    """The pyca key object and the thumbprint of ``key``, cached by thumbprint input.

    Building an EC key validates its point (several microseconds); the result depends
    only on the thumbprint members, which is what PublicJwk compares and hashes.
    """
    if key.kty == _EC:
        curve = _EC_CURVES[key.crv or ""]
        numbers = ec.EllipticCurvePublicNumbers(
            int.from_bytes(key.x, "big"), int.from_bytes(key.y, "big"), curve
        )
        try:
            public: Any = numbers.public_key()
        except ValueError:
            raise AuthzError(_INVALID, "jwk is not a point on its curve") from None
    elif key.kty == _RSA:
        public = rsa.RSAPublicNumbers(int.from_bytes(key.e, "big"), int.from_bytes(key.n, "big")).public_key()
    elif key.crv == "Ed25519":
        public = ed25519.Ed25519PublicKey.from_public_bytes(key.x)
    else:
        public = ed448.Ed448PublicKey.from_public_bytes(key.x)
    return public, key.thumbprint
