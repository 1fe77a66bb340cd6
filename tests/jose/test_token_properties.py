"""Property tests of the token boundary and strict JSON: nothing but AuthzError (never token_invalid) for
any input, only our issuers' tokens accepted byte for byte, JSON round-trips and an exact depth bound.

Examples are bounded and derandomized (tests/conftest.py keeps them independent of the run).
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from authz.config import Config, SnapshotHolder
from authz.core.request import normalize_path
from authz.errors import AuthzError
from authz.grpc.servicer import check
from authz.jose.encoding import parse_json_object
from authz.jose.jwe import DecryptedToken
from authz.jose.nested import TokenKeys, decrypt_token, open_token
from testkit.properties import ALPHABET, FAST, TOKENS, b64, json_values, unb64
from testkit.world import NOW, World, check_request, token_outcome

# A few tokens of the matrix, one per kind of key management, content encryption and signature.
SAMPLE = (
    ("dir", "A256GCM", "ES256"),
    ("RSA-OAEP-256", "A128CBC-HS256", "EdDSA"),
    ("ECDH-ES+A256KW", "A256GCM", "RS256"),
    ("A128GCMKW", "A128CBC-HS256", "PS256"),
    ("ECDH-ES", "A256GCM", "ES256"),
    ("A256KW", "A256GCM", "ES256"),
)


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
