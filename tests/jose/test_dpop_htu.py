"""The DPoP ``htu`` canonicalizer (authz.jose.htu): RFC 3986 §6.2.2-6.2.3 and the request's
own path rules, as a table and as properties."""

from __future__ import annotations

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from authz.core.request import normalize_host, normalize_target
from authz.errors import AuthzError
from authz.jose.htu import MAX_HTU_CHARS, canonical_htu, canonical_origin


@pytest.mark.parametrize(
    ("htu", "canonical"),
    [
        ("HTTPS://API.Acme.Test:443/orders", "https://api.acme.test/orders"),
        ("https://api.acme.test", "https://api.acme.test/"),
        ("https://api.acme.test:/a/./b/../c", "https://api.acme.test/a/c"),
        ("https://api.acme.test/%7eorders", "https://api.acme.test/~orders"),
        ("https://api.acme.test/%c3%a9", "https://api.acme.test/%C3%A9"),
        ("https://api.acme.test./orders", "https://api.acme.test/orders"),
        ("https://api.acme.test//orders", "https://api.acme.test/orders"),
        ("https://[::1]:8443/x", "https://[::1]:8443/x"),
        ("https://[::1]:443/x", "https://[::1]/x"),
        ("https://[2001:DB8::1]/x", "https://[2001:db8::1]/x"),
        ("https://api.acme.test/orders/", "https://api.acme.test/orders/"),
        ("http://api.acme.test:80/", "http://api.acme.test/"),
        ("http://api.acme.test:443/", "http://api.acme.test:443/"),
        ("https://api.acme.test:80/", "https://api.acme.test:80/"),
        ("https://api.acme.test:65535/", "https://api.acme.test:65535/"),
        ("https://resource.example.org/protectedresource", "https://resource.example.org/protectedresource"),
        ("https://api.acme.test/a/b/..", "https://api.acme.test/a/"),
        ("https://api.acme.test/a/%2e%2E/b", "https://api.acme.test/b"),
        ("https://api.acme.test/a:b@c!$&'()*+,=", "https://api.acme.test/a:b@c!$&'()*+,="),
        ("https://api.acme.test/%41%5a%30", "https://api.acme.test/AZ0"),
        ("https://api.acme.test/%21", "https://api.acme.test/%21"),  # a sub-delim stays encoded
        ("https://xn--bcher-kva.example/", "https://xn--bcher-kva.example/"),
        ("https://127.1/", "https://127.1/"),  # text, no IP interpretation
    ],
)
def test_canonical_forms(htu, canonical):
    assert canonical_htu(htu) == canonical
    assert canonical_htu(canonical) == canonical


