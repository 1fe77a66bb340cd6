"""Property-based tests (hypothesis) of the parsers and matchers on the request path.

The token boundary (``validate_token``, ``decrypt_token``, ``open_token``) must
raise nothing but AuthzError, and never ``token_invalid`` (the code that
stands for an unexpected exception caught inside: a crash that fail-closed
hides), for any str; it accepts only a token our issuers made, byte for byte.
Structured near-valid tokens (valid headers with random changes, random parts,
parts of valid tokens recombined) are generated from the session ``world``.

The other parsers are checked against references written here: JSON objects
round-trip through ``parse_json_object`` and its depth bound is exact;
``validate_claims`` decides time claims as README step 7 says;
``normalize_path`` is RFC 3986 ``remove_dot_segments`` after decoding
unreserved escapes and merging slashes (a ``..`` above the root refused);
``compile_path`` patterns match exactly the paths a segment matcher says.

Examples are bounded (``max_examples``) and derandomized: the file runs in
well under 30 s and the same way every time.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from authz.config import Config, SnapshotHolder
from authz.core.claims import ClaimRules, validate_claims
from authz.core.policy import Rule, compile_path
from authz.core.request import AuthzRequest, bearer_token, normalize_host, normalize_path
from authz.errors import REASONS, AuthzError
from authz.grpc.servicer import check
from authz.jose.encoding import parse_json_object
from authz.jose.jwe import DecryptedToken
from authz.jose.nested import TokenKeys, decrypt_token, open_token
from tests.helpers import NOW, World, check_request, token_outcome

FAST = settings(max_examples=300, deadline=None, derandomize=True)
TOKENS = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# A few tokens of the matrix, one per kind of key management, content encryption and signature.
SAMPLE = (
    ("dir", "A256GCM", "ES256"),
    ("RSA-OAEP-256", "A128CBC-HS256", "EdDSA"),
    ("ECDH-ES+A256KW", "A256GCM", "RS256"),
    ("A128GCMKW", "A128CBC-HS256", "PS256"),
    ("ECDH-ES", "A256GCM", "ES256"),
    ("A256KW", "A256GCM", "ES256"),
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@pytest.fixture(scope="module")
def keys(config: Config) -> TokenKeys:
    return config.snapshot.token_keys


@pytest.fixture(scope="module")
def valid(world: World) -> tuple[str, ...]:
    """Valid tokens (acme, GET /orders allowed), two of the same key so that parts can be shared."""
    tokens = [world.token(outer=o, enc=e, inner=i) for o, e, i in SAMPLE]
    tokens.append(world.token(outer="dir", enc="A256GCM", inner="ES256"))
    return tuple(tokens)


def assert_only_valid_accepted(token: str, keys: TokenKeys, valid: tuple[str, ...]) -> str:
    code = token_outcome(token, keys)
    if token in valid:
        assert code == "ok"
    else:
        assert code != "ok", "a token that is not byte for byte one of our issuers' was accepted"
    return code


# -- the token boundary: any str -------------------------------------------------

any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=300)
b64_parts = st.binary(max_size=80).map(b64)
part_text = st.one_of(b64_parts, st.text(ALPHABET + "=+/ .\t\x00é", max_size=40))
dotted = st.lists(part_text, min_size=1, max_size=7).map(".".join)


@TOKENS
@given(token=st.one_of(any_text, dotted))
@example(token="....")
@example(token="." * 4 + "A" * 9000)
@example(token="e30.e30.e30.e30.e30")
@example(token="\ud800.a.b.c.d")
def test_validate_token_raises_only_authz_error(keys, token):
    """Any str: validate_token and decrypt_token raise AuthzError with a precise code, never accept."""
    assert token_outcome(token, keys) != "ok"
    with pytest.raises(AuthzError) as info:
        decrypt_token(token, keys)
    assert info.value.code != "token_invalid"


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)
OUTER_MEMBERS = [
    "alg",
    "enc",
    "kid",
    "cty",
    "zip",
    "crit",
    "epk",
    "iv",
    "tag",
    "apu",
    "apv",
    "typ",
    "jku",
    "p2c",
]
MEMBER_VALUES = st.one_of(
    json_values,
    st.sampled_from(
        ["dir", "A256KW", "RSA-OAEP", "RSA1_5", "none", "PBES2-HS256+A128KW", "ECDH-ES", "A256GCM",
         "A128CBC-HS256", "A192GCM", "DEF", "JWT", "enc-dir", "enc-a256kw", "enc-rsa-oaep", "", "AAAA"]
    ),
    st.just({"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}),
    st.just({"kty": "OKP", "crv": "X25519", "x": b64(b"\x00" * 32)}),
)  # fmt: skip


@st.composite
def near_valid_tokens(draw: st.DrawFn, valid: tuple[str, ...]) -> str:
    """A valid token with changes: header members, whole parts random or from another token."""
    parts = draw(st.sampled_from(valid)).split(".")
    kind = draw(st.sampled_from(["header", "parts", "recombine", "raw_header"]))
    if kind == "header":
        header = json.loads(unb64(parts[0]))
        for name in draw(
            st.lists(st.sampled_from(OUTER_MEMBERS) | st.text(max_size=4), min_size=1, max_size=3)
        ):
            if draw(st.booleans()) and name in header:
                del header[name]
            else:
                header[name] = draw(MEMBER_VALUES)
        separators = draw(st.sampled_from([(",", ":"), (", ", ": ")]))
        parts[0] = b64(json.dumps(header, separators=separators).encode())
    elif kind == "raw_header":
        text = unb64(parts[0]).decode()
        edit = draw(st.sampled_from(["space", "dup", "nan", "deep", "bom", "trail"]))
        text = {
            "space": " " + text,
            "dup": text[:-1] + ',"alg":"dir"}',
            "nan": text[:-1] + ',"x":NaN}',
            "deep": text[:-1] + ',"x":' + "[" * 20 + "]" * 20 + "}",
            "bom": "\ufeff" + text,
            "trail": text + "\n",
        }[edit]
        parts[0] = b64(text.encode())
    elif kind == "parts":
        for index in draw(st.lists(st.integers(0, 4), min_size=1, max_size=3, unique=True)):
            parts[index] = draw(b64_parts)
    else:
        donors = [t.split(".") for t in valid]
        for index in draw(st.lists(st.integers(0, 4), min_size=1, max_size=4, unique=True)):
            parts[index] = draw(st.sampled_from(donors))[index]
    return ".".join(parts)


@TOKENS
@given(data=st.data())
def test_near_valid_tokens_are_denied(keys, valid, data):
    """Structured near-valid tokens: only a byte-identical valid token is accepted."""
    token = data.draw(near_valid_tokens(valid))
    assert_only_valid_accepted(token, keys, valid)


def test_recombined_parts_exhaustively(keys, valid):
    """Every combination of parts of two tokens of the same dir key: only the originals pass."""
    first, second = valid[0].split("."), valid[-1].split(".")
    seen = 0
    for choice in itertools.product((0, 1), repeat=5):
        token = ".".join((first, second)[c][i] for i, c in enumerate(choice))
        assert_only_valid_accepted(token, keys, valid)
        seen += 1
    assert seen == 32


@settings(max_examples=40, deadline=None, derandomize=True)
@given(data=st.data())
def test_near_valid_tokens_denied_by_check(config, valid, data):
    """The same tokens through the whole Check handler: allowed only when byte-identical."""
    token = data.draw(near_valid_tokens(valid))
    response = check(SnapshotHolder(config), check_request(token=token), lambda: NOW)
    assert (response.status.code == 0) == (token in valid)


REQUEST_HOSTS = [
    "api.acme.test",
    "API.ACME.TEST:443",
    "eu.acme.test",
    "api.globex.test",
    "api.dry.test",
    "api.initech.test",
    "api.legacy.test",
    "unknown.test",
    "",
]
REQUEST_PATHS = [
    "/orders",
    "/orders/1",
    "/healthz",
    "/healthz/",
    "/admin/users",
    "/orders/../admin/x",
    "/HEALTHZ",
    "/x",
    "/healthz?a=/../admin",
    "//healthz",
    "/%68ealthz",
    "/orders/%2e%2e/admin",
    "/healthz/../admin",
]
SMUGGLED = st.dictionaries(
    st.sampled_from(["x-authz-tenant", "x-authz-subject", "x-authz-scopes", "X-Authz-Subject"]),
    st.sampled_from(["globex", "root", "admin orders:read"]),
    max_size=2,
)  # fmt: skip


REQUEST_FIELDS = {
    "host": st.sampled_from(REQUEST_HOSTS),
    "path": st.sampled_from(REQUEST_PATHS),
    "method": st.sampled_from(["GET", "HEAD", "POST", "DELETE"]),
    "tenant": st.sampled_from([None, "acme", "dry", "globex", "nobody"]),
    "token_kind": st.sampled_from(["none", "valid", "near"]),
}


@settings(max_examples=100, deadline=None, derandomize=True)
@given(data=st.data(), changed=st.lists(st.sampled_from(sorted(REQUEST_FIELDS)), max_size=3, unique=True))
def test_check_allows_only_with_a_cause(config, valid, data, changed):
    """Requests over the world's tenants: an allow has a cause, and identity comes only from a token.

    Each request is acme's allowed ``GET /orders`` with a valid token, with up to three fields
    (host, path, method, route tenant, token) drawn at random. The causes of an allow: acme's
    public /healthz (no subject or scopes passed), a dry-run deny of the dry tenant chosen by the
    request (route or host, never the token), or a valid acme token.
    """
    fields: dict[str, Any] = {"host": "api.acme.test", "path": "/orders", "method": "GET", "tenant": None}
    fields["token_kind"] = "valid"
    for name in changed:
        fields[name] = data.draw(REQUEST_FIELDS[name], label=name)
    host, path, tenant = fields["host"], fields["path"], fields["tenant"]
    token = {
        "none": lambda: None,
        "valid": lambda: data.draw(st.sampled_from(valid), label="token"),
        "near": lambda: data.draw(near_valid_tokens(valid), label="token"),
    }[fields["token_kind"]]()
    smuggled = data.draw(SMUGGLED, label="smuggled")
    message = check_request(
        method=fields["method"], path=path, host=host, token=token, tenant=tenant, headers=smuggled
    )
    response = check(SnapshotHolder(config), message, lambda: NOW)
    if response.status.code != 0:
        assert response.HasField("denied_response")
        return
    meta = {k: v.string_value for k, v in response.dynamic_metadata.fields.items()}
    upstream = {h.header.key: h.header.value for h in response.ok_response.headers}
    if meta["decision"] == "dry-run-deny":
        assert meta["tenant"] == "dry"
        assert tenant == "dry" or (tenant is None and host.split(":")[0].lower() == "api.dry.test")
    elif meta.get("rule") == "health":
        assert normalize_path(path) == "/healthz"
        assert meta["tenant"] == "acme"
        assert "x-authz-subject" not in upstream
        assert "x-authz-scopes" not in upstream
    else:
        assert meta["decision"] == "allow"
        assert token in valid
        assert meta["tenant"] == "acme"
        assert upstream["x-authz-subject"] == "user-1"
        assert upstream["x-authz-tenant"] == "acme"
    # A client's own identity headers never reach the upstream as they were sent.
    for name in ("x-authz-subject", "x-authz-scopes"):
        assert name in upstream or name in response.ok_response.headers_to_remove


inner_plaintexts = st.one_of(
    st.binary(max_size=200),
    st.tuples(b64_parts, b64_parts, b64_parts).map(lambda p: ".".join(p).encode()),
    st.tuples(json_values, json_values, st.binary(max_size=70)).map(
        lambda p: ".".join(
            (b64(json.dumps(p[0]).encode()), b64(json.dumps(p[1]).encode()), b64(p[2]))
        ).encode()
    ),
    st.dictionaries(st.sampled_from(["iss", "exp", "sub", "aud"]), json_values).map(
        lambda c: json.dumps(c).encode()
    ),
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    header=st.dictionaries(st.sampled_from(["cty", "alg", "kid", "typ", "crit"]), MEMBER_VALUES, max_size=3),
    plaintext=inner_plaintexts,
    kid=st.sampled_from(["enc-dir", "enc-rsa-oaep-256", "enc-a256kw"]),
)
@example(header={"cty": "JWT"}, plaintext=b"e30.e30.", kid="enc-dir")
@example(header={}, plaintext=b'{"iss":"https://idp.acme.test"}', kid="enc-rsa-oaep-256")
def test_open_token_raises_only_authz_error(keys, header, plaintext, kid):
    """The inner layer on any header and plaintext: AuthzError only, never a forged acceptance."""
    outer = DecryptedToken(header, plaintext, keys.decryption.by_kid[kid])
    try:
        verified = open_token(outer, keys)
    except AuthzError as exc:
        code, detail = exc.code, exc.detail
    else:
        code = detail = "ok"
    assert code != "token_invalid", detail
    if code != "ok":
        return
    # Nothing here was signed by an issuer: only an encrypt-only token under a shared key passes.
    assert not verified.nested
    assert "cty" not in header
    assert outer.key.symmetric


# -- strict JSON --------------------------------------------------------------------


def depth(value: Any, level: int = 1) -> int:
    """The deepest level of any value; the top-level object is level 1, its members level 2."""
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return max((depth(child, level + 1) for child in children), default=level)


json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5).filter(lambda v: depth(v) <= 16)


@FAST
@given(
    value=json_objects,
    separators=st.sampled_from([(",", ":"), (", ", ": ")]),
    ensure_ascii=st.booleans(),
    indent=st.sampled_from([None, 2]),
    padding=st.sampled_from(["", " ", "\n", "\t \r\n"]),
)
def test_json_objects_round_trip(value, separators, ensure_ascii, indent, padding):
    """parse(serialize(x)) == x for JSON objects, in any of json.dumps' layouts and surrounding whitespace."""
    text = json.dumps(value, separators=separators, ensure_ascii=ensure_ascii, indent=indent)
    parsed = parse_json_object((padding + text + padding).encode("utf-8"))
    assert parsed == value
    assert json.dumps(parsed, sort_keys=True) == json.dumps(value, sort_keys=True)


