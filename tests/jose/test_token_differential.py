"""Differential test: our token layer against jwcrypto's high-level API.

For every token (the full algorithm matrix, hypothesis-generated tokens with random
claims and random header members on both layers, and mutations of valid tokens),
``validate_token`` runs next to a reference built on jwcrypto's high-level objects:

- outer: ``jwt.JWT(jwt=token, key=<JWKSet of our decryption keys>, expected_type="JWE",
  algs=<our key-management and content-encryption algorithms>)``;
- inner, when the plaintext is a compact JWS: ``jwt.JWT(jwt=plaintext, key=<JWKSet of
  the public keys of the issuer the payload names>, expected_type="JWS",
  algs=<our signature algorithms>)``; otherwise the plaintext is the claims set
  (an encrypt-only token).

Both with ``strict_serialization=True`` and ``check_claims=False``: claims are
checked against the clock by authz.claims, a later step than ``validate_token``.

The rules:

1. ours accepts  -> jwcrypto accepts, and the claims are equal;
2. jwcrypto rejects -> ours rejects;
3. ours rejects and jwcrypto accepts -> our reason code is one of STRICTER, the
   rules we hold on purpose that jwcrypto does not (each with the why);
4. ours never fails with ``token_invalid`` (an unexpected exception): every
   refusal has its precise code.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import random
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwcrypto import jwk, jws, jwt
from jwcrypto.jwa import JWA
from jwcrypto.jwe import JWE

from authz.errors import AuthzError
from authz.jose.keys import KEY_MANAGEMENT_ALGS, SIGNATURE_ALGS, Purpose, keyset_from_jwks
from authz.jose.mint import generate_key, mint
from authz.jose.nested import TokenKeys, validate_token
from testkit.world import CONTENT_ENCRYPTIONS, INNER_ALGS, OUTER_ALGS, World

# Our reason codes for tokens jwcrypto's high-level API accepts, each a rule we hold on
# purpose (SECURITY.md). A refusal of a token jwcrypto accepts with any other code fails.
STRICTER: Mapping[str, str] = {
    "token_too_large": "size limit before any parsing (max_bytes)",
    "token_malformed": (
        "strict base64url in the outer parts: no padding, no '+' or '/', canonical last "
        "character; encrypted key present exactly when alg needs one; GCM iv of 12 and tag "
        "of 16 bytes, CBC iv of 16 bytes and a tag of the enc's size"
    ),
    "header_malformed": (
        "outer header: duplicate JSON members, NaN/Infinity, nesting past 16, kid that is "
        "not a string, header over 2 KiB, epk with other members than a public EC/OKP key"
    ),
    "zip_not_allowed": "no compressed plaintext at all (CVE-2024-28102)",
    "crit_unsupported": "we implement no critical extension: any crit, even empty, is refused",
    "decryption_key_unknown": (
        "keys pinned to one alg (jwcrypto uses any key of the right type); a token without "
        "kid tries at most MAX_KIDLESS_CANDIDATES keys of its alg (jwcrypto tries all)"
    ),
    "cty_invalid": "cty must be JWT for a nested token, and absent for an encrypt-only one",
    "encrypt_only_not_allowed": "a claims set encrypted to a public key authenticates nothing",
    "inner_token_malformed": (
        "inner JWS: strict base64url, duplicate header members, kid not a string, ASCII "
        "only, header over 2 KiB; a cty JWT plaintext that is not a compact JWS"
    ),
    "claims_malformed": "claims: one strict JSON object (no duplicates, NaN, deep nesting)",
    "issuer_unknown": "the claims name a configured issuer (encrypt-only tokens too)",
    "signing_key_unknown": "signing keys pinned to one alg (e.g. PS256 with an RS256 key)",
    "signature_invalid": "ECDSA signatures of exactly 2 x the curve size (jwcrypto: any length)",
    "typ_not_allowed": "the inner typ allow-list, where one is configured",
}

ENCS = ("A256GCM", "A128GCM", "A256CBC-HS512", "A128CBC-HS256")  # the world config's list
OUTER_JWCRYPTO_ALGS = sorted(KEY_MANAGEMENT_ALGS) + list(ENCS)
INNER_JWCRYPTO_ALGS = sorted(SIGNATURE_ALGS)
AT_JWT = frozenset({"at+jwt"})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# -- the two implementations --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Reference:
    """jwcrypto's high-level API with our keys; None: rejected."""

    decryption: jwk.JWKSet
    issuers: Mapping[str, jwk.JWKSet]

    def claims(self, token: str) -> Any:
        try:
            outer = jwt.JWT(
                jwt=token,
                key=self.decryption,
                expected_type="JWE",
                algs=OUTER_JWCRYPTO_ALGS,
                check_claims=False,
                strict_serialization=True,
            )
            plaintext = outer.claims
            claims = _json(plaintext)
            if not isinstance(claims, _NotJson):
                return claims  # encrypt-only: the plaintext is the claims set
            unverified = jws.JWS()
            unverified.deserialize(plaintext)
            issuer = json.loads(unverified.objects["payload"]).get("iss")
            keys = self.issuers.get(issuer) if isinstance(issuer, str) else None
            if keys is None:
                return None
            inner = jwt.JWT(
                jwt=plaintext,
                key=keys,
                expected_type="JWS",
                algs=INNER_JWCRYPTO_ALGS,
                check_claims=False,
                strict_serialization=True,
            )
            return _json(inner.claims)
        except Exception:  # noqa: BLE001 - any failure of the reference is a rejection
            return None


