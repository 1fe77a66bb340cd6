"""Reading a CheckRequest: path normalization, headers in both forms, bearer token, host."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from authz.config import SnapshotHolder
from authz.config.model import METHODS as RULE_METHODS
from authz.core.request import METHODS, AuthzRequest, bearer_token, normalize_host, normalize_path
from authz.errors import AuthzError
from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from authz.grpc.messages import from_check_request
from authz.grpc.servicer import check
from authz.http.wire import from_http
from testkit.dpop import INVALID_TOKEN_CHALLENGE
from testkit.world import NOW, check_request


def raw_check_request(
    headers: list[tuple[str, bytes]],
    *,
    method: str = "GET",
    path: str = "/orders",
    host: str = "api.acme.test",
) -> CheckRequest:
    """A CheckRequest as Envoy sends it with encode_raw_headers: only ``header_map``, raw bytes."""
    message = CheckRequest()
    http = message.attributes.request.http
    http.method, http.path, http.host, http.scheme = method, path, host, "https"
    for key, raw in headers:
        entry = http.header_map.headers.add()
        entry.key = key
        entry.raw_value = raw
    return message


# -- path normalization -------------------------------------------------------

NORMALIZED = [
    ("/", "/"),
    ("/orders", "/orders"),
    ("/orders/", "/orders/"),
    ("/orders/../admin", "/admin"),
    ("/orders/./1", "/orders/1"),
    ("//admin", "/admin"),
    ("/a//b///c", "/a/b/c"),
    ("/orders/%2e%2e/admin", "/admin"),
    ("/orders/%2E%2E/admin", "/admin"),
    ("/orders/.%2e/admin", "/admin"),
    ("/a/%2e/b", "/a/b"),
    ("/a/b/..", "/a/"),
    ("/a/..", "/"),
    ("/.", "/"),
    ("/a/.", "/a/"),
    ("/orders?x=1", "/orders"),
    ("/orders?next=/../../admin", "/orders"),
    ("/orders#frag", "/orders"),
    ("/orders#/../x?y", "/orders"),
    ("/%7Euser", "/~user"),
    ("/%7euser", "/~user"),
    ("/%41%62%30%2D%5F", "/Ab0-_"),
    ("/a%3ab", "/a%3Ab"),
    ("/a%20b", "/a%20b"),
    ("/a%25b", "/a%25b"),
    ("/%c3%a9t%C3%A9", "/%C3%A9t%C3%A9"),
    ("/a%3F/b", "/a%3F/b"),
    ("/caf\u00e9/\u00a0", "/caf\u00e9/\u00a0"),
    # Segment parameters are removed before dot segments, as Servlet containers do
    # (whether a request may carry them at all is request.path_parameters).
    ("/orders;jsessionid=ABC", "/orders"),
    ("/healthz/..;/admin", "/admin"),
    ("/healthz/..;x=1/admin", "/admin"),
    ("/healthz;/../admin", "/admin"),
    ("/a;x/b;y=1;z/", "/a/b/"),
    ("/a/b/..;", "/a/"),
    ("/a/;x/b", "/a/b"),
    ("/a/.;x/b", "/a/b"),
    ("/orders;x?y=;z", "/orders"),
]


@pytest.mark.parametrize(("raw", "expected"), NORMALIZED)
def test_normalize_path(raw, expected):
    """A path is normalized before matching: query/fragment dropped, unreserved decoded, dots resolved."""
    assert normalize_path(raw) == expected


INVALID_PATHS = [
    pytest.param("/a%2Fb", id="encoded-slash-upper"),
    pytest.param("/a%2fb", id="encoded-slash-lower"),
    pytest.param("/orders/..%2fadmin", id="dotdot-encoded-slash"),
    pytest.param("/a%5Cb", id="encoded-backslash-upper"),
    pytest.param("/a%5cb", id="encoded-backslash-lower"),
    pytest.param("/a%00b", id="encoded-nul"),
    pytest.param("/a%01", id="encoded-control"),
    pytest.param("/a%1F", id="encoded-unit-separator"),
    pytest.param("/a%7F", id="encoded-del"),
    pytest.param("/a%0a", id="encoded-newline"),
    pytest.param("/a\x00b", id="raw-nul"),
    pytest.param("/a\x01", id="raw-control"),
    pytest.param("/a\tb", id="raw-tab"),
    pytest.param("/a\r\nb", id="raw-crlf"),
    pytest.param("/a\x7f", id="raw-del"),
    pytest.param("/a\x85b", id="raw-c1-nel"),
    pytest.param("/a\x9f", id="raw-c1-last"),
    pytest.param("/a\\b", id="raw-backslash"),
    pytest.param("/..\\admin", id="raw-backslash-dotdot"),
    pytest.param("/..", id="dotdot-root"),
    pytest.param("/../admin", id="dotdot-escapes"),
    pytest.param("/a/../../admin", id="dotdot-escapes-deep"),
    pytest.param("/%2e%2e/admin", id="encoded-dotdot-escapes"),
    pytest.param("/.%2E", id="mixed-dotdot-escapes"),
    pytest.param("/%zz", id="bad-escape-nonhex"),
    pytest.param("/%4", id="bad-escape-short"),
    pytest.param("/a%", id="bad-escape-trailing"),
    pytest.param("/a%g1", id="bad-escape-g"),
    pytest.param("", id="empty"),
    pytest.param("orders", id="relative"),
    pytest.param("*", id="asterisk-form"),
    pytest.param("?x=/", id="query-only"),
    pytest.param("/" + "a" * 8192, id="too-long"),
    pytest.param("/..;/admin", id="dotdot-parameters-escapes"),
    pytest.param("/a%3Bb", id="encoded-semicolon-upper"),
    pytest.param("/a%3bb", id="encoded-semicolon-lower"),
    pytest.param("/healthz/..%3B/admin", id="dotdot-encoded-semicolon"),
]


@pytest.mark.parametrize("raw", INVALID_PATHS)
def test_normalize_path_rejects_unsafe(raw):
    """A path that cannot be normalized safely raises path_invalid."""
    with pytest.raises(AuthzError) as info:
        normalize_path(raw)
    assert info.value.code == "path_invalid"


PATH_PIECES = st.sampled_from(
    ["/", "//", ".", "..", "/./", "/../", "a", "Z9", "-", "~", "%2e", "%2E", "%2f", "%5c", "%00", "%41",
     "%7e", "%3a", "%25", "%c3", "%", "%4", "%zz", "?", "#", "\\", "\x00", "\x1f", "\x7f", " ", "é", ";"]
)  # fmt: skip


@given(st.one_of(st.lists(PATH_PIECES, max_size=12).map("".join), st.text(max_size=40)))
@example("/a/./b/../../c")
@example("/a/%2e%2E/%2e/b/")
def test_normalize_path_property(raw):
    """Normalizing yields '/'-rooted paths without '//' or dot segments and is idempotent, or path_invalid."""
    try:
        path = normalize_path(raw)
    except AuthzError as exc:
        path, code = "", exc.code
    else:
        code = "ok"
    if code != "ok":
        assert code == "path_invalid"
        return
    assert path.startswith("/")
    assert "//" not in path
    assert not {".", ".."} & set(path.split("/"))
    assert "?" not in path
    assert "#" not in path
    assert ";" not in path
    assert normalize_path(path) == path


@pytest.mark.parametrize(
    ("raw", "parameters"),
    [
        ("/orders", False),
        ("/orders?a=;", False),
        ("/orders;x", True),
        ("/healthz/..;/admin", True),
        ("/;", True),
    ],
)
def test_requests_record_path_parameters(raw, parameters):
    """Both doors' requests say whether the raw path had segment parameters (the decision refuses them)."""
    assert from_check_request(check_request(path=raw)).path_parameters is parameters
    http = from_http("GET", raw, {"host": ("api.acme.test",)})
    assert http.path_parameters is parameters
    assert http.path == from_check_request(check_request(path=raw)).path


