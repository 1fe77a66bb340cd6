"""Our generated ext_authz v3 messages (authz.grpc._proto) are wire-compatible with xds-protos'.

Our protos/ mirror the published Envoy API without validation annotations. These
tests compare every message/enum/service we define against the xds-protos (and
googleapis-common-protos / protobuf) descriptors of the same name, and round-trip
fully populated messages between both sets of classes. They also check that both
sets of classes coexist in one process and interoperate over gRPC.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import address_pb2 as x_address_pb2
from envoy.config.core.v3 import base_pb2 as x_base_pb2
from envoy.service.auth.v3 import attribute_context_pb2 as x_attribute_context_pb2
from envoy.service.auth.v3 import external_auth_pb2 as x_external_auth_pb2
from envoy.service.auth.v3 import external_auth_pb2_grpc as x_external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2 as x_http_status_pb2
from google.protobuf import any_pb2 as x_any_pb2
from google.protobuf import descriptor as descriptor_mod
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, unknown_fields
from google.protobuf import struct_pb2 as x_struct_pb2
from google.protobuf import timestamp_pb2 as x_timestamp_pb2
from google.protobuf import wrappers_pb2 as x_wrappers_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2 as x_status_pb2

from authz.grpc._proto import DESCRIPTOR_POOL
from authz.grpc._proto.envoy.config.core.v3 import address_pb2, base_pb2
from authz.grpc._proto.envoy.service.auth.v3 import (
    attribute_context_pb2,
    external_auth_pb2,
    external_auth_pb2_grpc,
)
from authz.grpc._proto.envoy.type.v3 import http_status_pb2
from authz.grpc._proto.google.protobuf import any_pb2, struct_pb2, timestamp_pb2, wrappers_pb2
from authz.grpc._proto.google.rpc import status_pb2

REPO = Path(__file__).resolve().parents[2]

# (ours, theirs, whether ours mirrors every top-level type of the upstream file)
MODULE_PAIRS: list[tuple[ModuleType, ModuleType, bool]] = [
    (external_auth_pb2, x_external_auth_pb2, True),
    (attribute_context_pb2, x_attribute_context_pb2, True),
    (http_status_pb2, x_http_status_pb2, True),
    (status_pb2, x_status_pb2, True),
    (base_pb2, x_base_pb2, False),
    (address_pb2, x_address_pb2, False),
    (any_pb2, x_any_pb2, True),
    (struct_pb2, x_struct_pb2, True),
    (timestamp_pb2, x_timestamp_pb2, True),
    (wrappers_pb2, x_wrappers_pb2, True),
]

THEIR_POOL = descriptor_pool.Default()


# --------------------------------------------------------------------------- descriptors


def _walk_messages(messages: Iterable[descriptor_mod.Descriptor]) -> Iterator[descriptor_mod.Descriptor]:
    """Yield the given message descriptors and all their nested ones (map entries included)."""
    for message in messages:
        yield message
        yield from _walk_messages(message.nested_types)


def _our_messages() -> list[descriptor_mod.Descriptor]:
    """Every message descriptor our generated files define."""
    return [
        message
        for ours, _, _ in MODULE_PAIRS
        for message in _walk_messages(ours.DESCRIPTOR.message_types_by_name.values())
    ]


def _our_enums() -> list[descriptor_mod.EnumDescriptor]:
    """Every enum descriptor our generated files define (top-level and nested)."""
    enums = [enum for ours, _, _ in MODULE_PAIRS for enum in ours.DESCRIPTOR.enum_types_by_name.values()]
    enums += [enum for message in _our_messages() for enum in message.enum_types]
    return enums


def _field_signature(field: descriptor_mod.FieldDescriptor) -> tuple[Any, ...]:
    """What must agree between our field and upstream's for wire and JSON compatibility."""
    return (
        field.name,
        field.number,
        field.type,
        field.is_repeated,
        field.has_presence,
        field.message_type.full_name if field.message_type else None,
        field.enum_type.full_name if field.enum_type else None,
        field.containing_oneof.name if field.containing_oneof else None,
        field.json_name,
        field.GetOptions().deprecated,
    )


def _message_signature(message: descriptor_mod.Descriptor) -> dict[str, Any]:
    """Fields, oneofs, nested types and enums of a message, for comparison."""
    return {
        "file": message.file.name,
        "map_entry": message.GetOptions().map_entry,
        "fields": sorted(_field_signature(field) for field in message.fields),
        "oneofs": sorted((o.name, sorted(f.name for f in o.fields)) for o in message.oneofs),
        "nested": sorted(nested.name for nested in message.nested_types),
        "enums": sorted(enum.name for enum in message.enum_types),
    }