class _NotJson:
    """jwcrypto accepted a token whose claims are not JSON an object (we must refuse it)."""


def _json(text: str) -> Any:
    try:
        value = json.loads(text)  # lenient, as jwcrypto's users would parse it
    except ValueError:
        return _NotJson()
    return value if isinstance(value, dict) else _NotJson()


def ours(token: str, keys: TokenKeys) -> tuple[str, Mapping[str, Any] | None]:
    try:
        verified = validate_token(token, keys)
    except AuthzError as exc:
        return exc.code, None
    return "ok", verified.claims


@pytest.fixture(scope="module")
def reference(world: World) -> Reference:
    decryption = jwk.JWKSet()
    for key in world.decryption_keys.values():
        decryption.add(key)
    issuers: dict[str, jwk.JWKSet] = {}
    for kid, key in world.signing_keys.items():
        public = jwk.JWK(**json.loads(key.export_public()))
        issuers.setdefault(world.signing_issuer[kid], jwk.JWKSet()).add(public)
    return Reference(decryption, issuers)


@pytest.fixture(scope="module")
def token_keys(config: Any) -> TokenKeys:
    return config.snapshot.token_keys


@pytest.fixture(scope="module")
def typ_keys(config: Any) -> TokenKeys:
    return dataclasses.replace(config.snapshot.token_keys, allowed_typ=AT_JWT)


@dataclasses.dataclass
class Tally:
    """What the comparisons saw: codes of our stricter refusals, for the coverage checks."""

    both_accept: int = 0
    both_reject: int = 0
    stricter: dict[str, int] = dataclasses.field(default_factory=dict)


def compare(token: str, keys: TokenKeys, reference: Reference, tally: Tally | None = None) -> str:
    """Assert the differential rules for one token; returns our code."""
    code, claims = ours(token, keys)
    expected = reference.claims(token)
    assert code != "token_invalid", "an unexpected exception inside the token layer"
    if code == "ok":
        assert expected is not None, "we accept a token jwcrypto rejects"
        assert claims == expected, "we accept with other claims than jwcrypto"
        if tally is not None:
            tally.both_accept += 1
    elif expected is None:
        if tally is not None:
            tally.both_reject += 1
    else:
        assert code in STRICTER, f"we refuse ({code}) a token jwcrypto accepts, not by a stricter rule"
        if tally is not None:
            tally.stricter[code] = tally.stricter.get(code, 0) + 1
    return code


# -- building tokens with jwcrypto's high-level API ---------------------------------