def nested(levels: int, leaf: Any, kinds: list[str]) -> dict[str, Any]:
    """An object holding ``levels - 1`` more containers, the innermost holding ``leaf`` (if not None)."""
    value: Any = [] if leaf is None else [leaf]
    for index in range(levels - 1):
        kind = kinds[index % len(kinds)]
        value = {"k": value} if kind == "o" else [value]
    return {"top": value} if levels > 1 else ({} if leaf is None else {"k": leaf})


@FAST
@given(
    levels=st.integers(1, 24),
    leaf=st.one_of(st.none(), st.just(1), st.just("x")),
    kinds=st.lists(st.sampled_from("oa"), min_size=1, max_size=4),
    pretty=st.booleans(),
)
def test_json_depth_bound_is_exact(levels, leaf, kinds, pretty):
    """A value deeper than level 16 is refused (ValueError), any other object accepted."""
    value = nested(levels, leaf, kinds)
    raw = json.dumps(value, indent=1 if pretty else None).encode()
    if depth(value) > 16:
        with pytest.raises(ValueError, match="nested too deeply"):
            parse_json_object(raw)
    else:
        assert parse_json_object(raw) == value


@FAST
@given(
    raw=st.one_of(
        st.binary(max_size=200), st.text(max_size=120).map(lambda t: t.encode("utf-8", "surrogatepass"))
    )
)
@example(raw=b"[" * 100_000)
@example(raw=b'{"a":' * 50_000)
@example(raw=b'{"a":1' + b"0" * 5000 + b"}")
@example(raw=b'{"a":1e400}')
@example(raw=b'{"a":-Infinity}')
@example(raw=b'{"a":1,"a":1}')
@example(raw=b'{"a":"\\ud800"}')
@example(raw=b"\xef\xbb\xbf{}")
def test_parse_json_object_raises_only_value_error(raw):
    """Any bytes: a dict or ValueError (its documented error), nothing else."""
    try:
        value = parse_json_object(raw)
    except ValueError:
        return
    assert type(value) is dict
    assert depth(value) <= 16


