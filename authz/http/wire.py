"""Envoy's HTTP ext_authz protocol (``http_service``): the request it sends, the answer it reads.

Allow is 200 with the identity headers (Envoy copies those its ``allowed_upstream_headers``
name) and ``x-envoy-auth-headers-to-remove``; deny is the gRPC door's status, challenge and
JSON body. A HEAD check gets the GET's head: status, headers, the body's length, no body.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from authz.core.answer import client_headers, deny_headers, error_body, upstream_headers
from authz.core.decision import Decision
from authz.core.request import AuthzRequest, first, make_request, plain_request_id
from authz.errors import AuthzError, Outcome, Reason

__all__ = [
    "HEAD_ANSWERS",
    "HTTP_ANSWERS",
    "HttpAnswers",
    "closing",
    "from_http",
    "http_request_id",
    "internal_error",
    "render",
    "to_http_response",
]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def from_http(
    method: str, target: str, headers: Mapping[str, tuple[str, ...]], *, path_prefix: str = ""
) -> AuthzRequest:
    """Read a request of Envoy's HTTP ext_authz protocol (``http_service``).

    Envoy sends the original method and path (after its ``path_prefix``, which is
    stripped here) and the allowed headers, ``host`` among them. There is no
    per-route context extension in this protocol: the tenant comes from the host.
    Raises AuthzError for a request that cannot be evaluated safely (core.request.make_request).
    """
    if path_prefix:
        if not target.startswith(path_prefix):
            raise AuthzError(Reason.PATH_INVALID, "path does not start with the configured prefix")
        target = target[len(path_prefix) :] or "/"
    return make_request(
        method=method,  # exactly as sent: methods are case-sensitive
        target=target,
        host=first(headers, "host") or first(headers, ":authority"),
        scheme=first(headers, "x-forwarded-proto"),
        headers=headers,
        context_extensions=MappingProxyType({}),
        peer_principal="",
        request_id=http_request_id(headers),
    )


def http_request_id(headers: Mapping[str, tuple[str, ...]]) -> str:
    """Envoy's ``x-request-id`` of an HTTP-door request, if it is a plain short id."""
    request_id = first(headers, "x-request-id")
    return plain_request_id(request_id)


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
        # For the client (Envoy's allowed_client_headers_on_success names them, and only them).
        to_set += client_headers(decision)
        return 200, to_set, b""
    outcome = decision.outcome or Outcome.FORBIDDEN
    return outcome.http_status, deny_headers(decision), error_body(decision, request_id).encode("utf-8")


def closing(answer: bytes) -> bytes:
    """The answer with ``connection: close``: the client must not send on this connection again."""
    if b"\r\nconnection: close\r\n" in answer.partition(b"\r\n\r\n")[0] + b"\r\n":
        return answer
    return answer.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1)


def render(
    status: int, headers: list[tuple[str, str]], body: bytes, *, close: bool = False, head: bool = False
) -> bytes:
    """The response bytes; for a HEAD request, everything but the body (its length is still said)."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", f"content-length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if close:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else body)


_INTERNAL_ERROR_HEAD = (
    b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: %d\r\n"
    b"content-type: application/json\r\ncache-control: no-store\r\n\r\n"
)


def internal_error(request_id: str, *, head: bool) -> bytes:
    """The ``internal_error`` deny, built from constants: it cannot fail as the answer it replaces did.

    The same bytes as rendering ``reject("internal_error")`` (tests hold them
    equal); ``json.dumps`` escapes any character of the request id to ASCII.
    """
    body = b'{"error": "server_error", "reason": "internal_error", "request_id": %s}' % (
        json.dumps(request_id).encode("ascii")
    )
    return _INTERNAL_ERROR_HEAD % len(body) + (b"" if head else body)


class HttpAnswers:
    """The HTTP door's way of writing answers (the core's Door); one for HEAD checks, one for the rest."""

    __slots__ = ("head",)

    def __init__(self, *, head: bool) -> None:
        self.head = head

    def render(self, decision: Decision, request_id: str, carried: Iterable[str]) -> bytes:
        status, headers, body = to_http_response(decision, request_id, carried)
        return render(status, headers, body, head=self.head)

    def fallback(self, request_id: str) -> bytes:
        return internal_error(request_id, head=self.head)


HTTP_ANSWERS = HttpAnswers(head=False)
HEAD_ANSWERS = HttpAnswers(head=True)