def encrypt_payload(
    world: World,
    payload: bytes,
    *,
    outer: str = "RSA-OAEP-256",
    enc: str = "A256GCM",
    header: Mapping[str, Any] | None = None,
) -> str:
    """A compact JWE of any plaintext, by jwcrypto, to our key for ``outer``."""
    key = world.decryption_keys[OUTER_ALGS[outer]]
    protected = {"alg": outer, "enc": enc, "kid": key["kid"], "cty": "JWT"} | dict(header or {})
    protected = {name: value for name, value in protected.items() if value is not None}
    recipient = key if key["kty"] == "oct" else jwk.JWK(**json.loads(key.export_public()))
    token = JWE(payload, protected=json.dumps(protected))
    token.add_recipient(recipient)
    return str(token.serialize(compact=True))


def matrix() -> Iterator[tuple[str, str, str]]:
    return itertools.product(OUTER_ALGS, CONTENT_ENCRYPTIONS, INNER_ALGS)


def test_the_matrix_agrees(world, token_keys, reference):
    """Every algorithm pair of the matrix: both accept, with the same claims."""
    for outer, enc, inner in matrix():
        token = world.token(outer=outer, enc=enc, inner=inner)
        assert compare(token, token_keys, reference) == "ok", (outer, enc, inner)


def test_encrypt_only_tokens(world, token_keys, reference):
    """Encrypt-only: accepted under a shared key; refused under a public key (jwcrypto accepts)."""
    for outer in OUTER_ALGS:
        token = world.token(outer=outer, inner=None)
        code = compare(token, token_keys, reference)
        symmetric = world.decryption_keys[OUTER_ALGS[outer]]["kty"] == "oct"
        assert code == ("ok" if symmetric else "encrypt_only_not_allowed"), outer


# -- mutations ------------------------------------------------------------------------

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _flip_char(part: str, rng: random.Random) -> str:
    if not part:
        return "A"
    at = rng.randrange(len(part))
    value = ALPHABET.index(part[at]) if part[at] in ALPHABET else 0
    return part[:at] + ALPHABET[value ^ (1 << rng.randrange(6))] + part[at + 1 :]


