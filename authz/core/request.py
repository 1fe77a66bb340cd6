"""The request model: what a decision reads, and the normalization rules matched against.

A path that cannot be normalized safely (an encoded ``/``, ``\\`` or ``;``, a control
character, a ``..`` above the root, a bad escape) is ``path_invalid``: we refuse to guess
how the upstream would read it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from authz.errors import AuthzError, Reason

__all__ = [
    "AuthzRequest",
    "bearer_token",
    "first",
    "normalize_host",
    "normalize_path",
    "normalize_target",
    "plain_request_id",
]

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

_HEX = frozenset("0123456789abcdefABCDEF")

_FORBIDDEN_ESCAPES = frozenset({"2F", "5C", "00"})

# ";" and what follows it up to the next "/": a segment's parameters (RFC 3986 §3.3).
_PARAMETERS = re.compile(r";[^/]*")

_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*) *")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")

_MAX_PATH = 8192


@dataclass(frozen=True, slots=True)
class AuthzRequest:
    """What a decision needs from a request; built once, never mutated."""

    method: str
    path: str
    host: str
    scheme: str
    headers: Mapping[str, tuple[str, ...]]
    context_extensions: Mapping[str, str]
    peer_principal: str
    request_id: str
    # The raw path had segment parameters (";"), removed from ``path``: the
    # decision refuses the request unless the configuration allows them.
    path_parameters: bool = False

    @property
    def authorization(self) -> tuple[str, ...]:
        return self.headers.get("authorization", ())


def plain_request_id(value: str) -> str:
    """``value`` if it is a plain short request id (safe in logs and bodies), else ""."""
    return value if _REQUEST_ID.fullmatch(value) else ""


def bearer_token(request: AuthzRequest) -> str | None:
    """The one bearer token of ``authorization``; None when there is no bearer credential.

    Raises ``authorization_malformed`` for several authorization headers, or for a
    bearer credential that is not exactly one token.
    """
    values = request.authorization
    if not values:
        return None
    if len(values) > 1:
        raise AuthzError(Reason.AUTHORIZATION_MALFORMED, "more than one authorization header")
    value = values[0].strip()
    scheme = value.split(" ", 1)[0]
    if scheme.lower() != "bearer":
        return None
    match = _BEARER.fullmatch(value)
    if match is None:
        raise AuthzError(Reason.AUTHORIZATION_MALFORMED, "bearer credential is not one token")
    return match.group(1)


def normalize_host(host: str) -> str:
    """Lower-case host without port or trailing dot (IPv6 literals keep their brackets)."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    # The port first, then whitespace and the trailing dot: normalizing twice changes nothing.
    host = (host.rsplit(":", 1)[0] if host.count(":") == 1 else host).strip()
    # "api.acme.test." is the same name as "api.acme.test" (fully qualified).
    return host[:-1] if host.endswith(".") and not host.endswith("..") else host


def normalize_path(raw: str) -> str:
    """Normalize a request path for matching, or raise AuthzError(path_invalid)."""
    return normalize_target(raw)[0]


def normalize_target(raw: str) -> tuple[str, bool]:
    """The normalized path, and whether the raw path had segment parameters."""
    path = raw.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/") or len(path) > _MAX_PATH:
        raise AuthzError(Reason.PATH_INVALID, "path must be absolute and bounded")
    if "\\" in path or any(_is_control(c) for c in path):
        raise AuthzError(Reason.PATH_INVALID, "backslash or control character")
    decoded = _decode_unreserved(path)
    parameters = ";" in decoded
    if parameters:
        # Servlet containers (Tomcat, Jetty, Spring) drop each segment's ";..."
        # before they resolve dot segments: "/healthz/..;/admin" is "/admin" to
        # them. Match what they see. (No escape decodes to ";": %3B is refused.)
        decoded = _PARAMETERS.sub("", decoded)
    segments: list[str] = []
    for segment in decoded.split("/")[1:]:
        if segment == "..":
            if not segments:
                raise AuthzError(Reason.PATH_INVALID, "dot segment escapes the root")
            segments.pop()
        elif segment not in (".", ""):
            segments.append(segment)
    trailing = decoded.endswith(("/", "/.", "/..")) and bool(segments)
    return "/" + "/".join(segments) + ("/" if trailing else ""), parameters


def _is_control(char: str) -> bool:
    # C0, DEL and C1 (U+0080-U+009F, e.g. NEL): every Unicode control character.
    return char < " " or "\x7f" <= char <= "\x9f"


def _decode_unreserved(path: str) -> str:
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
            raise AuthzError(Reason.PATH_INVALID, "bad percent escape")
        upper = pair.upper()
        if upper in _FORBIDDEN_ESCAPES:
            raise AuthzError(Reason.PATH_INVALID, "encoded slash, backslash or NUL")
        if upper == "3B":
            # Upstreams disagree on whether a decoded ";" starts parameters.
            raise AuthzError(Reason.PATH_INVALID, "encoded semicolon")
        decoded = chr(int(upper, 16))
        if decoded in _UNRESERVED:
            out.append(decoded)
        elif int(upper, 16) < 0x20 or upper == "7F":
            raise AuthzError(Reason.PATH_INVALID, "encoded control character")
        else:
            out.append("%" + upper)
        i += 3
    return "".join(out)


def first(headers: Mapping[str, tuple[str, ...]], name: str) -> str:
    values = headers.get(name)
    return values[0] if values else ""
