"""The memo's reading from the wire (authz/grpc/_wire.c) held to protobuf and to ``read_repeat``.

The one rule: ``read_wire(data)`` is either None (the door parses the message and reads it with
``read_repeat``) or exactly ``read_repeat(CheckRequest.FromString(data))``, for a message protobuf
parses. Checked on every form Envoy sends, on messages merged or repeated in the ways protobuf
reads its own way, on encodings protobuf rejects, and on 20,000 mutants. The canonical forms must
be read (or the fast path is never used).
"""

from __future__ import annotations

import random
import shutil
import sysconfig

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz.grpc import wire
from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from authz.grpc._proto.google.protobuf.struct_pb2 import Struct
from authz.grpc.messages import parse
from authz.grpc.repeat import KEPT_AUTHORIZATION, read_repeat
from testkit import protowire
from testkit.world import check_request
from tests.grpc.test_grpc_memo import raw_request

TOKEN = "eyJhbGciOiJSU0EtT0FFUC0yNTYiLCJlbmMiOiJBMjU2R0NNIn0." + "a" * 600
TRACEPARENT = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"


def test_the_extension_is_built_wherever_it_can_be() -> None:
    """An install with a C compiler builds it (setup.py marks it optional for those without one):
    CI, which has one, cannot lose the fast path without this failing."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}) here: the door reads every request through protobuf")
    assert wire.read_wire is not None


pytestmark_built = pytest.mark.skipif(wire.read_wire is None, reason="the C extension is not built")


def _read(data: bytes) -> object:
    assert wire.read_wire is not None
    return wire.read_wire(data)


def _holds(data: bytes) -> object:
    """The wire reading of ``data``, after checking the rule; "unparsed" if protobuf rejects it."""
    from authz.grpc import _wire  # type: ignore[attr-defined]

    got = _read(data)
    parsed = parse(data)
    if not isinstance(parsed, CheckRequest):
        assert got is None, data
        assert not _wire.valid(data), data
        return "unparsed"
    if got is not None:
        assert got == read_repeat(parsed), data
    return got


def _envoy_forms() -> list[CheckRequest]:
    """Requests as Envoy sends them: header_map with raw values (encode_raw_headers) and the headers map."""
    found = [
        raw_request(TOKEN),
        raw_request(TOKEN, path="/orders/../admin?x=1", host="other.test", rid=""),
        raw_request(
            TOKEN, extra=[("x-forwarded-client-cert", "Hash=ab"), ("x-forwarded-client-cert", "Hash=cd")]
        ),
        raw_request(TOKEN, extra=[("traceparent", TRACEPARENT), ("tracestate", "a=b"), ("b3", "x")]),
        raw_request(TOKEN, extra=[("x-long", "v" * 3000)]),
        raw_request(TOKEN, extra=[("x-request-id", "second")]),
        raw_request(TOKEN, rid="not a plain id"),
        raw_request("x" * (KEPT_AUTHORIZATION - len("Bearer "))),
        check_request(token=TOKEN),
        check_request(token=TOKEN, tenant="acme", headers={"traceparent": TRACEPARENT}),
        check_request(token=TOKEN, headers={"x-forwarded-client-cert": "By=spiffe://a;Hash=ab"}),
        check_request(token=TOKEN, request_id="", headers={"content-type": "application/json; charset=ü"}),
    ]
    routed = raw_request(TOKEN)
    routed.attributes.context_extensions.update({"tenant": "acme", "route": "orders", "é": "1", "": "empty"})
    found.append(routed)
    peer = raw_request(TOKEN)
    peer.attributes.source.principal = "spiffe://acme/ns/a/sa/b"
    peer.attributes.source.certificate = "-----BEGIN%20CERTIFICATE-----%0A..."
    peer.attributes.source.address.socket_address.address = "10.0.0.1"
    peer.attributes.source.address.socket_address.port_value = 41000
    peer.attributes.destination.labels["app"] = "orders"
    peer.attributes.request.time.seconds = 1_700_000_000
    peer.attributes.request.http.size = 12
    peer.attributes.request.http.body = "{}"
    peer.attributes.request.http.raw_body = b"\xff\x00"
    peer.attributes.tls_session.sni = "api.acme.test"
    metadata = Struct()
    metadata.update({"a": {"b": [1, "two", None, True, {"c": 3.5}]}})
    peer.attributes.metadata_context.filter_metadata["envoy.filters.http.rbac"].CopyFrom(metadata)
    peer.attributes.metadata_context.typed_filter_metadata["x"].type_url = "type.googleapis.com/x"
    found.append(peer)
    value_form = raw_request(TOKEN)
    entry = value_form.attributes.request.http.header_map.headers.add()
    entry.key, entry.value = "x-request-id", "from-value"
    found.append(value_form)
    replaced = raw_request(TOKEN, extra=[("x-forwarded-client-cert", "Hash=ab")])
    replaced.attributes.request.http.header_map.headers[
        -1
    ].raw_value = b"caf\xe9,\xf0\x9f"  # decoded with U+FFFD
    found.append(replaced)
    return found


def _declined() -> list[CheckRequest]:
    """Requests read_repeat reads or refuses, which the wire reading leaves to it."""
    found = [
        raw_request(None),
        raw_request(TOKEN, extra=[("dpop", "x")]),
        raw_request(TOKEN, extra=[("x-http-method-override", "DELETE")]),
        raw_request(TOKEN, extra=[("x_authz_subject", "eve")]),
        raw_request(TOKEN, extra=[("x.authz-tenant", "eve")]),
        raw_request(TOKEN, extra=[("X-Upper", "1")]),
        raw_request(TOKEN, extra=[("x-caf\u00e9", "1")]),
        raw_request(TOKEN, extra=[("authorization", "Bearer other")]),
        raw_request("x" * (KEPT_AUTHORIZATION + 1)),  # kept as a digest: read_repeat makes it
        raw_request(None, extra=[("authorization", "DPoP " + TOKEN)]),
        raw_request(None, extra=[("authorization", "Basic YTpi")]),
        check_request(token=TOKEN, headers={"x-http-method": "PUT"}),
        check_request(token=None),
    ]
    both = raw_request(TOKEN)
    both.attributes.request.http.headers["x-a"] = "1"  # both forms: Envoy sends one
    found.append(both)
    for field in ("method", "path", "host", "scheme"):
        empty = raw_request(TOKEN)
        setattr(empty.attributes.request.http, field, "")
        found.append(empty)
    long_rest = raw_request(TOKEN)
    long_rest.attributes.source.certificate = "c" * 5000
    found.append(long_rest)
    return found


@pytestmark_built
@pytest.mark.parametrize("index", range(len(_envoy_forms())))
def test_every_form_envoy_sends_is_read_as_read_repeat_reads_it(index: int) -> None:
    data = _envoy_forms()[index].SerializeToString()
    assert read_repeat(CheckRequest.FromString(data)) is not None
    assert _holds(data) is not None  # read from the wire: the fast path is used


@pytestmark_built
@pytest.mark.parametrize("index", range(len(_declined())))
def test_what_read_repeat_refuses_or_digests_is_left_to_it(index: int) -> None:
    assert _holds(_declined()[index].SerializeToString()) is None


# A field as the wire has it: tag bytes, then the payload.
def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire_type) + (_varint(len(payload)) + payload if wire_type == 2 else payload)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _inside(*, http: bytes = b"", attributes: bytes = b"", top: bytes = b"", plain: bool = False) -> bytes:
    """A canonical routed request (header_map, or the headers map if ``plain``), with fields added
    at the end of its attributes.request.http, of its attributes and of the message itself: in
    the same messages, not merged from another copy."""
    message = check_request(token=TOKEN, tenant="acme") if plain else raw_request(TOKEN)
    message.attributes.context_extensions["tenant"] = "acme"
    message.attributes.source.principal = "spiffe://acme/a"
    message.attributes.source.certificate = "-----BEGIN%20CERTIFICATE-----"
    rest = CheckRequest()
    rest.CopyFrom(message)
    rest.attributes.ClearField("request")
    http_bytes = message.attributes.request.http.SerializeToString() + http
    return (
        _field(
            1, 2, rest.attributes.SerializeToString() + attributes + _field(4, 2, _field(2, 2, http_bytes))
        )
        + top
    )


def _entry(key: bytes, value: bytes, number: int = 3) -> bytes:
    """A headers map entry (field 3 of http) or, with number 13, a header_map of one raw entry."""
    if number == 3:
        return _field(3, 2, _field(1, 2, key) + _field(2, 2, value))
    return _field(13, 2, _field(1, 2, _field(1, 2, key) + _field(3, 2, value)))


def test_the_builder_makes_a_request_that_is_read() -> None:
    for plain in (False, True):
        assert read_repeat(CheckRequest.FromString(_inside(plain=plain))) is not None


TWICE = {
    "path": _field(4, 2, b"/admin"),
    "host": _field(5, 2, b"other.test"),
    "method": _field(2, 2, b"DELETE"),
    "scheme": _field(6, 2, b"http"),
    "id": _field(1, 2, b"other"),
    "header_map": _entry(b"x-a", b"1", 13),
}
TWICE_IN_ATTRIBUTES = {
    "source": _field(1, 2, _field(4, 2, b"spiffe://other")),
    "request": _field(4, 2, _field(2, 2, _field(4, 2, b"/admin"))),
    "extension key": _field(10, 2, _field(1, 2, b"tenant") + _field(2, 2, b"other")),
}


@pytestmark_built
@pytest.mark.parametrize("name", [*TWICE, *TWICE_IN_ATTRIBUTES, "attributes", "principal", "certificate"])
def test_a_field_it_reads_sent_twice_is_left_to_protobuf(name: str) -> None:
    """Protobuf keeps a singular field's last value and merges a message sent twice: the wire
    reading declines wherever that could change what it reads."""
    if name in TWICE:
        data = _inside(http=TWICE[name])
    elif name in TWICE_IN_ATTRIBUTES:
        data = _inside(attributes=TWICE_IN_ATTRIBUTES[name])
    elif name == "attributes":
        data = _inside(top=_field(1, 2, _field(2, 2, _field(4, 2, b"other"))))
    else:  # a field of source twice, inside the one source
        message = CheckRequest.FromString(_inside())
        source = message.attributes.source.SerializeToString()
        source += _field(4 if name == "principal" else 5, 2, b"other")
        message.attributes.ClearField("source")
        data = _field(1, 2, _field(1, 2, source) + message.attributes.SerializeToString())
    assert _holds(data) is None, name


@pytestmark_built
@pytest.mark.parametrize("name", ["authorization", "x-request-id", ":path"])
def test_a_name_sent_twice_in_the_headers_map_is_left_to_protobuf(name: str) -> None:
    """The headers map keeps a name's last entry: declined, whichever name."""
    data = _inside(plain=True, http=_entry(name.encode(), b"Bearer other"))
    assert _holds(data) is None
    assert _holds(_inside(plain=True, http=_entry(b"x-b", b"1"))) is not None  # another name: read


