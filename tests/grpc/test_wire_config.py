"""How the wire reading is configured (authz/grpc/wire.py): the schema it is given, the field
numbers its C walks, and an install where it cannot be configured."""

from __future__ import annotations

import logging

import pytest

from authz.grpc import wire
from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest

# The path _wire.c walks, by number (its find() and read_header()): a change of the protos that
# moves one of these fails here, before the reader reads the wrong field.
WALKED = {
    "envoy.service.auth.v3.CheckRequest": {"attributes": 1},
    "envoy.service.auth.v3.AttributeContext": {"source": 1, "request": 4, "context_extensions": 10},
    "envoy.service.auth.v3.AttributeContext.Peer": {"principal": 4, "certificate": 5},
    "envoy.service.auth.v3.AttributeContext.Request": {"http": 2},
    "envoy.service.auth.v3.AttributeContext.HttpRequest": {
        "id": 1, "method": 2, "headers": 3, "path": 4, "host": 5, "scheme": 6, "header_map": 13,
    },
    "envoy.config.core.v3.HeaderMap": {"headers": 1},
    "envoy.config.core.v3.HeaderValue": {"key": 1, "value": 2, "raw_value": 3},
    "envoy.service.auth.v3.AttributeContext.HttpRequest.HeadersEntry": {"key": 1, "value": 2},
    "envoy.service.auth.v3.AttributeContext.ContextExtensionsEntry": {"key": 1, "value": 2},
}  # fmt: skip


def _messages() -> dict[str, object]:
    found: dict[str, object] = {}
    pending = [CheckRequest.DESCRIPTOR]
    while pending:
        message = pending.pop()
        if message.full_name not in found:
            found[message.full_name] = message
            pending += [f.message_type for f in message.fields if f.message_type is not None]
    return found


def test_the_fields_it_walks_have_the_numbers_it_walks_by() -> None:
    messages = _messages()
    for name, fields in WALKED.items():
        numbers = {f.name: f.number for f in messages[name].fields}  # type: ignore[attr-defined]
        assert {field: numbers[field] for field in fields} == fields, name


def test_the_schema_holds_every_message_a_check_request_can_hold() -> None:
    table = wire.schema(CheckRequest.DESCRIPTOR)
    messages = _messages()
    assert len(table) == len(messages)  # 24 with the Struct, Value, Any and address types
    assert [number for number, _, _ in table[0]] == [1]  # CheckRequest first: attributes
    for fields in table:
        for number, kind, sub in fields:
            assert number > 0
            assert (kind == 5) == (sub >= 0)  # a message field names its message, and only it
            assert sub < len(table)


def test_a_schema_it_cannot_hold_leaves_every_request_to_protobuf(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Protos with a field kind it does not know (a group): the reading is off, not the service."""
    if wire.read_wire is None:
        pytest.skip("the C extension authz.grpc._wire is not built here")

    def unknown(_root: object) -> object:
        raise KeyError("a group")

    monkeypatch.setattr(wire, "schema", unknown)
    with caplog.at_level(logging.ERROR, "authz.grpc"):
        assert wire._load() is None
    assert "the reading from the wire is off" in caplog.text
    assert wire.read_wire(CheckRequest().SerializeToString()) is None  # the module as configured before
