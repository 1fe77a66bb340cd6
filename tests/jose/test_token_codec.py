"""The token layer's fast strict decoders against plain reference implementations.

``b64decode`` (translate + ``a2b_base64(strict_mode=True)`` + an O(1) check of the
last character) must accept and refuse exactly what the obvious implementation
does (alphabet regex, padding, decode, re-encode and compare). ``parse_json_object``
(one shared decoder, depth walk only past 15 brackets) must agree with a
recursive definition of depth and with ``json.loads`` plus a duplicate check.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.errors import AuthzError
from authz.jose.encoding import b64decode, parse_json_object

URLSAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def reference_b64(part: str) -> bytes | None:
    """Strict canonical unpadded base64url, the slow obvious way; None: refused."""
    if len(part) % 4 == 1 or re.fullmatch(r"[A-Za-z0-9_-]*", part) is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        return None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != part:
        return None
    return raw


def ours_b64(part: str) -> bytes | None:
    if not part.isascii():
        return None
    try:
        return b64decode(part.encode("ascii"), "token_malformed")
    except AuthzError as exc:
        code = exc.code
    assert code == "token_malformed"
    return None


@pytest.mark.parametrize("length", [0, 1, 2, 3, 4, 5])
def test_b64_every_short_part_of_the_alphabet_and_neighbours(length):
    """Exhaustive over short parts: url-safe alphabet, standard-only characters, padding, space."""
    alphabet = URLSAFE + "+/= ." if length <= 3 else "AQgwEB-_+=/"
    for chars in itertools.product(alphabet, repeat=length):
        part = "".join(chars)
        assert ours_b64(part) == reference_b64(part), part


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80))
def test_b64_canonical_encodings_round_trip(raw):
    part = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    assert ours_b64(part) == raw


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=URLSAFE + "+/=\n\t é\x00", max_size=40))
def test_b64_agrees_with_the_reference(part):
    assert ours_b64(part) == reference_b64(part)


def reference_depth(value: Any, level: int = 1) -> int:
    """The original recursive definition: the top-level object is 1, each member one more."""
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, list):
        children = value
    else:
        children = ()
    return max((reference_depth(child, level + 1) for child in children), default=level)


def reference_parse(raw: bytes) -> dict[str, Any] | None:
    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({name for name, _ in pairs}) != len(pairs):
            raise ValueError("duplicate")
        return dict(pairs)

    def finite(text: str) -> float:
        number = float(text)
        if not math.isfinite(number):
            raise ValueError("inf")
        return number

    def constant(name: str) -> Any:
        raise ValueError(name)

    try:
        value = json.loads(
            raw.decode("utf-8"), object_pairs_hook=pairs_hook, parse_float=finite, parse_constant=constant
        )
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict) or reference_depth(value) > 16:
        return None
    return value


def ours_parse(raw: bytes) -> dict[str, Any] | None:
    try:
        return parse_json_object(raw)
    except ValueError:
        return None


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=25,
)


def nested(depth: int, leaf: str, kind: str) -> str:
    """A member nested ``depth`` containers deep below the top-level object."""
    text = leaf
    for _ in range(depth):
        text = f"[{text}]" if kind == "list" else f'{{"k":{text}}}'
    return '{"x":' + text + "}"


@pytest.mark.parametrize("kind", ["list", "dict"])
@pytest.mark.parametrize("leaf", ["1", '"s"', "[]", "{}", "[1]"])
@pytest.mark.parametrize("depth", range(11, 18))
def test_depth_bound_is_the_recursive_definition(depth, leaf, kind):
    """Around the bound, every shape: scalars, empty and non-empty containers at the bottom."""
    raw = nested(depth, leaf, kind).encode()
    assert ours_parse(raw) == reference_parse(raw)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=4), json_values, max_size=4))
def test_parse_agrees_with_the_reference_on_objects(value):
    raw = json.dumps(value).encode()
    assert ours_parse(raw) == reference_parse(raw)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='{}[]":,1aé \n', max_size=30))
def test_parse_agrees_with_the_reference_on_any_text(text):
    raw = text.encode("utf-8")
    assert ours_parse(raw) == reference_parse(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b' {"a":1}',
        b'{"a":1} ',
        b'\n{"a":1}\n',
        b'{"a":1}x',
        b'{"a":1,"a":1}',
        b'{"a":{"b":1,"b":2}}',
        b'{"a":NaN}',
        b'{"a":1e400}',
        b'{"a":-Infinity}',
        b"\xef\xbb\xbf{}",
        b"",
        b"[]",
        b'"{}"',
    ],
)
def test_parse_edge_cases(raw):
    assert ours_parse(raw) == reference_parse(raw)