@FAST
@given(value=json_objects.filter(bool), data=st.data())
def test_json_duplicates_and_constants_refused(value, data):
    """A duplicated member anywhere at the top, or NaN/Infinity anywhere, is a ValueError."""
    text = json.dumps(value)
    name = data.draw(st.sampled_from(sorted(value)))
    duplicated = text[:-1] + ", " + json.dumps(name) + ": null}"
    with pytest.raises(ValueError, match="duplicate"):
        parse_json_object(duplicated.encode())
    constant = data.draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"]))
    with pytest.raises(ValueError, match=r"not JSON|out of range"):
        parse_json_object((text[:-1] + ', "zz\\u0000": [' + constant + "]}").encode())


# -- claims -------------------------------------------------------------------------

RULES = ClaimRules(clock_skew=30, max_lifetime=3600, tenant_claim="tenant")
time_values = st.one_of(
    st.integers(NOW - 8000, NOW + 8000),
    st.floats(NOW - 8000, NOW + 8000, allow_nan=False),
    st.sampled_from([NOW - 30, NOW + 30, NOW - 31, NOW + 31, NOW + 3600, NOW - 3600, 0, -1, 2**1100]),
)
bad_time_values = st.one_of(
    st.booleans(), st.text(max_size=3), st.none(), st.lists(st.integers(), max_size=1),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 10**400, str(NOW)]),
)  # fmt: skip


