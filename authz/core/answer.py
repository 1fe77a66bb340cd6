"""Decision -> answer as plain data (status, headers to set or remove, body): both doors render it.

Allow: identity headers set with overwrite semantics, absent ones and every other spelling
of them the request carried removed. Deny: RFC 6750 challenge and a JSON body holding the
error word, the reason code and the request id; never token or library text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import replace

from authz.core.decision import Decision, Verdict
from authz.errors import Outcome, Reason

__all__ = [
    "IDENTITY_HEADERS",
    "answer_failed",
    "challenge",
    "deny_headers",
    "error_body",
    "identity_spellings",
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
        if decision.reason == Reason.TOKEN_MISSING:
            return "Bearer"
        return 'Bearer error="invalid_token"'
    if decision.reason == Reason.SCOPE_MISSING:
        return f'Bearer error="insufficient_scope", scope="{" ".join(decision.missing_scopes)}"'
    return None


def error_body(decision: Decision, request_id: str) -> str:
    """The deny body: an error word, the reason code, the request id. Nothing else."""
    outcome = decision.outcome
    error = {
        Outcome.BAD_REQUEST: "invalid_request",
        Outcome.UNAUTHENTICATED: "unauthorized"
        if decision.reason == Reason.TOKEN_MISSING
        else "invalid_token",
        Outcome.FORBIDDEN: "insufficient_scope" if decision.reason == Reason.SCOPE_MISSING else "forbidden",
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


def answer_failed(decision: Decision, exc: BaseException) -> Decision:
    """The deny a decision became because its answer could not be built: what is answered and recorded.

    Tenant, rule and key ids stay (whose check failed, and where); the identity
    goes: it may be the very value that could not be sent.
    """
    return replace(
        decision,
        verdict=Verdict.DENY,
        reason=Reason.INTERNAL_ERROR,
        subject=None,
        scopes=(),
        identity=False,
        missing_scopes=(),
        detail=f"building the answer failed ({type(exc).__name__})",
    )