def test_our_pool_is_private() -> None:
    """Our descriptors live in DESCRIPTOR_POOL, upstream's in the default pool."""
    assert DESCRIPTOR_POOL is not THEIR_POOL
    for ours, theirs, _ in MODULE_PAIRS:
        assert ours.DESCRIPTOR.pool is DESCRIPTOR_POOL
        assert theirs.DESCRIPTOR.pool is THEIR_POOL
        assert DESCRIPTOR_POOL.FindFileByName(ours.DESCRIPTOR.name) is ours.DESCRIPTOR
        assert THEIR_POOL.FindFileByName(theirs.DESCRIPTOR.name) is theirs.DESCRIPTOR


@pytest.mark.parametrize(
    ("ours", "theirs", "complete"), MODULE_PAIRS, ids=lambda v: getattr(v, "__name__", "")
)
def test_file_matches_upstream(ours: ModuleType, theirs: ModuleType, complete: bool) -> None:
    """Each of our files has upstream's name and package and (where complete) all its top-level types."""
    assert ours.DESCRIPTOR.name == theirs.DESCRIPTOR.name
    assert ours.DESCRIPTOR.package == theirs.DESCRIPTOR.package
    our_types = set(ours.DESCRIPTOR.message_types_by_name) | set(ours.DESCRIPTOR.enum_types_by_name)
    their_types = set(theirs.DESCRIPTOR.message_types_by_name) | set(theirs.DESCRIPTOR.enum_types_by_name)
    assert our_types <= their_types
    if complete:
        assert our_types == their_types
        assert set(ours.DESCRIPTOR.services_by_name) == set(theirs.DESCRIPTOR.services_by_name)


@pytest.mark.parametrize("message", _our_messages(), ids=lambda m: m.full_name)
def test_message_matches_upstream(message: descriptor_mod.Descriptor) -> None:
    """Each message we define has exactly upstream's fields (name, number, type, label, oneof)."""
    theirs = THEIR_POOL.FindMessageTypeByName(message.full_name)
    assert _message_signature(message) == _message_signature(theirs)


@pytest.mark.parametrize("enum", _our_enums(), ids=lambda e: e.full_name)
def test_enum_matches_upstream(enum: descriptor_mod.EnumDescriptor) -> None:
    """Each enum we define has exactly upstream's values."""
    theirs = THEIR_POOL.FindEnumTypeByName(enum.full_name)
    assert [(v.name, v.number) for v in enum.values] == [(v.name, v.number) for v in theirs.values]


def test_authorization_service_matches_upstream() -> None:
    """Our Authorization service has upstream's methods, types and streaming flags."""

    def methods(service: descriptor_mod.ServiceDescriptor) -> list[tuple[Any, ...]]:
        """Describe a service's methods."""
        return [
            (
                m.name,
                m.full_name,
                m.input_type.full_name,
                m.output_type.full_name,
                m.client_streaming,
                m.server_streaming,
            )
            for m in service.methods
        ]

    ours = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"]
    theirs = x_external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"]
    assert ours.full_name == theirs.full_name == "envoy.service.auth.v3.Authorization"
    assert methods(ours) == methods(theirs)


# --------------------------------------------------------------------------- samples