@pytestmark_built
@pytest.mark.parametrize("where", ["headers map", "context extensions"])
def test_a_map_entry_with_another_field_is_left_to_protobuf(where: str) -> None:
    """Protobuf leaves a map entry with an unknown field out of the map (as an unknown field of
    the message that holds it): the wire reading, which would count it in, declines."""
    entry = _field(1, 2, b"x-b" if where == "headers map" else b"route") + _field(2, 2, b"1")
    data = _inside(plain=True, http=_field(3, 2, entry + _field(4, 2, b"unknown")))
    if where == "context extensions":
        data = _inside(attributes=_field(10, 2, entry + _field(4, 2, b"unknown")))
    parsed = parse(data)
    assert isinstance(parsed, CheckRequest)
    assert "x-b" not in parsed.attributes.request.http.headers
    assert "route" not in parsed.attributes.context_extensions  # out of the map indeed
    assert _holds(data) is None


def _struct_nested(depth: int) -> CheckRequest:
    message = raw_request(TOKEN)
    value: dict[str, object] = {"leaf": 1}
    for _ in range(depth):
        value = {"n": value}
    metadata = Struct()
    metadata.update(value)
    message.attributes.metadata_context.filter_metadata["deep"].CopyFrom(metadata)
    return message


@pytestmark_built
def test_nesting_deeper_than_its_bound_is_left_to_protobuf() -> None:
    """Protobuf parses up to 100 levels; the wire reading declines past 64 (a Struct nested 20
    times, in metadata, is 66 levels deep)."""
    assert _holds(_struct_nested(19).SerializeToString()) is not None
    assert _holds(_struct_nested(20).SerializeToString()) is None
    assert _holds(_struct_nested(40).SerializeToString()) == "unparsed"


