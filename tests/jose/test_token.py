"""Token layer through the Check service: the algorithm matrix, every attack of
SECURITY.md's table and every jwcrypto trap, each denied with its exact reason.

Attack tokens are built by hand (``sign``/``encrypt`` below, on jwcrypto's JWA
primitives) so that any header byte, payload byte and part can be chosen; a
control test proves that the same builders make tokens the service accepts, so
each attack token differs from a valid one only by its attack.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import hmac
import json
import logging
import os
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from jwcrypto.jwa import JWA
from jwcrypto.jwe import JWE
from jwcrypto.jwk import JWK

from authz.config import Config, SnapshotHolder
from authz.errors import AuthzError, ConfigError
from authz.grpc.servicer import check, evaluate
from authz.jose.encoding import parse_json_object
from authz.jose.jws import verify_compact
from authz.jose.keys import MAX_KIDLESS_CANDIDATES, Purpose, keyset_from_jwks
from authz.jose.nested import TokenKeys, validate_token
from authz.telemetry.logs import JsonFormatter
from testkit.world import (
    ACME_IDP,
    CONTENT_ENCRYPTIONS,
    GLOBEX_IDP,
    INNER_ALGS,
    NOW,
    OUTER_ALGS,
    check_request,
)

ACME = "api.acme.test"
LEGACY = "api.legacy.test"  # tenant opted in to encrypt-only tokens with enc-a256kw and enc-dir
UNAUTHENTICATED = 16
# P-256 field prime and group order (SEC 2).
P256_P = 2**256 - 2**224 + 2**192 + 2**96 - 1
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def clock() -> float:
    return NOW


# -- building tokens by hand ----------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def compact_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def _members(base: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    """``base`` updated with ``extra``; a ``None`` value removes the member."""
    merged = {**base, **(extra or {})}
    return {name: value for name, value in merged.items() if value is not None}


def sign(
    world,
    payload: bytes | dict[str, Any],
    *,
    kid: str = "acme-es256",
    key: JWK | None = None,
    alg: str | None = None,
    header: dict[str, Any] | None = None,
    raw_header: bytes | None = None,
) -> str:
    """A compact JWS with any header and payload bytes, signed with ``key`` (default: the world's ``kid``)."""
    key = key or world.signing_keys[kid]
    alg = alg or key["alg"]
    if raw_header is None:
        raw_header = compact_json(_members({"alg": alg, "kid": kid, "typ": "at+jwt"}, header))
    body = payload if isinstance(payload, bytes) else compact_json(payload)
    signing_input = f"{b64(raw_header)}.{b64(body)}"
    signature = JWA.signing_alg(alg).sign(key, signing_input.encode("ascii"))
    return f"{signing_input}.{b64(signature)}"


def encrypt(
    world,
    plaintext: bytes,
    *,
    kid: str = "enc-rsa-oaep-256",
    key: JWK | None = None,
    enc: str = "A256GCM",
    alg: str | None = None,
    header: dict[str, Any] | None = None,
    raw_header: bytes | None = None,
) -> str:
    """A compact JWE of ``plaintext`` to ``key`` (default: the world's ``kid``), ``cty: JWT`` by default."""
    key = key or world.decryption_keys[kid]
    alg = alg or key["alg"]
    enc_impl = JWA.encryption_alg(enc)
    fields = _members({"alg": alg, "enc": enc, "kid": kid, "cty": "JWT"}, header)
    wrapped = JWA.keymgmt_alg(alg).wrap(key, enc_impl.wrap_key_size, None, fields)
    fields.update(wrapped.get("header", {}))
    protected = b64(raw_header if raw_header is not None else compact_json(fields))
    iv, ciphertext, tag = enc_impl.encrypt(wrapped["cek"], protected.encode("ascii"), plaintext)
    return ".".join((protected, b64(wrapped.get("ek", b"")), b64(iv), b64(ciphertext), b64(tag)))


def forge(fields: dict[str, Any], *, encrypted_key: bytes = b"", plaintext: bytes = b"{}") -> str:
    """A well-formed compact JWE whose CEK nobody can recover (random), for headers no key can serve."""
    enc_impl = JWA.encryption_alg(fields["enc"])
    protected = b64(compact_json(fields))
    cek = os.urandom(enc_impl.wrap_key_size // 8)
    iv, ciphertext, tag = enc_impl.encrypt(cek, protected.encode("ascii"), plaintext)
    return ".".join((protected, b64(encrypted_key), b64(iv), b64(ciphertext), b64(tag)))


def nested(world, claims: dict[str, Any] | None = None, **outer: Any) -> str:
    """A valid nested token for acme built by hand: ES256 JWS inside an RSA-OAEP-256 JWE."""
    return encrypt(world, sign(world, claims or world.claims()).encode("ascii"), **outer)


def raw_claims(world, tail: str, **overrides: Any) -> bytes:
    """acme's valid claims as JSON text with ``tail`` (raw JSON members) appended."""
    text = compact_json(world.claims(**overrides)).decode("utf-8")
    return (text[:-1] + "," + tail + "}").encode("utf-8")


def with_part(token: str, index: int, change: Callable[[str], str]) -> str:
    parts = token.split(".")
    parts[index] = change(parts[index])
    return ".".join(parts)


def flip_first_char(part: str) -> str:
    return ("B" if part[0] == "A" else "A") + part[1:]


def non_canonical(part: str) -> str:
    """The same bytes to a lenient decoder: flip an unused low bit of the last character."""
    assert len(part) % 4 in (2, 3), "only a part with unused bits can be re-encoded"
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return part[:-1] + alphabet[alphabet.index(part[-1]) ^ 1]


def without_use(key: JWK) -> JWK:
    """The same key material without ``use`` (jwcrypto refuses to sign with a ``use: enc`` key)."""
    return JWK(**{k: v for k, v in json.loads(key.export_private()).items() if k != "use"})


def attacker_ec_key() -> JWK:
    return JWK.generate(kty="EC", crv="P-256", alg="ES256")


def self_signed_certificate(key: JWK) -> bytes:
    private = key.get_op_key("sign")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.acme.test")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(2040, 1, 1, tzinfo=datetime.UTC))
        .sign(private, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER)


def es256_parts(token: str) -> tuple[bytes, int, int]:
    """Signing input, r and s of a compact ES256 JWS."""
    header, payload, signature = token.split(".")
    raw = unb64(signature)
    return (
        f"{header}.{payload}".encode("ascii"),
        int.from_bytes(raw[:32], "big"),
        int.from_bytes(raw[32:], "big"),
    )


def es256_with_signature(token: str, signature: bytes) -> str:
    return with_part(token, 2, lambda _: b64(signature))


def padded_es256(token: str, width: int) -> str:
    """The same (r, s) encoded with ``width`` bytes each: jwcrypto splits the signature in halves."""
    _, r, s = es256_parts(token)
    return es256_with_signature(token, r.to_bytes(width, "big") + s.to_bytes(width, "big"))


def ec_point(key: JWK) -> tuple[int, int]:
    return int.from_bytes(unb64(key["x"]), "big"), int.from_bytes(unb64(key["y"]), "big")


def containing(build: Callable[[], str], chars: str) -> str:
    """A token from ``build`` that contains one of ``chars`` (ciphertext is random: retry a few times)."""
    for _ in range(20):
        token = build()
        if any(c in token for c in chars):
            return token
    raise AssertionError(f"no token with any of {chars!r}")


def replace_first(token: str, old: str, new: str) -> str:
    """Replace the first ``old`` after the protected header (the header is fixed text)."""
    start = token.index(".")
    at = token.index(old, start)
    return token[:at] + new + token[at + 1 :]


# -- reading responses ----------------------------------------------------------


def reason(response) -> str:
    """The deny reason of a CheckResponse, or "allowed"."""
    if response.status.code == 0:
        return "allowed"
    return json.loads(response.denied_response.body)["reason"]


def ok_headers(response) -> dict[str, str]:
    return {option.header.key: option.header.value for option in response.ok_response.headers}


def token_code(token: str, keys: TokenKeys) -> str:
    try:
        validate_token(token, keys)
    except AuthzError as exc:
        return exc.code
    return "ok"


def with_token_keys(config: Config, **changes: Any) -> Config:
    keys = dataclasses.replace(config.snapshot.token_keys, **changes)
    return dataclasses.replace(config, snapshot=dataclasses.replace(config.snapshot, token_keys=keys))


# -- the attack table -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Attack:
    """A token-building attack, the reason the service gives, and the token layer's own reason."""

    build: Callable[..., str]
    code: str  # the reason of the deny answered by check()
    token_code: str | None  # what validate_token raises ("ok": the token layer accepts, a later step denies)
    host: str
    typ: frozenset[str]  # the inner typ allow-list of the config (empty: not checked)

    @property
    def name(self) -> str:
        return self.build.__name__

    def config(self, config: Config) -> Config:
        return with_token_keys(config, allowed_typ=self.typ) if self.typ else config


ATTACKS: list[Attack] = []


def attack(
    code: str, *, token_code: str | None = None, host: str = ACME, typ: frozenset[str] = frozenset()
) -> Callable[[Callable[..., str]], Callable[..., str]]:
    """Register a builder of an attack token; its docstring says what it is and why it fails."""

    def register(build: Callable[..., str]) -> Callable[..., str]:
        ATTACKS.append(Attack(build, code, token_code or code, host, typ))
        return build

    return register


# RSA1_5 (Bleichenbacher, CVE-2016-6298): never any RSA PKCS#1 v1.5 operation.


@attack("alg_not_allowed")
def rsa1_5_to_our_rsa_key(world):
    """A real RSA1_5-wrapped CEK to our RSA key, with its kid: refused by alg before any RSA work."""
    return nested(world, alg="RSA1_5")


@attack("alg_not_allowed")
def rsa1_5_without_kid(world):
    """RSA1_5 without kid: the kid-less lookup never starts for a refused algorithm."""
    return nested(world, alg="RSA1_5", header={"kid": None})


# JWS where JWE expected, and the reverse (CVE-2022-3102).


@attack("token_not_jwe")
def jws_instead_of_jwe(world):
    """A valid, signed JWS sent bare (no encryption layer) is not a JWE."""
    return sign(world, world.claims())


@attack("token_not_jwe")
def jws_hs256_instead_of_jwe(world):
    """A bare JWS, MAC'ed with our RSA public key as HMAC secret (the classic confusion): not a JWE."""
    public = world.decryption_keys["enc-rsa-oaep-256"].get_op_key("wrapKey")
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = b64(compact_json({"alg": "HS256"})) + "." + b64(compact_json(world.claims()))
    mac = hmac.new(pem, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


@attack("inner_token_malformed")
def jwe_inside_jwe(world):
    """The inner layer must be a JWS: a valid JWE nested in a JWE (cty JWT) is refused."""
    return encrypt(world, nested(world).encode("ascii"))


@attack("inner_token_malformed")
def inner_two_parts(world):
    """An inner token of two parts is not a compact JWS."""
    return encrypt(world, sign(world, world.claims()).rsplit(".", 1)[0].encode("ascii"))


@attack("inner_token_malformed")
def inner_not_ascii(world):
    """A decrypted inner token with non-ASCII bytes is refused before any parsing."""
    return encrypt(world, sign(world, world.claims()).encode("ascii") + "é".encode())


# PBES2 with a huge p2c (CVE-2023-6681 and peers): refused before any key derivation.


def pbes2_fields(p2c: int) -> dict[str, Any]:
    return {
        "alg": "PBES2-HS512+A256KW",
        "enc": "A256GCM",
        "kid": "enc-a256kw",
        "cty": "JWT",
        "p2s": b64(os.urandom(16)),
        "p2c": p2c,
    }


@attack("alg_not_allowed")
def pbes2_huge_p2c(world):
    """PBES2 with p2c = 2^31 - 1 (hours of PBKDF2): refused by alg, see the counting test below."""
    return forge(pbes2_fields(2**31 - 1), encrypted_key=os.urandom(40))


# Compressed plaintext (CVE-2024-28102): zip is refused outright.


@attack("zip_not_allowed")
def zip_deflate(world):
    """A real DEFLATE-compressed nested token (zip: DEF): refused, never inflated."""
    compressor = zlib.compressobj(wbits=-15)
    inner = sign(world, world.claims()).encode("ascii")
    return encrypt(world, compressor.compress(inner) + compressor.flush(), header={"zip": "DEF"})


@attack("zip_not_allowed")
def zip_unknown_method(world):
    """Any zip member is refused, whatever its value."""
    return nested(world, header={"zip": "GZIP"})


# ECDH-ES invalid-curve points: pyca validates the point; never a crash, one code.


def ecdh_fields(epk: dict[str, Any]) -> dict[str, Any]:
    return {"alg": "ECDH-ES", "enc": "A256GCM", "kid": "enc-ecdh-es", "cty": "JWT", "epk": epk}


@attack("decryption_failed")
def ecdh_epk_off_curve(world):
    """An epk that is not on P-256 (our key's y + 1): the point is refused by pyca, no ECDH happens."""
    x, y = ec_point(world.decryption_keys["enc-ecdh-es"])
    epk = {
        "kty": "EC",
        "crv": "P-256",
        "x": b64(x.to_bytes(32, "big")),
        "y": b64(((y + 1) % P256_P).to_bytes(32, "big")),
    }
    return forge(ecdh_fields(epk))


@attack("decryption_failed")
def ecdh_epk_on_another_curve(world):
    """A valid P-384 epk sent to our P-256 key: curves differ, the key is not even tried."""
    epk = json.loads(JWK.generate(kty="EC", crv="P-384").export_public())
    return forge(ecdh_fields(epk))


@attack("decryption_failed")
def ecdh_epk_p384_point_labelled_p256(world):
    """A P-384 point labelled P-256 (coordinates out of the field): refused by pyca."""
    epk = json.loads(JWK.generate(kty="EC", crv="P-384").export_public()) | {"crv": "P-256"}
    return forge(ecdh_fields(epk))


@attack("decryption_failed")
def ecdh_epk_x25519_to_p256_key(world):
    """An X25519 epk to our P-256 key: the curves differ."""
    epk = json.loads(JWK.generate(kty="OKP", crv="X25519").export_public())
    return forge(ecdh_fields(epk))


@attack("header_malformed")
def ecdh_epk_symmetric(world):
    """An epk that is a symmetric key is not a public key."""
    return forge(ecdh_fields({"kty": "oct", "k": b64(os.urandom(32))}))


@attack("header_malformed")
def ecdh_epk_kty_not_a_string(world):
    """An epk whose kty is a list (unhashable: once a TypeError, token_invalid)."""
    epk = json.loads(JWK.generate(kty="EC", crv="P-256").export_public()) | {"kty": ["EC"]}
    return forge(ecdh_fields(epk))


@attack("header_malformed")
def ecdh_epk_missing(world):
    """ECDH-ES without epk."""
    return forge({"alg": "ECDH-ES", "enc": "A256GCM", "kid": "enc-ecdh-es", "cty": "JWT"})


# alg none and HS/RS key confusion (CVE-2016-10555): allow-list per key, HMAC only with oct keys.


def unsigned(world, alg: str) -> str:
    signing_input = f"{b64(compact_json({'alg': alg, 'kid': 'acme-es256', 'typ': 'at+jwt'}))}"
    return f"{signing_input}.{b64(compact_json(world.claims()))}."


@attack("signature_alg_not_allowed")
def inner_alg_none(world):
    """An inner JWS with alg none and an empty signature."""
    return encrypt(world, unsigned(world, "none").encode("ascii"))


@attack("signature_alg_not_allowed")
def inner_alg_none_upper_case(world):
    """alg NONE: algorithm names are case-sensitive and NONE is none of ours."""
    return encrypt(world, unsigned(world, "NONE").encode("ascii"))


def hs256_with_secret(world, secret: bytes, kid: str | None) -> str:
    header = compact_json(_members({"alg": "HS256", "typ": "at+jwt", "kid": kid}, None))
    signing_input = f"{b64(header)}.{b64(compact_json(world.claims()))}"
    mac = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return encrypt(world, f"{signing_input}.{b64(mac)}".encode("ascii"))


def issuer_public_pem(world, kid: str) -> bytes:
    public = world.signing_keys[kid].get_op_key("verify")
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@attack("signing_key_unknown")
def hs256_with_issuer_rsa_public_pem(world):
    """HS256 MAC'ed with the issuer's RSA public key PEM, kid of that RSA key: the key is pinned to RS256."""
    return hs256_with_secret(world, issuer_public_pem(world, "acme-rs256"), "acme-rs256")


@attack("signing_key_unknown")
def hs256_with_issuer_public_jwk_without_kid(world):
    """HS256 MAC'ed with the issuer's public JWK text, no kid: the issuer has no HS256 key to try."""
    return hs256_with_secret(world, world.signing_keys["acme-rs256"].export_public().encode(), None)


@attack("signing_key_unknown")
def hs256_with_issuer_ec_public_key(world):
    """HS256 MAC'ed with the issuer's EC public key bytes (Wycheproof's symmetry confusion)."""
    return hs256_with_secret(world, issuer_public_pem(world, "acme-es256"), "acme-es256")


# Attacker-supplied keys (jwk, jku, x5u, x5c) and kid tricks: keys only from our key sets.


@attack("signature_invalid")
def embedded_jwk_with_our_kid(world):
    """Signed by the attacker's key, which is embedded as jwk, under our kid: verified with our key only."""
    key = attacker_ec_key()
    header = {"jwk": json.loads(key.export_public())}
    return encrypt(world, sign(world, world.claims(), key=key, header=header).encode("ascii"))


@attack("signature_invalid")
def embedded_jwk_without_kid(world):
    """Signed by the attacker's embedded jwk, no kid: only the issuer's own ES256 key is tried."""
    key = attacker_ec_key()
    header = {"kid": None, "jwk": json.loads(key.export_public())}
    return encrypt(world, sign(world, world.claims(), key=key, header=header).encode("ascii"))


@attack("signing_key_unknown")
def embedded_jwk_with_its_own_kid(world):
    """Signed by the attacker's embedded jwk under the attacker's kid: no such key of ours."""
    key = attacker_ec_key()
    header = {"kid": "attacker", "jwk": json.loads(key.export_public()) | {"kid": "attacker"}}
    return encrypt(world, sign(world, world.claims(), key=key, header=header).encode("ascii"))


@attack("signature_invalid")
def jku_and_x5u_to_attacker_keys(world):
    """jku and x5u point at the attacker's keys: never fetched, our key is used."""
    header = {"jku": "https://evil.test/jwks.json", "x5u": "https://evil.test/cert.pem"}
    return encrypt(world, sign(world, world.claims(), key=attacker_ec_key(), header=header).encode("ascii"))


@attack("signature_invalid")
def x5c_attacker_certificate(world):
    """x5c holds the attacker's self-signed certificate for the issuer's name: never read."""
    key = attacker_ec_key()
    header = {"x5c": [base64.b64encode(self_signed_certificate(key)).decode("ascii")]}
    return encrypt(world, sign(world, world.claims(), key=key, header=header).encode("ascii"))


@attack("decryption_key_unknown")
def outer_kid_path_traversal(world):
    """kid ../../etc/passwd on the JWE: a kid is a lookup string, never a path."""
    return nested(world, header={"kid": "../../etc/passwd"})


@attack("signing_key_unknown")
def inner_kid_path_traversal(world):
    """kid ../../etc/passwd on the JWS."""
    inner = sign(world, world.claims(), header={"kid": "../../etc/passwd"})
    return encrypt(world, inner.encode("ascii"))


@attack("signing_key_unknown")
def inner_kid_of_another_issuer(world):
    """iss acme, signed by globex's key under globex's kid: keys are bound to their issuer."""
    return encrypt(world, sign(world, world.claims(), kid="globex-es256").encode("ascii"))


@attack("signing_key_unknown")
def inner_kid_of_our_decryption_key(world):
    """Signed with our own ECDH-ES decryption key (P-256) under its kid: decryption keys never verify."""
    key = without_use(world.decryption_keys["enc-ecdh-es"])
    inner = sign(world, world.claims(), kid="enc-ecdh-es", key=key, alg="ES256")
    return encrypt(world, inner.encode("ascii"))


@attack("decryption_key_unknown")
def outer_kid_of_a_signing_key(world):
    """A JWE naming the issuer's signing key as its decryption key."""
    return nested(world, header={"kid": "acme-rs256"})


@attack("header_malformed")
def outer_kid_null(world):
    """kid null is not a missing kid: it must not open the kid-less lookup."""
    header = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": None, "cty": "JWT"}
    return encrypt(world, sign(world, world.claims()).encode("ascii"), raw_header=compact_json(header))


@attack("header_malformed")
def outer_kid_not_a_string(world):
    """kid 1."""
    return nested(world, header={"kid": 1})


@attack("inner_token_malformed")
def inner_kid_null(world):
    """kid null on the JWS: not a missing kid either."""
    raw = b'{"alg":"ES256","kid":null,"typ":"at+jwt"}'
    return encrypt(world, sign(world, world.claims(), raw_header=raw).encode("ascii"))


@attack("inner_token_malformed")
def inner_kid_not_a_string(world):
    """kid ["acme-es256"] on the JWS."""
    return encrypt(world, sign(world, world.claims(), header={"kid": ["acme-es256"]}).encode("ascii"))


# crit (CVE-2025-59420 and peers): we implement no extension, so any crit is fatal.


@attack("crit_unsupported")
def outer_crit_unknown(world):
    """crit names an extension we do not implement."""
    return nested(world, header={"crit": ["urn:example:ext"], "urn:example:ext": True})


@attack("crit_unsupported")
def outer_crit_empty(world):
    """crit: [] is forbidden by RFC 7516 and refused."""
    return nested(world, header={"crit": []})


@attack("crit_unsupported")
def inner_crit_b64(world):
    """crit [b64] with b64 false (RFC 7797, unencoded payload): not implemented, refused."""
    inner = sign(world, world.claims(), header={"crit": ["b64"], "b64": False})
    return encrypt(world, inner.encode("ascii"))


@attack("crit_unsupported")
def inner_crit_empty(world):
    """crit: [] on the inner JWS."""
    return encrypt(world, sign(world, world.claims(), header={"crit": []}).encode("ascii"))


# JSON serialization: compact only, exactly five parts. The bearer syntax (RFC 6750)
# stops JSON text before the token layer; the token layer itself says token_malformed.


@attack("authorization_malformed", token_code="token_malformed")
def json_flattened_jwe(world):
    """A valid nested token in flattened JSON serialization."""
    jwe = JWE(
        sign(world, world.claims()).encode("ascii"), protected=json.dumps({"enc": "A256GCM", "cty": "JWT"})
    )
    jwe.add_recipient(world.decryption_keys["enc-rsa-oaep-256"], header=json.dumps({"alg": "RSA-OAEP-256"}))
    return jwe.serialize()


@attack("authorization_malformed", token_code="token_malformed")
def json_general_jwe_many_recipients(world):
    """General JSON serialization with several recipients (0.93 s each through jwcrypto)."""
    jwe = JWE(
        sign(world, world.claims()).encode("ascii"), protected=json.dumps({"enc": "A256GCM", "cty": "JWT"})
    )
    for kid in ("enc-rsa-oaep-256", "enc-rsa-oaep", "enc-a256kw"):
        key = world.decryption_keys[kid]
        jwe.add_recipient(key, header=json.dumps({"alg": key["alg"], "kid": kid}))
    return jwe.serialize()


@attack("token_malformed")
def four_parts(world):
    """A compact token of four parts."""
    return nested(world).rsplit(".", 1)[0]


@attack("token_malformed")
def six_parts(world):
    """A compact token of six parts."""
    return nested(world) + ".AAAA"


# Polyglot tokens (CVE-2022-39227): duplicate JSON members are refused, never "last wins".


@attack("claims_malformed")
def claims_duplicate_sub(world):
    """Two sub members: a lenient parser would take the last (admin)."""
    return encrypt(world, sign(world, raw_claims(world, '"sub":"admin"')).encode("ascii"))


@attack("claims_malformed")
def claims_duplicate_iss(world):
    """Two iss members, the first one of another issuer."""
    payload = b'{"iss":"' + GLOBEX_IDP.encode() + b'",' + compact_json(world.claims())[1:]
    return encrypt(world, sign(world, payload).encode("ascii"))


@attack("header_malformed")
def outer_header_duplicate_alg(world):
    """A JWE header with two alg members."""
    raw = b'{"alg":"dir","alg":"RSA-OAEP-256","enc":"A256GCM","kid":"enc-rsa-oaep-256","cty":"JWT"}'
    return encrypt(world, sign(world, world.claims()).encode("ascii"), raw_header=raw)


@attack("header_malformed")
def outer_header_duplicate_kid(world):
    """A JWE header with two kid members."""
    raw = b'{"alg":"RSA-OAEP-256","enc":"A256GCM","kid":"enc-a256kw","kid":"enc-rsa-oaep-256","cty":"JWT"}'
    return encrypt(world, sign(world, world.claims()).encode("ascii"), raw_header=raw)


@attack("inner_token_malformed")
def inner_header_duplicate_alg(world):
    """A JWS header with two alg members (the inner header's errors are inner_token_malformed)."""
    raw = b'{"alg":"none","alg":"ES256","kid":"acme-es256","typ":"at+jwt"}'
    return encrypt(world, sign(world, world.claims(), raw_header=raw).encode("ascii"))


@attack("header_malformed")
def outer_header_not_an_object(world):
    """A JWE header that is a JSON array."""
    return with_part(nested(world), 0, lambda _: b64(b'["RSA-OAEP-256","A256GCM"]'))


@attack("header_malformed")
def outer_header_too_large(world):
    """A JWE header over 2 KiB is refused before it is decoded."""
    return nested(world, header={"pad": "x" * 2000})


# Encrypt-only tokens (RFC 7519 11.2): public-key encryption authenticates nothing.


def encrypt_only(world, kid: str, **claims: Any) -> str:
    return encrypt(world, compact_json(world.claims(**claims)), kid=kid, header={"cty": None})


@attack("encrypt_only_not_allowed", host=LEGACY)
def encrypt_only_to_rsa_key(world):
    """Claims encrypted to our RSA public key, no JWS: anyone could make it, whatever the tenant accepts."""
    return encrypt_only(world, "enc-rsa-oaep-256", tenant="legacy")


@attack("encrypt_only_not_allowed", host=LEGACY)
def encrypt_only_to_ecdh_key(world):
    """Claims encrypted to our ECDH-ES public key, no JWS."""
    return encrypt_only(world, "enc-ecdh-es", tenant="legacy")


@attack("encrypt_only_not_allowed", token_code="ok")
def encrypt_only_symmetric_tenant_not_opted_in(world):
    """Encrypt-only with a shared A256KW key, but tenant acme did not opt in: denied by the tenant binding."""
    return encrypt_only(world, "enc-a256kw")


@attack("encrypt_only_not_allowed", token_code="ok", host=LEGACY)
def encrypt_only_symmetric_key_not_opted_in(world):
    """Tenant legacy opted in for enc-a256kw and enc-dir only, not for enc-a128gcmkw."""
    return encrypt_only(world, "enc-a128gcmkw", tenant="legacy")


# Lenient base64url: jwcrypto accepts + / = and spaces; we accept only canonical base64url.
# "=" inside the token and spaces are already refused by the bearer syntax.


@attack("token_malformed")
def b64_plus_instead_of_minus(world):
    """A '-' of the token re-encoded as '+' (standard base64 alphabet)."""
    return replace_first(containing(lambda: nested(world), "-"), "-", "+")


@attack("token_malformed")
def b64_slash_instead_of_underscore(world):
    """A '_' of the token re-encoded as '/'."""
    return replace_first(containing(lambda: nested(world), "_"), "_", "/")


@attack("token_malformed")
def b64_padding_on_last_part(world):
    """'==' padding on the tag (allowed at the very end by the bearer syntax)."""
    return nested(world) + "=="


@attack("authorization_malformed", token_code="token_malformed")
def b64_padding_inside(world):
    """'=' padding on the IV."""
    return with_part(nested(world), 2, lambda part: part + "=" * (-len(part) % 4 or 4))


@attack("authorization_malformed", token_code="token_malformed")
def b64_space_inside(world):
    """A space inside the ciphertext."""
    return with_part(nested(world), 3, lambda part: part[:10] + " " + part[10:])


@attack("token_malformed")
def b64_non_canonical_tag(world):
    """The tag's last character with a stray low bit: same bytes to a lenient decoder."""
    return with_part(nested(world), 4, non_canonical)


@attack("inner_token_malformed")
def b64_non_canonical_inner_signature(world):
    """The inner signature's last character with a stray low bit (ES256: 86 characters)."""
    return encrypt(world, with_part(sign(world, world.claims()), 2, non_canonical).encode("ascii"))


@attack("inner_token_malformed")
def b64_plus_in_inner_token(world):
    """A '-' of the inner JWS re-encoded as '+'."""
    inner = containing(lambda: sign(world, world.claims()), "-")
    return encrypt(world, replace_first(inner, "-", "+").encode("ascii"))


# ECDSA signature length: jwcrypto accepts 66- and 514-byte ES256 signatures (see the trap test).


@attack("signature_invalid")
def ecdsa_signature_66_bytes(world):
    """The same (r, s) as 33 + 33 bytes (leading zeros)."""
    return encrypt(world, padded_es256(sign(world, world.claims()), 33).encode("ascii"))


@attack("signature_invalid")
def ecdsa_signature_514_bytes(world):
    """The same (r, s) as 257 + 257 bytes."""
    return encrypt(world, padded_es256(sign(world, world.claims()), 257).encode("ascii"))


@attack("signature_invalid")
def ecdsa_signature_der_encoded(world):
    """The same (r, s) DER-encoded (the X.509 form, not JOSE's R || S)."""
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    inner = sign(world, world.claims())
    _, r, s = es256_parts(inner)
    return encrypt(world, es256_with_signature(inner, encode_dss_signature(r, s)).encode("ascii"))


# Claims that make jwcrypto raise other exceptions: a deny with a code, never a crash.


def signed_payload(world, payload: bytes) -> str:
    return encrypt(world, sign(world, payload).encode("ascii"))


@attack("claims_malformed", token_code="ok")
def exp_as_string(world):
    """exp "1900000300" (jwcrypto: TypeError)."""
    return nested(world, world.claims(exp=str(NOW + 300)))


@attack("claims_malformed")
def exp_1e400(world):
    """exp 1e400 (jwcrypto: OverflowError)."""
    return signed_payload(world, raw_claims(world, '"exp":1e400', exp=None))


@attack("claims_malformed", token_code="ok")
def exp_huge_integer(world):
    """exp 10^400, an integer beyond the float range."""
    return signed_payload(world, raw_claims(world, '"exp":1' + "0" * 400, exp=None))


@attack("claims_malformed")
def exp_nan(world):
    """exp NaN (not JSON, but Python's json accepts it by default)."""
    return signed_payload(world, raw_claims(world, '"exp":NaN', exp=None))


@attack("claims_malformed")
def exp_infinity(world):
    """exp -Infinity."""
    return signed_payload(world, raw_claims(world, '"exp":-Infinity', exp=None))


@attack("claims_malformed")
def claims_nested_too_deeply(world):
    """A claim nested 17 levels deep (our bound is 16)."""
    return signed_payload(world, raw_claims(world, '"x":' + "[" * 16 + "]" * 16))


@attack("claims_malformed")
def claims_nested_past_the_recursion_limit(world):
    """A claim nested 1500 levels deep (jwcrypto: RecursionError); dir keeps the token under max_bytes."""
    payload = raw_claims(world, '"x":' + "[" * 1500 + "]" * 1500)
    return encrypt(world, sign(world, payload).encode("ascii"), kid="enc-dir")


@attack("claims_malformed")
def claims_invalid_utf8(world):
    """A claim with invalid UTF-8 (jwcrypto: UnicodeDecodeError)."""
    return signed_payload(world, compact_json(world.claims(sub=None))[:-1] + b',"sub":"\xff\xfe"}')


@attack("claims_malformed")
def claims_not_an_object(world):
    """Claims that are a JSON array."""
    return signed_payload(world, b'["' + ACME_IDP.encode() + b'"]')


@attack("claims_malformed", token_code="ok")
def claims_sub_with_control_character(world):
    """sub with a newline: it would become an upstream header value."""
    return nested(world, world.claims(sub="user-1\r\nx-authz-tenant: globex"))


# Size limits before any crypto.


@attack("token_too_large")
def token_larger_than_max_bytes(world):
    """A valid token over max_bytes (8192)."""
    return nested(world, world.claims(pad="x" * 6000))


@attack("token_too_large")
def garbage_larger_than_max_bytes(world):
    """9000 characters of nothing: refused by size alone."""
    return "A" * 9000


# Algorithms not allowed, and the key's pinned algorithm.


@attack("enc_not_allowed")
def enc_not_configured(world):
    """enc A192GCM is a JOSE algorithm but not in the configured list."""
    return nested(world, enc="A192GCM")


@attack("enc_not_allowed")
def enc_unknown(world):
    """enc A128CTR is no JOSE algorithm (unauthenticated CTR)."""
    header = b'{"alg":"RSA-OAEP-256","enc":"A128CTR","kid":"enc-rsa-oaep-256","cty":"JWT"}'
    return with_part(nested(world), 0, lambda _: b64(header))


@attack("alg_not_allowed")
def alg_unknown(world):
    """alg RSA-OAEP-384 is not an algorithm we know."""
    return with_part(
        nested(world), 0, lambda _: b64(b'{"alg":"RSA-OAEP-384","enc":"A256GCM","kid":"enc-rsa-oaep-256"}')
    )


@attack("decryption_key_unknown")
def rsa_oaep_to_key_pinned_rsa_oaep_256(world):
    """Real RSA-OAEP (SHA-1) to the key pinned to RSA-OAEP-256, under its kid."""
    return nested(world, kid="enc-rsa-oaep-256", alg="RSA-OAEP")


@attack("decryption_key_unknown")
def dir_with_kid_of_key_wrap_key(world):
    """alg dir naming our A256KW key: the wrapping key would be used as the CEK."""
    return forge({"alg": "dir", "enc": "A256GCM", "kid": "enc-a256kw", "cty": "JWT"})


@attack("decryption_key_unknown")
def a256gcmkw_with_kid_of_a256kw_key(world):
    """A256GCMKW naming our A256KW key (same size, other algorithm)."""
    return nested(world, kid="enc-a256kw", alg="A256GCMKW")


@attack("signing_key_unknown")
def inner_ps256_with_kid_of_rs256_key(world):
    """A real PS256 signature by the RS256 key under its kid: the key is pinned to RS256."""
    key = world.signing_keys["acme-rs256"]
    return encrypt(world, sign(world, world.claims(), kid="acme-rs256", key=key, alg="PS256").encode("ascii"))


@attack("signature_alg_not_allowed")
def inner_alg_unknown(world):
    """Inner alg ES256K is not one of ours."""
    inner = sign(world, world.claims())
    return encrypt(world, with_part(inner, 0, lambda _: b64(b'{"alg":"ES256K","kid":"acme-es256"}')).encode())


# Structure of the JWE parts.


@attack("token_malformed")
def encrypted_key_missing_for_rsa(world):
    """RSA-OAEP-256 with an empty encrypted key."""
    return with_part(nested(world), 1, lambda _: "")


@attack("token_malformed")
def encrypted_key_present_for_dir(world):
    """dir with an encrypted key."""
    return with_part(nested(world, kid="enc-dir"), 1, lambda _: b64(os.urandom(32)))


@attack("token_malformed")
def gcm_iv_of_16_bytes(world):
    """A256GCM with a 16-byte IV (GCM IVs are 96 bits here)."""
    return with_part(nested(world), 2, lambda _: b64(os.urandom(16)))


@attack("token_malformed")
def gcm_tag_truncated(world):
    """A256GCM with an 8-byte tag."""
    return with_part(nested(world), 4, lambda part: b64(unb64(part)[:8]))


@attack("header_malformed")
def gcmkw_iv_missing(world):
    """A128GCMKW without its iv header member."""
    token = nested(world, kid="enc-a128gcmkw")
    header = json.loads(unb64(token.split(".")[0]))
    del header["iv"]
    return with_part(token, 0, lambda _: b64(compact_json(header)))


# Tampering: one code for every decryption failure (no oracle).


def tampered(world, index: int, kid: str = "enc-rsa-oaep-256", enc: str = "A256GCM") -> str:
    return with_part(nested(world, kid=kid, enc=enc), index, flip_first_char)


@attack("decryption_failed")
def tampered_encrypted_key(world):
    """The first byte of the RSA-encrypted CEK changed."""
    return tampered(world, 1)


@attack("decryption_failed")
def tampered_iv(world):
    """The first byte of the IV changed."""
    return tampered(world, 2)


@attack("decryption_failed")
def tampered_ciphertext(world):
    """The first byte of the ciphertext changed."""
    return tampered(world, 3)


@attack("decryption_failed")
def tampered_tag(world):
    """The first byte of the tag changed."""
    return tampered(world, 4)


@attack("decryption_failed")
def tampered_aad(world):
    """The protected header (the AAD) re-encoded with one more member."""
    token = nested(world)
    header = json.loads(unb64(token.split(".")[0])) | {"x": 1}
    return with_part(token, 0, lambda _: b64(compact_json(header)))


@attack("decryption_failed")
def tampered_ciphertext_cbc_key_wrap(world):
    """A128CBC-HS256 under A256KW: the first ciphertext byte changed (the HMAC catches it)."""
    return tampered(world, 3, kid="enc-a256kw", enc="A128CBC-HS256")


@attack("decryption_failed")
def tampered_wrapped_key_aes_kw(world):
    """The AES-KW-wrapped CEK changed (the key-wrap integrity check catches it)."""
    return tampered(world, 1, kid="enc-a256kw")


@attack("signature_invalid")
def tampered_inner_signature(world):
    """The inner ES256 signature's first byte changed."""
    return encrypt(world, with_part(sign(world, world.claims()), 2, flip_first_char).encode("ascii"))


@attack("signature_invalid")
def tampered_inner_rs256_signature(world):
    """The inner RS256 signature's first byte changed."""
    inner = sign(world, world.claims(), kid="acme-rs256")
    return encrypt(world, with_part(inner, 2, flip_first_char).encode("ascii"))


@attack("signature_invalid")
def tampered_inner_payload(world):
    """The inner payload swapped for other claims, the signature kept."""
    inner = sign(world, world.claims())
    forged = with_part(inner, 1, lambda _: b64(compact_json(world.claims(sub="admin"))))
    return encrypt(world, forged.encode("ascii"))


@attack("signature_invalid")
def inner_signature_stripped(world):
    """The inner signature removed (empty part)."""
    return encrypt(world, with_part(sign(world, world.claims()), 2, lambda _: "").encode("ascii"))


# Issuer, typ, cty.


@attack("issuer_unknown")
def issuer_unknown(world):
    """iss of no configured issuer, signed with a key of a configured one."""
    return nested(world, world.claims(iss="https://idp.evil.test"))


@attack("issuer_unknown")
def issuer_missing(world):
    """No iss: no key set to verify with."""
    return nested(world, world.claims(iss=None))


AT_JWT = frozenset({"at+jwt"})


@attack("typ_not_allowed", typ=AT_JWT)
def typ_not_in_allow_list(world):
    """typ JWT where only at+jwt is configured (an ID token is not an access token)."""
    return encrypt(world, sign(world, world.claims(), header={"typ": "JWT"}).encode("ascii"))


@attack("typ_not_allowed", typ=AT_JWT)
def typ_missing_with_allow_list(world):
    """No typ where an allow-list is configured."""
    return encrypt(world, sign(world, world.claims(), header={"typ": None}).encode("ascii"))


@attack("cty_invalid")
def nested_token_without_cty(world):
    """A nested token whose JWE header has no cty."""
    return nested(world, header={"cty": None})


@attack("cty_invalid")
def cty_wrong(world):
    """cty json on a nested token."""
    return nested(world, header={"cty": "json"})


@attack("cty_invalid")
def cty_null(world):
    """cty null is not an absent cty (that would be the encrypt-only path)."""
    header = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": "enc-rsa-oaep-256", "cty": None}
    return encrypt(world, sign(world, world.claims()).encode("ascii"), raw_header=compact_json(header))


@attack("cty_invalid", host=LEGACY)
def cty_null_on_encrypt_only(world):
    """cty null on an encrypt-only token under an opted-in key: not read as "no cty"."""
    header = {"alg": "A256KW", "enc": "A256GCM", "kid": "enc-a256kw", "cty": None}
    claims = compact_json(world.claims(tenant="legacy"))
    return encrypt(world, claims, kid="enc-a256kw", raw_header=compact_json(header))


@attack("cty_invalid")
def cty_not_a_string(world):
    """cty ["JWT"]."""
    return nested(world, header={"cty": ["JWT"]})


# -- tests ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def holder(config):
    return SnapshotHolder(config)


@pytest.mark.parametrize("inner", INNER_ALGS)
@pytest.mark.parametrize("enc", CONTENT_ENCRYPTIONS)
@pytest.mark.parametrize("outer", OUTER_ALGS)
def test_algorithm_matrix_is_allowed(world, holder, outer, enc, inner):
    """Every outer alg x enc x inner alg minted by jwcrypto is allowed, with the identity headers."""
    token = world.token(world.claims(sub=f"user-{inner}"), outer=outer, enc=enc, inner=inner)
    response = check(holder, check_request(token=token), clock)
    assert response.status.code == 0
    assert ok_headers(response) == {
        "x-authz-tenant": "acme",
        "x-authz-subject": f"user-{inner}",
        "x-authz-scopes": "orders:read",
    }
    verified = validate_token(token, holder.current.snapshot.token_keys)
    assert (verified.decryption_kid, verified.signing_kid, verified.nested) == (
        OUTER_ALGS[outer],
        INNER_ALGS[inner],
        True,
    )


@pytest.mark.parametrize("kid", OUTER_ALGS.values())
def test_hand_built_token_is_allowed(world, holder, kid):
    """Control: the hand-made builders of the attack tokens make tokens the service accepts."""
    response = check(holder, check_request(token=nested(world, kid=kid)), clock)
    assert response.status.code == 0, response.denied_response.body
    assert ok_headers(response)["x-authz-subject"] == "user-1"


@pytest.mark.parametrize("case", ATTACKS, ids=lambda case: case.name)
def test_attack_is_denied(world, config, case):
    """Each attack is denied 401 / UNAUTHENTICATED with its exact reason, by check() and the token layer."""
    token = case.build(world)
    case_config = case.config(config)
    response = check(SnapshotHolder(case_config), check_request(token=token, host=case.host), clock)
    assert reason(response) == case.code
    assert response.status.code == UNAUTHENTICATED
    assert response.denied_response.status.code == 401
    assert response.dynamic_metadata.fields["reason"].string_value == case.code
    assert token_code(token, case_config.snapshot.token_keys) == case.token_code


def test_attack_names_are_unique():
    """Each attack has its own name, so that every parametrized id is one attack."""
    names = [case.name for case in ATTACKS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("case", ATTACKS, ids=lambda case: case.name)
def test_deny_never_echoes_the_token(world, config, case, caplog):
    """No reason detail, response body, header, metadata or log line holds the token or any part of it."""
    token = case.build(world)
    case_holder = SnapshotHolder(case.config(config))
    message = check_request(token=token, host=case.host)
    with caplog.at_level(logging.DEBUG):
        decision, _, _ = evaluate(case_holder, message, clock)
        response = check(case_holder, message, clock)
    texts = [decision.detail, response.denied_response.body, str(response.dynamic_metadata)]
    texts += [f"{h.header.key}: {h.header.value}" for h in response.denied_response.headers]
    texts += [JsonFormatter().format(record) for record in caplog.records]
    try:
        validate_token(token, case.config(config).snapshot.token_keys)
    except AuthzError as exc:
        texts += [exc.detail, str(exc)]
    assert response.denied_response.body, "nothing to inspect"
    assert caplog.records, "nothing to inspect"
    # Every part long enough to be recognisable, whole or as its leading 12 characters.
    fragments = (
        {token}
        | {p for p in token.split(".") if len(p) >= 12}
        | {p[:12] for p in token.split(".") if len(p) >= 12}
    )
    for text in texts:
        leaked = [fragment for fragment in fragments if fragment in text]
        assert not leaked, f"token fragment in {text!r}"


def test_pbes2_and_rsa1_5_are_refused_before_any_key_work(world, config, monkeypatch):
    """PBES2 with p2c = 2^31 - 1, and RSA1_5, cost no PBKDF2 call and no key-management step at all."""
    import jwcrypto.jwa

    calls: list[str] = []
    real_pbkdf2 = jwcrypto.jwa.PBKDF2HMAC

    def counting_pbkdf2(*args: Any, **kwargs: Any) -> Any:
        calls.append("pbkdf2")
        return real_pbkdf2(*args, **kwargs)

    class CountingJWA:
        @staticmethod
        def keymgmt_alg(name: str) -> Any:
            calls.append(name)
            return JWA.keymgmt_alg(name)

        encryption_alg = staticmethod(JWA.encryption_alg)
        signing_alg = staticmethod(JWA.signing_alg)

    monkeypatch.setattr(jwcrypto.jwa, "PBKDF2HMAC", counting_pbkdf2)
    monkeypatch.setattr("authz.jose.jwe.JWA", CountingJWA)

    # The spy sees PBKDF2 when jwcrypto itself is asked to decrypt a (cheap) PBES2 token.
    password = JWK(kty="oct", k=b64(b"correct horse battery staple"))
    algs = ["PBES2-HS256+A128KW", "A128GCM"]
    cheap = JWE(b"{}", protected=json.dumps({"alg": algs[0], "enc": algs[1], "p2c": 1000}), algs=algs)
    cheap.add_recipient(password)
    JWE(algs=algs).deserialize(cheap.serialize(compact=True), password)
    assert calls.count("pbkdf2") == 2  # one to encrypt, one to decrypt
    calls.clear()
    # ... and sees our token layer's key-management step on a valid token.
    assert token_code(nested(world), config.snapshot.token_keys) == "ok"
    assert calls == ["RSA-OAEP-256"]
    calls.clear()

    assert token_code(pbes2_huge_p2c(world), config.snapshot.token_keys) == "alg_not_allowed"
    assert token_code(
        forge(pbes2_fields(1000), encrypted_key=os.urandom(40)), config.snapshot.token_keys
    ) == ("alg_not_allowed")
    assert token_code(rsa1_5_to_our_rsa_key(world), config.snapshot.token_keys) == "alg_not_allowed"
    assert calls == []


def test_padded_ecdsa_signatures_fool_jwcrypto_but_not_us(world):
    """jwcrypto accepts the same ES256 signature as 66 or 514 bytes; we accept only 64."""
    inner = sign(world, world.claims())
    public_jwk = json.loads(world.signing_keys["acme-es256"].export_public())
    public = JWK(**public_jwk)
    issuer_keys = keyset_from_jwks({"keys": [public_jwk]}, Purpose.VERIFY, "test")
    assert verify_compact(inner, issuer_keys)[2].kid == "acme-es256"
    for width in (33, 257):
        padded = padded_es256(inner, width)
        signing_input, signature = padded.rsplit(".", 1)
        JWA.signing_alg("ES256").verify(public, signing_input.encode("ascii"), unb64(signature))  # the trap
        with pytest.raises(AuthzError) as caught:
            verify_compact(padded, issuer_keys)
        assert caught.value.code == "signature_invalid"


def test_high_s_ecdsa_signature_is_accepted(world, config, holder):
    """High-s (n - s) is accepted: ECDSA is malleable, so the same claims come in two token strings.

    That is why nothing is ever keyed on the raw token (SECURITY.md); the verified claims are equal.
    """
    inner = sign(world, world.claims())
    _, r, s = es256_parts(inner)
    high_s = s if s > P256_N // 2 else P256_N - s
    low_s = P256_N - high_s
    tokens = [
        encrypt(
            world, es256_with_signature(inner, r.to_bytes(32, "big") + other.to_bytes(32, "big")).encode()
        )
        for other in (low_s, high_s)
    ]
    assert tokens[0] != tokens[1]
    for token in tokens:
        assert check(holder, check_request(token=token), clock).status.code == 0
    assert (
        validate_token(tokens[0], config.snapshot.token_keys).claims
        == validate_token(tokens[1], config.snapshot.token_keys).claims
    )


def test_kidless_tokens_use_the_few_keys_of_their_algorithm(world, holder):
    """Without kid on either layer, the one key of the token's algorithm is tried: allowed."""
    inner = sign(world, world.claims(), header={"kid": None})
    for kid in ("enc-rsa-oaep-256", "enc-ecdh-es", "enc-a256kw"):
        token = encrypt(world, inner.encode("ascii"), kid=kid, header={"kid": None})
        response = check(holder, check_request(token=token), clock)
        assert response.status.code == 0, response.denied_response.body


def oct_keys(count: int) -> list[JWK]:
    return [JWK.generate(kty="oct", size=256, alg="A256KW", use="enc", kid=f"kw-{i}") for i in range(count)]


def test_kidless_lookup_is_bounded(world, config, monkeypatch):
    """A kid-less token tries at most MAX_KIDLESS_CANDIDATES keys; with more of its alg, none at all."""
    unwraps: list[str] = []
    real_keymgmt = JWA.keymgmt_alg

    class CountingJWA:
        @staticmethod
        def keymgmt_alg(name: str) -> Any:
            impl = real_keymgmt(name)
            real_unwrap = impl.unwrap

            def unwrap(key: JWK, *args: Any) -> Any:
                unwraps.append(key["kid"])
                return real_unwrap(key, *args)

            impl.unwrap = unwrap
            return impl

        encryption_alg = staticmethod(JWA.encryption_alg)
        signing_alg = staticmethod(JWA.signing_alg)

    monkeypatch.setattr("authz.jose.jwe.JWA", CountingJWA)
    keys = oct_keys(MAX_KIDLESS_CANDIDATES + 1)
    target = keys[MAX_KIDLESS_CANDIDATES - 1]  # the last key of the bounded few is the right one
    token = encrypt(world, sign(world, world.claims()).encode("ascii"), key=target, header={"kid": None})

    def token_keys(count: int) -> TokenKeys:
        jwks = {"keys": [json.loads(key.export()) for key in keys[:count]]}
        return dataclasses.replace(
            config.snapshot.token_keys, decryption=keyset_from_jwks(jwks, Purpose.DECRYPT, "test")
        )

    assert validate_token(token, token_keys(MAX_KIDLESS_CANDIDATES)).decryption_kid == target["kid"]
    assert unwraps == [key["kid"] for key in keys[:MAX_KIDLESS_CANDIDATES]]
    unwraps.clear()
    many = token_keys(MAX_KIDLESS_CANDIDATES + 1)
    assert token_code(token, many) == "decryption_key_unknown"
    assert unwraps == []
    response = check(
        SnapshotHolder(with_token_keys(config, decryption=many.decryption)), check_request(token=token), clock
    )
    assert (reason(response), response.status.code, response.denied_response.status.code) == (
        "decryption_key_unknown",
        UNAUTHENTICATED,
        401,
    )


def test_kidless_inner_lookup_is_bounded(world, config):
    """A kid-less JWS whose issuer has more ES256 keys than the bound is refused as signing_key_unknown."""
    issuer_keys = [world.signing_keys["acme-es256"]] + [
        JWK.generate(kty="EC", crv="P-256", alg="ES256", use="sig", kid=f"es-{i}")
        for i in range(MAX_KIDLESS_CANDIDATES)
    ]
    jwks = {"keys": [json.loads(key.export_public()) for key in issuer_keys]}
    issuers = dict(config.snapshot.token_keys.issuers) | {
        ACME_IDP: keyset_from_jwks(jwks, Purpose.VERIFY, "test")
    }
    keys = dataclasses.replace(config.snapshot.token_keys, issuers=issuers)
    token = encrypt(world, sign(world, world.claims(), header={"kid": None}).encode("ascii"))
    assert token_code(token, keys) == "signing_key_unknown"
    assert token_code(token, config.snapshot.token_keys) == "ok"


@pytest.mark.parametrize(
    ("typ", "expected"),
    [
        ("at+jwt", "ok"),
        ("AT+JWT", "ok"),
        ("application/at+jwt", "ok"),
        ("JWT", "typ_not_allowed"),
        ("jwt", "typ_not_allowed"),
        ("at+jwt ", "typ_not_allowed"),
        (None, "typ_not_allowed"),
        (["at+jwt"], "typ_not_allowed"),
    ],
    ids=repr,
)
def test_inner_typ_allow_list(world, config, typ, expected):
    """With an allow-list the inner typ must be allowed (case-insensitive, application/ optional)."""
    keys = dataclasses.replace(config.snapshot.token_keys, allowed_typ=AT_JWT)
    token = encrypt(world, sign(world, world.claims(), header={"typ": typ}).encode("ascii"))
    assert token_code(token, keys) == expected
    assert token_code(token, config.snapshot.token_keys) == "ok"  # without an allow-list typ is not checked


@pytest.mark.parametrize("kid", ["enc-a256kw", "enc-dir"])
def test_encrypt_only_with_opted_in_symmetric_key_is_allowed(world, holder, kid):
    """Control: an encrypt-only token under a shared key the tenant opted in for is allowed."""
    token = encrypt_only(world, kid, tenant="legacy")
    response = check(holder, check_request(token=token, host=LEGACY), clock)
    assert response.status.code == 0, response.denied_response.body
    assert ok_headers(response)["x-authz-tenant"] == "legacy"


@pytest.mark.parametrize("depth", [17, 1500, 100_000])
def test_json_nesting_of_any_depth_is_a_value_error(depth):
    """The strict parser turns any nesting past 16 into ValueError, RecursionError included."""
    with pytest.raises(ValueError, match=r"nested too deeply|RecursionError"):
        parse_json_object(b'{"x":' + b"[" * depth + b"]" * depth + b"}")


@pytest.mark.parametrize(
    ("kid", "key_ops", "loads"),
    [
        ("enc-a256kw", ["decrypt"], True),  # what jwcrypto asks an AES key-wrap key for
        ("enc-dir", ["decrypt"], True),
        ("enc-rsa-oaep-256", ["unwrapKey"], True),
        ("enc-ecdh-es", ["unwrapKey"], True),
        ("enc-a256kw", ["encrypt"], False),  # would load, then fail every token
        ("enc-rsa-oaep-256", ["wrapKey"], False),
    ],
)
def test_decryption_key_ops_are_checked_at_load(world, config, kid, key_ops, loads):
    """key_ops of a decryption key are checked when it is loaded: usable keys decrypt, others are refused."""
    jwks = {"keys": [json.loads(world.decryption_keys[kid].export()) | {"key_ops": key_ops}]}
    if not loads:
        with pytest.raises(ConfigError, match="cannot be used to decrypt"):
            keyset_from_jwks(jwks, Purpose.DECRYPT, "test")
        return
    keys = dataclasses.replace(
        config.snapshot.token_keys, decryption=keyset_from_jwks(jwks, Purpose.DECRYPT, "test")
    )
    assert validate_token(nested(world, kid=kid), keys).decryption_kid == kid