@pytest.mark.parametrize(
    ("htu", "fragment"),
    [
        ("https://api.acme.test/orders?x=1", "query or fragment"),
        ("https://api.acme.test/orders?", "query or fragment"),
        ("https://api.acme.test/orders#f", "query or fragment"),
        ("https://user@api.acme.test/", "userinfo"),
        ("https://user:pw@api.acme.test/", "userinfo"),
        ("https://api.acme.test:0443/", "port"),
        ("https://api.acme.test:0/", "port"),
        ("https://api.acme.test:65536/", "port"),
        ("https://api.acme.test:4a/", "port"),
        ("https://api.acme.test:443:443/", "port"),
        ("https://[::1%25eth0]/", "IPv6 literal"),
        ("https://[::1/", "IPv6 literal"),
        ("https://[v1.fe]/", "IPv6 literal"),
        ("https://[1.2.3.4]/", "IPv6 literal"),
        ("https://[::1]x/", "after the host"),
        ("https://bücher.example/", "ASCII"),
        ("https://api.acme.test/a%2fb", "encoded slash"),
        ("https://api.acme.test/a%5Cb", "encoded slash"),
        ("https://api.acme.test/a%00b", "encoded slash"),
        ("https://api.acme.test/a%3bb", "encoded slash"),
        ("https://api.acme.test/a%0ab", "control"),
        ("https://api.acme.test/a%7fb", "control"),
        ("https://api.acme.test/a%zzb", "percent escape"),
        ("https://api.acme.test/a%4", "percent escape"),
        ("https://api.acme.test/../orders", "escapes the root"),
        ("https://api.acme.test/a b", "pchar"),
        ('https://api.acme.test/a"b', "pchar"),
        ("https://api.acme.test/a\\b", "pchar"),
        ("https://api.acme.test/a\nb", "pchar"),
        ("https://api.acme.test/a{b}", "pchar"),
        ("https://api.acme.test/a;v=1", "segment parameters"),
        ("ftp://api.acme.test/", "not http or https"),
        ("wss://api.acme.test/", "not http or https"),
        ("//api.acme.test/orders", "absolute"),
        ("/orders", "absolute"),
        ("https:/api.acme.test/", "absolute"),
        ("https://", "registered name"),
        ("https:///orders", "registered name"),
        ("https://:443/", "registered name"),
        ("https://./", "empty"),
        ("https://api%2eacme.test/", "registered name"),
        ("https://api acme/", "registered name"),
        ("", "absolute"),
        ("https://api.acme.test/" + "a" * MAX_HTU_CHARS, "bounded length"),
    ],
)
def test_invalid_htus(htu, fragment):
    with pytest.raises(AuthzError) as caught:
        canonical_htu(htu)
    assert caught.value.code == "dpop_proof_invalid"
    assert fragment in caught.value.detail, caught.value.detail


def test_not_a_string_is_invalid():
    with pytest.raises(AuthzError):
        canonical_htu(b"https://x/")  # type: ignore[arg-type]


def test_path_parameters_are_removed_when_allowed():
    assert canonical_htu("https://h/a;v=1/b;x", path_parameters=True) == "https://h/a/b"
    assert canonical_htu("https://h/healthz/..;/admin", path_parameters=True) == "https://h/admin"


@pytest.mark.parametrize(
    ("origin", "canonical"),
    [
        ("https://API.acme.test", "https://api.acme.test"),
        ("https://api.acme.test/", "https://api.acme.test"),
        ("https://api.acme.test:443", "https://api.acme.test"),
        ("http://api.acme.test:8080", "http://api.acme.test:8080"),
    ],
)
def test_canonical_origins(origin, canonical):
    assert canonical_origin(origin) == canonical


@pytest.mark.parametrize(
    "origin",
    ["https://api.acme.test/v1", "https://api.acme.test/?x", "api.acme.test", "https://u@h", "https://h/./"],
)
def test_invalid_origins(origin):
    with pytest.raises(ValueError):  # noqa: PT011 - the message goes into a config error
        canonical_origin(origin)


# --- properties ------------------------------------------------------------------------------

_UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
_PCHAR = _UNRESERVED + "!$&'()*+,=:@"
_segment = st.text(alphabet=_PCHAR, max_size=6) | st.sampled_from([".", "..", "", "%7E", "%41", "%c3", "%2e"])
_path = st.lists(_segment, max_size=6).map(lambda s: "/" + "/".join(s))
_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8)
_host = st.lists(_label, min_size=1, max_size=3).map(".".join)
_port = st.sampled_from(["", ":", ":443", ":80", ":8443", ":1"])
_scheme = st.sampled_from(["http", "https"])


def _canon_or_none(url: str) -> str | None:
    try:
        return canonical_htu(url)
    except AuthzError as exc:
        code, detail = exc.code, exc.detail
    assert code == "dpop_proof_invalid"
    assert detail
    return None


@settings(max_examples=500, deadline=None)
@given(scheme=_scheme, host=_host, port=_port, path=_path)
def test_canonical_form_is_a_fixed_point(scheme, host, port, path):
    """canon(canon(u)) == canon(u): the verifier's exact-string fast path relies on it."""
    first = _canon_or_none(f"{scheme}://{host}{port}{path}")
    if first is not None:
        assert canonical_htu(first) == first