def _flip_bit(part: str, rng: random.Random) -> str:
    """Decode, flip one bit of the bytes, encode again (canonical)."""
    raw = bytearray(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    if not raw:
        return b64(b"\x00")
    at = rng.randrange(len(raw))
    raw[at] ^= 1 << rng.randrange(8)
    return b64(bytes(raw))


def _non_canonical(part: str, rng: random.Random) -> str:
    if len(part) % 4 in (2, 3):
        return part[:-1] + ALPHABET[ALPHABET.index(part[-1]) ^ 1]
    return part + "=="


PART_MUTATIONS: dict[str, Callable[[str, random.Random], str]] = {
    "flip_char": _flip_char,
    "flip_bit": _flip_bit,
    "truncate": lambda part, rng: part[: rng.randrange(len(part))] if part else "",
    "truncate_one": lambda part, rng: part[:-1],
    "extend": lambda part, rng: part + rng.choice(ALPHABET) * rng.randint(1, 4),
    "padding": lambda part, rng: part + "=" * (-len(part) % 4 or 4),
    "plus_slash": lambda part, rng: part.replace("-", "+").replace("_", "/") if part else "+",
    "non_canonical": _non_canonical,
    "empty": lambda part, rng: "",
    "space": lambda part, rng: part[:1] + " " + part[1:],
}

TOKEN_MUTATIONS: dict[str, Callable[[str, random.Random], str]] = {
    "drop_part": lambda token, rng: ".".join(p for i, p in enumerate(token.split(".")) if i != 1),
    "extra_part": lambda token, rng: token + ".",
    "truncate_token": lambda token, rng: token[: rng.randrange(len(token))],
    "extend_token": lambda token, rng: token + "A",
    "json_wrap": lambda token, rng: json.dumps({"compact": token}),
}


def mutated(token: str, rng: random.Random) -> Iterator[tuple[str, str]]:
    parts = token.split(".")
    for index in range(len(parts)):
        for name, mutate in PART_MUTATIONS.items():
            changed = list(parts)
            changed[index] = mutate(parts[index], rng)
            yield f"{name}[{index}]", ".".join(changed)
    for name, mutate in TOKEN_MUTATIONS.items():
        yield name, mutate(token, rng)


def swapped(first: str, second: str) -> Iterator[tuple[str, str]]:
    a, b = first.split("."), second.split(".")
    for index in range(min(len(a), len(b))):
        changed = list(a)
        changed[index] = b[index]
        yield f"swap[{index}]", ".".join(changed)


def inner_jws(world: World, inner: str = "ES256") -> str:
    """A valid compact JWS for acme (what ``mint`` puts inside the JWE)."""
    token = world.token(outer="dir", inner=inner)
    return inner_of(world, token)


def inner_of(world: World, token: str) -> str:
    """The inner JWS of a token to our dir key (decrypted by jwcrypto)."""
    outer = jwt.JWT(jwt=token, key=world.decryption_keys["enc-dir"], expected_type="JWE", check_claims=False)
    return str(outer.claims)


MUTATED_PAIRS = (
    ("RSA-OAEP-256", "A256GCM", "RS256"),
    ("ECDH-ES+A256KW", "A256GCM", "ES256"),
    ("dir", "A256GCM", "ES256"),
    ("ECDH-ES", "A128CBC-HS256", "EdDSA"),
    ("A128GCMKW", "A256GCM", "PS256"),
)


def test_mutated_outer_tokens(world, token_keys, reference):
    """Every part of valid tokens mutated (bit flips, truncation, extension, re-encodings)."""
    rng = random.Random(7)  # noqa: S311 - reproducible mutations, not cryptography
    tally = Tally()
    for outer, enc, inner in MUTATED_PAIRS:
        token = world.token(outer=outer, enc=enc, inner=inner)
        for _name, candidate in mutated(token, rng):
            compare(candidate, token_keys, reference, tally)
    assert tally.both_reject > 0
    # jwcrypto's lenient base64url takes what we refuse.
    assert tally.stricter.get("token_malformed", 0) > 0, tally


def test_outer_parts_swapped_between_tokens(world, token_keys, reference):
    """A part from another token (other key, other algorithm, or the same key) in its place."""
    tally = Tally()
    tokens = [world.token(outer=outer, enc=enc, inner=inner) for outer, enc, inner in MUTATED_PAIRS]
    tokens.append(world.token(outer="dir", enc="A256GCM", inner="ES256"))  # same key as tokens[2]
    for first, second in itertools.permutations(tokens, 2):
        for _name, candidate in swapped(first, second):
            compare(candidate, token_keys, reference, tally)
    assert tally.both_reject > 0


def test_mutated_inner_tokens(world, token_keys, reference):
    """Every part of valid inner JWSs mutated, then encrypted again (valid outer layer)."""
    rng = random.Random(11)  # noqa: S311 - reproducible mutations, not cryptography
    tally = Tally()
    for inner_alg in INNER_ALGS:
        inner = inner_jws(world, inner_alg)
        for _name, candidate in itertools.chain(
            mutated(inner, rng), swapped(inner, inner_jws(world, "ES256"))
        ):
            token = encrypt_payload(world, candidate.encode("utf-8"), outer="dir")
            compare(token, token_keys, reference, tally)
    assert tally.both_reject > 0
    assert tally.stricter.get("inner_token_malformed", 0) > 0, tally


def test_padded_ecdsa_signatures(world, token_keys, reference):
    """jwcrypto verifies an ES256 signature zero-padded to any even length; we take 64 bytes only."""
    inner = inner_jws(world, "ES256")
    head, signature = inner.rsplit(".", 1)
    raw = base64.urlsafe_b64decode(signature + "==")
    r, s = raw[:32], raw[32:]
    for width in (33, 48, 257):
        padded = b"\x00" * (width - 32) + r + b"\x00" * (width - 32) + s
        token = encrypt_payload(world, f"{head}.{b64(padded)}".encode("ascii"), outer="dir")
        assert compare(token, token_keys, reference) == "signature_invalid"


# -- generated tokens -------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
claim_names = st.sampled_from(
    ["sub", "aud", "scope", "roles", "tenant", "jti", "exp", "nbf", "iat"]
) | st.text(min_size=1, max_size=8)
claims_sets = st.fixed_dictionaries(
    {"iss": st.sampled_from(["https://idp.acme.test", "https://idp.acme.test", "https://unknown.test"])},
    optional={"exp": st.integers(0, 2**40)},
).flatmap(lambda base: st.dictionaries(claim_names, json_values, max_size=5).map(lambda extra: extra | base))

HEADER_NAMES = ["kid", "typ", "cty", "crit", "zip", "jku", "x5u", "jwk", "b64", "x-custom", "alg"]
header_extras = st.dictionaries(
    st.sampled_from(HEADER_NAMES) | st.text(min_size=1, max_size=6),
    st.sampled_from([None, "JWT", "jwt", "at+jwt", "application/jwt", "DEF", ""])
    | st.lists(st.sampled_from(["exp", "b64", "x"]), max_size=2)
    | json_scalars,
    max_size=3,
)
# Header alg overrides that jwcrypto can still encrypt or sign with the same key type.
OUTER_ALG_SWAPS = {
    "RSA-OAEP-256": ["RSA-OAEP"],
    "A256KW": ["dir", "A256GCMKW"],
    "ECDH-ES+A256KW": ["ECDH-ES"],
}
INNER_ALG_SWAPS = {"RS256": ["PS256", "RS512"], "PS256": ["RS256"], "ES256": [], "EdDSA": []}


def _extras(extra: Mapping[str, Any], alg_swaps: list[str], draw_alg: Any) -> dict[str, Any]:
    out = dict(extra)
    if "alg" in out:  # an alg override: one the same key can serve (jwcrypto pins nothing)
        if not alg_swaps:
            del out["alg"]
        else:
            out["alg"] = draw_alg
    return out


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    data=st.data(),
    claims=claims_sets,
    outer=st.sampled_from(sorted(OUTER_ALGS)),
    enc=st.sampled_from(CONTENT_ENCRYPTIONS),
    inner=st.sampled_from(sorted(INNER_ALGS)),
    extra_outer=header_extras,
    extra_inner=header_extras,
    typ_list=st.booleans(),
)
def test_generated_tokens(
    world,
    token_keys,
    typ_keys,
    reference,
    data,
    claims,
    outer,
    enc,
    inner,
    extra_outer,
    extra_inner,
    typ_list,
):
    """Random claims sets and random header members on both layers, minted by jwcrypto."""
    outer_swaps, inner_swaps = OUTER_ALG_SWAPS.get(outer, []), INNER_ALG_SWAPS[inner]
    extra_outer = _extras(extra_outer, outer_swaps, data.draw(st.sampled_from(outer_swaps or [outer])))
    extra_inner = _extras(extra_inner, inner_swaps, data.draw(st.sampled_from(inner_swaps or [inner])))
    try:
        token = world.token(
            claims, outer=outer, enc=enc, inner=inner, extra_outer=extra_outer, extra_inner=extra_inner
        )
    except Exception:  # noqa: BLE001 - jwcrypto would not mint it: nothing to compare
        return
    compare(token, typ_keys if typ_list else token_keys, reference)


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    claims_json=st.one_of(
        claims_sets.map(lambda claims: json.dumps(claims).encode()),
        st.binary(max_size=40),
        st.sampled_from(
            [
                b'{"iss":"https://idp.acme.test","sub":"a","sub":"b"}',
                b'{"iss":"https://idp.acme.test","exp":NaN}',
                b'{"iss":"https://idp.acme.test","x":' + b"[" * 20 + b"]" * 20 + b"}",
                b'["https://idp.acme.test"]',
                b'{"iss":"https://idp.acme.test"} ',
            ]
        ),
    ),
    inner_header=st.one_of(
        st.just(None),
        st.sampled_from(
            [
                b'{"alg":"ES256","kid":"acme-es256","alg":"ES256"}',
                b'{"alg":"ES256","kid":null}',
                b'{"alg":"ES256"}',
                b' {"alg":"ES256","kid":"acme-es256"}',
                b'{"alg":"ES256","kid":"acme-es256","crit":[]}',
            ]
        ),
    ),
    cty=st.sampled_from(["JWT", "jwt", "application/jwt", None, "json"]),
    outer=st.sampled_from(["dir", "A256KW", "RSA-OAEP-256"]),
)
def test_generated_payload_bytes(world, token_keys, reference, claims_json, inner_header, cty, outer):
    """Raw claims and inner header bytes (duplicates, NaN, deep nesting, whitespace), signed and encrypted."""
    signing_key = world.signing_keys["acme-es256"]
    header = inner_header or b'{"alg":"ES256","kid":"acme-es256","typ":"at+jwt"}'
    signing_input = f"{b64(header)}.{b64(claims_json)}"
    # The exact header and payload bytes signed: jwcrypto's JWA layer, as a signer would.
    raw_signature = JWA.signing_alg("ES256").sign(signing_key, signing_input.encode("ascii"))
    inner = f"{signing_input}.{b64(raw_signature)}"
    for plaintext in (inner.encode("ascii"), claims_json):
        token = encrypt_payload(world, plaintext, outer=outer, header={"cty": cty})
        compare(token, token_keys, reference)