# -- headers ------------------------------------------------------------------


def test_headers_from_plain_map():
    """Headers come from attributes.request.http.headers, keys lower-cased."""
    message = check_request(headers={"X-Custom": "v1", "accept": "*/*"})
    request = from_check_request(message)
    assert request.headers["x-custom"] == ("v1",)
    assert request.headers["accept"] == ("*/*",)
    assert request.method == "GET"
    assert request.path == "/orders"
    assert request.host == "api.acme.test"
    assert request.scheme == "https"
    assert request.request_id == "req-1"


def test_headers_from_header_map_raw_value():
    """With encode_raw_headers only header_map is filled, with bytes raw_value, one entry per duplicate."""
    message = raw_check_request(
        [
            ("x-custom", b"caf\xc3\xa9"),
            ("accept", b"text/html"),
            ("accept", b"application/json"),
            ("x-request-id", b"abc-123"),
        ]
    )
    request = from_check_request(message)
    assert request.headers["x-custom"] == ("café",)
    assert request.headers["accept"] == ("text/html", "application/json")
    assert request.request_id == "abc-123"


def test_header_map_value_used_without_raw_value():
    """A header_map entry that carries only the string value (older Envoy) is read too."""
    message = CheckRequest()
    message.attributes.request.http.path = "/"
    message.attributes.request.http.method = "GET"
    entry = message.attributes.request.http.header_map.headers.add()
    entry.key, entry.value = "x-custom", "plain"
    assert from_check_request(message).headers["x-custom"] == ("plain",)


