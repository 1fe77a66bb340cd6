"""Envoy's CheckRequest -> AuthzRequest, and an answer -> CheckResponse."""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple

from authz.core.answer import (
    IDENTITY_HEADERS,
    client_headers,
    deny_headers,
    error_body,
    identity_spellings,
    upstream_headers,
)
from authz.core.decision import Decision, reject
from authz.core.memo import NEVER_REPEATED_HEADERS, dpop_scheme
from authz.core.request import (
    METHOD_OVERRIDE_HEADERS,
    AuthzRequest,
    CertificateSource,
    first,
    make_request,
    plain_request_id,
)
from authz.errors import AuthzError, Outcome, Reason
from authz.grpc._proto.envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from authz.telemetry.tracing import TRACE_HEADERS

__all__ = [
    "RepeatRead",
    "fallback_deny",
    "from_check_request",
    "parse",
    "read",
    "read_repeat",
    "request_id_of",
    "to_check_response",
]

_GRPC_CODES = {
    "INVALID_ARGUMENT": 3,
    "PERMISSION_DENIED": 7,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "UNAUTHENTICATED": 16,
}

_OVERWRITE = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_APPEND = HeaderValueOption.APPEND_IF_EXISTS_OR_ADD


def parse(data: bytes) -> CheckRequest | Decision:
    """A serialized CheckRequest, or the deny for bytes that do not even parse."""
    try:
        message: CheckRequest = CheckRequest.FromString(data)
    except Exception as exc:  # noqa: BLE001 - DecodeError, or invalid UTF-8 in a string field
        return reject(Reason.REQUEST_MALFORMED, f"undecodable CheckRequest ({type(exc).__name__})")
    return message


def read(message: CheckRequest) -> tuple[AuthzRequest | None, Decision | None, str]:
    """Read a CheckRequest: (request, None, request id), or (None, the deny, request id)."""
    try:
        request = from_check_request(message)
    except AuthzError as exc:
        return None, reject(exc.code, exc.detail), request_id_of(message)
    except Exception as exc:  # noqa: BLE001 - fail closed
        return (
            None,
            reject(Reason.REQUEST_MALFORMED, f"unexpected {type(exc).__name__}"),
            request_id_of(message),
        )
    return request, None, request.request_id


def from_check_request(message: CheckRequest) -> AuthzRequest:
    """Read an Envoy CheckRequest; raises AuthzError for a request that cannot be evaluated safely.

    The method is taken exactly as sent (Envoy's HTTP/2 codec passes ``get``; it is not GET).
    """
    http = message.attributes.request.http
    headers = _headers(http.headers, ((h.key, h.raw_value, h.value) for h in http.header_map.headers))
    request_id = first(headers, "x-request-id") or http.id
    return make_request(
        method=http.method or first(headers, ":method"),
        target=http.path or first(headers, ":path"),
        host=http.host or first(headers, ":authority") or first(headers, "host"),
        scheme=http.scheme or first(headers, ":scheme"),
        headers=headers,
        context_extensions=MappingProxyType(dict(message.attributes.context_extensions)),
        peer_principal=message.attributes.source.principal,
        request_id=plain_request_id(request_id),
        peer_certificate=message.attributes.source.certificate,
    )


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
        return plain_request_id(value)
    except Exception:  # noqa: BLE001 - the id is a courtesy; never let it turn a deny into an error
        return ""


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


def to_check_response(decision: Decision, request_id: str, carried: Iterable[str] = ()) -> CheckResponse:
    """The gRPC answer; ``carried``: the request's header names (other spellings of ours are removed)."""
    response = CheckResponse()
    _metadata(response, decision)
    if decision.allowed:
        response.status.code = 0
        _allow(response, decision, carried)
        return response
    outcome = decision.outcome or Outcome.FORBIDDEN  # a deny always has one
    response.status.code = _GRPC_CODES[outcome.grpc_code]
    denied = response.denied_response
    denied.status.code = outcome.http_status  # type: ignore[assignment]
    for name, value in deny_headers(decision):
        _add(denied.headers, name, value)
    denied.body = error_body(decision, request_id)
    return response


def _allow(response: CheckResponse, decision: Decision, carried: Iterable[str]) -> None:
    ok = response.ok_response
    to_set, to_remove = upstream_headers(decision, carried)
    for name, value in to_set:
        _add(ok.headers, name, value)
    ok.headers_to_remove.extend(to_remove)
    _to_client(ok, decision)