METADATA = 11  # attributes.metadata_context: Metadata{filter_metadata: map<string, Struct>}


@pytestmark_built
@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("invalid UTF-8 in a string it reads", _inside(http=_field(2, 2, b"G\xffT"))),
        ("invalid UTF-8 in a string it never reads", _inside(http=_field(8, 2, b"\xed\xa0\x80"))),
        ("invalid UTF-8 in a map key", _inside(plain=True, http=_entry(b"x-\xff", b"1"))),
        ("invalid UTF-8 in a map value", _inside(plain=True, http=_entry(b"x-b", b"\xf4\x90\x80\x80"))),
        ("invalid UTF-8 deep in metadata", _inside(attributes=_field(METADATA, 2, _field(1, 2, _field(1, 2, b"k") +
                                                   _field(2, 2, _field(1, 2, _field(1, 2, b"\xc0\xaf"))))))),
        ("an overlong NUL in a header name", _inside(http=_entry(b"\xc0\x80", b"1", 13))),
        ("a length past the end", _inside(top=b"\x4a\x05ab")),
        ("a group", _inside(http=_field(20, 3, b""))),
        ("field number 0", _inside(http=b"\x02\x00")),
        ("wire type 7", _inside(attributes=_field(20, 7, b""))),
        ("a varint of eleven bytes", _inside(http=_field(9, 0, b"\xff" * 10 + b"\x01"))),
        ("a message cut short", _inside(top=_field(1, 2, b"\x0a\x05ab"))),
    ],
)  # fmt: skip
def test_what_protobuf_rejects_is_never_read(name: str, data: bytes) -> None:
    assert _holds(data) == "unparsed", name