def test_pseudo_headers_fill_missing_fields():
    """Method, path, host and scheme fall back to the pseudo-headers of header_map."""
    message = CheckRequest()
    for key, raw in [(":method", b"POST"), (":path", b"/a/../b?q"), (":authority", b"API.Acme.Test:8443"),
                     (":scheme", b"http")]:  # fmt: skip
        entry = message.attributes.request.http.header_map.headers.add()
        entry.key, entry.raw_value = key, raw
    request = from_check_request(message)
    assert (request.method, request.path, request.host, request.scheme) == (
        "POST",
        "/b",
        "api.acme.test",
        "http",
    )


def test_context_extensions_peer_and_request_id():
    """Context extensions and the peer principal are read; the http id is the request id fallback."""
    message = check_request(tenant="acme")
    del message.attributes.request.http.headers["x-request-id"]
    message.attributes.context_extensions["other"] = "x"
    message.attributes.source.principal = "spiffe://cluster.local/ns/a/sa/b"
    request = from_check_request(message)
    assert dict(request.context_extensions) == {"tenant": "acme", "other": "x"}
    assert request.peer_principal == "spiffe://cluster.local/ns/a/sa/b"
    assert request.request_id == "1234"


@pytest.mark.parametrize("value", ["a b", "x" * 129, "id\n", 'a"b'])
def test_unsafe_request_id_is_dropped(value):
    """An x-request-id that could not be echoed safely is replaced by an empty id."""
    assert from_check_request(check_request(request_id=value)).request_id == ""


# -- bearer token -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER abc", "abc"),
        ("BeArEr abc", "abc"),
        ("Bearer abc   ", "abc"),
        ("  Bearer abc", "abc"),
        ("Bearer   abc", "abc"),
        ("Bearer a.b-c_d~e+f/g==", "a.b-c_d~e+f/g=="),
        ("Basic dXNlcjpwYXNz", None),
        ("Digest username=x", None),
        ("Bearerabc", None),
        ("", None),
    ],
)
def test_bearer_token(value, token):
    """The bearer scheme is case-insensitive and carries exactly one token; other schemes are no token."""
    request = from_check_request(check_request(headers={"authorization": value}))
    assert bearer_token(request) == token


def test_no_authorization_header_is_no_token():
    """Without an authorization header there is no bearer token."""
    assert bearer_token(from_check_request(check_request())) is None