def _their_full_request() -> Message:
    """A CheckRequest built with xds-protos classes, setting every AttributeContext field."""
    req = x_external_auth_pb2.CheckRequest()
    attrs = req.attributes

    src = attrs.source
    sock = src.address.socket_address
    sock.protocol = x_address_pb2.SocketAddress.UDP
    sock.address = "10.0.0.7"
    sock.port_value = 51234
    sock.resolver_name = "envoy.resolvers.custom"
    sock.ipv4_compat = True
    sock.network_namespace_filepath = "/var/run/netns/ns1"
    src.service = "web-frontend"
    src.labels["app"] = "web"
    src.labels["tier"] = "frontend"
    src.principal = "spiffe://example.org/ns/default/sa/web"
    src.certificate = "-----BEGIN%20CERTIFICATE-----%0AMIIB...%0A-----END%20CERTIFICATE-----%0A"

    dst = attrs.destination
    dst.address.pipe.path = "/run/envoy/ingress.sock"
    dst.address.pipe.mode = 0o600
    dst.service = "envoy-ingress"
    dst.labels["zone"] = "eu-west-1a"
    dst.principal = "spiffe://example.org/ns/default/sa/envoy"
    dst.certificate = "-----BEGIN%20CERTIFICATE-----%0AMIIC...%0A-----END%20CERTIFICATE-----%0A"

    attrs.request.time.seconds = 1_767_225_600
    attrs.request.time.nanos = 123_456_789
    http = attrs.request.http
    http.id = "5c4e2a1f-0d6b-4f0e-9b51-1f2d3c4b5a69"
    http.method = "POST"
    http.headers[":path"] = "/api/v1/items?limit=5"
    http.headers["authorization"] = "Bearer eyJhbGciOiJSU0EtT0FFUC0yNTYifQ.x.y.z.w"
    http.header_map.headers.add(key=":method", value="POST")
    http.header_map.headers.add(key="x-binary", raw_value=b"\x00\xff\xfe")
    http.path = "/api/v1/items?limit=5"
    http.host = "api.example.com"
    http.scheme = "https"
    http.query = "limit=5"
    http.fragment = "top"
    http.size = 17
    http.protocol = "HTTP/2"
    http.body = '{"name": "widget"}'
    http.raw_body = b'{"name": "widget"}'

    attrs.context_extensions["virtual_host"] = "api"
    attrs.context_extensions["policy"] = "items-write"
    jwt = attrs.metadata_context.filter_metadata["envoy.filters.http.jwt_authn"]
    jwt.update({"sub": "alice", "n": 3, "admin": True, "none": None, "tags": ["a", 1], "nested": {"k": "v"}})
    attrs.metadata_context.typed_filter_metadata["envoy.test.typed"].Pack(
        x_timestamp_pb2.Timestamp(seconds=5, nanos=6)
    )
    route_metadata = attrs.route_metadata_context.filter_metadata["envoy.filters.http.ext_authz"]
    route_metadata.update({"scope": "items:write"})
    attrs.route_metadata_context.typed_filter_metadata["envoy.test.typed"].Pack(
        x_wrappers_pb2.StringValue(value="route")
    )
    attrs.tls_session.sni = "api.example.com"
    return req


def _their_variant_request() -> Message:
    """A CheckRequest built with xds-protos classes using the other Address/port oneof members."""
    req = x_external_auth_pb2.CheckRequest()
    sock = req.attributes.source.address.socket_address
    sock.address = "2001:db8::1"
    sock.named_port = "https"
    internal = req.attributes.destination.address.envoy_internal_address
    internal.server_listener_name = "internal_listener"
    internal.endpoint_id = "endpoint-1"
    req.attributes.request.http.method = "GET"
    return req


def _our_ok_response() -> Message:
    """An OK CheckResponse built with our classes, setting every OkHttpResponse field."""
    action = base_pb2.HeaderValueOption.HeaderAppendAction
    resp = external_auth_pb2.CheckResponse()
    resp.status.code = 0
    ok = resp.ok_response
    ok.headers.add(
        header=base_pb2.HeaderValue(key="x-auth-subject", value="alice"),
        append_action=action.OVERWRITE_IF_EXISTS_OR_ADD,
        keep_empty_value=True,
    )
    legacy = ok.headers.add(append_action=action.APPEND_IF_EXISTS_OR_ADD)
    legacy.header.key = "x-auth-raw"
    legacy.header.raw_value = b"\x01\x02"
    legacy.append.value = True
    ok.headers_to_remove.extend(["authorization", "cookie"])
    ok.dynamic_metadata.update({"deprecated_location": True})
    ok.response_headers_to_add.add(
        header=base_pb2.HeaderValue(key="x-authz-decision", value="allow"),
        append_action=action.ADD_IF_ABSENT,
    )
    ok.query_parameters_to_set.add(key="user", value="alice")
    ok.query_parameters_to_remove.extend(["access_token"])
    resp.dynamic_metadata.fields["sub"].string_value = "alice"
    resp.dynamic_metadata.update(
        {"scopes": ["items:read", "items:write"], "exp": 1767229200, "claims": {"a": None}}
    )
    return resp


