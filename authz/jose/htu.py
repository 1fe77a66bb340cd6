"""The canonical form of a DPoP ``htu`` (RFC 9449 §4.2, §4.3 (9)): one string per resource.

RFC 3986 §6.2.2 (case, percent-encoding, dot segments) and §6.2.3 (default port, empty
path), nothing more lenient: no IDNA, no IP interpretation, no decoding of reserved
characters. The path rules are the request's (authz.core.request.normalize_target,
re-stated because jose imports nothing of the core; a property test keeps them equal), so
a proof's ``htu`` and the request's origin plus path compare as plain strings. A query, a
fragment, userinfo or anything not ASCII makes the value invalid.
"""

from __future__ import annotations

import ipaddress
import re

from authz.errors import AuthzError, Reason
from authz.paths import decode_unreserved, remove_dot_segments, strip_parameters

__all__ = ["MAX_HTU_CHARS", "canonical_htu", "canonical_origin"]

MAX_HTU_CHARS = 4096

_INVALID = Reason.DPOP_PROOF_INVALID

_DEFAULT_PORTS = {"http": "80", "https": "443"}

# scheme "://" authority path-abempty; "?" and "#" were refused before.
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/]*)(/.*)?", re.DOTALL)

# RFC 3986 reg-name without pct-encoded (a "%" in a host is refused), lower-cased.
_REG_NAME = re.compile(r"[a-z0-9\-._~!$&'()*+,;=]+")

_IP_LITERAL = re.compile(r"\[([0-9a-f:.]+)\]")

_PORT = re.compile(r"[1-9][0-9]{0,4}")

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

# RFC 3986 3.3: pchar = unreserved / pct-encoded / sub-delims / ":" / "@"; plus "/".
_PATH_CHARS = _UNRESERVED | frozenset("!$&'()*+,;=:@/%")


def canonical_htu(url: str, *, path_parameters: bool = False) -> str:
    """``scheme://host[:port]/path`` in canonical form, or AuthzError(dpop_proof_invalid).

    ``path_parameters``: segment parameters (``/a;v=1/b``) are removed, as the request's
    are when the configuration allows them; otherwise a ``;`` in the path is invalid.
    """
    if not isinstance(url, str) or len(url) > MAX_HTU_CHARS or not url.isascii():
        raise AuthzError(_INVALID, "htu is not an ASCII string of bounded length")
    if "?" in url or "#" in url:
        raise AuthzError(_INVALID, "htu has a query or fragment")
    match = _URL.fullmatch(url)
    if match is None:
        raise AuthzError(_INVALID, "htu is not an absolute http(s) URI")
    scheme = match.group(1).lower()
    default_port = _DEFAULT_PORTS.get(scheme)
    if default_port is None:
        raise AuthzError(_INVALID, "htu scheme is not http or https")
    authority = _authority(match.group(2), default_port)
    return f"{scheme}://{authority}{_path(match.group(3) or '/', path_parameters)}"


def canonical_origin(origin: str) -> str:
    """``scheme://host[:port]`` in canonical form, for a tenant's configured ``origins``.

    Raises ValueError with the reason (configuration, not a request): the expected
    ``htu`` of a request is then ``canonical_origin(o) + normalized request path``.
    """
    try:
        canonical = canonical_htu(origin)
    except AuthzError as exc:
        raise ValueError(f"not an http(s) origin ({exc.detail})") from None
    match = _URL.fullmatch(origin)
    if match is None or match.group(3) not in (None, "/"):
        raise ValueError("an origin has no path (scheme://host[:port] only)")
    return canonical[:-1]


def _authority(authority: str, default_port: str) -> str:
    if "@" in authority:
        raise AuthzError(_INVALID, "htu has userinfo")
    if authority.startswith("["):
        end = authority.find("]")
        host, rest = authority[: end + 1].lower(), authority[end + 1 :]
        literal = _IP_LITERAL.fullmatch(host) if end != -1 else None
        if literal is None or not _is_ipv6(literal.group(1)):
            raise AuthzError(_INVALID, "htu host is not an IPv6 literal")
        if rest and not rest.startswith(":"):
            raise AuthzError(_INVALID, "htu authority has text after the host")
        port = rest[1:]
        has_port = bool(rest)
    else:
        host, colon, port = authority.partition(":")
        has_port = bool(colon)
        host = host.lower()
        if _REG_NAME.fullmatch(host) is None:
            raise AuthzError(_INVALID, "htu host is not a registered name")
        # "api.acme.test." names the same host: one trailing dot goes (as normalize_host).
        if host.endswith(".") and not host.endswith(".."):
            host = host[:-1]
            if not host:
                raise AuthzError(_INVALID, "htu host is empty")
    if has_port and port:
        if _PORT.fullmatch(port) is None or int(port) > 65535:
            raise AuthzError(_INVALID, "htu port is not 1-65535 without leading zeros")
        if port != default_port:
            return f"{host}:{port}"
    return host


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _path(path: str, path_parameters: bool) -> str:
    if not set(path) <= _PATH_CHARS:
        raise AuthzError(_INVALID, "htu path has a character outside RFC 3986 pchar")
    decoded, parameters = strip_parameters(decode_unreserved(path, _INVALID))
    if parameters and not path_parameters:
        raise AuthzError(_INVALID, "htu path has segment parameters")
    return remove_dot_segments(decoded, _INVALID)
