"""Property tests of request reading: paths (RFC 3986 remove_dot_segments after decoding unreserved
escapes), hosts and the bearer credential, against references written here.

Examples are bounded and derandomized (tests/conftest.py keeps them independent of the run).
"""

from __future__ import annotations

import ipaddress
import re
from types import MappingProxyType

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from authz.core.request import AuthzRequest, bearer_token, normalize_host, normalize_path
from authz.errors import AuthzError
from testkit.properties import FAST

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


_REF_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_REF_AUTHORITY = re.compile(
    rf"(?P<name>\[[0-9a-f:.]+\]|(?:{_REF_LABEL}\.)*{_REF_LABEL}\.?)(?::(?P<port>[0-9]{{1,5}}))?"
)


def reference_host(host: str) -> str | None:
    """RFC 9110 §7.2 ``uri-host [":" port]``, written as one regex plus ``ipaddress``: the normalized
    host, or None where it must be refused (a different reading from authz's own parser)."""
    if not host:
        return ""
    match = _REF_AUTHORITY.fullmatch(host.lower())
    if match is None or (match["port"] is not None and not 1 <= int(match["port"]) <= 65535):
        return None
    name = match["name"]
    if name.startswith("["):
        try:
            ipaddress.IPv6Address(name[1:-1])
        except ValueError:
            return None
        return name
    name = name.removesuffix(".")
    if len(name) > 253:
        return None
    if re.fullmatch(r"[0-9]+|0x[0-9a-f]*", name.rsplit(".", 1)[-1]):
        try:  # Python refuses leading zeros and other IPv4 spellings than the dotted quad
            return name if str(ipaddress.IPv4Address(name)) == name else None
        except ValueError:
            return None
    return name


def _host_or_refusal(host: str) -> str | None:
    try:
        return normalize_host(host)
    except AuthzError as exc:
        if exc.code != "host_invalid":
            raise
        return None


host_pieces = st.one_of(
    st.lists(
        st.sampled_from(
            ["api", ".", "acme", "test", ":", "443", "0", "65536", "[", "]", "::1", "A", "É", " ", "*", "@",
             "-", "_", "%", "1", "255", "010", "0x7f", "user", "v1"]
        ),
        max_size=8,
    ).map("".join),
    st.text(max_size=20),
)  # fmt: skip


@FAST
@given(host=host_pieces)
@example(host="API.Acme.Test.:8443")
@example(host="[::1]:9001")
@example(host="a..")
@example(host="api.globex.test:1@x.acme.test")
@example(host="1.2.3.04")
def test_normalize_host_matches_the_reference(host):
    """Lower case, no port, no trailing dot, or host_invalid: the reference agrees on any host string."""
    normal = _host_or_refusal(host)
    assert normal == reference_host(host)
    if normal is not None:
        assert normal == normal.lower()
        assert normalize_host(normal) == normal  # idempotent


names = st.from_regex(r"[a-z][a-z0-9]{0,8}(\.[a-z][a-z0-9]{0,8}){0,3}", fullmatch=True)


@FAST
@given(
    userinfo=st.text(min_size=0, max_size=10),
    name=names,
    port=st.one_of(st.none(), st.text(max_size=6)),
)
def test_userinfo_or_a_port_that_is_not_a_number_is_refused(userinfo, name, port):
    """Every authority with userinfo, or a port that is not a number 1-65535, is host_invalid (the
    tenant is never chosen by authz's own reading of an authority URL parsers read otherwise)."""
    with pytest.raises(AuthzError):
        normalize_host(f"{userinfo}@{name}")
    if port is not None and not (
        port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536
    ):
        with pytest.raises(AuthzError):
            normalize_host(f"{name}:{port}")
    else:
        assert normalize_host(name if port is None else f"{name}:{port}") == name


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
