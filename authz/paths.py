"""One reading of a URI path (RFC 3986 §6.2.2), shared by request matching and DPoP's ``htu``.

Unreserved escapes are decoded, an escape that would change the path's structure (``/``,
``\\``, NUL, ``;``) or hide a control character is refused, segment parameters can be
stripped as Servlet containers strip them, and dot segments are removed (none above the root).
"""

from __future__ import annotations

import re

from authz.errors import AuthzError, Reason

__all__ = ["decode_unreserved", "remove_dot_segments", "strip_parameters"]

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
# Escapes of "/", "\", NUL and ";": upstreams disagree on what they mean inside a path.
_FORBIDDEN_ESCAPES = frozenset({"2F", "5C", "00", "3B"})
# ";" and what follows it up to the next "/": a segment's parameters (RFC 3986 §3.3).
_PARAMETERS = re.compile(r";[^/]*")


def decode_unreserved(path: str, reason: Reason) -> str:
    """``path`` with escapes of unreserved characters decoded and the others upper-cased."""
    if "%" not in path:
        return path
    out: list[str] = []
    i = 0
    while i < len(path):
        char = path[i]
        if char != "%":
            out.append(char)
            i += 1
            continue
        pair = path[i + 1 : i + 3]
        if len(pair) != 2 or not set(pair) <= _HEX:
            raise AuthzError(reason, "bad percent escape")
        upper = pair.upper()
        if upper in _FORBIDDEN_ESCAPES:
            raise AuthzError(reason, "encoded slash, backslash, NUL or semicolon")
        value = int(upper, 16)
        if value < 0x20 or value == 0x7F:
            raise AuthzError(reason, "encoded control character")
        decoded = chr(value)
        out.append(decoded if decoded in _UNRESERVED else "%" + upper)
        i += 3
    return "".join(out)


def strip_parameters(decoded: str) -> tuple[str, bool]:
    """(the path without segment parameters, whether it had any).

    Servlet containers (Tomcat, Jetty, Spring) drop each segment's ``;...`` before they
    resolve dot segments: ``/healthz/..;/admin`` is ``/admin`` to them.
    """
    if ";" not in decoded:
        return decoded, False
    return _PARAMETERS.sub("", decoded), True


def remove_dot_segments(decoded: str, reason: Reason) -> str:
    """The path with ``.``, ``..`` and empty segments resolved; a ``..`` above the root is refused."""
    segments: list[str] = []
    for segment in decoded.split("/")[1:]:
        if segment == "..":
            if not segments:
                raise AuthzError(reason, "dot segment escapes the root")
            segments.pop()
        elif segment not in (".", ""):
            segments.append(segment)
    trailing = decoded.endswith(("/", "/.", "/..")) and bool(segments)
    return "/" + "/".join(segments) + ("/" if trailing else "")
