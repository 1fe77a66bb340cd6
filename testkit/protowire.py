"""Serialized protobuf messages as a tree of fields, and mutations of it at the wire level.

For differential tests and fuzzing of code that reads serialized messages without protobuf
(authz/grpc/_wire.c): byte flips rarely make the inputs where parsers disagree. These keep the
message well-formed enough to be read, and make what protobuf reads its own way: a field sent
twice, as it was or altered (the last kept, or messages merged), a message split into two
occurrences, a map entry with another field or its key twice, fields out of order, a known field
with another wire type, tags and lengths not in their shortest form, groups, fields moved between
messages, and header names and values that readers treat specially (case, identity spellings,
invalid UTF-8).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.descriptor import Descriptor, FieldDescriptor

__all__ = ["MUTATIONS", "NAMES", "VALUES", "Field", "decode", "encode", "mutate"]

# Header names and context-extension keys readers look at, spelled every way that matters.
NAMES = (
    b"authorization", b"Authorization", b"authorization ", b"authorization\n", b"authorizatio",
    b"x-request-id", b"x-forwarded-client-cert", b"traceparent", b"tracestate", b"b3", b"x-b3-traceid",
    b"dpop", b"DPoP", b"x-http-method-override", b"x-http-method", b"x-method-override",
    b"x-authz-subject", b"x_authz_subject", b"x.authz-tenant", b"x-authz_scopes", b"x-authz-subjec",
    b"x-authz-tenant", b":path", b":method", b":authority", b"host", b"content-type", b"tenant", b"route",
    b"", b"\x00", b"x\x00y", b"a" * 63, b"a" * 64, b"a" * 65, b"x-" + b"a" * 62,
    b"x-caf\xc3\xa9", b"\xc3\xa9", b"\xef\xbf\xbd", b"\xf0\x9f\x98\x80",
    b"x-\xff", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\xe0\x80\x80", b"\xc2",
)  # fmt: skip
VALUES = (
    b"Bearer abc", b"bearer abc", b"BEARER abc", b"Bearer", b"Beare", b"DPoP abc", b" dpop abc",
    b"Basic YTpi", b"", b"\x00", b"req-2", b"id\n", b"a" * 128, b"a" * 129, b"GET", b"get", b"/admin",
    b"other.test", b"http", b"x" * 1100, b"Bearer " + b"y" * 2041, b"Bearer " + b"y" * 2042,
    b"caf\xc3\xa9", b"\xef\xbf\xbf", b"\xf4\x8f\xbf\xbf", b"caf\xe9", b"\xff\xfe", b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80", b"\xc0\x80", b"\xf0\x80\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82",
)  # fmt: skip
_STRINGS = NAMES + VALUES


@dataclass
class Field:
    """One field as sent: its number, wire type and value (an int for a varint, bytes, or the
    fields of a sub-message the schema names), and how many bytes its tag and length are padded
    past their shortest form."""

    number: int
    wire: int
    value: int | bytes | list[Field]
    message: Descriptor | None = None  # the sub-message's type, when the schema knows it
    tag_pad: int = 0
    length_pad: int = 0

    def copy(self) -> Field:
        value = [f.copy() for f in self.value] if isinstance(self.value, list) else self.value
        return Field(self.number, self.wire, value, self.message, self.tag_pad, self.length_pad)


def _varint(value: int, pad: int = 0) -> bytes:
    """``value`` as a varint, with ``pad`` more bytes than its shortest form (continuation bits)."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if not value and not pad:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)
        if not value:
            out += b"\x80" * (pad - 1) + b"\x00"
            return bytes(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("a varint past the end")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            return value, at


def decode(data: bytes, descriptor: Descriptor | None) -> list[Field]:
    """The fields of ``data``, sub-messages decoded where ``descriptor`` names them and they
    decode; raises ValueError for bytes that are not a sequence of fields."""
    found: list[Field] = []
    at = 0
    while at < len(data):
        tag, at = _read_varint(data, at)
        number, wire = tag >> 3, tag & 7
        known = descriptor.fields_by_number.get(number) if descriptor is not None else None
        value: int | bytes | list[Field]
        if wire == 0:
            value, at = _read_varint(data, at)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if at + size > len(data):
                raise ValueError("a fixed value past the end")
            value, at = data[at : at + size], at + size
        elif wire == 2:
            size, at = _read_varint(data, at)
            if at + size > len(data):
                raise ValueError("a length past the end")
            value, at = data[at : at + size], at + size
        else:
            raise ValueError("a group or an unknown wire type")
        sub = known.message_type if known is not None and known.type == FieldDescriptor.TYPE_MESSAGE else None
        if sub is not None and isinstance(value, bytes):
            try:
                value = decode(value, sub)
            except ValueError:
                sub = None  # kept as bytes: a message protobuf will reject
        found.append(Field(number, wire, value, sub))
    return found


def encode(fields: list[Field]) -> bytes:
    out = bytearray()
    for f in fields:
        out += _varint(f.number << 3 | f.wire, f.tag_pad)
        payload = encode(f.value) if isinstance(f.value, list) else f.value
        if f.wire == 0:
            out += _varint(f.value if isinstance(f.value, int) else 1)
        elif f.wire in (1, 5):
            out += (
                payload
                if isinstance(payload, bytes) and len(payload) == (8 if f.wire == 1 else 4)
                else bytes(8 if f.wire == 1 else 4)
            )
        elif f.wire == 2:
            data = payload if isinstance(payload, bytes) else b""
            out += _varint(len(data), f.length_pad) + data
        elif f.wire == 3:  # a group: its fields, then the end tag
            out += (payload if isinstance(payload, bytes) else b"") + _varint(f.number << 3 | 4)
        else:
            out += payload if isinstance(payload, bytes) else b""
    return bytes(out)


def _messages(fields: list[Field], owner: Descriptor) -> list[tuple[list[Field], Descriptor | None]]:
    """Every message body in the tree, with its type."""
    found: list[tuple[list[Field], Descriptor | None]] = [(fields, owner)]
    for f in fields:
        if isinstance(f.value, list):
            found += _messages(f.value, f.message) if f.message is not None else [(f.value, None)]
    return found


def _all_fields(fields: list[Field]) -> list[Field]:
    found: list[Field] = []
    for f in fields:
        found.append(f)
        if isinstance(f.value, list):
            found += _all_fields(f.value)
    return found


def _random_field(rng: random.Random, descriptor: Descriptor | None) -> Field:
    """A field of ``descriptor`` (of its own wire type or another) or an unknown one."""
    known = (
        rng.choice(descriptor.fields)
        if descriptor is not None and descriptor.fields and rng.random() < 0.6
        else None
    )
    number = (
        known.number if known is not None else rng.choice([1, 2, 3, 4, 5, 15, 16, 99, 2047, 19000, 536870911])
    )
    wire = rng.choice([0, 0, 1, 2, 2, 2, 2, 5])
    if wire == 0:
        return Field(number, 0, rng.choice([0, 1, 127, 128, 2**31, 2**63, 2**64 - 1]))
    if wire != 2:
        return Field(number, wire, rng.randbytes(8 if wire == 1 else 4))
    sub = known.message_type if known is not None and known.type == FieldDescriptor.TYPE_MESSAGE else None
    if sub is not None and rng.random() < 0.7:
        return Field(number, 2, [_random_field(rng, sub) for _ in range(rng.randint(0, 3))], sub)
    return Field(number, 2, rng.choice(_STRINGS))


Mutation = Callable[[random.Random, list[Field], Descriptor | None, list[Field]], None]


def _duplicate(rng: random.Random, body: list[Field], _: Descriptor | None, __: list[Field]) -> None:
    body.insert(rng.randint(0, len(body)), rng.choice(body).copy())


def _duplicate_altered(rng: random.Random, body: list[Field], _: Descriptor | None, __: list[Field]) -> None:
    """A field sent again with one of its strings changed: a map key twice with two values (the
    last kept), a header name twice, a field read once set twice to different values."""
    copy = rng.choice(body).copy()
    strings = [f for f in _all_fields([copy]) if f.wire == 2 and isinstance(f.value, bytes)]
    if strings:
        target = rng.choice(strings)
        assert isinstance(target.value, bytes)
        target.value = rng.choice([target.value + b"2", rng.choice(_STRINGS)])
    body.insert(rng.randint(0, len(body)), copy)


def _split(rng: random.Random, body: list[Field], _: Descriptor | None, __: list[Field]) -> None:
    """A sub-message sent as two occurrences, its fields divided between them (protobuf merges a
    singular one; a repeated one becomes two elements)."""
    subs = [i for i, f in enumerate(body) if isinstance(f.value, list)]
    if subs:
        i = rng.choice(subs)
        first, second = body[i].copy(), body[i].copy()
        assert isinstance(first.value, list)
        assert isinstance(second.value, list)
        cut = rng.randint(0, len(first.value))
        first.value, second.value = first.value[:cut], second.value[cut:]
        body[i : i + 1] = [first, second]


def _delete(rng: random.Random, body: list[Field], _: Descriptor | None, __: list[Field]) -> None:
    del body[rng.randrange(len(body))]


def _insert(rng: random.Random, body: list[Field], descriptor: Descriptor | None, _: list[Field]) -> None:
    body.insert(rng.randint(0, len(body)), _random_field(rng, descriptor))


def _rewire(rng: random.Random, body: list[Field], _: Descriptor | None, __: list[Field]) -> None:
    """A field sent with another wire type (protobuf keeps it as an unknown field)."""
    f = rng.choice(body)
    wire = rng.choice([w for w in (0, 1, 2, 5) if w != f.wire])
    f.wire, f.message = wire, None
    f.value = {0: 1, 1: bytes(8), 5: bytes(4)}.get(
        wire, encode(f.value) if isinstance(f.value, list) else b"x"
    )


def _restring(rng: random.Random, body: list[Field], _: Descriptor | None, __: list[Field]) -> None:
    strings = [f for f in body if f.wire == 2 and isinstance(f.value, bytes)]
    if strings:
        rng.choice(strings).value = rng.choice(_STRINGS)


def _shuffle(rng: random.Random, body: list[Field], _: Descriptor | None, __: list[Field]) -> None:
    rng.shuffle(body)


def _pad(rng: random.Random, body: list[Field], _: Descriptor | None, __: list[Field]) -> None:
    """A tag or a length in more bytes than its shortest form."""
    f = rng.choice(body)
    if rng.random() < 0.5 or f.wire != 2:
        f.tag_pad = rng.randint(1, 5)
    else:
        f.length_pad = rng.randint(1, 5)


def _empty_occurrence(rng: random.Random, body: list[Field], _: Descriptor | None, __: list[Field]) -> None:
    """A sub-message sent once more, empty: present twice, nothing more to merge."""
    subs = [f for f in body if isinstance(f.value, list)]
    if subs:
        empty = rng.choice(subs).copy()
        empty.value = []
        body.insert(rng.randint(0, len(body)), empty)


def _transplant(rng: random.Random, body: list[Field], _: Descriptor | None, whole: list[Field]) -> None:
    """A field from elsewhere in the message (another message's field of the same number)."""
    body.insert(rng.randint(0, len(body)), rng.choice(_all_fields(whole)).copy())


def _entry_field(rng: random.Random, body: list[Field], _: Descriptor | None, __: list[Field]) -> None:
    """A field numbered as a map entry's or a header value's (1 key, 2 value, 3 raw value) or
    just past them: a key or value twice, an entry with an unknown field."""
    number = rng.choice([1, 2, 3, 4, 5])
    if rng.random() < 0.8:
        body.insert(rng.randint(0, len(body)), Field(number, 2, rng.choice(_STRINGS)))
    else:
        body.insert(rng.randint(0, len(body)), Field(number, 0, rng.choice([0, 1, 300])))


def _flatten(rng: random.Random, body: list[Field], _: Descriptor | None, __: list[Field]) -> None:
    """A sub-message as opaque bytes, so that byte edits reach inside it without re-encoding."""
    subs = [f for f in body if isinstance(f.value, list)]
    if subs:
        f = rng.choice(subs)
        f.value, f.message = encode(f.value) if isinstance(f.value, list) else f.value, None
        if isinstance(f.value, bytes) and f.value and rng.random() < 0.5:
            edited = bytearray(f.value)
            edited[rng.randrange(len(edited))] = rng.randrange(256)
            f.value = bytes(edited)


def _edit_byte(rng: random.Random, body: list[Field], _: Descriptor | None, __: list[Field]) -> None:
    """One byte of a string set to one that readers treat specially (case, separators, UTF-8)."""
    strings = [f for f in body if f.wire == 2 and isinstance(f.value, bytes) and f.value]
    if strings:
        f = rng.choice(strings)
        assert isinstance(f.value, bytes)
        edited = bytearray(f.value)
        edited[rng.randrange(len(edited))] = rng.choice(b"AZaz_-.:\x00\xff\x80\xc3\xed\n \t")
        f.value = bytes(edited)


def _move_last(rng: random.Random, body: list[Field], _: Descriptor | None, __: list[Field]) -> None:
    body.append(body.pop(rng.randrange(len(body))))


def _group(rng: random.Random, body: list[Field], _: Descriptor | None, __: list[Field]) -> None:
    """A group (start and end tags), of a known number or an unknown one."""
    body.insert(rng.randint(0, len(body)), Field(rng.choice([1, 3, 99]), 3, b""))


MUTATIONS: dict[str, Mutation] = {
    "duplicate": _duplicate,
    "duplicate altered": _duplicate_altered,
    "split": _split,
    "delete": _delete,
    "insert": _insert,
    "rewire": _rewire,
    "restring": _restring,
    "shuffle": _shuffle,
    "pad": _pad,
    "empty occurrence": _empty_occurrence,
    "transplant": _transplant,
    "entry field": _entry_field,
    "flatten": _flatten,
    "edit byte": _edit_byte,
    "move last": _move_last,
    "group": _group,
}


def mutate(rng: random.Random, fields: list[Field], root: Descriptor) -> str:
    """Apply one mutation, in place, to a random message of the tree; its name."""
    body, descriptor = rng.choice(_messages(fields, root))
    name = rng.choice(list(MUTATIONS)) if body else "insert"
    MUTATIONS[name](rng, body, descriptor, fields)
    return name
