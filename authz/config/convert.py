"""Line-aware YAML data -> the model (msgspec); a refused value becomes FILE:LINE: label: reason.

msgspec names where it stopped (``$.tenants[0].rules[1].paths``); that path leads back through
the YAML data to the line, and through the model's annotations to the reason.
"""

from __future__ import annotations

import re
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec

from authz.config.model import ConfigFile
from authz.config.yaml import LineMap, Place
from authz.errors import ConfigError

__all__ = ["to_model"]

_AT = re.compile(r"(?s)(?P<what>.*?)(?: - at `(?P<path>\$.*)`)?")
_STEP = re.compile(r"\.([A-Za-z_]\w*)|\[(\d+|\.\.\.)\]")
_UNKNOWN = re.compile(r"(?s)Object contains unknown field `(.*)`")
_MISSING = re.compile(r"(?s)Object missing required field `(.*)`")
_MAPPING = "must be a mapping"


def to_model(data: Any, source: str) -> tuple[ConfigFile, Place]:
    """The model of the file, and the root Place its compile step reports errors from."""
    if not isinstance(data, LineMap):
        raise ConfigError(source, f"config {_MAPPING}", 1)
    try:
        model = msgspec.convert(data, ConfigFile)
    except msgspec.ValidationError as exc:
        raise _explain(str(exc), Place.root(data, source)) from None
    return model, Place.root(data, source)


def _explain(message: str, root: Place) -> ConfigError:
    """The ConfigError for msgspec's ``message``: the label and line of its path, our reason."""
    match = _AT.fullmatch(message)
    what, path = (match["what"], match["path"] or "$") if match else (message, "$")
    place: Place = root
    kind: Any = ConfigFile
    for name, index in _STEP.findall(path[1:]):
        if index == "...":  # a mapping's value: msgspec does not say which
            place, kind = _bad_entry(place, _value_type(kind, place.node))
        elif index:
            place, kind = place.item(int(index)), _item_type(kind, place.node)
        else:
            place, kind = place.key(name), _field_type(kind, place.node, name)
    if unknown := _UNKNOWN.fullmatch(what):
        return place.key(unknown[1]).error("unknown key")
    if missing := _MISSING.fullmatch(what):
        return place.error(f"missing required key {missing[1]!r}")
    if kind is Any:  # not a path of the model: msgspec's own words
        return place.error(what)
    reason = _reason(kind, place.node)
    if reason == _MAPPING and _is_struct(_unwrap(_member(kind, place.node))[0]):
        # A section or list item that is not a mapping is said without a colon, as it always was.
        return ConfigError(root.source, f"{place.label} {_MAPPING}", place.line)
    return place.error(reason)


# -- the model's annotation at a path ------------------------------------------------------------


def _unwrap(kind: Any) -> tuple[Any, list[msgspec.Meta]]:
    """The type under ``Annotated`` layers, and their Meta, outermost first."""
    metas: list[msgspec.Meta] = []
    while get_origin(kind) is Annotated:
        kind, *extras = get_args(kind)
        metas += [m for m in extras if isinstance(m, msgspec.Meta)]
    return kind, metas


def _member(kind: Any, value: Any) -> Any:
    """The member of a union that a value of this Python type would be converted to."""
    base, _ = _unwrap(kind)
    if get_origin(base) not in (Union, types.UnionType):
        return kind
    members = [m for m in get_args(base) if m is not msgspec.UnsetType]
    for member in members:
        inner, _ = _unwrap(member)
        origin = get_origin(inner) or inner
        if isinstance(value, dict) and (origin is dict or _is_struct(inner)):
            return member
        if isinstance(value, list) and origin in (list, tuple):
            return member
    return members[0] if len(members) == 1 else kind


def _is_struct(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, msgspec.Struct)


def _field_type(kind: Any, node: Any, name: str) -> Any:
    base, _ = _unwrap(_member(kind, node))
    if _is_struct(base):
        for field in msgspec.structs.fields(base):
            if field.encode_name == name:
                return field.type
    return Any


def _item_type(kind: Any, node: Any) -> Any:
    base, _ = _unwrap(_member(kind, node))
    args = get_args(base)
    return args[0] if get_origin(base) in (list, tuple) and args else Any


def _value_type(kind: Any, node: Any) -> Any:
    base, _ = _unwrap(_member(kind, node))
    return get_args(base)[1] if get_origin(base) is dict else Any


def _bad_entry(place: Place, kind: Any) -> tuple[Place, Any]:
    """The first entry of a mapping whose value the model refuses."""
    if isinstance(place.node, LineMap):
        for name, value in place.node.items():
            try:
                msgspec.convert(value, kind)
            except msgspec.ValidationError:
                return place.key(name), kind
    return place, kind


# -- why a value is refused ----------------------------------------------------------------------


def _reason(kind: Any, value: Any) -> str:
    """Why the model refuses ``value`` for ``kind``: a ``reason`` of its Meta, else its type and limits."""
    _, outer = _unwrap(kind)
    base, metas = _unwrap(_member(kind, value))
    custom = next((m.extra["reason"] for m in [*outer, *metas] if m.extra and "reason" in m.extra), None)
    if base is str or get_origin(base) is Literal:
        if not isinstance(value, str):
            return "must be a string"
        return str(custom).replace("{value}", repr(value)) if custom else "must be a non-empty string"
    if custom:
        return str(custom).replace("{value}", repr(value))
    if _is_struct(base) or get_origin(base) is dict:
        return _MAPPING
    if get_origin(base) in (list, tuple):
        return "must not be empty" if isinstance(value, list) else "must be a list"
    if base is bool:
        return "must be true or false"
    if base is int and (isinstance(value, bool) or not isinstance(value, int)):
        return "must be an integer"
    if base is int:
        ge = next((m.ge for m in metas if m.ge is not None), None)
        return "must be a positive integer" if ge == 1 else "must not be negative"
    return "has a value the configuration does not accept"
