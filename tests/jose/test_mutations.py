"""Systematic mutations of valid tokens: every mutant that is not a valid token of our issuers is denied.

For each token of the algorithm matrix (OUTER_ALGS x CONTENT_ENCRYPTIONS x
INNER_ALGS, 56 tokens for acme, each with its own ``jti`` so that no two
tokens sign the same content), mutants are made deterministically (positions
sampled per part by a random generator seeded with the token's name):

- outer: bit flips in the decoded bytes of each part (re-encoded canonically),
  character replacements, truncations, extensions, re-encodings (``=``
  padding, ``+``/``/`` for ``-``/``_``, whitespace inside, upper/lower case,
  a look-alike non-ASCII letter), part swaps inside the token (IV/tag, ...);
- between tokens: every recombination of the five parts of two tokens (same
  key and header, same key other enc, other key);
- inner: the inner JWS decrypted (by jwcrypto, not by us), mutated (bit flips
  in header, payload and signature, lengths, re-serialized JSON, another
  token's signature, ``alg`` confusion: ``none``, HS256 keyed with the public
  key, RS256 <-> PS256 with the same key) and encrypted again under the same
  outer key: a valid outer layer around a broken inner one;
- tenants: the inner JWS of another tenant's token (globex, the shared IdP's
  initech, the shared IdP without tenant claim) encrypted under our outer
  key; an encrypt-only downgrade (the claims without their signature).

The oracle: a mutant is accepted only when it is byte for byte a token our
issuers minted (a recombination can give back an original), or, for the inner
class, when the re-encrypted inner JWS is byte for byte an issued one. Every
mutant goes through ``validate_token`` (AuthzError, never ``token_invalid``)
and through the Check handler (``authz.grpc.servicer.check``: denied =
``status.code != 0``, on acme's protected ``GET /orders``).

ECDSA malleability: ``(r, n - s)`` is a second valid signature of the same
content by the same key. ``test_ecdsa_high_s_twin`` builds it for every ES256
token and treats it as "a valid token from our issuers" exactly when it
verifies under the issuer's public key with pyca (independently of our code):
it does, so the twin must be allowed with claims equal to the original's
(nothing is keyed on the raw token, SECURITY.md). Random mutations never make
a twin (the other ES256 tokens sign other content).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwcrypto.jwa import JWA
from jwcrypto.jwe import JWE
from jwcrypto.jwk import JWK

from authz.config import Config, SnapshotHolder
from authz.grpc.servicer import check
from authz.jose.nested import TokenKeys, validate_token
from testkit.world import (
    CONTENT_ENCRYPTIONS,
    GLOBEX_IDP,
    INNER_ALGS,
    NOW,
    OUTER_ALGS,
    SHARED_IDP,
    World,
    check_request,
    token_outcome,
)

MATRIX = [(o, e, i) for o in OUTER_ALGS for e in CONTENT_ENCRYPTIONS for i in INNER_ALGS]
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
ED25519_L = 2**252 + 27742317777372353535851937790883648493
SYMMETRIC_OUTER = {"A256KW", "A128GCMKW", "dir"}


def name_of(case: tuple[str, str, str]) -> str:
    return "/".join(case)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


# -- the world's tokens -----------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    """What our issuers minted in this module: tokens, their inner JWSs, their claims."""

    tokens: dict[tuple[str, str, str], str]
    inner: dict[tuple[str, str, str], bytes]  # the compact inner JWS, decrypted by jwcrypto
    claims: dict[tuple[str, str, str], dict[str, Any]]
    all_tokens: frozenset[str]
    all_inner: frozenset[bytes]


def decrypt_independently(world: World, token: str, outer: str) -> bytes:
    """The plaintext of one of our tokens, by jwcrypto's high-level JWE (not by authz)."""
    jwe = JWE()
    jwe.deserialize(token, world.decryption_keys[OUTER_ALGS[outer]])
    return bytes(jwe.payload)