@pytestmark_built
@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("a known number field as bytes", _inside(http=_field(9, 2, b"12"))),
        ("a known string field as a varint", _inside(http=_field(7, 0, b"\x01"))),
        ("a known message field as fixed64", _inside(attributes=_field(2, 1, bytes(8)))),
        ("a tag not in its shortest form", _inside(http=b"\xca\x80\x00" + _varint(0))),
        ("a varint not in its shortest form", _inside(http=_field(9, 0, b"\x81\x00"))),
    ],
)  # fmt: skip
def test_what_protobuf_reads_its_own_way_is_left_to_it(name: str, data: bytes) -> None:
    assert isinstance(parse(data), CheckRequest), name
    assert _holds(data) is None, name


@pytestmark_built
def test_unknown_fields_are_kept_and_the_request_still_read() -> None:
    """A newer Envoy may send fields this build does not know: protobuf keeps them, unread."""
    message = raw_request(TOKEN)
    http = message.attributes.request.http
    unknown = (
        _field(99, 2, b"\xff\xfe")
        + _field(98, 0, b"\x05")
        + _field(97, 1, bytes(8))
        + _field(96, 5, bytes(4))
    )
    http.ParseFromString(http.SerializeToString() + unknown)  # kept where they were sent, and sent again
    data = message.SerializeToString() + _field(95, 2, b"top")
    assert unknown in data
    assert _holds(data) is not None


@pytestmark_built
def test_mutated_messages_are_never_read_differently() -> None:
    """Bytes set, cut, inserted or truncated: whatever protobuf parses, the wire reading gives
    read_repeat's reading or none; whatever it rejects, none."""
    rng = random.Random(20261205)  # noqa: S311 - a reproducible sequence of mutants, not a secret
    # deterministic: the same maps' order in every run, so that a failing mutant is found again
    bases = [m.SerializeToString(deterministic=True) for m in _envoy_forms() + _declined()]
    outcomes = {"read": 0, "unparsed": 0, "declined": 0}
    for _ in range(20_000):
        data = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, 3)):
            kind, at = rng.random(), rng.randrange(len(data))
            if kind < 0.5:
                data[at] = rng.randrange(256)
            elif kind < 0.65:
                del data[at : at + rng.randint(1, 8)]
            elif kind < 0.8:
                data[at:at] = rng.randbytes(rng.randint(1, 4))
            elif kind < 0.9:
                data = data[:at]
            else:  # a field of another message appended: merges and repeats
                data += rng.choice(bases)[: rng.randint(2, 64)]
            data = data or bytearray(b"\n\x00")
        got = _holds(bytes(data))
        outcomes["unparsed" if got == "unparsed" else "declined" if got is None else "read"] += 1
    # Every outcome is common: the comparison is not empty.
    assert min(outcomes.values()) > 1000, outcomes