@pytest.mark.parametrize(
    "value",
    ["Bearer", "Bearer ", "Bearer a b", "Bearer a,Bearer b", "Bearer a, b", "Bearer a=b", "Bearer a\"b",
     "Bearer ab=cd", "bearer a;b"],
)  # fmt: skip
def test_bearer_token_malformed(value):
    """A bearer credential that is not exactly one token is authorization_malformed."""
    request = from_check_request(check_request(headers={"authorization": value}))
    with pytest.raises(AuthzError) as info:
        bearer_token(request)
    assert info.value.code == "authorization_malformed"


@pytest.mark.parametrize(
    "values",
    [[b"Bearer a", b"Bearer b"], [b"Bearer a", b"Bearer a"], [b"Basic x", b"Bearer a"]],
)
def test_two_authorization_headers_malformed(values):
    """Two authorization headers (header_map, one entry each) are authorization_malformed."""
    request = from_check_request(raw_check_request([("authorization", v) for v in values]))
    assert len(request.authorization) == 2
    with pytest.raises(AuthzError) as info:
        bearer_token(request)
    assert info.value.code == "authorization_malformed"


def test_two_authorization_headers_end_to_end(config):
    """Two authorization headers are a 401 UNAUTHENTICATED with an invalid_token challenge."""
    message = raw_check_request([("authorization", b"Bearer a"), ("authorization", b"Bearer b")])
    response = check(SnapshotHolder(config), message, lambda: NOW)
    assert response.status.code == 16
    assert response.denied_response.status.code == 401
    assert json.loads(response.denied_response.body)["reason"] == "authorization_malformed"
    headers = {h.header.key: h.header.value for h in response.denied_response.headers}
    assert headers["www-authenticate"] == INVALID_TOKEN_CHALLENGE


# -- host ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "host"),
    [
        ("api.acme.test", "api.acme.test"),
        ("API.Acme.TEST", "api.acme.test"),
        ("api.acme.test:8443", "api.acme.test"),
        ("api.acme.test.:8443", "api.acme.test"),  # fully qualified: the same name
        ("api.acme.test:65535", "api.acme.test"),
        ("api-2.acme.test:00080", "api-2.acme.test"),  # a port is 1 to 5 digits
        ("127.0.0.1:80", "127.0.0.1"),
        ("10.0.0.255", "10.0.0.255"),
        ("[::1]:8080", "[::1]"),
        ("[::1]", "[::1]"),
        ("[2001:DB8::1]:443", "[2001:db8::1]"),
        ("[::ffff:10.0.0.1]", "[::ffff:10.0.0.1]"),
        ("localhost", "localhost"),
        ("", ""),  # no Host at all: the tenant comes from the route, or the token
    ],
)
def test_normalize_host(raw, host):
    """Hosts are lower-cased without port; IPv6 literals keep their brackets."""
    assert normalize_host(raw) == host


@pytest.mark.parametrize(
    "raw",
    [
        "api.acme.test@api.globex.test",  # userinfo: URL parsers read api.globex.test
        "api.globex.test:1@x.acme.test",  # ... x.acme.test; the HTTP door read api.globex.test
        "api.globex.test:x@api.acme.test",
        "user:pass@api.acme.test",
        "api.acme.test:",  # an empty port
        "api.acme.test:0",
        "api.acme.test:65536",
        "api.acme.test:123456",
        "api.acme.test:8o",
        "api.acme.test:80:80",
        "api.acme.test:+80",
        " api.acme.test ",
        "api.acme.test\t",
        "api acme.test",
        "api.acme.test%2f",
        "api_acme.test",
        "api..acme.test",
        ".api.acme.test",
        "api.acme.test..",
        "-api.acme.test",
        "api-.acme.test",
        "a" * 64 + ".test",
        "api.acme.tést",
        "api.acme.test/x",
        "api.acme.test?x",
        "api.acme.test#x",
        "api.acme.test\\x",
        "*.acme.test",
        "::1",  # an IPv6 address without brackets
        "[::1",
        "[::1]x",
        "[::1]:",
        "[fe80::1%25eth0]",  # a zone id
        "[v1.x]",  # IPvFuture
        "[1.2.3.4]",
        "[]",
        "1.2.3",  # "ends in a number": an IPv4 to URL parsers, read differently by each
        "010.0.0.1",
        "1.2.3.256",
        "1.2.3.4.5",
        "0x7f.0.0.1",
        "api.0x7f",
        "api.123",
        "2130706433",
    ],
)
def test_a_host_that_is_not_an_authority_is_refused(raw):
    """RFC 9110 §7.2 (uri-host [":" port], no userinfo), strictly: anything else is host_invalid,
    whatever a tenant's hosts are (attack-19 A: the doors read "a:1@b" as different tenants)."""
    with pytest.raises(AuthzError) as caught:
        normalize_host(raw)
    assert caught.value.code == "host_invalid"