def _our_denied_response() -> Message:
    """A denied CheckResponse built with our classes (status with details, HTTP status/headers/body)."""
    resp = external_auth_pb2.CheckResponse()
    resp.status.code = 7  # PERMISSION_DENIED
    resp.status.message = "token expired"
    resp.status.details.add().Pack(http_status_pb2.HttpStatus(code=http_status_pb2.Unauthorized))
    denied = resp.denied_response
    denied.status.code = http_status_pb2.StatusCode.Unauthorized
    denied.headers.add(
        header=base_pb2.HeaderValue(key="www-authenticate", value='Bearer error="invalid_token"'),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )
    denied.body = '{"error": "invalid_token"}'
    resp.dynamic_metadata.update({"reason": "expired"})
    return resp


def _our_error_response() -> Message:
    """An error CheckResponse built with our classes (the error_response oneof member)."""
    resp = external_auth_pb2.CheckResponse()
    resp.status.code = 13  # INTERNAL
    resp.error_response.status.code = http_status_pb2.ServiceUnavailable
    resp.error_response.body = "authorization service unavailable"
    return resp


REQUEST_SAMPLES = {"full": _their_full_request, "variant": _their_variant_request}
RESPONSE_SAMPLES = {"ok": _our_ok_response, "denied": _our_denied_response, "error": _our_error_response}


# --------------------------------------------------------------------------- helpers


def _sub_messages(message: Message) -> Iterator[tuple[descriptor_mod.FieldDescriptor, Message]]:
    """Yield (field, value) for every set message-typed value directly inside ``message``."""
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is not None:
                yield from ((field, item) for item in value.values())
        elif field.is_repeated:
            yield from ((field, item) for item in value)
        else:
            yield field, value


def _set_fields(message: Message) -> set[tuple[str, str]]:
    """(message full name, field name) of every field set anywhere in ``message``'s tree."""
    found = {(message.DESCRIPTOR.full_name, field.name) for field, _ in message.ListFields()}
    for _, sub in _sub_messages(message):
        found |= _set_fields(sub)
    return found


def _reachable_fields(root: descriptor_mod.Descriptor) -> set[tuple[str, str]]:
    """(message full name, field name) of every field of every message reachable from ``root``."""
    seen: set[str] = set()
    todo = [root]
    fields: set[tuple[str, str]] = set()
    while todo:
        message = todo.pop()
        if message.full_name in seen:
            continue
        seen.add(message.full_name)
        for field in message.fields:
            fields.add((message.full_name, field.name))
            target = field.message_type
            if target is not None and target.GetOptions().map_entry:
                target = target.fields_by_name["value"].message_type
            if target is not None:
                todo.append(target)
    return fields


def _assert_no_unknown_fields(message: Message, path: str = "") -> None:
    """Fail if ``message`` or any message inside it carries unknown fields."""
    unknown = unknown_fields.UnknownFieldSet(message)
    assert len(unknown) == 0, f"unknown fields in {path or message.DESCRIPTOR.full_name}: " + str(
        [(f.field_number, f.wire_type) for f in unknown]
    )
    for field, sub in _sub_messages(message):
        _assert_no_unknown_fields(sub, f"{path}.{field.name}")


def _to_dict(message: Message, pool: descriptor_pool.DescriptorPool) -> dict[str, Any]:
    """MessageToDict, resolving Any payloads in ``pool``."""
    result: dict[str, Any] = json_format.MessageToDict(message, descriptor_pool=pool)
    return result


def _assert_same_message(src: Message, dst: Message, dst_pool: descriptor_pool.DescriptorPool) -> None:
    """``dst`` (parsed from ``src``'s bytes) holds exactly ``src``'s content."""
    assert src.DESCRIPTOR.full_name == dst.DESCRIPTOR.full_name
    assert dst.SerializeToString(deterministic=True) == src.SerializeToString(deterministic=True)
    src_pool = DESCRIPTOR_POOL if dst_pool is THEIR_POOL else THEIR_POOL
    assert _to_dict(dst, dst_pool) == _to_dict(src, src_pool)
    assert _set_fields(dst) == _set_fields(src)
    _assert_no_unknown_fields(dst)


# --------------------------------------------------------------------------- round trips


def test_request_samples_cover_every_upstream_field() -> None:
    """The xds-protos CheckRequest samples together set every field reachable from CheckRequest."""
    covered = set().union(*(_set_fields(make()) for make in REQUEST_SAMPLES.values()))
    missing = _reachable_fields(x_external_auth_pb2.CheckRequest.DESCRIPTOR) - covered
    assert not missing, f"request samples leave fields unset: {sorted(missing)}"