def reference_time_ok(claims: Mapping[str, Any], now: float) -> bool:
    """README step 7: exp required; nbf, iat with the skew; lifetime from iat, else nbf, else now."""
    if "exp" not in claims:
        return False
    values = {name: claims[name] for name in ("exp", "nbf", "iat") if name in claims}
    for number in values.values():
        if isinstance(number, bool) or not isinstance(number, int | float):
            return False
        try:
            if not math.isfinite(float(number)):
                return False
        except OverflowError:
            return False
    exp = float(values["exp"])
    if exp <= now - 30:
        return False
    if "nbf" in values and values["nbf"] > now + 30:
        return False
    if "iat" in values and values["iat"] > now + 30:
        return False
    start = values.get("iat", values.get("nbf", now))
    return exp - start <= 3600


@FAST
@given(
    times=st.dictionaries(st.sampled_from(["exp", "nbf", "iat"]), st.one_of(time_values, bad_time_values)),
    now=st.integers(NOW - 100, NOW + 100),
)
@example(times={"exp": NOW + 100, "iat": True}, now=NOW)
@example(times={"exp": 2**1100}, now=NOW)
@example(times={"exp": NOW - 30 + 0.5}, now=NOW)
def test_time_claims_match_the_reference(times, now):
    """Time claims: accepted exactly when the reference accepts; refusals are AuthzError only."""
    claims = {"iss": "https://idp.acme.test", "sub": "u", **times}
    try:
        validated = validate_claims(claims, RULES, now)
    except AuthzError:
        assert not reference_time_ok(claims, now)
        return
    assert reference_time_ok(claims, now)
    assert validated.expires_at == float(claims["exp"])


