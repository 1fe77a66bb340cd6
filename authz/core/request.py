"""The request model: what a decision reads, and the normalization rules matched against.

Both doors build their request with :func:`make_request`, which checks in one order what
cannot be evaluated safely, before any tenant is chosen: a method outside :data:`METHODS`
(matched exactly as sent: ``get`` is not ``GET``) is ``request_malformed``; a Host that is
not ``host[:port]`` (RFC 9110 §7.2; no userinfo) is ``host_invalid``; a path that cannot be
normalized safely (an encoded ``/``, ``\\`` or ``;``, a control character, a ``..`` above
the root, a bad escape) is ``path_invalid``; a method override naming another method is
``method_override``. We refuse to guess how the upstream would read such a request.

What sender-constrained tokens need is read here too, as sent: the credentials' scheme
(``Bearer`` or ``DPoP``, any case), every ``dpop`` header value, the scheme and authority
for a proof's ``htu``, and the client certificate the door was given (never parsed here).
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import unquote_plus

from authz.errors import AuthzError, Reason
from authz.jose.thumbprint import x5t_from_envoy_certificate, x5t_from_xfcc
from authz.paths import decode_unreserved, remove_dot_segments, strip_parameters

__all__ = [
    "METHODS",
    "METHOD_OVERRIDE_HEADERS",
    "XFCC_HEADER",
    "AuthzRequest",
    "CertificateSource",
    "ClientCertificate",
    "Credentials",
    "Scheme",
    "bearer_token",
    "check_method_override",
    "client_certificate",
    "credentials",
    "first",
    "make_request",
    "normalize_host",
    "normalize_path",
    "normalize_target",
    "plain_request_id",
]

_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*) *")
# RFC 9449 7.1: "DPoP" 1*SP token68, the scheme in any case (RFC 9110 11.1).
_DPOP = re.compile(r"[Dd][Pp][Oo][Pp] +([A-Za-z0-9\-._~+/]+=*) *")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")

_MAX_PATH = 8192

# The methods a rule can name (RFC 9110 §9 and PATCH, RFC 5789), matched exactly as sent:
# methods are case-sensitive (RFC 9110 §9.1), and upstreams differ on what else they run
# (Go's ServeMux, Tomcat's HttpServlet: ``get`` is not GET). Anything else is refused.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})

# Headers with which frameworks replace a POST's method (Rails' Rack::MethodOverride,
# Symfony/Laravel, Express method-override, ASP.NET Core UseHttpMethodOverride).
METHOD_OVERRIDE_HEADERS = ("x-http-method-override", "x-http-method", "x-method-override")
# The same as a query parameter (Symfony/Laravel read ``_method`` from the query too).
_OVERRIDE_PARAMETER = "_method"
# PHP turns " " and "." in a parameter name into "_" ("?.method=" is $_GET["_method"]).
_PHP_NAME = str.maketrans({" ": "_", ".": "_"})

# reg-name (RFC 9110 §4.2.3 via RFC 3986): LDH labels (RFC 1123) separated by dots.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_OCTET = re.compile(r"0|[1-9][0-9]{0,2}")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")  # what URL parsers read as part of an IPv4 address
_IPV6_CHARS = frozenset("0123456789abcdef:.")
_PORT = re.compile(r"[0-9]{1,5}")


class CertificateSource(enum.Enum):
    """Where a door reads the client certificate of the downstream TLS connection."""

    PEER = "peer"  # gRPC: attributes.source.certificate, Envoy's URL-encoded PEM
    XFCC = "xfcc"  # x-forwarded-client-cert Hash=, set by an Envoy that sanitizes it


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """The client certificate a door was given, as given; hashed only when a token is bound to one."""

    source: CertificateSource
    value: str  # the URL-encoded PEM, or the x-forwarded-client-cert value

    def x5t(self) -> str:
        """RFC 8705 ``x5t#S256`` of the certificate; AuthzError(client_certificate_missing)
        for an empty or malformed value."""
        if self.source is CertificateSource.PEER:
            found = x5t_from_envoy_certificate(self.value)
            if found is None:
                raise AuthzError(Reason.CLIENT_CERTIFICATE_MISSING, "no peer certificate")
            return found
        return x5t_from_xfcc(self.value)


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
    # The Host as sent (checked by normalize_host, port kept): a DPoP proof's htu names it.
    authority: str = ""
    # gRPC door: attributes.source.certificate as given ("" without one); None: a door
    # without that source (the HTTP door reads x-forwarded-client-cert only).
    peer_certificate: str | None = None

    @property
    def authorization(self) -> tuple[str, ...]:
        return self.headers.get("authorization", ())

    @property
    def dpop(self) -> tuple[str, ...]:
        """Every ``dpop`` header value (a DPoP request must carry exactly one)."""
        return self.headers.get("dpop", ())


class Scheme(enum.Enum):
    """The authorization scheme of an access token."""

    BEARER = "bearer"
    DPOP = "dpop"


class Credentials(NamedTuple):
    scheme: Scheme
    token: str  # the token68 exactly as sent (a DPoP proof's ath hashes these bytes)


XFCC_HEADER = "x-forwarded-client-cert"


def client_certificate(request: AuthzRequest, source: CertificateSource) -> ClientCertificate | None:
    """The client certificate the request carries from ``source`` (a door without a peer
    certificate reads x-forwarded-client-cert); None without one. Never a fallback from the
    configured source to another: a client could set the other."""
    if source is CertificateSource.PEER and request.peer_certificate is not None:
        value = request.peer_certificate
        return ClientCertificate(CertificateSource.PEER, value) if value else None
    values = request.headers.get(XFCC_HEADER, ())
    # Several fields: joined, so the element count refuses them (one element only).
    return ClientCertificate(CertificateSource.XFCC, ",".join(values)) if values else None


def credentials(request: AuthzRequest) -> Credentials | None:
    """The one access token of ``authorization`` and its scheme; None when there is none.

    ``Bearer`` and ``DPoP`` are matched in any case. Raises ``authorization_malformed``
    for several authorization headers, or for a credential of either scheme that is not
    exactly one token. Other schemes (Basic, ...) are no access token.
    """
    values = request.authorization
    if not values:
        return None
    if len(values) > 1:
        raise AuthzError(Reason.AUTHORIZATION_MALFORMED, "more than one authorization header")
    value = values[0].strip()
    scheme = value.split(" ", 1)[0].lower()
    if scheme == "bearer":
        pattern, found = _BEARER, Scheme.BEARER
    elif scheme == "dpop":
        pattern, found = _DPOP, Scheme.DPOP
    else:
        return None
    match = pattern.fullmatch(value)
    if match is None:
        raise AuthzError(Reason.AUTHORIZATION_MALFORMED, f"{found.value} credential is not one token")
    return Credentials(found, match.group(1))


def plain_request_id(value: str) -> str:
    """``value`` if it is a plain short request id (safe in logs and bodies), else ""."""
    return value if _REQUEST_ID.fullmatch(value) else ""


def bearer_token(request: AuthzRequest) -> str | None:
    """The one bearer token of ``authorization``; None when there is no bearer credential.

    Raises ``authorization_malformed`` as ``credentials`` does.
    """
    found = credentials(request)
    return found.token if found is not None and found.scheme is Scheme.BEARER else None


def normalize_host(host: str) -> str:
    """The Host (``uri-host [":" port]``) lower-cased, without port or trailing dot; else ``host_invalid``.

    Accepted: an IPv6 literal in brackets (kept with them), a dotted-quad IPv4 address, or a
    name of LDH labels and dots (one trailing dot allowed, and removed: the same name), then
    optionally ``:`` and a port 1-65535. Nothing else: no userinfo (``a@b``: URL parsers read
    ``b``), no second ``:``, no whitespace, ``%``, ``_`` or other characters, no name whose
    last label is a number unless the whole is an IPv4 address (URL parsers read it as one).
    An empty Host (none given) stays empty.
    """
    if not host:
        return ""
    text = host.lower()
    if text.startswith("["):
        end = text.find("]")
        literal, rest = (text[1:end], text[end + 1 :]) if end != -1 else ("", "")
        if end == -1 or not _is_ipv6(literal):
            raise AuthzError(Reason.HOST_INVALID, "not an IPv6 literal in brackets")
        name = text[: end + 1]
    else:
        name, colon, port = text.partition(":")
        rest = colon + port
        if not _is_name(name):
            raise AuthzError(Reason.HOST_INVALID, "not a host name or IPv4 address")
        if name.endswith("."):
            name = name[:-1]
    if rest and not (
        rest.startswith(":") and _PORT.fullmatch(rest[1:]) is not None and 0 < int(rest[1:]) <= 65535
    ):
        raise AuthzError(Reason.HOST_INVALID, "what follows the host is not a port 1-65535")
    return name


def _is_ipv6(literal: str) -> bool:
    # No zone id ("%eth0") and no IPvFuture ("v1.x"): ipaddress would take a zone id.
    if not literal or not set(literal) <= _IPV6_CHARS:
        return False
    try:
        ipaddress.IPv6Address(literal)
    except ValueError:
        return False
    return True


def _is_name(name: str) -> bool:
    labels = (name[:-1] if name.endswith(".") else name).split(".")
    if len(name) > 254 or not all(_LABEL.fullmatch(label) for label in labels):
        return False
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        # "1.2.3", "010.0.0.1", "api.0x7f": IPv4 to URL parsers (WHATWG, inet_aton), in readings
        # that differ. Only the plain dotted quad is one reading for everyone.
        return len(labels) == 4 and all(_OCTET.fullmatch(label) and int(label) <= 255 for label in labels)
    return True


def check_method_override(method: str, target: str, headers: Mapping[str, tuple[str, ...]]) -> None:
    """Refuse (``method_override``) a request that names another method for the upstream to run.

    Frameworks replace a POST's method with ``X-HTTP-Method-Override`` (and two other
    header names) or a ``_method`` query parameter, after authz decided on the method
    the request line carried. A value equal to the request's method (as frameworks compare:
    upper-cased) changes nothing and passes. A ``_method`` in a body is out of our sight:
    the upstream's to turn off.
    """
    for name in METHOD_OVERRIDE_HEADERS:
        for value in headers.get(name, ()):
            if value.strip(" \t").upper() != method:
                raise AuthzError(Reason.METHOD_OVERRIDE, f"{name} names another method")
    query = target.partition("?")[2].partition("#")[0]
    if "method" not in query.lower():
        return  # the common case: no parameter can be a _method
    for parameter in re.split("[&;]", query):
        name, _, value = parameter.partition("=")
        name = unquote_plus(name).lstrip(" ").lower().translate(_PHP_NAME).partition("[")[0]
        if name == _OVERRIDE_PARAMETER and unquote_plus(value).strip(" \t").upper() != method:
            raise AuthzError(Reason.METHOD_OVERRIDE, "a _method query parameter names another method")


def make_request(
    *,
    method: str,
    target: str,
    host: str,
    scheme: str,
    headers: Mapping[str, tuple[str, ...]],
    context_extensions: Mapping[str, str],
    peer_principal: str,
    request_id: str,
    peer_certificate: str | None = None,
) -> AuthzRequest:
    """The request both doors decide on, checked in one order (see the module docstring).

    Raises AuthzError: ``request_malformed``, ``host_invalid``, ``path_invalid``, ``method_override``.
    """
    if method not in METHODS:
        raise AuthzError(Reason.REQUEST_MALFORMED, "method outside the standard set (case-sensitive)")
    normal_host = normalize_host(host)
    path, parameters = normalize_target(target)
    check_method_override(method, target, headers)
    return AuthzRequest(
        method=method,
        path=path,
        host=normal_host,
        scheme=scheme,
        headers=headers,
        context_extensions=context_extensions,
        peer_principal=peer_principal,
        request_id=request_id,
        path_parameters=parameters,
        authority=host,
        peer_certificate=peer_certificate,
    )


def normalize_path(raw: str) -> str:
    """Normalize a request path for matching, or raise AuthzError(path_invalid)."""
    return normalize_target(raw)[0]


def normalize_target(raw: str) -> tuple[str, bool]:
    """The normalized path, and whether the raw path had segment parameters (removed from it)."""
    path = raw.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/") or len(path) > _MAX_PATH:
        raise AuthzError(Reason.PATH_INVALID, "path must be absolute and bounded")
    if "\\" in path or any(_is_control(c) for c in path):
        raise AuthzError(Reason.PATH_INVALID, "backslash or control character")
    decoded, parameters = strip_parameters(decode_unreserved(path, Reason.PATH_INVALID))
    return remove_dot_segments(decoded, Reason.PATH_INVALID), parameters


def _is_control(char: str) -> bool:
    # C0, DEL and C1 (U+0080-U+009F, e.g. NEL): every Unicode control character.
    return char < " " or "\x7f" <= char <= "\x9f"


def first(headers: Mapping[str, tuple[str, ...]], name: str) -> str:
    values = headers.get(name)
    return values[0] if values else ""