def _vary_case(text: str, flips: list[bool]) -> str:
    return "".join(c.upper() if flips[i % len(flips)] else c for i, c in enumerate(text)) if flips else text


def _encode_some(path: str, picks: list[bool]) -> str:
    """Percent-encode some unreserved characters (either hex case): the same resource."""
    out = []
    for i, char in enumerate(path):
        if char in _UNRESERVED and picks and picks[i % len(picks)]:
            hex_pair = f"{ord(char):02X}"
            out.append("%" + (hex_pair.lower() if i % 2 else hex_pair))
        else:
            out.append(char)
    return "".join(out)


@settings(max_examples=500, deadline=None)
@given(
    scheme=_scheme,
    host=_host,
    path=st.lists(st.text(alphabet=_PCHAR, min_size=1, max_size=6), max_size=5).map(
        lambda s: "/" + "/".join(s)
    ),
    flips=st.lists(st.booleans(), max_size=5),
    picks=st.lists(st.booleans(), max_size=5),
    default_port=st.sampled_from(["", ":", ":DEFAULT"]),
    dots=st.booleans(),
    trailing_dot=st.booleans(),
)
def test_equal_resources_spelled_differently_have_one_form(
    scheme, host, path, flips, picks, default_port, dots, trailing_dot
):
    """Scheme and host case, default or empty port, unreserved escapes, dot segments, a trailing
    host dot: each spelling of one resource canonicalizes to the same string."""
    assume(".." not in path.split("/") and "." not in path.split("/"))
    plain = canonical_htu(f"{scheme}://{host}{path}")
    port = default_port.replace("DEFAULT", "443" if scheme == "https" else "80")
    spelled_path = _encode_some(path, picks)
    if dots:
        spelled_path = "/./x/.." + spelled_path
    spelled = f"{_vary_case(scheme, flips)}://{_vary_case(host, flips)}{'.' if trailing_dot else ''}{port}{spelled_path}"
    assert canonical_htu(spelled) == plain


@settings(max_examples=500, deadline=None)
@given(path=st.text(alphabet=_PCHAR + "%/;", max_size=40).map(lambda p: "/" + p))
@example(path="/a/%2e%2e/b")
@example(path="/a;x/../b")
@example(path="/.")
def test_path_rules_agree_with_the_request_normalization(path):
    """For every RFC 3986 path, the htu's path is what the request's normalize_target makes of
    it, or both refuse: a proof for a resource and the request for it compare equal."""
    for parameters in (False, True):
        try:
            ours = canonical_htu("https://h" + path, path_parameters=parameters)
        except AuthzError:
            ours = None
        try:
            theirs, had_parameters = normalize_target(path)
        except AuthzError:
            theirs = None
        else:
            if had_parameters and not parameters:
                theirs = None  # the decision refuses such a request unless configured
        assert ours == (None if theirs is None else "https://h" + theirs), (path, parameters)


@settings(max_examples=300, deadline=None)
@given(host=st.text(alphabet="abcXYZ019-.", min_size=1, max_size=12))
def test_host_rules_agree_with_normalize_host(host):
    """A host that canonicalizes is what normalize_host makes of the Host header, for every Host a
    request may have (normalize_host refuses more, host_invalid, before any proof is read)."""
    try:
        expected = normalize_host(host)
    except AuthzError:
        return
    result = _canon_or_none(f"https://{host}/")
    if result is not None:
        assert result == f"https://{expected}/"


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=80) | st.from_regex(r"https?://[^/?#]{0,20}(/[ -~]{0,30})?", fullmatch=True))
def test_any_text_is_canonical_or_dpop_proof_invalid(text):
    result = _canon_or_none(text)
    if result is not None:
        assert result.isascii()
        assert "?" not in result
        assert "#" not in result
        assert canonical_htu(result) == result