claim_names = st.sampled_from(["iss", "sub", "aud", "tenant", "scope", "scp", "roles", "exp", "nbf", "iat"])


@FAST
@given(payload=st.dictionaries(claim_names | st.text(max_size=4), json_values | time_values, max_size=8))
@example(payload={"iss": "x", "exp": NOW + 1, "sub": "a\nb"})
@example(payload={"iss": "x", "exp": NOW + 1, "scope": "a \x00"})
@example(payload={"iss": "x", "exp": NOW + 1, "scp": ["a", 1]})
@example(payload={"iss": "x", "exp": NOW + 1, "roles": "admin"})
def test_validate_claims_raises_only_authz_error(payload):
    """Any claims set: Claims with the documented types, or AuthzError."""
    try:
        claims = validate_claims(payload, RULES, NOW)
    except AuthzError as exc:
        code = exc.code
    else:
        code = "ok"
    assert code in {*REASONS, "ok"}
    if code != "ok":
        return
    assert isinstance(claims.issuer, str)
    assert claims.subject is None or reference_header_value(claims.subject)
    assert claims.tenant is None or reference_header_value(claims.tenant)
    assert all(isinstance(a, str) for a in claims.audiences)
    assert all(isinstance(v, str) and v and set(v) <= set(NQCHAR) for v in claims.scopes)
    assert all(isinstance(v, str) and v.isprintable() for v in claims.roles)
    assert reference_time_ok(payload, NOW)


# -- claims that become identity headers ---------------------------------------------

NQCHAR = "".join(chr(c) for c in range(0x21, 0x7F) if c not in (0x22, 0x5C))  # RFC 6749 §3.3
# Characters a loose split or trim would treat as separators, and look-alikes of them.
WHITESPACE_LIKE = (
    " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u200a\u200b\u2028\u2029\u202f\u205f\u3000\ufeff"
)
claim_text = st.one_of(
    st.lists(
        st.sampled_from([*NQCHAR[:8], "orders:read", '"', "\\", "é", "用户", *WHITESPACE_LIKE]), max_size=10
    ).map("".join),
    st.text(max_size=20),
)
scope_tokens = st.lists(st.text(NQCHAR, min_size=1, max_size=8), min_size=1, max_size=5)


def reference_scopes(value: str) -> frozenset[str] | None:
    """RFC 6749 §3.3 read literally (None: not that grammar); "" is no scopes."""
    if value == "":
        return frozenset()
    tokens = value.split(" ")
    if all(token and all(c in NQCHAR for c in token) for token in tokens):
        return frozenset(tokens)
    return None


def reference_header_value(value: str) -> bool:
    """Sendable as it is by both doors: printable US-ASCII, not empty, no space at either end."""
    return bool(value) and all(" " <= c <= "~" for c in value) and value[0] != " " and value[-1] != " "


def claims_or_code(**claims: Any) -> Any:
    try:
        return validate_claims({"iss": "https://idp.acme.test", "exp": NOW + 60, **claims}, RULES, NOW)
    except AuthzError as exc:
        return exc.code


@FAST
@given(value=claim_text)
@example(value="profile\x1forders:read\u3000orders:write")
@example(value="orders:read  orders:write")
@example(value=" orders:read")
@example(value="")
def test_scope_string_is_the_rfc_6749_grammar(value):
    """scope: exactly the RFC 6749 grammar (split on U+0020 only, NQCHAR tokens), else claims_malformed."""
    expected = reference_scopes(value)
    for name in ("scope", "scp"):  # scp as a string is read as a scope string
        got = claims_or_code(**{name: value})
        assert (got if isinstance(got, str) else got.scopes) == (
            expected if expected is not None else "claims_malformed"
        )


