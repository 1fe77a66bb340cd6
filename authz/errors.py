"""The one error type of the decision path, and the error type of configuration.

Every deny carries a short reason code. The code is at once the deny reason in
the response body, the decision log field, the span attribute and the metric
label, so the set of codes is closed and listed here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["REASONS", "AuthzError", "ConfigError", "Outcome"]


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


_U = Outcome.UNAUTHENTICATED
_F = Outcome.FORBIDDEN

REASONS: dict[str, Outcome] = {
    # The request itself cannot be evaluated safely.
    "path_invalid": Outcome.BAD_REQUEST,
    "request_malformed": Outcome.BAD_REQUEST,
    # No usable credential.
    "token_missing": _U,
    "authorization_malformed": _U,
    # Outer JWE layer.
    "token_too_large": _U,
    "token_malformed": _U,
    "token_not_jwe": _U,
    "header_malformed": _U,
    "alg_not_allowed": _U,
    "enc_not_allowed": _U,
    "zip_not_allowed": _U,
    "crit_unsupported": _U,
    "decryption_key_unknown": _U,
    "decryption_failed": _U,
    "cty_invalid": _U,
    "encrypt_only_not_allowed": _U,
    # Inner JWS layer.
    "inner_token_malformed": _U,
    "signature_alg_not_allowed": _U,
    "signing_key_unknown": _U,
    "signature_invalid": _U,
    "typ_not_allowed": _U,
    # Claims.
    "claims_malformed": _U,
    "issuer_unknown": _U,
    "exp_missing": _U,
    "token_expired": _U,
    "token_not_yet_valid": _U,
    "iat_in_future": _U,
    "lifetime_exceeded": _U,
    "audience_mismatch": _U,
    # Any unexpected failure inside the token layer: still a 401, never a crash.
    "token_invalid": _U,
    # Tenant and policy.
    "tenant_unknown": _F,
    "tenant_mismatch": _F,
    "issuer_not_allowed": _F,
    "no_matching_rule": _F,
    "scope_missing": _F,
    "role_missing": _F,
    "claim_mismatch": _F,
    # Our own faults: still a deny.
    "internal_error": Outcome.INTERNAL,
    # An issuer's keys come from a jwks_uri that was never fetched successfully.
    "issuer_keys_unavailable": Outcome.UNAVAILABLE,
    # No configuration loaded yet (start-up): health says NOT_SERVING meanwhile.
    "not_ready": Outcome.UNAVAILABLE,
    # The check arrived after its deadline (Envoy's grpc-timeout): shed, not worked on.
    "overloaded": Outcome.UNAVAILABLE,
}


class AuthzError(Exception):
    """A deny with a reason code; ``detail`` is for logs only, never for clients.

    ``detail`` must never contain token bytes, claim values or key material.
    """

    __slots__ = ("code", "detail", "issuer")

    def __init__(self, code: str, detail: str = "", *, issuer: str | None = None) -> None:
        if code not in REASONS:
            raise ValueError(f"unknown reason code {code!r}")
        super().__init__(code)
        self.code = code
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
