"""CheckRequest -> AuthzRequest: method, normalized path, host, headers, bearer token.

Path normalization is what the rules match against: the query is dropped,
percent-encoded unreserved characters are decoded, path parameters (``;...``
in a segment) removed, repeated slashes merged and dot segments removed. A
path that cannot be normalized safely (an encoded ``/``, ``\\`` or ``;``, NUL or
another control character, a ``..`` that climbs out of the root, a bad escape)
raises ``path_invalid``: the upstream might read it differently from us, so we
refuse to guess. Whether a path may carry parameters at all is the
configuration's choice (``request.path_parameters``, enforced by the decision):
the request records that it did.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from authz.errors import AuthzError

if TYPE_CHECKING:
    from authz._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest

__all__ = [
    "AuthzRequest",
    "bearer_token",
    "from_check_request",
    "from_http",
    "http_request_id",
    "normalize_host",
    "normalize_path",
    "request_id_of",
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


def from_check_request(message: CheckRequest) -> AuthzRequest:
    """Read an Envoy CheckRequest; raises AuthzError(path_invalid) for unsafe paths."""
    http = message.attributes.request.http
    headers = _headers(http.headers, ((h.key, h.raw_value, h.value) for h in http.header_map.headers))
    raw_path = http.path or _first(headers, ":path")
    method = (http.method or _first(headers, ":method")).upper()
    host = http.host or _first(headers, ":authority") or _first(headers, "host")
    request_id = _first(headers, "x-request-id") or http.id
    path, parameters = _normalize(raw_path)
    return AuthzRequest(
        method=method,
        path=path,
        host=normalize_host(host),
        scheme=http.scheme or _first(headers, ":scheme"),
        headers=headers,
        context_extensions=MappingProxyType(dict(message.attributes.context_extensions)),
        peer_principal=message.attributes.source.principal,
        request_id=request_id if _REQUEST_ID.fullmatch(request_id) else "",
        path_parameters=parameters,
    )


def from_http(
    method: str, target: str, headers: Mapping[str, tuple[str, ...]], *, path_prefix: str = ""
) -> AuthzRequest:
    """Read a request of Envoy's HTTP ext_authz protocol (``http_service``).

    Envoy sends the original method and path (after its ``path_prefix``, which is
    stripped here) and the allowed headers, ``host`` among them. There is no
    per-route context extension in this protocol: the tenant comes from the host.
    Raises AuthzError(path_invalid) for unsafe paths.
    """
    if path_prefix:
        if not target.startswith(path_prefix):
            raise AuthzError("path_invalid", "path does not start with the configured prefix")
        target = target[len(path_prefix) :] or "/"
    request_id = http_request_id(headers)
    path, parameters = _normalize(target)
    return AuthzRequest(
        method=method.upper(),
        path=path,
        host=normalize_host(_first(headers, "host") or _first(headers, ":authority")),
        scheme=_first(headers, "x-forwarded-proto"),
        headers=headers,
        context_extensions=MappingProxyType({}),
        peer_principal="",
        request_id=request_id,
        path_parameters=parameters,
    )


def http_request_id(headers: Mapping[str, tuple[str, ...]]) -> str:
    """Envoy's ``x-request-id`` of an HTTP-door request, if it is a plain short id."""
    request_id = _first(headers, "x-request-id")
    return request_id if _REQUEST_ID.fullmatch(request_id) else ""


def request_id_of(message: CheckRequest) -> str:
    """The request id of a request that could not be read (e.g. path_invalid), or ""."""
    try:
        http = message.attributes.request.http
        candidates = [
            h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
            for h in http.header_map.headers
            if h.key.lower() == "x-request-id"
        ]
        candidates += [v for k, v in http.headers.items() if k.lower() == "x-request-id"]
        candidates.append(http.id)
        value = next((c for c in candidates if c), "")
        return value if _REQUEST_ID.fullmatch(value) else ""
    except Exception:  # noqa: BLE001 - the id is a courtesy; never let it turn a deny into an error
        return ""


def bearer_token(request: AuthzRequest) -> str | None:
    """The one bearer token of ``authorization``; None when there is no bearer credential.

    Raises ``authorization_malformed`` for several authorization headers, or for a
    bearer credential that is not exactly one token.
    """
    values = request.authorization
    if not values:
        return None
    if len(values) > 1:
        raise AuthzError("authorization_malformed", "more than one authorization header")
    value = values[0].strip()
    scheme = value.split(" ", 1)[0]
    if scheme.lower() != "bearer":
        return None
    match = _BEARER.fullmatch(value)
    if match is None:
        raise AuthzError("authorization_malformed", "bearer credential is not one token")
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
    return _normalize(raw)[0]


def _normalize(raw: str) -> tuple[str, bool]:
    """The normalized path, and whether the raw path had segment parameters."""
    path = raw.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/") or len(path) > _MAX_PATH:
        raise AuthzError("path_invalid", "path must be absolute and bounded")
    if "\\" in path or any(_is_control(c) for c in path):
        raise AuthzError("path_invalid", "backslash or control character")
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
                raise AuthzError("path_invalid", "dot segment escapes the root")
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
            raise AuthzError("path_invalid", "bad percent escape")
        upper = pair.upper()
        if upper in _FORBIDDEN_ESCAPES:
            raise AuthzError("path_invalid", "encoded slash, backslash or NUL")
        if upper == "3B":
            # Upstreams disagree on whether a decoded ";" starts parameters.
            raise AuthzError("path_invalid", "encoded semicolon")
        decoded = chr(int(upper, 16))
        if decoded in _UNRESERVED:
            out.append(decoded)
        elif int(upper, 16) < 0x20 or upper == "7F":
            raise AuthzError("path_invalid", "encoded control character")
        else:
            out.append("%" + upper)
        i += 3
    return "".join(out)


def _headers(
    plain: Mapping[str, str], raw: Iterable[tuple[str, bytes, str]]
) -> Mapping[str, tuple[str, ...]]:
    """Merge ``headers`` (map) and ``header_map`` (Envoy's encode_raw_headers)."""
    merged: dict[str, list[str]] = {}
    for key, raw_value, value in raw:
        text = raw_value.decode("utf-8", "replace") if raw_value else value
        merged.setdefault(key.lower(), []).append(text)
    for key, value in plain.items():
        values = merged.setdefault(key.lower(), [])
        if value not in values:
            values.append(value)
    return MappingProxyType({k: tuple(v) for k, v in merged.items()})


def _first(headers: Mapping[str, tuple[str, ...]], name: str) -> str:
    values = headers.get(name)
    return values[0] if values else ""