@FAST
@given(tokens=scope_tokens, data=st.data())
def test_scope_tokens_round_trip_and_any_other_separator_is_refused(tokens, data):
    """Tokens joined by single spaces give exactly those scopes; any other separator is claims_malformed."""
    assert claims_or_code(scope=" ".join(tokens)).scopes == frozenset(tokens)
    assert claims_or_code(scp=tokens).scopes == frozenset(tokens)
    separator = data.draw(st.sampled_from([*WHITESPACE_LIKE[1:], "  ", '"', "\\", "é"]))
    index = data.draw(st.integers(0, len(tokens)))
    joined = " ".join(tokens[:index]) + separator + " ".join(tokens[index:])
    assert claims_or_code(scope=joined) == "claims_malformed"


@FAST
@given(items=st.lists(claim_text, max_size=4))
@example(items=["orders:read orders:write"])
@example(items=[""])
def test_scp_list_items_are_scope_tokens(items):
    """scp as a list: each item one NQCHAR token, nothing split, else claims_malformed."""
    ok = all(item and all(c in NQCHAR for c in item) for item in items)
    got = claims_or_code(scp=items)
    assert (got.scopes == frozenset(items)) if ok else (got == "claims_malformed")


@FAST
@given(value=claim_text)
@example(value="  admin  ")
@example(value="用户-1")
@example(value="josé")
@example(value="user 1")
def test_subject_and_tenant_are_header_values_as_they_are(value):
    """sub and the tenant claim: kept byte for byte when sendable as they are, else claims_malformed."""
    for name in ("sub", "tenant"):
        got = claims_or_code(**{name: value})
        if not reference_header_value(value):
            assert got == "claims_malformed"
            continue
        kept = got.subject if name == "sub" else got.tenant
        assert kept == value
        # What both doors then send is the same bytes, and HTTP's trimming changes nothing.
        assert kept.encode("latin-1") == kept.encode("utf-8")
        assert kept.strip(" \t") == kept


# -- request: path, host, bearer -------------------------------------------------------

_UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"


class InvalidPathError(Exception):
    """The reference refuses the path."""


def reference_normalize(raw: str) -> str:
    """Decode unreserved escapes, drop segment parameters, merge slashes, RFC 3986 5.2.4
    remove_dot_segments (no climbing)."""
    path = re.split(r"[?#]", raw, maxsplit=1)[0]
    if not path.startswith("/") or len(path) > 8192:
        raise InvalidPathError
    if any(c == "\\" or ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in path):
        raise InvalidPathError

    def decode(match: re.Match[str]) -> str:
        code = match.group(0)[1:]
        if not re.fullmatch(r"[0-9A-Fa-f]{2}", code):
            raise InvalidPathError
        value = int(code, 16)
        if chr(value) in _UNRESERVED:
            return chr(value)
        if value in (0x2F, 0x5C, 0x3B) or value < 0x20 or value == 0x7F:
            raise InvalidPathError
        return "%" + code.upper()

    path = re.sub(r"%.{0,2}", decode, path, flags=re.DOTALL)
    path = re.sub(r";[^/]*", "", path)  # as a Servlet container does: "/..;x/" is "/../"
    path = re.sub(r"/+", "/", path)
    out: list[str] = []  # segments, each with its leading "/"
    rest = path
    while rest:
        if rest.startswith(("/./", "/../")) or rest in ("/.", "/.."):
            climbing = rest.startswith("/..")
            rest = "/" + rest[4 if rest.startswith("/../") else 3 if rest.startswith("/./") else len(rest) :]
            if climbing:
                if not out:
                    raise InvalidPathError
                out.pop()
        else:
            end = rest.find("/", 1)
            end = len(rest) if end == -1 else end
            out.append(rest[:end])
            rest = rest[end:]
    return "".join(out) or "/"


PATH_PIECES = st.sampled_from(
    ["/", "//", "/.", "/..", ".", "..", "a", "B9", "-", "~", "_", "%2e", "%2E", "%2f", "%5C", "%00", "%41",
     "%7e", "%3a", "%3A", "%25", "%c3%a9", "%", "%4", "%zz", "%1f", "%7F", "%80", "?", "#", "?a/../..", "\\",
     "\x00", "\x1f", "\x7f", "\x85", " ", "é", ";", ":", "@", "+", "*", "(", "\u2028", "..;", ";x=1", "%3b", "%3B"]
)  # fmt: skip
raw_paths = st.one_of(
    st.lists(PATH_PIECES, max_size=14).map("".join),
    st.lists(PATH_PIECES, max_size=14).map(lambda p: "/" + "".join(p)),
    st.text(max_size=40),
)