def test_response_samples_cover_every_upstream_field() -> None:
    """Our CheckResponse samples together set every field upstream's CheckResponse reaches."""
    covered = set().union(*(_set_fields(make()) for make in RESPONSE_SAMPLES.values()))
    missing = _reachable_fields(x_external_auth_pb2.CheckResponse.DESCRIPTOR) - covered
    assert not missing, f"response samples leave fields unset (missing in our protos?): {sorted(missing)}"


@pytest.mark.parametrize("sample", sorted(REQUEST_SAMPLES))
def test_xds_request_parses_identically_with_ours(sample: str) -> None:
    """A CheckRequest serialized by xds-protos parses with our classes to the identical message."""
    theirs = REQUEST_SAMPLES[sample]()
    ours = external_auth_pb2.CheckRequest.FromString(theirs.SerializeToString())
    _assert_same_message(theirs, ours, DESCRIPTOR_POOL)


@pytest.mark.parametrize("sample", sorted(RESPONSE_SAMPLES))
def test_our_response_parses_identically_with_xds(sample: str) -> None:
    """A CheckResponse serialized by our classes parses with xds-protos to the identical message."""
    ours = RESPONSE_SAMPLES[sample]()
    theirs = x_external_auth_pb2.CheckResponse.FromString(ours.SerializeToString())
    _assert_same_message(ours, theirs, THEIR_POOL)
    back = external_auth_pb2.CheckResponse.FromString(theirs.SerializeToString())
    assert back == ours


def test_ok_response_header_semantics_reach_envoy_unchanged() -> None:
    """Header append actions, removals and query edits read back through xds-protos as set."""
    theirs = x_external_auth_pb2.CheckResponse.FromString(_our_ok_response().SerializeToString())
    ok = theirs.ok_response
    first = ok.headers[0]
    assert (first.header.key, first.header.value) == ("x-auth-subject", "alice")
    assert first.append_action == x_base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    assert list(ok.headers_to_remove) == ["authorization", "cookie"]
    assert ok.response_headers_to_add[0].append_action == x_base_pb2.HeaderValueOption.ADD_IF_ABSENT
    assert [(q.key, q.value) for q in ok.query_parameters_to_set] == [("user", "alice")]
    assert list(ok.query_parameters_to_remove) == ["access_token"]
    assert theirs.WhichOneof("http_response") == "ok_response"


def test_denied_response_reaches_envoy_unchanged() -> None:
    """A denied response's gRPC status, HTTP status, headers and body read back through xds-protos."""
    theirs = x_external_auth_pb2.CheckResponse.FromString(_our_denied_response().SerializeToString())
    assert theirs.WhichOneof("http_response") == "denied_response"
    assert (theirs.status.code, theirs.status.message) == (7, "token expired")
    detail = x_http_status_pb2.HttpStatus()
    assert theirs.status.details[0].Unpack(detail)
    assert detail.code == x_http_status_pb2.Unauthorized
    denied = theirs.denied_response
    assert denied.status.code == x_http_status_pb2.Unauthorized == 401
    assert denied.headers[0].header.key == "www-authenticate"
    assert denied.body == '{"error": "invalid_token"}'


def test_dynamic_metadata_struct_fills_by_fields_and_update() -> None:
    """Our CheckResponse.dynamic_metadata Struct fills via .fields[...]/.update() and reads back in xds."""
    resp = external_auth_pb2.CheckResponse()
    resp.dynamic_metadata.fields["k"].string_value = "v"
    resp.dynamic_metadata.update({"n": 2, "b": False, "l": [1, "two"], "o": {"x": None}})
    resp.dynamic_metadata["s"] = "t"
    standalone = struct_pb2.Struct()
    standalone.update({"copied": True})
    resp.dynamic_metadata.MergeFrom(standalone)
    assert isinstance(resp.dynamic_metadata, struct_pb2.Struct)
    theirs = x_external_auth_pb2.CheckResponse.FromString(resp.SerializeToString())
    assert json_format.MessageToDict(theirs.dynamic_metadata) == {
        "k": "v",
        "n": 2.0,
        "b": False,
        "l": [1.0, "two"],
        "o": {"x": None},
        "s": "t",
        "copied": True,
    }


def test_default_pool_messages_do_not_mix_with_ours() -> None:
    """Assigning a default-pool Struct to our field is a TypeError; bytes are the bridge."""
    theirs = x_struct_pb2.Struct()
    theirs.update({"a": 1})
    resp = external_auth_pb2.CheckResponse()
    with pytest.raises(TypeError):
        resp.dynamic_metadata.CopyFrom(theirs)
    resp.dynamic_metadata.ParseFromString(theirs.SerializeToString())
    assert resp.dynamic_metadata["a"] == 1


