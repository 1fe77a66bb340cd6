"""The one error type of the decision path, its reason codes, and the error type of configuration.

A reason code is at once the deny reason in the response body, the decision log field, the
span attribute and the metric label: a closed set, each with one HTTP status and gRPC code.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["REASONS", "AuthzError", "ConfigError", "Outcome", "Reason"]


class Outcome(enum.Enum):
    """How a deny is answered: HTTP status and gRPC status code name."""

    BAD_REQUEST = (400, "INVALID_ARGUMENT")
    UNAUTHENTICATED = (401, "UNAUTHENTICATED")
    FORBIDDEN = (403, "PERMISSION_DENIED")
    INTERNAL = (500, "INTERNAL")
    UNAVAILABLE = (503, "UNAVAILABLE")

    @property
    def http_status(self) -> int:
        return self.value[0]

    @property
    def grpc_code(self) -> str:
        return self.value[1]


class Reason(enum.StrEnum):
    """Why a check was answered as it was: ``ok`` for an allow, else a deny reason."""

    OK = "ok"
    # The request itself cannot be evaluated safely.
    PATH_INVALID = "path_invalid"
    REQUEST_MALFORMED = "request_malformed"
    HOST_INVALID = "host_invalid"  # a Host that is not host[:port]: no tenant is chosen by it
    METHOD_OVERRIDE = "method_override"  # an override names a method other than the request's
    # No usable credential.
    TOKEN_MISSING = "token_missing"
    AUTHORIZATION_MALFORMED = "authorization_malformed"
    # Outer JWE layer.
    TOKEN_TOO_LARGE = "token_too_large"
    TOKEN_MALFORMED = "token_malformed"
    TOKEN_NOT_JWE = "token_not_jwe"
    HEADER_MALFORMED = "header_malformed"
    ALG_NOT_ALLOWED = "alg_not_allowed"
    ENC_NOT_ALLOWED = "enc_not_allowed"
    ZIP_NOT_ALLOWED = "zip_not_allowed"
    CRIT_UNSUPPORTED = "crit_unsupported"
    DECRYPTION_KEY_UNKNOWN = "decryption_key_unknown"
    DECRYPTION_FAILED = "decryption_failed"
    CTY_INVALID = "cty_invalid"
    ENCRYPT_ONLY_NOT_ALLOWED = "encrypt_only_not_allowed"
    # Inner JWS layer.
    INNER_TOKEN_MALFORMED = "inner_token_malformed"
    SIGNATURE_ALG_NOT_ALLOWED = "signature_alg_not_allowed"
    SIGNING_KEY_UNKNOWN = "signing_key_unknown"
    SIGNATURE_INVALID = "signature_invalid"
    TYP_NOT_ALLOWED = "typ_not_allowed"
    # Claims.
    CLAIMS_MALFORMED = "claims_malformed"
    ISSUER_UNKNOWN = "issuer_unknown"
    EXP_MISSING = "exp_missing"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_NOT_YET_VALID = "token_not_yet_valid"
    IAT_IN_FUTURE = "iat_in_future"
    LIFETIME_EXCEEDED = "lifetime_exceeded"
    AUDIENCE_MISMATCH = "audience_mismatch"
    # Any unexpected failure inside the token layer: still a 401, never a crash.
    TOKEN_INVALID = "token_invalid"
    # Sender-constrained tokens (issue 14): DPoP proofs (RFC 9449) and certificate-bound
    # tokens (RFC 8705).
    DPOP_PROOF_MISSING = "dpop_proof_missing"
    DPOP_PROOF_INVALID = "dpop_proof_invalid"
    DPOP_PROOF_REPLAYED = "dpop_proof_replayed"
    DPOP_NONCE_REQUIRED = "dpop_nonce_required"
    DPOP_KEY_MISMATCH = "dpop_key_mismatch"
    CLIENT_CERTIFICATE_MISSING = "client_certificate_missing"
    CLIENT_CERTIFICATE_MISMATCH = "client_certificate_mismatch"
    CNF_UNSUPPORTED = "cnf_unsupported"
    SENDER_CONSTRAINT_REQUIRED = "sender_constraint_required"
    DPOP_REPLAY_CACHE_FULL = "dpop_replay_cache_full"
    DPOP_REPLAY_STORE_UNAVAILABLE = "dpop_replay_store_unavailable"
    # Revocation (issue 15): a revoked token, and a revocation mirror too old to trust.
    TOKEN_REVOKED = "token_revoked"
    REVOCATION_STATE_STALE = "revocation_state_stale"
    # Subscriptions (issue 18): a rule of an API that needs the client's approved subscription.
    CLIENT_UNKNOWN = "client_unknown"
    SUBSCRIPTION_REQUIRED = "subscription_required"
    SUBSCRIPTION_PENDING = "subscription_pending"
    SUBSCRIPTION_REJECTED = "subscription_rejected"
    SUBSCRIPTION_REVOKED = "subscription_revoked"
    SUBSCRIPTION_EXPIRED = "subscription_expired"
    SUBSCRIPTION_STATE_STALE = "subscription_state_stale"
    # Tenant and policy.
    TENANT_UNKNOWN = "tenant_unknown"
    TENANT_MISMATCH = "tenant_mismatch"
    ISSUER_NOT_ALLOWED = "issuer_not_allowed"
    NO_MATCHING_RULE = "no_matching_rule"
    SCOPE_MISSING = "scope_missing"
    ROLE_MISSING = "role_missing"
    CLAIM_MISMATCH = "claim_mismatch"
    # Our own faults: still a deny.
    INTERNAL_ERROR = "internal_error"
    # An issuer's keys come from a jwks_uri that was never fetched successfully.
    ISSUER_KEYS_UNAVAILABLE = "issuer_keys_unavailable"
    # No configuration loaded yet (start-up): health says NOT_SERVING meanwhile.
    NOT_READY = "not_ready"
    # The check arrived after its deadline (Envoy's grpc-timeout): shed, not worked on.
    OVERLOADED = "overloaded"

    @property
    def outcome(self) -> Outcome | None:
        """How a deny for this reason is answered (None for ``ok``)."""
        return REASONS.get(self)


_U = Outcome.UNAUTHENTICATED
_F = Outcome.FORBIDDEN

# Every deny reason and how it is answered: docs/concepts/reasons.md's table is checked against it.
REASONS: Mapping[Reason, Outcome] = MappingProxyType(
    {
        # The request itself cannot be evaluated safely.
        Reason.PATH_INVALID: Outcome.BAD_REQUEST,
        Reason.REQUEST_MALFORMED: Outcome.BAD_REQUEST,
        Reason.HOST_INVALID: Outcome.BAD_REQUEST,
        Reason.METHOD_OVERRIDE: Outcome.BAD_REQUEST,
        # No usable credential.
        Reason.TOKEN_MISSING: _U,
        Reason.AUTHORIZATION_MALFORMED: _U,
        # Outer JWE layer.
        Reason.TOKEN_TOO_LARGE: _U,
        Reason.TOKEN_MALFORMED: _U,
        Reason.TOKEN_NOT_JWE: _U,
        Reason.HEADER_MALFORMED: _U,
        Reason.ALG_NOT_ALLOWED: _U,
        Reason.ENC_NOT_ALLOWED: _U,
        Reason.ZIP_NOT_ALLOWED: _U,
        Reason.CRIT_UNSUPPORTED: _U,
        Reason.DECRYPTION_KEY_UNKNOWN: _U,
        Reason.DECRYPTION_FAILED: _U,
        Reason.CTY_INVALID: _U,
        Reason.ENCRYPT_ONLY_NOT_ALLOWED: _U,
        # Inner JWS layer.
        Reason.INNER_TOKEN_MALFORMED: _U,
        Reason.SIGNATURE_ALG_NOT_ALLOWED: _U,
        Reason.SIGNING_KEY_UNKNOWN: _U,
        Reason.SIGNATURE_INVALID: _U,
        Reason.TYP_NOT_ALLOWED: _U,
        # Claims.
        Reason.CLAIMS_MALFORMED: _U,
        Reason.ISSUER_UNKNOWN: _U,
        Reason.EXP_MISSING: _U,
        Reason.TOKEN_EXPIRED: _U,
        Reason.TOKEN_NOT_YET_VALID: _U,
        Reason.IAT_IN_FUTURE: _U,
        Reason.LIFETIME_EXCEEDED: _U,
        Reason.AUDIENCE_MISMATCH: _U,
        # Any unexpected failure inside the token layer: still a 401, never a crash.
        Reason.TOKEN_INVALID: _U,
        # Sender-constrained tokens (issue 14): a bound token used without its proof of
        # possession is a 401, like any other bad credential.
        Reason.DPOP_PROOF_MISSING: _U,
        Reason.DPOP_PROOF_INVALID: _U,
        Reason.DPOP_PROOF_REPLAYED: _U,
        Reason.DPOP_NONCE_REQUIRED: _U,
        Reason.DPOP_KEY_MISMATCH: _U,
        Reason.CLIENT_CERTIFICATE_MISSING: _U,
        Reason.CLIENT_CERTIFICATE_MISMATCH: _U,
        Reason.CNF_UNSUPPORTED: _U,
        Reason.SENDER_CONSTRAINT_REQUIRED: _U,
        # The replay cache holds only unexpired entries and is full: evicting one would
        # re-open replay, so the proof is refused; not the client's fault, hence not a 401.
        Reason.DPOP_REPLAY_CACHE_FULL: Outcome.UNAVAILABLE,
        # The replay store did not answer in time (or failed): without it a proof could be
        # replayed, so it is refused; not the client's fault either.
        Reason.DPOP_REPLAY_STORE_UNAVAILABLE: Outcome.UNAVAILABLE,
        # A revoked token is an invalid credential (RFC 6750 error="invalid_token").
        Reason.TOKEN_REVOKED: _U,
        # The revocation mirror has not been confirmed current for revocation.max_staleness:
        # a token revoked meanwhile could pass, so tokens are refused (revocation.on_stale: deny).
        Reason.REVOCATION_STATE_STALE: Outcome.UNAVAILABLE,
        # Subscriptions (issue 18): the token is valid and bound to the tenant, but its client
        # application may not use this API (yet, or any more): forbidden, not unauthenticated.
        Reason.CLIENT_UNKNOWN: _F,
        Reason.SUBSCRIPTION_REQUIRED: _F,
        Reason.SUBSCRIPTION_PENDING: _F,
        Reason.SUBSCRIPTION_REJECTED: _F,
        Reason.SUBSCRIPTION_REVOKED: _F,
        Reason.SUBSCRIPTION_EXPIRED: _F,
        # The subscription mirror has not been confirmed current for subscriptions.max_staleness:
        # a subscription revoked meanwhile could pass (subscriptions.on_stale: deny).
        Reason.SUBSCRIPTION_STATE_STALE: Outcome.UNAVAILABLE,
        # Tenant and policy.
        Reason.TENANT_UNKNOWN: _F,
        Reason.TENANT_MISMATCH: _F,
        Reason.ISSUER_NOT_ALLOWED: _F,
        Reason.NO_MATCHING_RULE: _F,
        Reason.SCOPE_MISSING: _F,
        Reason.ROLE_MISSING: _F,
        Reason.CLAIM_MISMATCH: _F,
        # Our own faults: still a deny.
        Reason.INTERNAL_ERROR: Outcome.INTERNAL,
        # An issuer's keys come from a jwks_uri that was never fetched successfully.
        Reason.ISSUER_KEYS_UNAVAILABLE: Outcome.UNAVAILABLE,
        # No configuration loaded yet (start-up): health says NOT_SERVING meanwhile.
        Reason.NOT_READY: Outcome.UNAVAILABLE,
        # The check arrived after its deadline (Envoy's grpc-timeout): shed, not worked on.
        Reason.OVERLOADED: Outcome.UNAVAILABLE,
    }
)


class AuthzError(Exception):
    """A deny with a reason code; ``detail`` is for logs only, never for clients.

    ``detail`` must never contain token bytes, claim values or key material.
    """

    __slots__ = ("code", "detail", "issuer")

    def __init__(self, code: Reason, detail: str = "", *, issuer: str | None = None) -> None:
        if code not in REASONS:
            raise ValueError(f"{code!r} is not a deny reason")
        super().__init__(code)
        self.code = Reason(code)
        self.detail = detail
        # The (configured) issuer a failing token named, where that helps recovery:
        # an unknown signing kid sends us to refetch that issuer's keys.
        self.issuer = issuer

    @property
    def outcome(self) -> Outcome:
        return REASONS[self.code]

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}" if self.detail else self.code


@dataclass(frozen=True, slots=True)
class ConfigError(Exception):
    """A configuration or key file that cannot be used, with where and why."""

    file: str
    reason: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.reason}"