@FAST
@given(raw=raw_paths)
@example(raw="/a/%2e%2E/%2e/b/")
@example(raw="/a/b/..")
@example(raw="/a//..//../b")
@example(raw="/" + "a" * 8192)
def test_normalize_path_matches_the_reference(raw):
    """normalize_path == the RFC 3986 reference, path_invalid exactly where the reference refuses."""
    try:
        expected: str | None = reference_normalize(raw)
    except InvalidPathError:
        expected = None
    try:
        got: str | None = normalize_path(raw)
    except AuthzError as exc:
        got = None if exc.code == "path_invalid" else f"unexpected code {exc.code}"
    assert got == expected


@FAST
@given(raw=raw_paths)
def test_normalize_path_is_idempotent_and_safe(raw):
    """A normalized path normalizes to itself and holds no dot segment, '//', ';', escape of / \\ ; NUL, control."""
    try:
        path = normalize_path(raw)
    except AuthzError:
        return
    assert normalize_path(path) == path
    assert path.startswith("/")
    assert "//" not in path
    assert not {".", ".."} & set(path.split("/"))
    assert not re.search(r"%(2f|5c|00|3b|[01][0-9a-f]|7f)", path, re.IGNORECASE)
    assert ";" not in path  # parameters removed: "..;" can never hide a dot segment
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in path)


segment_text = st.text(_UNRESERVED.replace(".", ""), min_size=1, max_size=6)


@FAST
@given(
    segments=st.lists(segment_text, min_size=1, max_size=6),
    data=st.data(),
)
def test_path_equivalences(segments, data):
    """Encoded unreserved characters, './', 'x/../' and repeated slashes do not change the result."""
    plain = "/" + "/".join(segments)
    expected = normalize_path(plain)
    assert expected == plain
    encoded = "".join(
        (f"%{ord(c):02x}" if data.draw(st.booleans()) else f"%{ord(c):02X}")
        if data.draw(st.booleans())
        else c
        for c in plain
    )
    assert normalize_path(encoded.replace("%2f", "/").replace("%2F", "/")) == expected
    index = data.draw(st.integers(0, len(segments) - 1))
    detour = data.draw(st.sampled_from(["./", "x/../", ".//", "%2e/", "y/%2E%2e/"]))
    with_detour = (
        "/" + "/".join(segments[:index]) + ("/" if index else "") + detour + "/".join(segments[index:])
    )
    assert normalize_path(with_detour) == expected
    assert normalize_path(plain.replace("/", "//")) == expected
    assert normalize_path(plain + "?q=/../x#f") == expected


