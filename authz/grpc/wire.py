"""The memo's reading of a CheckRequest made from its bytes, by a C extension (``_wire.c``).

``read_repeat`` needs the message parsed, and protobuf builds a Python object for each header it
reads; on a repeat that is about half the door's cost. ``read_wire`` gives the same reading from
the serialized message, or None when it cannot vouch for it: then the door parses the message and
reads it with ``read_repeat``, as it does for everything when the extension is not built (it is
optional: an install without a C compiler has the same answers, a little slower).

The extension is configured here with the schema of CheckRequest as generated (every message it
can hold, each field's number and kind, from the descriptors) and with repeat.py's own rules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from authz.core.answer import IDENTITY_HEADERS, cgi_form
from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from authz.grpc.repeat import KEPT_AUTHORIZATION, KEPT_REST, NOT_REPEATS, RepeatRead
from authz.telemetry.tracing import TRACE_HEADERS

__all__ = ["read_wire", "schema"]

# The extension's kinds of field (_wire.c), by the wire type each must arrive as.
_VARINT, _FIXED64, _FIXED32, _STRING, _BYTES, _MESSAGE = range(6)
_KINDS = {
    FieldDescriptor.TYPE_DOUBLE: _FIXED64,
    FieldDescriptor.TYPE_FLOAT: _FIXED32,
    FieldDescriptor.TYPE_INT64: _VARINT,
    FieldDescriptor.TYPE_UINT64: _VARINT,
    FieldDescriptor.TYPE_INT32: _VARINT,
    FieldDescriptor.TYPE_FIXED64: _FIXED64,
    FieldDescriptor.TYPE_FIXED32: _FIXED32,
    FieldDescriptor.TYPE_BOOL: _VARINT,
    FieldDescriptor.TYPE_STRING: _STRING,
    FieldDescriptor.TYPE_MESSAGE: _MESSAGE,
    FieldDescriptor.TYPE_BYTES: _BYTES,
    FieldDescriptor.TYPE_UINT32: _VARINT,
    FieldDescriptor.TYPE_ENUM: _VARINT,
    FieldDescriptor.TYPE_SFIXED32: _FIXED32,
    FieldDescriptor.TYPE_SFIXED64: _FIXED64,
    FieldDescriptor.TYPE_SINT32: _VARINT,
    FieldDescriptor.TYPE_SINT64: _VARINT,
}  # no groups: a schema with one raises KeyError, and the extension stays off


def schema(root: Descriptor) -> tuple[tuple[tuple[int, int, int], ...], ...]:
    """Every message ``root`` can hold (``root`` first), as (number, kind, message index) per field."""
    order: list[Descriptor] = [root]
    index = {root.full_name: 0}
    position = 0
    while position < len(order):
        for field in order[position].fields:
            sub = field.message_type
            if sub is not None and sub.full_name not in index:
                index[sub.full_name] = len(order)
                order.append(sub)
        position += 1
    return tuple(
        tuple(
            (
                field.number,
                _KINDS[field.type],
                index[field.message_type.full_name] if field.message_type is not None else -1,
            )
            for field in message.fields
        )
        for message in order
    )


def _load() -> Callable[[bytes], RepeatRead | None] | None:
    try:
        from authz.grpc import _wire  # type: ignore[attr-defined]
    except ImportError:  # built without a C compiler: read_repeat reads every request
        return None
    trace = tuple(sorted(TRACE_HEADERS))
    rules = (RepeatRead, trace, tuple(sorted(NOT_REPEATS)), tuple(map(cgi_form, IDENTITY_HEADERS)),
             IDENTITY_HEADERS, KEPT_AUTHORIZATION, KEPT_REST)  # fmt: skip
    try:
        _wire.configure(schema(CheckRequest.DESCRIPTOR), rules)
    except Exception:  # a schema or rule it cannot hold: every request is parsed
        logging.getLogger("authz.grpc").exception("grpc door: the reading from the wire is off")
        return None
    read: Callable[[bytes], RepeatRead | None] = _wire.read
    return read


read_wire = _load()
