"""Strict base64url and JSON: one canonical form for every token part, no lenient parsing."""

from __future__ import annotations

import binascii
import json
import math
from typing import Any

from authz.errors import AuthzError, Reason

__all__ = ["b64decode", "b64decode_text", "parse_json_object"]

_MAX_JSON_DEPTH = 16

# Strict base64url (RFC 7515 2: no padding, no other alphabet). "-" and "_" are
# translated to the standard alphabet's "+" and "/"; those two and "=" become "!",
# which strict decoding refuses like every other character outside the alphabet.
_TO_STANDARD = bytes.maketrans(b"-_+/=", b"+/!!!")

_PADDING = (b"", b"", b"==", b"=")

# Canonical encodings only: the unused low bits of the last character are zero
# (4 bits when len % 4 == 2, 2 bits when len % 4 == 3), so one part has one form.
_CANONICAL_LAST = (b"", b"", b"AQgw", b"AEIMQUYcgkosw048")


def b64decode(part: bytes, code: Reason) -> bytes:
    """Strict, canonical base64url without padding (jwcrypto's decoder is lenient)."""
    rem = len(part) & 3
    if rem:
        if rem == 1 or part[-1] not in _CANONICAL_LAST[rem]:
            raise AuthzError(code, "bad or non-canonical base64url")
        part = part.translate(_TO_STANDARD) + _PADDING[rem]
    else:
        part = part.translate(_TO_STANDARD)
    try:
        return binascii.a2b_base64(part, strict_mode=True)
    except binascii.Error:
        raise AuthzError(code, "bad base64url") from None


def b64decode_text(value: str) -> bytes:
    """A base64url header member of the outer layer."""
    if not value.isascii():
        raise AuthzError(Reason.TOKEN_MALFORMED, "bad base64url")
    return b64decode(value.encode("ascii"), Reason.TOKEN_MALFORMED)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Parse UTF-8 JSON strictly: an object, no duplicate keys, no NaN, bounded depth.

    Raises ValueError for anything else (including deep nesting and huge numbers).
    """
    try:
        text = raw.decode("utf-8")
        # raw_decode: the C scanner straight away (decode adds two regex matches for
        # whitespace). Text with whitespace around the value, or that is not JSON,
        # goes through decode, which accepts the former and makes the error of the
        # latter. The hooks' ValueErrors (duplicates, NaN) are not JSONDecodeError.
        try:
            value, end = _DECODER.raw_decode(text)
        except json.JSONDecodeError:
            end = -1
        if end != len(text):
            value = _DECODER.decode(text)
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(type(exc).__name__) from None
    if type(value) is not dict:
        raise ValueError("not an object")
    # Every container opens with "{" or "[" (a byte no other UTF-8 sequence holds):
    # with fewer than the bound, no value can be nested too deeply; count first.
    if raw.count(b"{") + raw.count(b"[") >= _MAX_JSON_DEPTH and _too_deep(value):
        raise ValueError("nested too deeply")
    return value


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key")
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


# One decoder, shared (as json.loads shares its default one): its hooks hold no state.
_DECODER = json.JSONDecoder(
    object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant, parse_float=_finite_float
)


def _too_deep(value: dict[str, Any]) -> bool:
    """Whether any value sits deeper than the bound (the top-level object is depth 1).

    Iterative, and visits containers only: a container at depth d with any member
    puts that member at depth d + 1.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if children and level >= _MAX_JSON_DEPTH:
            return True
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return False
