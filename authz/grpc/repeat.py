"""The answer memo's reading of a CheckRequest: what a repeat is keyed by, read before anything else.

A repeat is answered from this reading alone, so it is the gRPC door's floor: between real RPCs
each bytecode costs several times what it costs in a loop, and this reads the headers in bulk
(C-level joins and list searches) in the one form Envoy sends them, leaving any other form to
the full reading (``from_check_request``), which decides it.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from authz.core.answer import identity_spellings
from authz.core.memo import NEVER_REPEATED_HEADERS, dpop_scheme
from authz.core.request import METHOD_OVERRIDE_HEADERS, CertificateSource, plain_request_id
from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from authz.telemetry.tracing import TRACE_HEADERS

__all__ = ["KEPT_AUTHORIZATION", "KEPT_REST", "NOT_REPEATS", "RepeatRead", "read_repeat"]


class RepeatRead(NamedTuple):
    """What the memo needs of a request it may answer."""

    key: tuple[object, ...]  # every value the decision and its allow read from the request (or digests)
    request_id: str  # as from_check_request reads it
    trace_headers: dict[str, tuple[str]] | None  # the first value of each trace-context header sent
    peer_certificate: str  # attributes.source.certificate, as given
    forwarded_certificate: str  # the x-forwarded-client-cert values, joined as the request reads them

    def certificate(self, source: CertificateSource) -> str:
        """The client certificate the decision reads from ``source`` (core.memo.certificate_of)."""
        return self.peer_certificate if source is CertificateSource.PEER else self.forwarded_certificate


_AUTHORIZATION, _REQUEST_ID = "authorization", "x-request-id"
# The client certificate as a front proxy forwards it (a certificate-bound token's binding may be
# read from it instead of the peer's): part of the key, like the peer certificate.
_XFCC = "x-forwarded-client-cert"
# Read by the decision (method_override), or never repeated by the core's memo rules (a DPoP
# proof is single-use): a request carrying one is never a repeat.
NOT_REPEATS = frozenset(METHOD_OVERRIDE_HEADERS) | NEVER_REPEATED_HEADERS
_KEY = operator.attrgetter("key")
# What a kept answer's key holds as sent: an authorization value up to KEPT_AUTHORIZATION bytes,
# the rest of the request's values up to KEPT_REST characters together; beyond either, that part
# is held as its BLAKE2b digest (costlier to make, but an entry stays a few KiB whatever a client
# sends: a 50 KB query string is 32 bytes of key).
KEPT_AUTHORIZATION = 2048
KEPT_REST = 1024
# The start of a Bearer credential in any case: no DPoP scheme, and no leading space to strip.
_BEARER_HEAD = b"beare"
_DIGEST = "blake2b"  # marks a digest in the key: a tuple, never equal to a value as sent


def _digest(*values: str | tuple[tuple[str, str], ...]) -> bytes:
    """BLAKE2b of the values (strings, then the routed pairs), each length-prefixed, after their
    count: no two lists of values (in their fixed order) give the same text."""
    parts: list[str] = []
    for value in values:
        for first, second in value if isinstance(value, tuple) else ((value, ""),):
            parts.append(f"{len(first)}:{len(second)}:{first}{second}")
    text = f"{len(parts)}:" + "".join(parts)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=32).digest()


# authorization (the bytes sent), request id, forwarded client certificates (joined), trace-context headers
_Found = tuple[bytes, str, str, dict[str, tuple[str]] | None]


def read_repeat(message: CheckRequest) -> RepeatRead | None:
    """The memo's reading of ``message``; None for a request the memo never answers nor keeps.

    The key holds what ``from_check_request`` and the decision read: method, target, host,
    scheme, the route's context extensions, the peer's principal and certificate, a forwarded
    client certificate (a certificate-bound token's allow holds for its certificate alone) and
    the ``authorization`` value's bytes, as sent (tuples compare item by item: no two requests
    that differ in any of them share a key), or as digests where long (KEPT_AUTHORIZATION,
    KEPT_REST). Never a repeat: a request whose method, path, host or scheme Envoy left to the
    pseudo-headers, with headers in both forms (Envoy sends one), a header name Envoy would not
    send (not lower-case ASCII), no or several ``authorization`` values, a method override, a
    ``dpop`` header or the DPoP scheme, or another spelling of an identity header.
    """
    attributes = message.attributes
    http = attributes.request.http
    method, target, host, scheme = http.method, http.path, http.host, http.scheme
    if not (method and target and host and scheme):
        return None  # left to the pseudo-headers, which the key does not hold
    entries, plain = http.header_map.headers, http.headers
    found = (None if plain else _scan_entries(entries)) if entries else _scan_plain(plain)  # one form
    if found is None:
        return None
    authorization, request_id, forwarded, traced = found
    if authorization[:5].lower() != _BEARER_HEAD and dpop_scheme(authorization):
        return None  # a DPoP proof's request (core.memo's rule)
    source = attributes.source
    certificate, principal = source.certificate, source.principal
    extensions = attributes.context_extensions
    routed = tuple(sorted(extensions.items())) if extensions else ()
    kept: object = authorization
    if len(authorization) > KEPT_AUTHORIZATION:
        kept = (_DIGEST, hashlib.blake2b(authorization, digest_size=32).digest())
    rest: tuple[object, ...] = (method, target, host, scheme, principal, certificate, forwarded, routed)
    size = len(method) + len(target) + len(host) + len(scheme) + len(principal) + len(certificate)
    size += len(forwarded) + (sum(len(k) + len(v) for k, v in routed) if routed else 0)
    if size > KEPT_REST:
        rest = (_DIGEST, _digest(method, target, host, scheme, principal, certificate, forwarded, routed))
    key = (rest, kept)
    return RepeatRead(key, plain_request_id(request_id or http.id), traced, certificate, forwarded)


def _names_pass(names: list[str]) -> bool:
    """Whether headers of these names may be a repeat: lower-case ASCII (as Envoy sends them), one
    authorization, nothing never repeated, no other spelling of an identity header."""
    joined = "\n".join(names)
    return (
        joined.isascii()
        and joined.islower()
        and names.count(_AUTHORIZATION) == 1
        and NOT_REPEATS.isdisjoint(names)
        and ("authz" not in joined or not identity_spellings(names))
    )


def _scan_entries(entries: Sequence[Any]) -> _Found | None:
    """header_map (Envoy's encode_raw_headers: one entry per header, raw values)."""
    names = list(map(_KEY, entries))
    if not _names_pass(names):
        return None
    entry = entries[names.index(_AUTHORIZATION)]
    authorization: bytes = entry.raw_value or entry.value.encode("utf-8", "surrogatepass")
    request_id = _value(entries[names.index(_REQUEST_ID)]) if _REQUEST_ID in names else ""
    forwarded = ""
    if _XFCC in names:  # every value, as the full reading keeps them
        forwarded = ",".join(_value(entries[i]) for i, name in enumerate(names) if name == _XFCC)
    traced = None
    if not TRACE_HEADERS.isdisjoint(names):
        traced = {name: (_value(entries[names.index(name)]),) for name in TRACE_HEADERS if name in names}
    return authorization, request_id, forwarded, traced


def _scan_plain(plain: Mapping[str, str]) -> _Found | None:
    """The headers map (Envoy's default form: one value per name)."""
    names = list(plain)
    if not _names_pass(names):
        return None
    get = plain.get
    traced = None
    if not TRACE_HEADERS.isdisjoint(names):
        traced = {name: (plain[name],) for name in TRACE_HEADERS if name in plain}
    # As bytes, as header_map's raw value: either form keys a value alike (UTF-8 is a text's only encoding).
    authorization = plain[_AUTHORIZATION].encode("utf-8", "surrogatepass")
    return authorization, get(_REQUEST_ID, ""), get(_XFCC, ""), traced


def _value(entry: object) -> str:
    """A header_map entry's value as ``from_check_request`` reads it (raw bytes first)."""
    raw: bytes = entry.raw_value  # type: ignore[attr-defined]
    return raw.decode("utf-8", "replace") if raw else entry.value  # type: ignore[attr-defined]