def reference_host(host: str) -> str:
    """Lower case; an IPv6 literal up to its bracket; else no port, no whitespace around the
    name (also before the port: "api :443"), and no single trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.index("]") + 1] if "]" in host else host
    if host.count(":") == 1:
        host = host.partition(":")[0].strip()
    return host[:-1] if re.search(r"[^.]\.$", host) or host == "." else host


host_pieces = st.one_of(
    st.lists(
        st.sampled_from(["api", ".", "acme", "test", ":", "443", "[", "]", "::1", "A", "É", " ", "*"]),
        max_size=8,
    ).map("".join),
    st.text(max_size=20),
)


# Whitespace inside a host (before its port) is covered by the regression test below.
hosts = host_pieces.filter(lambda host: not any(c.isspace() for c in host.strip()))


@FAST
@given(host=host_pieces)
@example(host="API.Acme.Test.:8443")
@example(host="[::1]:9001")
@example(host="a..")
def test_normalize_host_matches_the_reference(host):
    """Lower case, no port, no trailing dot: the reference agrees on any host string."""
    normal = normalize_host(host)
    assert normal == reference_host(host)
    assert normal == normal.lower()


@FAST
@given(host=hosts)
def test_normalize_host_is_idempotent(host):
    """A normalized host normalizes to itself (hosts without inner whitespace)."""
    normal = normalize_host(host)
    assert normalize_host(normal) == normal


@pytest.mark.parametrize("host", ["0 :", "api.acme.test :443", "api.acme.test. :443"])
def test_normalize_host_idempotent_with_space_before_port(host):
    """Regression (found by test_normalize_host_is_idempotent): normalize(normalize(h)) == normalize(h)."""
    normal = normalize_host(host)
    assert normalize_host(normal) == normal


def authz_request(*values: str) -> AuthzRequest:
    headers = MappingProxyType({"authorization": values} if values else {})
    return AuthzRequest("GET", "/", "h", "https", headers, MappingProxyType({}), "", "")


b64token = st.from_regex(r"[A-Za-z0-9\-._~+/]+=*", fullmatch=True)


@FAST
@given(
    token=b64token,
    scheme=st.sampled_from(["Bearer", "bearer", "BEARER", "bEaReR"]),
    before=st.sampled_from(["", " ", "  "]),
    between=st.sampled_from([" ", "   "]),
    after=st.sampled_from(["", " ", "  "]),
)
def test_bearer_token_round_trip(token, scheme, before, between, after):
    """'Bearer <token>' with any case and spacing yields exactly the token."""
    assert bearer_token(authz_request(f"{before}{scheme}{between}{token}{after}")) == token


@FAST
@given(values=st.lists(st.text(max_size=30) | b64token.map(lambda t: "Bearer " + t), max_size=3))
@example(values=["Bearer a b"])
@example(values=["Bearer"])
@example(values=["Bearer a", "Bearer a"])
@example(values=["Basic dXNlcg=="])
@example(values=["Bearer\ta"])
def test_bearer_token_any_header(values):
    """Any header values: None, the one token the value holds, or authorization_malformed."""
    try:
        token = bearer_token(authz_request(*values))
    except AuthzError as exc:
        token = "!" + exc.code  # no token starts with "!"
    if token is not None and token.startswith("!"):
        assert token == "!authorization_malformed"
        return
    if token is None:
        return
    assert len(values) == 1
    assert re.fullmatch(r"[A-Za-z0-9\-._~+/]+=*", token)
    scheme, _, rest = values[0].strip().partition(" ")
    assert scheme.lower() == "bearer"
    assert rest.strip(" ") == token


# -- path patterns -------------------------------------------------------------------

LITERALS = ["orders", "admin", "a", "x.y", "a+b", "(x)", "[z]", "$", "^", "a|b", "%41", "é", "~u"]
pattern_segments = st.lists(st.sampled_from([*LITERALS, "*"]), max_size=4)


def reference_match(pattern: str, path: str) -> bool:
    """Segment by segment: '*' one non-empty segment, a final '**' any rest (none included)."""
    wanted, got = pattern.split("/")[1:], path.split("/")[1:]
    if wanted[-1] == "**":
        wanted = wanted[:-1]
        got = got[: len(wanted)] if len(got) >= len(wanted) else [*got, "/"]  # "/": matches no segment
    return len(wanted) == len(got) and all(_segment_match(w, g) for w, g in zip(wanted, got, strict=True))


def _segment_match(wanted: str, got: str) -> bool:
    return bool(got) if wanted == "*" else wanted == got


@st.composite
def patterns(draw: st.DrawFn) -> str:
    segments = draw(pattern_segments)
    tail = draw(st.sampled_from(["", "/**", "/"]))
    if not segments:
        return "/**" if tail == "/**" else "/"
    return "/" + "/".join(segments) + tail


@st.composite
def paths_for(draw: st.DrawFn, pattern: str) -> str:
    """Paths near the pattern: its literals, other words, extra and missing segments."""
    words = [s for s in pattern.split("/") if s not in ("*", "**", "")]
    segments = draw(
        st.lists(st.sampled_from(words or ["a"]) | st.sampled_from([*LITERALS, "zz", "ordersx"]), max_size=6)
    )
    return "/" + "/".join(segments) + draw(st.sampled_from(["", "/"]))


@FAST
@given(
    pattern=patterns(), data=st.data(), methods=st.frozensets(st.sampled_from(["GET", "POST"]), max_size=2)
)
def test_compiled_patterns_match_like_the_reference(pattern, data, methods):
    """compile_path + Rule.matches agree with the segment reference on paths made near the pattern."""
    compiled = compile_path(pattern)
    rule = Rule("r", methods, (compiled,), False, frozenset(), frozenset(), {})
    candidates = ["/", pattern.replace("**", "deep/er").replace("*", "one")]
    candidates += [data.draw(paths_for(pattern)) for _ in range(8)]
    for candidate in candidates:
        path = normalize_path(candidate)
        expected = reference_match(pattern, path)
        assert bool(compiled.fullmatch(path)) == expected, (pattern, path)
        for method in ("GET", "POST", "DELETE"):
            assert rule.matches(method, path) == (expected and (not methods or method in methods))


@FAST
@given(pattern=st.text(max_size=20) | patterns().map(lambda p: p.replace("/", "//", 1)))
@example(pattern="/a/**/b")
@example(pattern="/a*")
@example(pattern="/../a")
def test_compile_path_raises_only_value_error(pattern):
    """Any pattern: a compiled regex or ValueError (configuration reports it with the line)."""
    try:
        compiled = compile_path(pattern)
    except ValueError:
        return
    assert isinstance(compiled, re.Pattern)
    assert pattern.startswith("/")