@pytest.mark.parametrize("door", ["grpc", "http"])
@pytest.mark.parametrize(
    ("method", "headers", "target", "reason"),
    [
        ("get", {}, "/orders", "request_malformed"),  # case-sensitive: not GET
        ("Get", {}, "/orders", "request_malformed"),
        ("FOO", {}, "/healthz", "request_malformed"),
        ("PROPFIND", {}, "/healthz", "request_malformed"),
        ("", {}, "/orders", "request_malformed"),
        ("GET", {"host": "api.acme.test@api.globex.test"}, "/orders", "host_invalid"),
        ("POST", {"x-http-method-override": "DELETE"}, "/orders", "method_override"),
        ("POST", {"x-http-method": "delete"}, "/orders", "method_override"),
        ("POST", {"x-method-override": ""}, "/orders", "method_override"),
        ("GET", {"x-http-method-override": "POST"}, "/orders", "method_override"),
        ("POST", {}, "/orders?_method=DELETE", "method_override"),
        ("POST", {}, "/orders?a=1&_method=put", "method_override"),
        ("POST", {}, "/orders?%5Fmethod=DELETE", "method_override"),
        ("POST", {}, "/orders?.method=DELETE", "method_override"),  # PHP: $_GET["_method"]
        ("POST", {}, "/orders?_METHOD=DELETE", "method_override"),
        ("POST", {}, "/orders;x?_method[]=DELETE", "method_override"),
        ("POST", {"x-http-method-override": "POST"}, "/orders", None),  # the same method: no override
        ("POST", {"x-http-method-override": " post "}, "/orders", None),
        ("POST", {}, "/orders?_method=POST", None),
        ("POST", {}, "/orders?my_method=DELETE&method=x", None),
        ("HEAD", {}, "/orders", None),
        ("PATCH", {}, "/orders", None),
    ],
)
def test_both_doors_read_methods_hosts_and_overrides_alike(door, method, headers, target, reason):
    """The one reading (core.request.make_request) of method, Host and method overrides, in both
    doors: exactly as sent, strictly, and refused when the upstream would run another method."""
    headers = {"host": "api.acme.test", **headers}

    def read() -> AuthzRequest:
        if door == "grpc":
            host = headers.pop("host")
            return from_check_request(check_request(method=method, path=target, host=host, headers=headers))
        return from_http(method, target, {k: (v,) for k, v in headers.items()})

    if reason is None:
        assert read().method == method
    else:
        with pytest.raises(AuthzError) as caught:
            read()
        assert caught.value.code == reason


def test_host_falls_back_to_authority():
    """Without http.host the :authority header gives the host."""
    message = check_request(host="API.ACME.TEST:443")
    message.attributes.request.http.host = ""
    assert from_check_request(message).host == "api.acme.test"


def test_the_methods_a_request_may_have_are_those_a_rule_can_name() -> None:
    """A request with another method is refused (request_malformed): one set for config and doors."""
    assert set(RULE_METHODS) == METHODS
