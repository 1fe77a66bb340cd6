"""The decision: request + snapshot + clock -> Decision, a pure function.

This is the one code path shared by the gRPC Check handler and ``authz
explain``. Order: tenant from the request (route context, host) -> public
rule -> access token (Bearer or DPoP; a DPoP proof's cheap checks) -> token
layer -> claims -> revocation -> tenant binding (tenant claim, issuer, audience, encrypt-only
opt-in) -> sender binding (cnf: DPoP proof or client certificate) -> rule ->
sender constraint -> subscription (the rule's API, the token's client) -> requirements.
Any failure is a deny with a reason code;
anything unexpected is ``internal_error``, still a deny. In ``dry-run`` the
tenant's denies are answered as allows and recorded. A valid DPoP proof leaves
its replay claim to the check sequence (``Decision.claim``, ``settle``).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace
from typing import Any

from authz.core.binding import Binding, ReplayClaim, check_sender, key_hash, read_proof
from authz.core.claims import Claims, validate_claims
from authz.core.observe import NO_STEPS, Steps
from authz.core.policy import Mode, Rule, SenderConstraint, Tenant, client_of, require
from authz.core.replay import ReplayVerdict
from authz.core.request import AuthzRequest, Scheme, credentials
from authz.core.revocation import Revocation
from authz.core.snapshot import Snapshot
from authz.errors import REASONS, AuthzError, Outcome, Reason
from authz.jose.dpop import ParsedProof
from authz.jose.nested import VerifiedToken, decrypt_token, open_token

__all__ = ["Decision", "Verdict", "decide", "reject", "settle"]


class Verdict(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    DRY_RUN_DENY = "dry-run-deny"  # would have been denied; allowed because of dry-run


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: Reason  # OK, or the deny reason
    tenant: str | None = None
    rule: str | None = None
    subject: str | None = None
    scopes: tuple[str, ...] = ()
    token_present: bool = False
    identity: bool = False  # the x-authz-* identity headers are set from verified claims
    missing_scopes: tuple[str, ...] = ()
    strip_authorization: bool = False
    key_id: str | None = None  # the signing key's kid, else the decryption key's (configured kids)
    decryption_key_id: str | None = None
    issuer: str | None = None  # a configured issuer the token named (verified, or a refetch hint)
    cache_hit: bool = False  # the token layer's result came from the verified-token cache
    # token_revoked: the kind of entry that matched (jti, subject, client) and the token's
    # jti as a short hash (never the jti itself).
    revocation: str | None = None
    jti_hash: str | None = None
    # The API of the rule (any rule that names one); on a rule whose API requires a
    # subscription, the token's client and what its subscription check answered (ok, or the
    # deny reason); None where no subscription was checked.
    api: str | None = None
    client: str | None = None
    subscription: Reason | None = None
    # An allow on a token holds, as far as time goes, while valid_from <= now < valid_until.
    valid_from: float = -math.inf
    valid_until: float = math.inf
    detail: str = ""  # for logs only
    # Sender-constrained tokens: how the request proved it holds the token; whether it
    # used the DPoP scheme (the challenge follows it); the algorithms a DPoP challenge
    # names ("" before any configuration); a fresh server nonce for the client; a short
    # hash of the proof key (logs); a valid proof's replay claim, which the check sequence
    # makes (its verdict None until then: settle).
    binding: Binding = Binding.NONE
    dpop: bool = False
    dpop_algs: str = ""
    dpop_nonce: str | None = None
    proof_key: str | None = None
    claim: ReplayClaim | None = None

    @property
    def allowed(self) -> bool:
        return self.verdict is not Verdict.DENY

    @property
    def outcome(self) -> Outcome | None:
        return None if self.verdict is Verdict.ALLOW else REASONS[self.reason]


@dataclass(slots=True)
class _Progress:
    """What is known so far, so that a deny can still say tenant and rule."""

    tenant: Tenant | None = None
    rule: Rule | None = None
    claims: Claims | None = None
    token: VerifiedToken | None = None
    token_present: bool = False
    cache_hit: bool = False
    revocation: Revocation | None = None
    client: str | None = None
    subscription: Reason | None = None
    # The tenant is established: chosen by the request (route, host), or chosen
    # by the token and the token proven to belong to it. Only then may that
    # tenant's dry-run mode turn a deny into an allow: a token must not pick a
    # dry-run tenant it does not belong to and walk in.
    tenant_established: bool = False
    scheme: Scheme | None = None
    proof: ParsedProof | None = None  # a DPoP-scheme request's proof, read before the token
    binding: Binding = Binding.NONE
    proof_key: str | None = None  # the proof key's thumbprint, once it matched cnf.jkt
    proof_nonce: str | None = None  # the server nonce the proof carried (nonces required)
    claim: ReplayClaim | None = None


def decide(snapshot: Snapshot, request: AuthzRequest, now: float, steps: Steps = NO_STEPS) -> Decision:
    """Decide one request. Never raises."""
    progress = _Progress()
    try:
        decision = _decide(snapshot, request, now, progress, steps)
    except AuthzError as exc:
        decision = _deny(progress, exc.code, exc.detail, snapshot)
        if exc.issuer is not None:
            decision = replace(decision, issuer=exc.issuer)
    except Exception as exc:  # noqa: BLE001 - fail closed on our own faults too
        decision = _deny(progress, Reason.INTERNAL_ERROR, f"unexpected {type(exc).__name__}", snapshot)
    tenant = progress.tenant
    dry_run = progress.tenant_established and tenant is not None and tenant.mode is Mode.DRY_RUN
    if progress.scheme is Scheme.DPOP:
        decision = _with_dpop(decision, progress, snapshot, now)
    # Dry-run never relaxes the request sanity checks (400): those protect the upstream.
    if decision.verdict is Verdict.DENY and dry_run and decision.outcome is not Outcome.BAD_REQUEST:
        return replace(decision, verdict=Verdict.DRY_RUN_DENY)
    return decision


def _with_dpop(decision: Decision, progress: _Progress, snapshot: Snapshot, now: float) -> Decision:
    """With server nonces: the current nonce on every 401 of a DPoP-scheme request (RFC 9449 9:
    the client retries with it) and on an allow whose nonce is in its last window; and on the
    deny a replay claim may still turn this decision into."""
    issuer = snapshot.dpop.nonce
    if issuer is None:
        return decision
    current = issuer.issue(now)
    if decision.claim is not None:
        decision.claim.nonce = current
    if decision.outcome is Outcome.UNAUTHENTICATED or (
        decision.verdict is Verdict.ALLOW
        and progress.proof_nonce is not None
        and issuer.needs_refresh(progress.proof_nonce, now)
    ):
        return replace(decision, dpop_nonce=current)
    return decision


def settle(decision: Decision, verdict: ReplayVerdict, detail: str = "") -> Decision:
    """The decision after its replay claim: the same when the proof is fresh, else the deny.

    A replayed proof, a full or unavailable store: deny (dry-run-deny for a dry-run
    tenant, like any token deny), without the identity the proof no longer stands for.
    """
    claim = decision.claim
    if claim is None:
        return decision
    claim.verdict = verdict
    if verdict is ReplayVerdict.FRESH:
        return decision
    code = _REPLAY_CODES[verdict]
    return replace(
        decision,
        verdict=Verdict.DRY_RUN_DENY if claim.dry_run else Verdict.DENY,
        reason=code,
        subject=None,
        scopes=(),
        identity=False,
        missing_scopes=(),
        valid_from=-math.inf,
        valid_until=math.inf,
        dpop_nonce=claim.nonce if REASONS[code] is Outcome.UNAUTHENTICATED else None,
        detail=detail or _REPLAY_DETAILS[verdict],
    )


_REPLAY_CODES = {
    ReplayVerdict.REPLAYED: Reason.DPOP_PROOF_REPLAYED,
    ReplayVerdict.FULL: Reason.DPOP_REPLAY_CACHE_FULL,
    ReplayVerdict.UNAVAILABLE: Reason.DPOP_REPLAY_STORE_UNAVAILABLE,
    ReplayVerdict.UNREMEMBERED: Reason.DPOP_PROOF_INVALID,
}
_REPLAY_DETAILS = {
    ReplayVerdict.REPLAYED: "this proof's jti was used before",
    ReplayVerdict.FULL: "the replay cache is full of unexpired entries",
    ReplayVerdict.UNAVAILABLE: "the replay store did not answer",
    ReplayVerdict.UNREMEMBERED: "proof made before the replay store's memory began: make a new proof",
}


def reject(code: Reason, detail: str = "") -> Decision:
    """A deny before any tenant is known (an unreadable or unsafe request)."""
    return Decision(verdict=Verdict.DENY, reason=code, detail=detail)


def _decide(
    snapshot: Snapshot, request: AuthzRequest, now: float, progress: _Progress, steps: Steps
) -> Decision:
    if request.path_parameters and not snapshot.allow_path_parameters:
        # "/healthz/..;/admin": Servlet containers read "/admin". A request check, before
        # any tenant: a 400 that dry-run never relaxes.
        raise AuthzError(Reason.PATH_INVALID, "path segment with parameters (;)")
    tenants = snapshot.tenants
    tenant = tenants.for_request(request.context_extensions.get("tenant"), request.host)
    progress.tenant = tenant
    progress.tenant_established = tenant is not None
    if tenant is not None:
        progress.rule = tenant.match(request.method, request.path)
        if progress.rule is not None and progress.rule.public:
            return _public(tenant, progress.rule, snapshot)

    found = credentials(request)
    if found is None:
        raise AuthzError(Reason.TOKEN_MISSING)
    token = found.token
    progress.token_present = True
    progress.scheme = found.scheme
    if found.scheme is Scheme.DPOP:
        # Stage A: the proof's own checks, before the token costs any crypto.
        progress.proof = read_proof(request, token, snapshot.dpop, now)
    keys, cache = snapshot.token_keys, snapshot.cache
    cache_key = cache.key(token)
    verified = cache.get(cache_key, keys, now)
    progress.cache_hit = verified is not None
    if verified is None:
        with steps.step("decrypt"):
            outer = decrypt_token(token, keys)
        with steps.step("verify"):
            verified = progress.token = open_token(outer, keys)
            claims = progress.claims = validate_claims(verified.claims, snapshot.claim_rules, now)
        cache.put(cache_key, verified, keys, claims.expires_at)
    else:
        progress.token = verified
        # The time checks run on every request, cached or not.
        claims = progress.claims = validate_claims(verified.claims, snapshot.claim_rules, now)
    # So does the revocation check: a revocation is effective from the next request on,
    # whether the token's verification is cached or not (a dict lookup in the mirror).
    revoked = progress.revocation = snapshot.revocations.check(claims)
    if revoked is not None:
        raise AuthzError(Reason.TOKEN_REVOKED, f"revoked by a {revoked.kind} entry")
    with steps.step("policy"):
        return _authorize(
            snapshot, request, tenant=tenant, progress=progress, verified=verified, claims=claims, now=now
        )


def _authorize(
    snapshot: Snapshot,
    request: AuthzRequest,
    *,
    tenant: Tenant | None,
    progress: _Progress,
    verified: VerifiedToken,
    claims: Claims,
    now: float,
) -> Decision:
    tenants = snapshot.tenants
    if tenant is None:
        if claims.tenant is None:
            raise AuthzError(Reason.TENANT_UNKNOWN, "no tenant from route, host or token")
        tenant = tenants.by_name.get(claims.tenant)
        if tenant is None:
            raise AuthzError(Reason.TENANT_UNKNOWN, "token names no configured tenant")
        progress.tenant = tenant
        progress.rule = tenant.match(request.method, request.path)
    _bind(tenant, claims, verified, tenants.shared_issuers)
    progress.tenant_established = True
    sender = check_sender(
        request,
        scheme=progress.scheme or Scheme.BEARER,
        proof=progress.proof,
        claims=claims.raw,
        settings=snapshot.dpop,
        origins=tenant.origins,
        path_parameters=snapshot.allow_path_parameters,
        certificate_source=snapshot.certificate_source,
        now=now,
        dry_run=tenant.mode is Mode.DRY_RUN,
    )
    progress.binding, progress.claim, progress.proof_nonce = sender.binding, sender.claim, sender.nonce
    progress.proof_key = sender.key

    rule = progress.rule
    if rule is None:
        raise AuthzError(Reason.NO_MATCHING_RULE)
    if rule.public:
        # Public, but reached through the token's tenant: the allow rests on the token
        # (tenant binding), so it carries the token's validity like any token allow.
        return replace(_public(tenant, rule, snapshot), **_token_facts(verified, claims, progress))
    constraint = rule.sender_constraint or tenant.sender_constraint
    if constraint is SenderConstraint.REQUIRED and sender.binding is Binding.NONE:
        raise AuthzError(Reason.SENDER_CONSTRAINT_REQUIRED, f"rule {rule.name!r} needs a bound token")
    until = math.inf  # an approved subscription holds until its expiry
    if rule.subscription:
        until = _subscribed(snapshot, tenant, rule, claims, progress, now=now)
    missing = require(rule, claims)
    if missing:
        return replace(_deny(progress, Reason.SCOPE_MISSING, "", snapshot), missing_scopes=missing)
    facts = _token_facts(verified, claims, progress)
    facts["valid_until"] = min(facts["valid_until"], until)  # not repeated past the approval's expiry
    return Decision(
        verdict=Verdict.ALLOW,
        reason=Reason.OK,
        tenant=tenant.name,
        rule=rule.name,
        subject=claims.subject,
        scopes=tuple(sorted(claims.scopes)),
        identity=True,
        strip_authorization=snapshot.strip_authorization,
        dpop_algs=snapshot.dpop.challenge_algs,
        **facts,
    )


def _subscribed(
    snapshot: Snapshot, tenant: Tenant, rule: Rule, claims: Claims, progress: _Progress, *, now: float
) -> float:
    """The client's subscription to the rule's API: until when it holds, or the deny.

    A lookup in the process's mirror (no I/O); the token is verified and bound to the tenant
    by now, so the client claim is the issuer's word.
    """
    client = progress.client = client_of(tenant, claims)
    if client is None:
        progress.subscription = Reason.CLIENT_UNKNOWN
        raise AuthzError(Reason.CLIENT_UNKNOWN, f"no client claim ({', '.join(tenant.client_claims)})")
    if claims.issuer != tenant.client_issuer:
        # A client id names an application of its issuer only: another issuer's `mobile-app`
        # is not the one the tenant's subscriptions approved (they name client_issuer's).
        progress.subscription = Reason.CLIENT_UNKNOWN
        raise AuthzError(Reason.CLIENT_UNKNOWN, "the token's issuer is not the tenant's client_issuer")
    api = rule.api or ""
    outcome, until = snapshot.subscriptions.check(tenant.name, api, client, now)
    progress.subscription = outcome
    if outcome is not Reason.OK:
        raise AuthzError(outcome, f"the client's subscription to API {api!r}")
    return until


def _token_facts(verified: VerifiedToken, claims: Claims, progress: _Progress) -> dict[str, Any]:
    """What an allow resting on a verified token records about it (and how long it holds)."""
    return {
        "token_present": True,
        "key_id": verified.signing_kid or verified.decryption_kid,
        "decryption_key_id": verified.decryption_kid,
        "issuer": claims.issuer,
        "cache_hit": progress.cache_hit,
        "valid_from": claims.valid_from,
        "valid_until": claims.valid_until,
        **_sender_facts(progress),
    }


def _sender_facts(progress: _Progress) -> dict[str, Any]:
    """What a decision records of the sender binding and the subscription (any verdict)."""
    return {
        "binding": progress.binding,
        "dpop": progress.scheme is Scheme.DPOP,
        "proof_key": key_hash(progress.proof_key) if progress.proof_key else None,
        "claim": progress.claim,
        "api": progress.rule.api if progress.rule is not None else None,
        "client": progress.client,
        "subscription": progress.subscription,
    }


def _bind(tenant: Tenant, claims: Claims, token: VerifiedToken, shared: frozenset[str]) -> None:
    """The token must belong to this tenant: claim, issuer, audience, encrypt-only opt-in."""
    if claims.tenant is not None and claims.tenant != tenant.name:
        raise AuthzError(Reason.TENANT_MISMATCH, "token tenant claim names another tenant")
    if claims.tenant is None and claims.issuer in shared:
        raise AuthzError(Reason.TENANT_MISMATCH, "issuer serves several tenants; tenant claim missing")
    if claims.issuer not in tenant.issuers:
        raise AuthzError(Reason.ISSUER_NOT_ALLOWED)
    if not tenant.audiences.intersection(claims.audiences):
        raise AuthzError(Reason.AUDIENCE_MISMATCH)
    if not token.nested:
        issuers = tenant.encrypt_only_keys.get(token.decryption_kid)
        if issuers is None:
            raise AuthzError(Reason.ENCRYPT_ONLY_NOT_ALLOWED, "tenant does not accept this key without JWS")
        if claims.issuer not in issuers:
            # Without a JWS, iss is whatever the key holder wrote: it must be one the key is bound to.
            raise AuthzError(Reason.ENCRYPT_ONLY_NOT_ALLOWED, "key is not bound to the token's issuer")


def _public(tenant: Tenant, rule: Rule, snapshot: Snapshot) -> Decision:
    return Decision(
        verdict=Verdict.ALLOW,
        reason=Reason.OK,
        tenant=tenant.name,
        rule=rule.name,
        api=rule.api,
        strip_authorization=snapshot.strip_authorization,
        dpop_algs=snapshot.dpop.challenge_algs,
    )


def _deny(progress: _Progress, code: Reason, detail: str, snapshot: Snapshot) -> Decision:
    tenant, rule, claims, token = progress.tenant, progress.rule, progress.claims, progress.token
    # A dry-run deny of a valid, tenant-bound token still passes the identity on.
    bound = claims is not None and code in _POLICY_CODES
    return Decision(
        verdict=Verdict.DENY,
        reason=code,
        tenant=tenant.name if tenant else None,
        rule=rule.name if rule else None,
        subject=claims.subject if bound and claims else None,
        scopes=tuple(sorted(claims.scopes)) if bound and claims else (),
        token_present=progress.token_present,
        identity=bound,
        strip_authorization=snapshot.strip_authorization,
        key_id=(token.signing_kid or token.decryption_kid) if token else None,
        decryption_key_id=token.decryption_kid if token else None,
        issuer=claims.issuer if claims else None,
        cache_hit=progress.cache_hit,
        revocation=progress.revocation.kind.value if progress.revocation else None,
        jti_hash=progress.revocation.jti if progress.revocation else None,
        detail=detail,
        dpop_algs=snapshot.dpop.challenge_algs,
        **_sender_facts(progress),
    )


# Denies that happen after the token was bound to the tenant.
_POLICY_CODES = frozenset(
    {
        Reason.NO_MATCHING_RULE,
        Reason.SCOPE_MISSING,
        Reason.ROLE_MISSING,
        Reason.CLAIM_MISMATCH,
        Reason.CLIENT_UNKNOWN,
        Reason.SUBSCRIPTION_REQUIRED,
        Reason.SUBSCRIPTION_PENDING,
        Reason.SUBSCRIPTION_REJECTED,
        Reason.SUBSCRIPTION_REVOKED,
        Reason.SUBSCRIPTION_EXPIRED,
    }
)