# --------------------------------------------------------------------------- coexistence and gRPC

_COEXISTENCE_SCRIPT = """
import sys
from google.protobuf import descriptor_pool

def ours():
    from authz.grpc._proto.envoy.service.auth.v3 import external_auth_pb2
    return external_auth_pb2

def theirs():
    from envoy.service.auth.v3 import external_auth_pb2
    import envoy.config.core.v3.address_pb2  # noqa: F401
    return external_auth_pb2

if sys.argv[1] == "ours-first":
    o, t = ours(), theirs()
else:
    t, o = theirs(), ours()
default = descriptor_pool.Default()
assert default.FindMessageTypeByName("envoy.service.auth.v3.CheckRequest") is t.CheckRequest.DESCRIPTOR
assert "TcpKeepalive" in default.FindFileByName("envoy/config/core/v3/address.proto").message_types_by_name
assert o.CheckRequest.DESCRIPTOR.file.pool is not default
r = o.CheckResponse()
r.dynamic_metadata.update({"k": "v"})
r.ok_response.headers_to_remove.append("authorization")
assert t.CheckResponse.FromString(r.SerializeToString()).dynamic_metadata["k"] == "v"
print("ok")
"""


@pytest.mark.parametrize("implementation", ["upb", "python"])
@pytest.mark.parametrize("order", ["ours-first", "theirs-first"])
def test_ours_and_xds_protos_coexist_in_one_process(order: str, implementation: str) -> None:
    """Importing our modules and xds-protos' in either order (upb or pure-Python protobuf) works."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = implementation
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", _COEXISTENCE_SCRIPT, order],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


class _Servicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """Allows every request, echoing its path in a header and its method in dynamic metadata."""

    async def Check(self, request: Message, context: grpc.aio.ServicerContext) -> Message:  # noqa: N802
        """Answer with an OK response built from the request."""
        assert isinstance(request, external_auth_pb2.CheckRequest)
        http = request.attributes.request.http
        resp = external_auth_pb2.CheckResponse()
        resp.status.code = 0
        resp.ok_response.headers.add(
            header=base_pb2.HeaderValue(key="x-path", value=http.path),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
        )
        resp.dynamic_metadata.update({"method": http.method})
        return resp


def test_our_grpc_aio_server_answers_an_xds_protos_stub() -> None:
    """A grpc.aio server registered with our add_AuthorizationServicer_to_server serves xds-protos' stub."""

    async def scenario() -> Message:
        """Start the server, call Check once with xds-protos' stub, stop the server."""
        server = grpc.aio.server()
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(_Servicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = x_external_auth_pb2_grpc.AuthorizationStub(channel)
                response: Message = await stub.Check(_their_full_request(), timeout=10)
                return response
        finally:
            await server.stop(None)

    response = asyncio.run(scenario())
    assert isinstance(response, x_external_auth_pb2.CheckResponse)
    assert response.ok_response.headers[0].header.value == "/api/v1/items?limit=5"
    overwrite = x_base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    assert response.ok_response.headers[0].append_action == overwrite
    assert response.dynamic_metadata["method"] == "POST"


def test_server_reflection_serves_our_descriptors_from_the_private_pool() -> None:
    """gRPC reflection given DESCRIPTOR_POOL returns our external_auth.proto and its dependencies."""
    reflection = pytest.importorskip("grpc_reflection.v1alpha.reflection")
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    service_name = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name

    async def scenario() -> list[Any]:
        """Ask a reflection-enabled aio server for the file defining the Authorization service."""
        server = grpc.aio.server()
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(_Servicer(), server)
        names = (service_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server, pool=DESCRIPTOR_POOL)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = reflection_pb2_grpc.ServerReflectionStub(channel)
                requests = [
                    reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol=service_name),
                ]
                return [reply async for reply in stub.ServerReflectionInfo(iter(requests))]
        finally:
            await server.stop(None)

    listed, found = asyncio.run(scenario())
    assert service_name in {s.name for s in listed.list_services_response.service}
    files = {
        fdp.name: fdp
        for fdp in (
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in found.file_descriptor_response.file_descriptor_proto
        )
    }
    assert "envoy/service/auth/v3/external_auth.proto" in files
    assert [s.name for s in files["envoy/service/auth/v3/external_auth.proto"].service] == ["Authorization"]
