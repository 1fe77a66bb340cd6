"""Decision -> CheckResponse: the one place that decides what Envoy is told.

Allow: gRPC OK, identity headers for the upstream set with overwrite
semantics (a client can never smuggle its own copies; absent values are
removed), every other spelling of them the request carried removed, optional
removal of ``authorization``, dynamic metadata for Envoy's access log. Deny: the
HTTP status and ``www-authenticate`` of RFC 6750, a small JSON body with the
reason code and request id, never token or library text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from authz._proto.envoy.config.core.v3.base_pb2 import HeaderValueOption
from authz._proto.envoy.service.auth.v3.external_auth_pb2 import CheckResponse
from authz.decision import Decision
from authz.errors import Outcome

__all__ = [
    "IDENTITY_HEADERS",
    "challenge",
    "deny_headers",
    "error_body",
    "identity_spellings",
    "to_check_response",
    "to_http_response",
    "upstream_headers",
]

TENANT_HEADER = "x-authz-tenant"
SUBJECT_HEADER = "x-authz-subject"
SCOPES_HEADER = "x-authz-scopes"
IDENTITY_HEADERS = (TENANT_HEADER, SUBJECT_HEADER, SCOPES_HEADER)
# How an upstream that follows CGI (WSGI, PHP, ...) names a header: upper case, "-" as "_"
# (and, in some servers, every character that is not a letter or digit as "_").
_NOT_ALNUM = re.compile(r"[^A-Z0-9]")
_CGI_IDENTITY = frozenset(_NOT_ALNUM.sub("_", name.upper()) for name in IDENTITY_HEADERS)
_CGI_LENGTHS = frozenset(len(name) for name in IDENTITY_HEADERS)

_GRPC_CODES = {
    "INVALID_ARGUMENT": 3,
    "PERMISSION_DENIED": 7,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "UNAUTHENTICATED": 16,
}
_OVERWRITE = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


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


def deny_headers(decision: Decision) -> list[tuple[str, str]]:
    """Headers of a deny: content type, no caching, and the bearer challenge."""
    headers = [("content-type", "application/json"), ("cache-control", "no-store")]
    value = challenge(decision)
    if value:
        headers.append(("www-authenticate", value))
    return headers


def challenge(decision: Decision) -> str | None:
    """RFC 6750 challenge: bare on a missing token, with the error otherwise."""
    outcome = decision.outcome
    if outcome is Outcome.UNAUTHENTICATED:
        if decision.reason == "token_missing":
            return "Bearer"
        return 'Bearer error="invalid_token"'
    if decision.reason == "scope_missing":
        return f'Bearer error="insufficient_scope", scope="{" ".join(decision.missing_scopes)}"'
    return None


def error_body(decision: Decision, request_id: str) -> str:
    """The deny body: an error word, the reason code, the request id. Nothing else."""
    outcome = decision.outcome
    error = {
        Outcome.BAD_REQUEST: "invalid_request",
        Outcome.UNAUTHENTICATED: "unauthorized" if decision.reason == "token_missing" else "invalid_token",
        Outcome.FORBIDDEN: "insufficient_scope" if decision.reason == "scope_missing" else "forbidden",
        Outcome.INTERNAL: "server_error",
        Outcome.UNAVAILABLE: "temporarily_unavailable",
    }.get(outcome, "forbidden")  # type: ignore[arg-type]
    return json.dumps({"error": error, "reason": decision.reason, "request_id": request_id})


def identity_spellings(carried: Iterable[str]) -> list[str]:
    """The names in ``carried`` that an upstream could read as one of our identity headers,
    other than our own spelling of them: each once, as the request spelled it.

    A CGI or WSGI upstream (Python's wsgiref, PHP, many frameworks) reads ``x_authz_subject``,
    ``X_Authz-Subject`` and ``x-authz-subject`` as one key, ``HTTP_X_AUTHZ_SUBJECT``, and joins
    the values: a client's copy would travel beside ours, or alone where we set none. Our own
    names (in any case: header names are case-insensitive) are set or removed by every allow
    anyway; each of these has a character other than a letter, a digit or ``-``, so removing
    it never removes ours.
    """
    found: list[str] = []
    for name in carried:
        if (
            len(name) in _CGI_LENGTHS
            and _NOT_ALNUM.sub("_", name.upper()) in _CGI_IDENTITY
            and name.lower() not in IDENTITY_HEADERS
            and name not in found
        ):
            found.append(name)
    return found


def upstream_headers(
    decision: Decision, carried: Iterable[str] = ()
) -> tuple[list[tuple[str, str]], list[str]]:
    """An allow's headers for the upstream: (set with overwrite, remove). Both doors use this.

    ``carried`` are the request's header names: other spellings of ours among them are removed.
    """
    values = {
        TENANT_HEADER: decision.tenant,
        SUBJECT_HEADER: decision.subject if decision.identity else None,
        SCOPES_HEADER: " ".join(decision.scopes) if decision.identity else None,
    }
    to_set = [(name, value) for name, value in values.items() if value]
    to_remove = [name for name, value in values.items() if not value]
    to_remove += identity_spellings(carried)
    if decision.strip_authorization:
        to_remove.append("authorization")
    return to_set, to_remove


def to_http_response(
    decision: Decision, request_id: str, carried: Iterable[str] = ()
) -> tuple[int, list[tuple[str, str]], bytes]:
    """The answer of the HTTP door (Envoy's ``http_service``): status, headers, body.

    Allow is 200 with the identity headers (Envoy copies those its
    ``allowed_upstream_headers`` name, overwriting the client's) and
    ``x-envoy-auth-headers-to-remove`` for the ones to drop, other spellings of
    ours among ``carried`` (the request's header names) included. Deny is the
    same status, challenge and JSON body as the gRPC door's denied response
    (nothing reaches the upstream, so there is nothing to remove).
    """
    if decision.allowed:
        to_set, to_remove = upstream_headers(decision, carried)
        if to_remove:
            to_set.append(("x-envoy-auth-headers-to-remove", ",".join(to_remove)))
        return 200, to_set, b""
    outcome = decision.outcome or Outcome.FORBIDDEN
    return outcome.http_status, deny_headers(decision), error_body(decision, request_id).encode("utf-8")


def _allow(response: CheckResponse, decision: Decision, carried: Iterable[str]) -> None:
    ok = response.ok_response
    to_set, to_remove = upstream_headers(decision, carried)
    for name, value in to_set:
        _add(ok.headers, name, value)
    ok.headers_to_remove.extend(to_remove)


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