# -- each stricter rule, shown on a token jwcrypto accepts -----------------------------


def encrypt_raw(world: World, payload: bytes, raw_header: bytes, kid: str = "enc-dir") -> str:
    """A compact JWE under our dir key with the exact protected-header bytes (jwcrypto's JWA layer)."""
    key = world.decryption_keys[kid]
    protected = b64(raw_header)
    iv, ciphertext, tag = JWA.encryption_alg("A256GCM").encrypt(
        base64.urlsafe_b64decode(key["k"] + "=="), protected.encode("ascii"), payload
    )
    return ".".join((protected, "", b64(iv), b64(ciphertext), b64(tag)))


def sign_raw(world: World, payload: bytes, raw_header: bytes, kid: str = "acme-es256") -> str:
    key = world.signing_keys[kid]
    signing_input = f"{b64(raw_header)}.{b64(payload)}"
    signature = JWA.signing_alg(json.loads(raw_header)["alg"]).sign(key, signing_input.encode("ascii"))
    return f"{signing_input}.{b64(signature)}"


def _claims_bytes(world: World, **overrides: Any) -> bytes:
    return json.dumps(world.claims(**overrides)).encode()


DIR_HEADER = b'{"alg":"dir","enc":"A256GCM","kid":"enc-dir","cty":"JWT"}'
ES256_HEADER = b'{"alg":"ES256","kid":"acme-es256","typ":"at+jwt"}'


