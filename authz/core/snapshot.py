"""What a check reads from one loaded configuration: swapped whole, never changed in place."""

from __future__ import annotations

from dataclasses import dataclass, field

from authz.core.binding import DpopSettings
from authz.core.cache import TokenCache
from authz.core.claims import ClaimRules
from authz.core.policy import TenantIndex
from authz.core.request import CertificateSource
from authz.core.revocation import NO_REVOCATIONS, Revocations
from authz.core.subscription import NO_SUBSCRIPTIONS, Subscriptions
from authz.jose.nested import TokenKeys

__all__ = ["RecordSettings", "Snapshot"]

DEFAULT_DPOP = DpopSettings()


@dataclass(frozen=True, slots=True)
class RecordSettings:
    """How a decision is recorded (decision log line, span attributes)."""

    log_subject: bool = False  # the subject id in spans and decision log lines
    allow_log_sample_rate: float = 1.0  # fraction of allow decisions logged; denies always are


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The decision's inputs; its token cache starts empty, so a reload retires every entry."""

    tenants: TenantIndex
    claim_rules: ClaimRules
    token_keys: TokenKeys
    cache_size: int  # verified tokens kept; 0: every token is decrypted and verified each time
    strip_authorization: bool = False  # an allow removes the authorization header upstream
    allow_path_parameters: bool = False  # paths with ";" segment parameters are matched, not refused
    refetch_wait: float = 0.5  # how long a check may wait for an unknown signing kid's refetch
    record: RecordSettings = RecordSettings()
    dpop: DpopSettings = DEFAULT_DPOP
    # Where the gRPC door reads the client certificate (the HTTP door: x-forwarded-client-cert).
    certificate_source: CertificateSource = CertificateSource.PEER
    # The process's revocation mirror (authz/app/revocation.py), the same object across
    # reloads: a revocation takes effect without one, in the cache and the memo alike.
    revocations: Revocations = field(default=NO_REVOCATIONS, compare=False, repr=False)
    # The process's subscription mirror (authz/app/subscriptions.py), likewise one object
    # across reloads: an approval or a revocation takes effect without one.
    subscriptions: Subscriptions = field(default=NO_SUBSCRIPTIONS, compare=False, repr=False)
    cache: TokenCache = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cache", TokenCache(self.cache_size))
