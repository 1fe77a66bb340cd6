"""Sender-constrained tokens: the token's ``cnf`` (RFC 7800) against the request's proof of possession.

``cnf.jkt`` (RFC 9449): the request must use the ``DPoP`` scheme with one proof of that key.
``cnf["x5t#S256"]`` (RFC 8705): the door's client certificate must hash to it. The check
sequence calls ``read_proof`` before the token is decrypted (framing and claims, no key
work: a flood of garbage proofs never reaches the JWE) and ``check_sender`` after claims and
tenant binding (the tenant's ``origins`` are known then): scheme against binding, ``htu``,
``jkt`` (before any signature work), nonce, signature. The replay claim comes last, in
authz.core.check: it is the only step with shared state, and only a valid proof takes room.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from authz.core.replay import ReplayVerdict, replay_key
from authz.core.request import AuthzRequest, CertificateSource, Scheme, client_certificate
from authz.errors import AuthzError, Reason
from authz.jose.dpop import DEFAULT_ALGORITHMS, ParsedProof, parse_proof
from authz.jose.htu import canonical_origin
from authz.jose.nonce import NonceIssuer
from authz.jose.thumbprint import decode_sha256_thumbprint

__all__ = [
    "DEFAULT_REPLAY_CACHE_SIZE",
    "Binding",
    "DpopSettings",
    "ReplayClaim",
    "SenderCheck",
    "check_sender",
    "key_hash",
    "read_proof",
    "token_binding",
]


# Replay entries live max_age + 2 x clock_skew (70 s by default): 1,000,000 entries hold
# 14,285 accepted proofs/s per process, more than one process verifies
# (docs/sender-constrained.md), at about 100 bytes each (about 95 MiB when full, nothing while idle).
DEFAULT_REPLAY_CACHE_SIZE = 1_000_000


class Binding(enum.Enum):
    """How the request proved it holds the token (the decision log's ``binding``)."""

    NONE = "none"  # a bearer token
    DPOP = "dpop"  # a DPoP proof of the key the token names (RFC 9449)
    MTLS = "mtls"  # the client certificate the token names (RFC 8705)


@dataclass(frozen=True, slots=True)
class DpopSettings:
    """The ``dpop:`` section: what a proof may use, how old it may be, nonces, the replay bound."""

    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS  # in configuration order (the challenge's)
    max_age: float = 60.0  # seconds a proof's iat may lie in the past
    skew: float = 5.0  # seconds a proof's iat may lie in the future
    nonce: NonceIssuer | None = None  # set: every proof needs a current server nonce
    replay_cache_size: int = DEFAULT_REPLAY_CACHE_SIZE
    allowed: frozenset[str] = field(init=False, repr=False, compare=False)
    challenge_algs: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed", frozenset(self.algorithms))
        object.__setattr__(self, "challenge_algs", " ".join(self.algorithms))

    @property
    def replay_window(self) -> float:
        """The longest an accepted proof's replay entry lives: iat may be ``skew`` ahead."""
        return self.max_age + 2 * self.skew


@dataclass(slots=True)
class ReplayClaim:
    """What the check sequence claims in the replay store once a proof passed every other check.

    Made once per request: ``verdict`` is None until the store answered (the one field that
    changes; an answer built from a claim nobody made is refused, see authz.core.check).
    """

    key: bytes = field(repr=False)
    expires_at: float
    issued_at: float | None = None  # the proof's iat (the store refuses one it cannot cover)
    dry_run: bool = False  # the tenant is in dry-run: a replay is recorded, not enforced
    nonce: str | None = None  # the fresh nonce a deny after the claim carries (nonces required)
    verdict: ReplayVerdict | None = None


@dataclass(frozen=True, slots=True)
class SenderCheck:
    """The outcome of ``check_sender`` for a request that passed it."""

    binding: Binding
    claim: ReplayClaim | None = None  # DPoP: the proof's jti, to claim last
    key: str | None = None  # DPoP: the proof key's thumbprint (logged only as key_hash)
    nonce: str | None = None  # DPoP: the server nonce the proof carried, when nonces are required


def read_proof(request: AuthzRequest, token: str, settings: DpopSettings, now: float) -> ParsedProof:
    """Stage A of a ``DPoP``-scheme request: its one ``dpop`` header, parsed and checked up to ``ath``.

    No header: dpop_proof_missing. Two or more, or one holding a comma (a proxy joins
    repeated fields with commas; a comma is outside token68): dpop_proof_invalid.
    """
    values = request.dpop
    if not values:
        raise AuthzError(Reason.DPOP_PROOF_MISSING, "DPoP scheme without a DPoP header")
    if len(values) > 1 or "," in values[0]:
        raise AuthzError(Reason.DPOP_PROOF_INVALID, "more than one DPoP header")
    return parse_proof(
        values[0],
        method=request.method,
        now=now,
        max_age=settings.max_age,
        skew=settings.skew,
        access_token=token,
        algorithms=settings.allowed,
    )


def token_binding(claims: Mapping[str, Any]) -> tuple[Binding, str]:
    """The binding a verified token names: (NONE, "") without ``cnf``, else its one member.

    ``cnf`` must be exactly ``{"jkt": thumbprint}`` or ``{"x5t#S256": thumbprint}`` (43
    canonical base64url characters); any other shape is cnf_unsupported, never a bearer
    token: an issuer meant to bind it to something.
    """
    if "cnf" not in claims:
        return Binding.NONE, ""
    cnf = claims["cnf"]
    if type(cnf) is not dict or len(cnf) != 1:
        raise AuthzError(Reason.CNF_UNSUPPORTED, "cnf is not an object with one member")
    ((name, value),) = cnf.items()
    if name == "jkt":
        kind = Binding.DPOP
    elif name == "x5t#S256":
        kind = Binding.MTLS
    else:
        raise AuthzError(Reason.CNF_UNSUPPORTED, "cnf member is neither jkt nor x5t#S256")
    decode_sha256_thumbprint(value, Reason.CNF_UNSUPPORTED)
    return kind, value


def check_sender(
    request: AuthzRequest,
    *,
    scheme: Scheme,
    proof: ParsedProof | None,
    claims: Mapping[str, Any],
    settings: DpopSettings,
    origins: tuple[str, ...],
    path_parameters: bool,
    certificate_source: CertificateSource,
    now: float,
    dry_run: bool = False,
) -> SenderCheck:
    """Stage B: the token's binding against the request; AuthzError for the first failure.

    ``proof``: what ``read_proof`` returned (a ``DPoP``-scheme request always has one).
    ``certificate_source``: where the gRPC door reads the client certificate. ``dry_run``:
    the tenant's mode, for the replay claim (a replay is then recorded, not enforced).
    """
    kind, bound_to = token_binding(claims)
    if scheme is Scheme.DPOP:
        if kind is not Binding.DPOP:
            raise AuthzError(Reason.DPOP_KEY_MISMATCH, "DPoP scheme with a token not bound to a DPoP key")
        if proof is None:  # read_proof runs for every DPoP-scheme request
            raise AuthzError(Reason.DPOP_PROOF_MISSING, "no proof was read")
        checked = _check_proof(request, proof, bound_to, settings, origins, path_parameters, now)
        if checked.claim is not None:
            checked.claim.dry_run = dry_run
        return checked
    if kind is Binding.DPOP:
        # RFC 9449 7.2: a DPoP-bound token is never a bearer token (downgrade).
        raise AuthzError(Reason.DPOP_PROOF_MISSING, "a DPoP-bound token under the Bearer scheme")
    if kind is Binding.MTLS:
        certificate = client_certificate(request, certificate_source)
        if certificate is None:
            raise AuthzError(Reason.CLIENT_CERTIFICATE_MISSING, "no client certificate")
        if not hmac.compare_digest(certificate.x5t(), bound_to):
            raise AuthzError(Reason.CLIENT_CERTIFICATE_MISMATCH)
        return SenderCheck(Binding.MTLS)
    return SenderCheck(Binding.NONE)


def _check_proof(  # noqa: PLR0917 - check_sender's arguments, passed on
    request: AuthzRequest,
    proof: ParsedProof,
    jkt: str,
    settings: DpopSettings,
    origins: tuple[str, ...],
    path_parameters: bool,
    now: float,
) -> SenderCheck:
    proof.check_htu(expected_htu(request, origins), path_parameters=path_parameters)
    # Before the signature: a stolen token presented with another key costs no verification.
    if not hmac.compare_digest(proof.jkt, jkt):
        raise AuthzError(Reason.DPOP_KEY_MISMATCH, "the proof's key is not the token's cnf.jkt")
    issuer = settings.nonce
    accepted = proof.check_nonce(None if issuer is None else lambda nonce: issuer.verify(nonce, now))
    proof.check_signature()
    # Remembered until the proof would be refused for its age anyway (iat + max_age), plus skew.
    claim = ReplayClaim(
        replay_key(jkt, proof.jti), proof.iat + settings.max_age + settings.skew, issued_at=proof.iat
    )
    return SenderCheck(Binding.DPOP, claim, jkt, accepted)


def expected_htu(request: AuthzRequest, origins: tuple[str, ...]) -> tuple[str, ...]:
    """The canonical target URIs a proof's ``htu`` may name for this request.

    With the tenant's ``origins`` (its public URLs behind a load balancer): each plus the
    normalized path. Without: the scheme and Host Envoy reported (our Envoys strip the
    port, so only default-port URLs match; set ``origins`` otherwise).
    """
    path = request.path  # normalized with the rules canonical_htu applies to htu's path
    if origins:
        return tuple(origin + path for origin in origins)
    return (_request_origin(request.scheme, request.authority) + path,)


@functools.lru_cache(maxsize=256)
def _request_origin(scheme: str, authority: str) -> str:
    """The canonical origin of a request's scheme and Host (few per deployment: cached)."""
    scheme = scheme.lower()
    if scheme not in ("http", "https") or not authority:
        raise AuthzError(
            Reason.DPOP_PROOF_INVALID,
            "no request scheme or host to compare htu with: set the tenant's origins or forward "
            "x-forwarded-proto",
        )
    try:
        return canonical_origin(f"{scheme}://{authority}")
    except ValueError:
        raise AuthzError(Reason.DPOP_PROOF_INVALID, "the request's host is no htu origin") from None


def key_hash(jkt: str) -> str:
    """A short hash of a proof key's thumbprint for logs and spans: correlates, never reveals it.

    The thumbprint itself is the token's ``cnf.jkt``, a claim of an encrypted token.
    """
    return hashlib.blake2b(jkt.encode("ascii"), digest_size=6, person=b"dpop-jkt-log").hexdigest()