def _to_client(ok: object, decision: Decision) -> None:
    """Headers for the client's response (a fresh DPoP nonce): OkHttpResponse.response_headers_to_add.

    The nonce overwrites (RFC 9449 8: never two), ``cache-control`` appends (an
    upstream's directives stay; ``no-store`` wins).
    """
    for name, value in client_headers(decision):
        option = ok.response_headers_to_add.add()  # type: ignore[attr-defined]
        option.header.key = name
        option.header.value = value
        option.append_action = _OVERWRITE if name != "cache-control" else _APPEND


def _add(headers: object, name: str, value: str) -> None:
    option = headers.add()  # type: ignore[attr-defined]
    option.header.key = name
    option.header.value = value
    option.append_action = _OVERWRITE


def _metadata(response: CheckResponse, decision: Decision) -> None:
    fields = response.dynamic_metadata.fields
    fields["decision"].string_value = decision.verdict.value
    fields["reason"].string_value = decision.reason
    for name, value in (("tenant", decision.tenant), ("rule", decision.rule), ("subject", decision.subject)):
        if value:
            fields[name].string_value = value


def fallback_deny(request_id: str) -> CheckResponse:
    """The ``internal_error`` deny, built from constants: it cannot fail as the response it replaces did.

    The same message as ``to_check_response(reject("internal_error"), request_id)``
    (tests hold them equal); ``json.dumps`` escapes the request id to ASCII.
    """
    response = CheckResponse()
    fields = response.dynamic_metadata.fields
    fields["decision"].string_value = "deny"
    fields["reason"].string_value = Reason.INTERNAL_ERROR
    response.status.code = 13  # INTERNAL
    denied = response.denied_response
    denied.status.code = 500  # type: ignore[assignment]
    for name, value in (("content-type", "application/json"), ("cache-control", "no-store")):
        option = denied.headers.add()
        option.header.key = name
        option.header.value = value
        option.append_action = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    rid = json.dumps(request_id)
    denied.body = f'{{"error": "server_error", "reason": "internal_error", "request_id": {rid}}}'
    return response


# -- the answer memo's reading of a CheckRequest (authz.grpc.servicer) -------------------------------
# Kept apart from from_check_request: what a repeat is keyed by, read without building the request,
# and in bulk (C-level joins and list searches) for the headers as Envoy sends them.


class RepeatRead(NamedTuple):
    """What the memo needs of a request it may answer."""

    key: bytes  # a digest of everything the decision and its allow read from the request
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
_NOT_REPEATS = frozenset(METHOD_OVERRIDE_HEADERS) | NEVER_REPEATED_HEADERS
# Another spelling of an identity header is named in the allow's removals (identity_spellings).
_SPELLING_LENGTHS = frozenset(len(name) for name in IDENTITY_HEADERS)
_NOTABLE = frozenset({_AUTHORIZATION, _REQUEST_ID, _XFCC}) | TRACE_HEADERS | _NOT_REPEATS
_KEY = operator.attrgetter("key")

# authorization (text, or the raw bytes it is read from), request id, forwarded client
# certificates (joined), trace-context headers
_Found = tuple[str | bytes | None, str, str, dict[str, tuple[str]] | None]