def encrypt(world: World, plaintext: bytes, outer: str, enc: str, *, cty: str | None = "JWT") -> str:
    """A compact JWE of any plaintext to our key for ``outer`` (what any sender can do with a public key)."""
    key = world.decryption_keys[OUTER_ALGS[outer]]
    enc_impl = JWA.encryption_alg(enc)
    fields: dict[str, Any] = {"alg": outer, "enc": enc, "kid": key["kid"]}
    if cty is not None:
        fields["cty"] = cty
    wrapped = JWA.keymgmt_alg(outer).wrap(key, enc_impl.wrap_key_size, None, fields)
    fields.update(wrapped.get("header", {}))
    protected = b64(json.dumps(fields, separators=(",", ":")).encode())
    iv, ciphertext, tag = enc_impl.encrypt(wrapped["cek"], protected.encode("ascii"), plaintext)
    return ".".join((protected, b64(wrapped.get("ek", b"")), b64(iv), b64(ciphertext), b64(tag)))


@pytest.fixture(scope="module")
def issued(world: World) -> Issued:
    tokens, inner, claims = {}, {}, {}
    for case in MATRIX:
        outer, enc, alg = case
        claims[case] = world.claims(jti=name_of(case))
        tokens[case] = world.token(claims[case], outer=outer, enc=enc, inner=alg)
        inner[case] = decrypt_independently(world, tokens[case], outer)
    return Issued(tokens, inner, claims, frozenset(tokens.values()), frozenset(inner.values()))


@pytest.fixture(scope="module")
def keys(config: Config) -> TokenKeys:
    return config.snapshot.token_keys


@pytest.fixture(scope="module")
def holder(config: Config) -> SnapshotHolder:
    return SnapshotHolder(config)


def check_code(token: str, holder: SnapshotHolder, **request: Any) -> tuple[bool, str]:
    response = check(holder, check_request(token=token, **request), lambda: NOW)
    return response.status.code == 0, response.dynamic_metadata.fields["reason"].string_value


@dataclass
class Tally:
    """Mutants run and the deny codes seen, so that each test proves it reached deep layers."""

    mutants: int = 0
    accepted: int = 0
    codes: dict[str, int] | None = None

    def add(self, code: str) -> None:
        self.codes = self.codes or {}
        self.codes[code] = self.codes.get(code, 0) + 1


def assert_outcome(
    token: str, valid: bool, keys: TokenKeys, holder: SnapshotHolder, tally: Tally, label: str
) -> None:
    """A valid token is accepted by both; anything else is denied by both."""
    code = token_outcome(token, keys)
    allowed, reason = check_code(token, holder)
    tally.mutants += 1
    tally.add(code)
    if valid:
        tally.accepted += 1
        assert (code, allowed) == ("ok", True), f"{label}: a valid token was denied ({code}, {reason})"
    else:
        assert code != "ok", f"{label}: mutant accepted by validate_token: {token!r}"
        assert not allowed, f"{label}: mutant allowed by check: {token!r}"


# -- mutants -------------------------------------------------------------------------------