@pytestmark_built
def test_wire_level_mutants_are_never_read_differently() -> None:
    """Mutants made at the wire level (testkit.protowire): a field or a message sent twice, a
    message split into two occurrences (protobuf merges them), map entries with another field or
    their key twice, fields reordered or moved into other messages, known fields with another
    wire type, tags and lengths not in their shortest form, groups, names and values that the
    reading treats specially. Each kind of mutation is compared on messages that are read."""
    rng = random.Random(20261206)  # noqa: S311 - a reproducible sequence of mutants, not a secret
    bases = [m.SerializeToString(deterministic=True) for m in _envoy_forms() + _declined()]
    trees = [protowire.decode(data, CheckRequest.DESCRIPTOR) for data in bases]
    outcomes = {"read": 0, "unparsed": 0, "declined": 0}
    read_after = dict.fromkeys(protowire.MUTATIONS, 0)
    for _ in range(20_000):
        tree = [f.copy() for f in rng.choice(trees)]
        names = {protowire.mutate(rng, tree, CheckRequest.DESCRIPTOR) for _ in range(rng.randint(1, 3))}
        data = protowire.encode(tree)
        got = _holds(data)
        outcome = "unparsed" if got == "unparsed" else "declined" if got is None else "read"
        outcomes[outcome] += 1
        if outcome == "read":
            for name in names:
                read_after[name] += 1
    assert min(outcomes.values()) > 1000, outcomes
    # Every kind of mutation left messages that were read and compared (not only declined), but
    # those the reading declines wherever they land: a known field with another wire type, a tag
    # or length not in its shortest form, a group (read only when another mutation removed them).
    declined_anywhere = {"rewire", "pad", "group"}
    assert min(v for k, v in read_after.items() if k not in declined_anywhere) > 20, str(read_after)


_HEADER_NAMES = st.sampled_from(protowire.NAMES) | st.binary(max_size=8) | st.text(max_size=6).map(str.encode)
_HEADER_VALUES = st.sampled_from(protowire.VALUES) | st.binary(max_size=12)


@st.composite
def _requests(draw: st.DrawFn) -> bytes:
    """A CheckRequest made by protobuf, headers drawn from the names and values readers treat
    specially (in either form; in the headers map, valid UTF-8 only), then perhaps mutated at
    the wire level."""
    message = raw_request(TOKEN) if draw(st.booleans()) else check_request(token=TOKEN)
    http = message.attributes.request.http
    for name, value in draw(st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUES), max_size=6)):
        if http.header_map.headers:
            entry = http.header_map.headers.add()
            entry.key = name.decode("utf-8", "replace")
            if draw(st.booleans()):
                entry.raw_value = value
            else:
                entry.value = value.decode("utf-8", "replace")
        else:
            http.headers[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    for name, value in draw(st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUES), max_size=3)):
        message.attributes.context_extensions[name.decode("utf-8", "replace")] = value.decode(
            "utf-8", "replace"
        )
    if draw(st.booleans()):
        message.attributes.source.principal = draw(st.sampled_from(["", "spiffe://a/b", "é" * 40]))
        message.attributes.source.certificate = draw(st.sampled_from(["", "c" * 900, "%0A"]))
    tree = protowire.decode(message.SerializeToString(), CheckRequest.DESCRIPTOR)
    rng = random.Random(draw(st.integers(0, 2**32)))  # noqa: S311 - drawn, so that hypothesis replays it
    for _ in range(draw(st.integers(0, 3))):
        protowire.mutate(rng, tree, CheckRequest.DESCRIPTOR)
    return protowire.encode(tree)


@pytestmark_built
@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_requests())
def test_generated_requests_are_never_read_differently(data: bytes) -> None:
    _holds(data)
