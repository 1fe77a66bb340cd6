"""Envoy's CheckRequest -> AuthzRequest, and an answer -> CheckResponse."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from authz.core.answer import (
    client_headers,
    deny_headers,
    error_body,
    upstream_headers,
)
from authz.core.decision import Decision, reject
from authz.core.request import (
    AuthzRequest,
    first,
    make_request,
    plain_request_id,
)
from authz.errors import AuthzError, Outcome, Reason
from authz.grpc._proto.envoy.config.core.v3.base_pb2 import HeaderValueOption
from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

__all__ = [
    "fallback_deny",
    "from_check_request",
    "parse",
    "read",
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