def positions(rng: random.Random, length: int, count: int) -> list[int]:
    """First, last, middle and ``count`` sampled positions (deterministic per token)."""
    if length == 0:
        return []
    chosen = {0, length - 1, length // 2, *rng.sample(range(length), min(count, length))}
    return sorted(chosen)


def with_part(parts: list[str], index: int, value: str) -> str:
    changed = list(parts)
    changed[index] = value
    return ".".join(changed)


def outer_mutants(token: str, rng: random.Random) -> Iterator[tuple[str, str]]:
    parts = token.split(".")
    for index, part in enumerate(parts):
        raw = unb64(part)
        for at in positions(rng, len(raw), 16):
            flipped = bytearray(raw)
            flipped[at] ^= 1 << rng.randrange(8)
            yield f"bitflip[{index}@{at}]", with_part(parts, index, b64(bytes(flipped)))
        for at in positions(rng, len(part), 4):
            char = ALPHABET[ALPHABET.index(part[at]) ^ (1 << rng.randrange(6))]
            yield f"char[{index}@{at}]", with_part(parts, index, part[:at] + char + part[at + 1 :])
            yield (
                f"swapcase[{index}@{at}]",
                with_part(parts, index, part[:at] + part[at].swapcase() + part[at + 1 :]),
            )
        # truncation and extension of the part
        yield f"drop_last[{index}]", with_part(parts, index, part[:-1])
        yield f"drop_last4[{index}]", with_part(parts, index, part[:-4])
        yield f"empty[{index}]", with_part(parts, index, "")
        for suffix in ("A", "AA", "AAAA", "_w", "."):
            yield f"extend[{index}]+{suffix!r}", with_part(parts, index, part + suffix)
        yield f"prefix[{index}]", with_part(parts, index, "AAAA" + part)
        # re-encodings of the same bytes
        yield f"padding[{index}]", with_part(parts, index, part + "=" * (-len(part) % 4 or 4))
        yield f"one_pad[{index}]", with_part(parts, index, part + "=")
        if "-" in part or "_" in part:
            yield f"std_alphabet[{index}]", with_part(parts, index, part.replace("-", "+").replace("_", "/"))
        yield f"std_b64[{index}]", with_part(parts, index, base64.b64encode(raw).decode())
        for at in positions(rng, len(part), 1)[1:]:  # inside: not at the token's first character
            for space in (" ", "\t", "\n", "\r\n", "\x00"):
                yield f"inside[{index}@{at}]{space!r}", with_part(parts, index, part[:at] + space + part[at:])
        if "A" in part:
            yield f"lookalike[{index}]", with_part(parts, index, part.replace("A", "\uff21", 1))
        yield f"upper[{index}]", with_part(parts, index, part.upper())
        yield f"lower[{index}]", with_part(parts, index, part.lower())
    # whole token
    cut_points = {len(token) - 1, len(token) - 2, *(i for i, c in enumerate(token) if c == "."), 1}
    cut_points |= {i + 1 for i, c in enumerate(token) if c == "."}
    cut_points |= set(rng.sample(range(1, len(token)), 3))
    for at in sorted(cut_points):
        yield f"truncate@{at}", token[:at]
    for extra in ("A", "AAAA", ".", ".AAAA", "=", "..", "\x00"):
        yield f"append{extra!r}", token + extra
    yield "prepend", "AAAA" + token
    yield "upper", token.upper()
    yield "lower", token.lower()
    yield "swapcase", token.swapcase()
    yield "drop_part", ".".join(parts[:1] + parts[2:])
    yield "extra_part", ".".join([*parts, parts[-1]])
    yield "json_serialization", json.dumps({"protected": parts[0], "ciphertext": parts[3]})
    for a, b in ((2, 4), (1, 2), (3, 4), (1, 3), (2, 3)):
        swapped = list(parts)
        swapped[a], swapped[b] = swapped[b], swapped[a]
        yield f"swap[{a}<->{b}]", ".".join(swapped)
    yield "reversed", ".".join(reversed(parts))


def recombinations(first: str, second: str) -> Iterator[tuple[str, str]]:
    """Every token made of parts of two tokens, each part in its place (30 mixed ones)."""
    a, b = first.split("."), second.split(".")
    for choice in itertools.product((0, 1), repeat=5):
        if len(set(choice)) == 2:
            label = "".join("ab"[c] for c in choice)
            yield f"mix[{label}]", ".".join((a, b)[c][i] for i, c in enumerate(choice))


def partners(case: tuple[str, str, str]) -> list[tuple[str, str, str]]:
    """Same key and header (other signature), same key other enc, other key management."""
    outer, enc, inner = case
    other_inner = next(i for i in INNER_ALGS if i != inner)
    other_enc = next(e for e in CONTENT_ENCRYPTIONS if e != enc)
    outers = list(OUTER_ALGS)
    other_outer = outers[(outers.index(outer) + 1) % len(outers)]
    return [(outer, enc, other_inner), (outer, other_enc, inner), (other_outer, enc, inner)]


def inner_mutants(
    jws: bytes, case: tuple[str, str, str], issued: Issued, world: World, rng: random.Random
) -> Iterator[tuple[str, bytes]]:
    header_b64, payload_b64, signature_b64 = jws.decode().split(".")
    parts = [header_b64, payload_b64, signature_b64]
    for index, part in enumerate(parts):
        raw = unb64(part)
        for at in positions(rng, len(raw), 6):
            flipped = bytearray(raw)
            flipped[at] ^= 1 << rng.randrange(8)
            yield f"inner_bitflip[{index}@{at}]", with_part(parts, index, b64(bytes(flipped))).encode()
        yield f"inner_padding[{index}]", with_part(parts, index, part + "=" * (-len(part) % 4 or 4)).encode()
        yield f"inner_drop_last[{index}]", with_part(parts, index, part[:-1]).encode()
        yield f"inner_std_b64[{index}]", with_part(parts, index, base64.b64encode(raw).decode()).encode()
    signature = unb64(signature_b64)
    for label, changed in (
        ("sig_empty", b""),
        ("sig_truncated", signature[:-1]),
        ("sig_extended", signature + b"\x00"),
        ("sig_leading_zero", b"\x00" + signature),
        ("sig_zeros", bytes(len(signature))),
    ):
        yield label, with_part(parts, 2, b64(changed)).encode()
    header = json.loads(unb64(header_b64))
    payload = json.loads(unb64(payload_b64))
    # The same JSON, re-serialized: other bytes, so the signature no longer covers them.
    yield "header_reserialized", with_part(parts, 0, b64(json.dumps(header, indent=1).encode())).encode()
    yield "payload_reserialized", with_part(parts, 1, b64(json.dumps(payload).encode())).encode()
    for name, value in (
        ("scope", "orders:read admin"),
        ("roles", ["admin"]),
        ("tenant", "globex"),
        ("exp", NOW + 10**6),
    ):
        yield (
            f"payload[{name}]",
            with_part(parts, 1, b64(json.dumps({**payload, name: value}).encode())).encode(),
        )
    # Another issued token's signature (same algorithm, other content: every jti differs).
    other = next(c for c in MATRIX if c[2] == case[2] and c != case)
    yield "other_signature", with_part(parts, 2, issued.inner[other].decode().split(".")[2]).encode()
    yield "other_payload", with_part(parts, 1, issued.inner[other].decode().split(".")[1]).encode()
    # alg confusion on the inner header, re-signed where the attack needs a signature.
    yield "alg_none", f"{b64(json.dumps({**header, 'alg': 'none'}).encode())}.{payload_b64}.".encode()
    public = JWK(**json.loads(world.signing_keys[header["kid"]].export_public()))
    hs_header = b64(json.dumps({**header, "alg": "HS256"}).encode())
    for label, secret in (
        ("hs256_public_json", public.export_public().encode()),
        ("hs256_public_pem", _pem(public)),
    ):
        mac = hmac.new(secret, f"{hs_header}.{payload_b64}".encode(), hashlib.sha256).digest()
        yield label, f"{hs_header}.{payload_b64}.{b64(mac)}".encode()
    swap = {"RS256": "PS256", "PS256": "RS256"}.get(case[2])
    if swap is not None:  # a correct signature with the same key under the other RSA algorithm
        swapped = b64(json.dumps({**header, "alg": swap}).encode())
        signing_input = f"{swapped}.{payload_b64}".encode()
        signed = JWA.signing_alg(swap).sign(world.signing_keys[header["kid"]], signing_input)
        yield f"alg_{swap}_same_key", f"{swapped}.{payload_b64}.{b64(signed)}".encode()
    if case[2] == "EdDSA":  # S + L: the same signature, non-canonical (RFC 8032 requires S < L)
        s = int.from_bytes(signature[32:], "little") + ED25519_L
        yield "ed25519_s_plus_l", with_part(parts, 2, b64(signature[:32] + s.to_bytes(32, "little"))).encode()


def _pem(key: JWK) -> bytes:
    return bytes(key.export_to_pem())


# -- tests ----------------------------------------------------------------------------------------


def test_matrix_tokens_are_allowed(issued, keys, holder):
    """Control: every original is allowed, through validate_token and through Check."""
    tally = Tally()
    for case, token in issued.tokens.items():
        assert_outcome(token, True, keys, holder, tally, name_of(case))
        inner = issued.inner[case].decode().split(".")
        assert json.loads(unb64(inner[1])) == issued.claims[case]
    assert tally.accepted == len(MATRIX) == 56


@pytest.mark.parametrize("case", MATRIX, ids=name_of)
def test_outer_mutants_are_denied(case, issued, keys, holder):
    """Bit flips, character changes, truncations, extensions, re-encodings, part swaps: all denied."""
    rng = random.Random(name_of(case))  # noqa: S311 - reproducible positions, not cryptography
    token = issued.tokens[case]
    tally = Tally()
    seen: set[str] = set()
    for label, mutant in outer_mutants(token, rng):
        if mutant in seen:
            continue
        seen.add(mutant)
        assert_outcome(mutant, mutant in issued.all_tokens, keys, holder, tally, label)
    assert tally.mutants > 100
    assert tally.codes is not None
    # The flips of IV, ciphertext and tag reach the authenticated decryption.
    assert tally.codes.get("decryption_failed", 0) > 5, tally.codes


@pytest.mark.parametrize("case", MATRIX, ids=name_of)
def test_parts_swapped_between_tokens(case, issued, keys, holder):
    """Every recombination with three partner tokens: only byte-identical originals pass."""
    tally = Tally()
    seen: set[str] = set()
    for other in partners(case):
        for label, mutant in recombinations(issued.tokens[case], issued.tokens[other]):
            if mutant in seen:
                continue
            seen.add(mutant)
            assert_outcome(
                mutant, mutant in issued.all_tokens, keys, holder, tally, f"{name_of(other)}:{label}"
            )
    assert tally.mutants >= 30


@pytest.mark.parametrize("case", MATRIX, ids=name_of)
def test_inner_mutants_are_denied(case, issued, world, keys, holder):
    """The inner JWS mutated and encrypted again under the same outer key: a valid JWE, a broken JWS."""
    rng = random.Random("inner:" + name_of(case))  # noqa: S311 - reproducible positions
    outer, enc, _ = case
    tally = Tally()
    control = encrypt(world, issued.inner[case], outer, enc)
    assert_outcome(control, True, keys, holder, tally, "re-encrypted original")
    for label, mutant in inner_mutants(issued.inner[case], case, issued, world, rng):
        token = encrypt(world, mutant, outer, enc)
        assert_outcome(token, mutant in issued.all_inner, keys, holder, tally, label)
    assert tally.codes is not None
    assert tally.codes.get("signature_invalid", 0) >= 10, tally.codes


@pytest.fixture(scope="module")
def foreign_inner(world: World) -> dict[str, bytes]:
    """Inner JWSs of other tenants' tokens from our issuers, decrypted (jwcrypto)."""
    tokens = {
        "globex": world.token(
            world.claims(iss=GLOBEX_IDP, tenant="globex"), outer="dir", signing_kid="globex-es256"
        ),
        "initech": world.token(
            world.claims(iss=SHARED_IDP, tenant="initech"), outer="dir", signing_kid="shared-es256"
        ),
        "shared-no-tenant": world.token(
            world.claims(iss=SHARED_IDP, tenant=None), outer="dir", signing_kid="shared-es256"
        ),
        "acme-no-tenant": world.token(world.claims(tenant=None), outer="dir", inner="ES256"),
        "acme": world.token(world.claims(jti="foreign-control"), outer="dir", inner="ES256"),
    }
    return {name: decrypt_independently(world, token, "dir") for name, token in tokens.items()}


FOREIGN_DENIALS = {
    "globex": {"tenant_mismatch"},
    "initech": {"tenant_mismatch"},
    "shared-no-tenant": {"tenant_mismatch"},
    # acme's IdP also serves the dry and legacy tenants: its tokens must name theirs.
    "acme-no-tenant": {"tenant_mismatch"},
}


@pytest.mark.parametrize("outer", list(OUTER_ALGS))
def test_other_tenants_inner_jws_under_our_outer_key(outer, world, foreign_inner, keys, holder):
    """Another tenant's signed token re-encrypted: valid for the token layer, denied for acme.

    The inner JWS is a valid token of our issuers (the token layer accepts it, as it must: it
    is not tenant-aware); the Check handler binds it to acme's host and denies it. The control,
    acme's own token re-encrypted the same way, is allowed.
    """
    for enc in CONTENT_ENCRYPTIONS:
        for name, jws in foreign_inner.items():
            token = encrypt(world, jws, outer, enc)
            assert token_outcome(token, keys) == "ok", name
            allowed, reason = check_code(token, holder)
            if name == "acme":
                assert allowed, reason
            else:
                assert (allowed, reason in FOREIGN_DENIALS[name]) == (False, True), (name, reason)
            # The same token where its tenant lives is allowed: the denial is the binding, not the token.
            if name == "globex":
                assert check_code(token, holder, host="api.globex.test")[0]


@pytest.mark.parametrize("outer", list(OUTER_ALGS))
def test_encrypt_only_downgrade(outer, world, issued, keys, holder):
    """The claims without their signature (no cty), or the JWS with cty removed: never allowed for acme.

    Under a public key (RSA, ECDH) anyone can make them: the token layer refuses. Under a shared key
    the token layer accepts (only the key holder can make one) and acme, which lists no
    encrypt-only key, denies.
    """
    case = (outer, "A256GCM", "ES256")
    payload = unb64(issued.inner[case].decode().split(".")[1])
    claims_only = encrypt(world, payload, outer, "A256GCM", cty=None)
    code = token_outcome(claims_only, keys)
    assert code == ("ok" if outer in SYMMETRIC_OUTER else "encrypt_only_not_allowed")
    assert check_code(claims_only, holder) == (False, "encrypt_only_not_allowed")
    without_cty = encrypt(world, issued.inner[case], outer, "A256GCM", cty=None)
    assert token_outcome(without_cty, keys) == "cty_invalid"
    assert check_code(without_cty, holder) == (False, "cty_invalid")
    for cty in ("json", "JWE", "", "application/jose"):
        token = encrypt(world, issued.inner[case], outer, "A256GCM", cty=cty)
        assert token_outcome(token, keys) == "cty_invalid"


@pytest.mark.parametrize("case", [c for c in MATRIX if c[2] == "ES256"], ids=name_of)
def test_ecdsa_high_s_twin(case, issued, world, keys, holder):
    """(r, n - s): a valid token of our issuers exactly when pyca verifies it; then allowed, same claims."""
    outer, enc, _ = case
    header_b64, payload_b64, signature_b64 = issued.inner[case].decode().split(".")
    signature = unb64(signature_b64)
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    twin = r.to_bytes(32, "big") + (P256_N - s).to_bytes(32, "big")
    signing_input = f"{header_b64}.{payload_b64}".encode()
    public = world.signing_keys["acme-es256"].get_op_key("verify")
    try:
        public.verify(encode_dss_signature(r, P256_N - s), signing_input, ec.ECDSA(hashes.SHA256()))
        verifies = True
    except InvalidSignature:
        verifies = False
    token = encrypt(world, f"{header_b64}.{payload_b64}.{b64(twin)}".encode(), outer, enc)
    tally = Tally()
    assert_outcome(token, verifies, keys, holder, tally, "high-s twin")
    assert verifies, "pyca no longer verifies high-s signatures: the twin is now denied, update the docstring"
    assert validate_token(token, keys).claims == issued.claims[case]


WHITESPACE_AROUND: dict[str, Callable[[str], str]] = {
    "space_before": lambda t: " " + t,
    "space_after": lambda t: t + " ",
    "spaces_both": lambda t: "  " + t + "  ",
    "tab_after": lambda t: t + "\t",
    "tab_before": lambda t: "\t" + t,
    "newline_after": lambda t: t + "\n",
    "crlf_before": lambda t: "\r\n" + t,
    "nul_after": lambda t: t + "\x00",
    "nbsp_before": lambda t: "\u00a0" + t,
}


def test_whitespace_around_the_token(issued, keys, holder):
    """Whitespace around: validate_token denies (not the token); Check allows only what strips to it.

    In the authorization header, spaces between scheme and token and whitespace at the end are
    the header's, not the token's (RFC 6750 ``Bearer 1*SP b64token``, HTTP's OWS): Check takes
    the token out, so ``" " + token`` is the same token. Anything else around it is denied.
    """
    token = issued.tokens[("ECDH-ES", "A256GCM", "ES256")]
    allowed_forms = set()
    for label, change in WHITESPACE_AROUND.items():
        mutant = change(token)
        assert token_outcome(mutant, keys) != "ok", label
        allowed, _ = check_code(mutant, holder)
        if allowed:
            assert mutant.strip() == token, label
            allowed_forms.add(label)
    assert {"space_before", "space_after", "spaces_both"} <= allowed_forms
    assert not {"tab_before", "crlf_before", "nul_after", "nbsp_before"} & allowed_forms