def read_repeat(message: CheckRequest) -> RepeatRead | None:
    """The memo's reading of ``message``; None for a request the memo never answers nor keeps.

    The key is a digest of what ``from_check_request`` and the decision read: method, target,
    host, scheme, the ``authorization`` value, the route's context extensions, the peer's
    principal and certificate, and a forwarded client certificate (a certificate-bound token's
    allow holds for its certificate alone). Never a repeat: a request whose method, path or
    host Envoy left to the pseudo-headers, with several ``authorization`` values, a method
    override, a ``dpop`` header or another spelling of an identity header. Headers are read
    as ``_headers`` merges them.
    """
    attributes = message.attributes
    http = attributes.request.http
    method, target, host = http.method, http.path, http.host
    if not (method and target and host):
        return None
    entries, plain = http.header_map.headers, http.headers
    if entries and plain:
        found = _walk(entries, plain)
    elif entries:
        found = _scan(list(map(_KEY, entries)), entries, plain)
    else:
        found = _scan(list(plain), entries, plain)
    if found is None:
        return None
    authorization, request_id, forwarded, traced = found
    if authorization is not None and dpop_scheme(authorization):
        return None  # a DPoP proof's request (core.memo's rule)
    source = attributes.source
    extensions = attributes.context_extensions
    routed = "".join(f"{len(k)}:{len(v)}:{k}{v}" for k, v in sorted(extensions.items())) if extensions else ""
    fields = (method, target, host, http.scheme, source.principal, source.certificate, forwarded, routed)
    text = "%d:%d:%d:%d:%d:%d:%d:%d:" % tuple(map(len, fields)) + "".join(fields)  # noqa: UP031 - the fastest
    key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=20)
    if authorization is not None:
        # Last, so unprefixed. Raw bytes as sent: they decode to one text only, and a text's
        # UTF-8 is its only valid encoding, so equal bytes are always equal authorization.
        key.update(
            authorization
            if isinstance(authorization, bytes)
            else authorization.encode("utf-8", "surrogatepass")
        )
    certificate = source.certificate
    return RepeatRead(key.digest(), plain_request_id(request_id or http.id), traced, certificate, forwarded)


def _scan(names: list[str], entries: Sequence[HeaderValue], plain: Mapping[str, str]) -> _Found | None:
    """One header form, searched in bulk: lower-case ASCII names (as Envoy sends them), else ``_walk``."""
    joined = "\n".join(names)
    if not (joined.isascii() and joined.islower()) or joined.count("\n") != len(names) - 1:
        return _walk(entries, plain)  # a name Envoy would not send: read one by one
    if "authz" in joined and identity_spellings(names):
        return None
    if not _NOT_REPEATS.isdisjoint(names):
        return None
    count = names.count(_AUTHORIZATION)
    if count > 1:
        return None  # authorization_malformed: a deny, decided every time

    def value(name: str) -> str:
        if not entries:
            return plain[name]
        return _value(entries[names.index(name)])  # the first, as _headers keeps them

    authorization: str | bytes | None = None
    if count:
        if entries:
            entry = entries[names.index(_AUTHORIZATION)]
            authorization = entry.raw_value or entry.value.encode("utf-8", "surrogatepass")
        else:
            authorization = plain[_AUTHORIZATION]
    request_id = value(_REQUEST_ID) if _REQUEST_ID in names else ""
    forwarded = ""
    if _XFCC in names:  # every value, as the full reading keeps them
        forwarded = (
            ",".join(_value(entries[i]) for i, name in enumerate(names) if name == _XFCC)
            if entries
            else plain[_XFCC]
        )
    traced = None
    if not TRACE_HEADERS.isdisjoint(names):
        traced = {name: (value(name),) for name in TRACE_HEADERS if name in names}
    return authorization, request_id, forwarded, traced


def _walk(entries: Iterable[HeaderValue], plain: Mapping[str, str]) -> _Found | None:
    """Both header forms, one header at a time, merged as ``_headers`` merges them."""
    authorization: list[str] = []
    request_ids: list[str] = []
    forwarded: list[str] = []
    traced: dict[str, list[str]] = {}
    merged = [(entry.key.lower(), _value(entry)) for entry in entries]
    for index, (name, value) in enumerate(merged + [(k.lower(), v) for k, v in plain.items()]):
        if name not in _NOTABLE:
            if len(name) in _SPELLING_LENGTHS and identity_spellings((name,)):
                return None
            continue
        if name in _NOT_REPEATS:
            return None
        values = (
            authorization
            if name == _AUTHORIZATION
            else request_ids
            if name == _REQUEST_ID
            else forwarded
            if name == _XFCC
            else traced.setdefault(name, [])
        )
        if index < len(merged) or value not in values:  # a map value already sent raw is the same header
            values.append(value)
    if len(authorization) > 1:
        return None
    trace_headers = {name: (values[0],) for name, values in traced.items()} if traced else None
    return (
        (authorization[0] if authorization else None),
        (request_ids[0] if request_ids else ""),
        ",".join(forwarded),
        trace_headers,
    )


def _value(entry: HeaderValue) -> str:
    """A header_map entry's value as ``from_check_request`` reads it (raw bytes first)."""
    raw = entry.raw_value
    return raw.decode("utf-8", "replace") if raw else entry.value
