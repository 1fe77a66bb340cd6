"""Decision -> answer as plain data (status, headers to set or remove, body): both doors render it.

Allow: identity headers set with overwrite semantics, absent ones and every other spelling
of them the request carried removed; a fresh DPoP nonce for the client when its own is about
to expire. Deny: the challenges (RFC 6750 Bearer, RFC 9449 DPoP) in one ``www-authenticate``
field, a fresh DPoP nonce where one is needed, and a JSON body holding the error word, the
reason code and the request id; never token or library text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import replace

from authz.core.decision import Decision, Verdict
from authz.errors import Outcome, Reason

__all__ = [
    "DPOP_NONCE_HEADER",
    "IDENTITY_HEADERS",
    "answer_failed",
    "cgi_form",
    "challenge",
    "client_headers",
    "deny_headers",
    "error_body",
    "identity_spellings",
    "upstream_headers",
]

TENANT_HEADER = "x-authz-tenant"

SUBJECT_HEADER = "x-authz-subject"

SCOPES_HEADER = "x-authz-scopes"

IDENTITY_HEADERS = (TENANT_HEADER, SUBJECT_HEADER, SCOPES_HEADER)

DPOP_NONCE_HEADER = "dpop-nonce"

# The error of a DPoP challenge (RFC 9449 7.1, 9) and body, by reason; others: invalid_token.
_DPOP_ERRORS = {
    Reason.DPOP_PROOF_MISSING: "invalid_dpop_proof",
    Reason.DPOP_PROOF_INVALID: "invalid_dpop_proof",
    Reason.DPOP_PROOF_REPLAYED: "invalid_dpop_proof",
    Reason.DPOP_NONCE_REQUIRED: "use_dpop_nonce",
}

# How an upstream that follows CGI (WSGI, PHP, ...) names a header: upper case, "-" as "_"
# (and, in some servers, every character that is not a letter or digit as "_").
_NOT_ALNUM = re.compile(r"[^A-Z0-9]")


def cgi_form(name: str) -> str:
    """``name`` as an upstream that follows CGI reads it (without the ``HTTP_`` prefix)."""
    return _NOT_ALNUM.sub("_", name.upper())


_CGI_IDENTITY = frozenset(map(cgi_form, IDENTITY_HEADERS))

_CGI_LENGTHS = frozenset(len(name) for name in IDENTITY_HEADERS)


def deny_headers(decision: Decision) -> list[tuple[str, str]]:
    """Headers of a deny: content type, no caching, the challenges, a fresh DPoP nonce if any."""
    headers = [("content-type", "application/json"), ("cache-control", "no-store")]
    value = challenge(decision)
    if value:
        headers.append(("www-authenticate", value))
    if decision.dpop_nonce:
        headers.append((DPOP_NONCE_HEADER, decision.dpop_nonce))
    return headers


def client_headers(decision: Decision) -> list[tuple[str, str]]:
    """Headers an allow adds to the client's response: a fresh DPoP nonce, never cached
    (RFC 9449 8.2), or nothing."""
    if not decision.dpop_nonce:
        return []
    return [(DPOP_NONCE_HEADER, decision.dpop_nonce), ("cache-control", "no-store")]


def challenge(decision: Decision) -> str | None:
    """The ``www-authenticate`` value: every challenge in one field (a second field would be lost:
    Envoy's gRPC deny headers overwrite each other).

    A request that used the DPoP scheme gets the DPoP challenge alone, with the error (a
    Bearer challenge would invite a retry of the bound token as a bearer token, RFC 9449
    7.2); any other gets the RFC 6750 Bearer challenge (bare on a missing token, with the
    error otherwise) followed by ``DPoP algs="..."``. Never an error_description.
    """
    outcome = decision.outcome
    algs = decision.dpop_algs
    if outcome is Outcome.UNAUTHENTICATED:
        if decision.dpop:
            return f'DPoP error="{_DPOP_ERRORS.get(decision.reason, "invalid_token")}", algs="{algs}"'
        bearer = "Bearer" if decision.reason == Reason.TOKEN_MISSING else 'Bearer error="invalid_token"'
        return f'{bearer}, DPoP algs="{algs}"' if algs else bearer
    if decision.reason == Reason.SCOPE_MISSING:
        scope = " ".join(decision.missing_scopes)
        if decision.dpop:
            return f'DPoP error="insufficient_scope", scope="{scope}", algs="{algs}"'
        return f'Bearer error="insufficient_scope", scope="{scope}"'
    return None


def error_body(decision: Decision, request_id: str) -> str:
    """The deny body: an error word, the reason code, the request id. Nothing else."""
    outcome = decision.outcome
    error = {
        Outcome.BAD_REQUEST: "invalid_request",
        Outcome.UNAUTHENTICATED: _DPOP_ERRORS.get(decision.reason, "invalid_token")
        if decision.dpop
        else "unauthorized"
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
            and cgi_form(name) in _CGI_IDENTITY
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
        if decision.dpop:
            to_remove.append("dpop")  # the proof goes with the token it proves
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
        dpop_nonce=None,
        detail=f"building the answer failed ({type(exc).__name__})",
    )