def _non_canonical_last(token: str) -> str:
    head, last = token.rsplit(".", 1)
    assert len(last) % 4 in (2, 3)
    return f"{head}.{last[:-1]}{ALPHABET[ALPHABET.index(last[-1]) ^ 1]}"


STRICTER_CASES: dict[str, Callable[[World], str]] = {
    "token_too_large": lambda world: world.token(world.claims(pad="x" * 9000), outer="dir"),
    "token_malformed": lambda world: _non_canonical_last(world.token(outer="dir")),
    "header_malformed": lambda world: encrypt_raw(
        world,
        sign_raw(world, _claims_bytes(world), ES256_HEADER).encode(),
        DIR_HEADER[:-1] + b',"cty":"JWT"}',
    ),
    "zip_not_allowed": lambda world: world.token(outer="dir", extra_outer={"zip": "DEF"}),
    "crit_unsupported": lambda world: world.token(outer="dir", extra_inner={"crit": ["b64"], "b64": True}),
    "decryption_key_unknown": lambda world: world.token(
        outer="RSA-OAEP-256", extra_outer={"alg": "RSA-OAEP"}
    ),
    "cty_invalid": lambda world: world.token(outer="dir", extra_outer={"cty": None}),
    "encrypt_only_not_allowed": lambda world: world.token(outer="RSA-OAEP-256", inner=None),
    "inner_token_malformed": lambda world: encrypt_raw(
        world, _non_canonical_last(sign_raw(world, _claims_bytes(world), ES256_HEADER)).encode(), DIR_HEADER
    ),
    "claims_malformed": lambda world: encrypt_raw(
        world,
        sign_raw(world, _claims_bytes(world)[:-1] + b', "sub": "other"}', ES256_HEADER).encode(),
        DIR_HEADER,
    ),
    "issuer_unknown": lambda world: world.token(
        world.claims(iss="https://unknown.test"), outer="dir", inner=None
    ),
    "signing_key_unknown": lambda world: world.token(
        outer="dir", inner="RS256", extra_inner={"alg": "PS256"}
    ),
    "signature_invalid": lambda world: encrypt_raw(world, _padded_es256(world).encode(), DIR_HEADER),
    "typ_not_allowed": lambda world: world.token(outer="dir", extra_inner={"typ": "JWT"}),
}


def _padded_es256(world: World) -> str:
    head, signature = sign_raw(world, _claims_bytes(world), ES256_HEADER).rsplit(".", 1)
    raw = base64.urlsafe_b64decode(signature + "==")
    padded = bytes(1) + raw[:32] + bytes(1) + raw[32:]
    return f"{head}.{b64(padded)}"


def test_stricter_list_is_exact():
    assert set(STRICTER_CASES) == set(STRICTER)


@pytest.mark.parametrize("code", sorted(STRICTER))
def test_each_stricter_rule_refuses_a_token_jwcrypto_accepts(world, token_keys, typ_keys, reference, code):
    """Each stricter rule is real: jwcrypto's high-level API accepts the token, we refuse it with the code."""
    token = STRICTER_CASES[code](world)
    assert reference.claims(token) is not None, "jwcrypto accepts it"
    assert ours(token, typ_keys if code == "typ_not_allowed" else token_keys)[0] == code


@pytest.mark.parametrize(
    ("alg", "crv"),
    [
        ("ECDH-ES", "X25519"),
        ("ECDH-ES+A128KW", "X448"),
        ("ECDH-ES+A128KW", "P-384"),
        ("ECDH-ES+A192KW", "P-521"),
        ("ECDH-ES", "P-521"),
    ],
)
@pytest.mark.parametrize("party", [{}, {"apu": b64(b"alice"), "apv": b64(b"bob")}, {"apu": ""}])
@pytest.mark.parametrize("enc", ["A128GCM", "A256CBC-HS512"])
def test_other_curves_and_party_info_agree(world, token_keys, reference, alg, crv, party, enc):
    """ECDH-ES on every other curve, with and without apu/apv: the same CEK as jwcrypto derives."""
    key = generate_key(alg, f"extra-{alg}-{crv}", crv=crv)
    keys = dataclasses.replace(
        token_keys,
        decryption=keyset_from_jwks({"keys": [json.loads(key.export_private())]}, Purpose.DECRYPT, "test"),
    )
    jwks = jwk.JWKSet()
    jwks.add(key)
    other = Reference(jwks, reference.issuers)
    token = mint(
        world.claims(),
        encryption_key=key,
        signing_key=world.signing_keys["acme-es256"],
        enc=enc,
        extra_outer=party,
    )
    assert compare(token, keys, other) == "ok"
    assert compare(_flip_bit_of_epk(token), keys, other) != "ok"


def _flip_bit_of_epk(token: str) -> str:
    """The same token with one bit of the epk's x changed (a header change: the AAD fails too)."""
    head, rest = token.split(".", 1)
    header = json.loads(base64.urlsafe_b64decode(head + "=="))
    x = bytearray(base64.urlsafe_b64decode(header["epk"]["x"] + "=="))
    x[-1] ^= 1
    header["epk"]["x"] = b64(bytes(x))
    return b64(json.dumps(header).encode()) + "." + rest
