"""The answer memo's rules: when an earlier allow may answer an identical check again.

An entry is a rendered allow of a verified token, kept per snapshot (a reload starts an
empty memo) and served while it provably holds: the token's entry in the verified-token
cache unchanged (a key change, the token's expiry or an eviction retire it), ``now``
inside the claims' time window (and before the expiry of the subscription it rests on), the
revocation mirror at the generation it was decided on (any change of the revocations, or a
mirror gone stale, sends the repeat to a full check), and for an allow that rested on an API
subscription, the subscription mirror at its generation likewise (an approval, rejection or
revocation anywhere sends such repeats to a full check: the next request after it is decided
on the new state).
Doors key it by every value the decision reads (a tuple of them, or a digest of their bytes).

Sender-constrained tokens: a DPoP request (the DPoP scheme, or any ``dpop`` header) is never
kept nor answered: each proof is single-use and must meet the replay store. An entry records
the client certificate its request carried (the door's configured source, as given), and a
lookup with any other is no hit: a certificate-bound token replayed over another connection
is decided afresh. Doors include the certificate's bytes in their key as well.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from authz.core.binding import Binding
from authz.core.decision import Decision, Verdict
from authz.core.request import AuthzRequest, Scheme, client_certificate, credentials
from authz.core.snapshot import Snapshot
from authz.jose.nested import VerifiedToken

__all__ = ["NEVER_REPEATED_HEADERS", "AnswerMemo", "Kept", "certificate_of", "dpop_scheme", "repeatable"]

# A request carrying any of these (lower-case names) is never answered from the memo.
NEVER_REPEATED_HEADERS = frozenset({"dpop"})


def dpop_scheme(authorization: bytes | str) -> bool:
    """Whether an ``authorization`` value uses the DPoP scheme (any case): for a door's
    byte-level look before it parses anything."""
    text = authorization.decode("latin-1") if isinstance(authorization, bytes) else authorization
    head = text.lstrip()[:5]  # "DPoP" 1*SP token68 (RFC 9449 7.1); a door's fast path calls this
    return head[4:] == " " and head[:4].lower() == "dpop"


# An entry holds the request's path (twice, with its log record): bounded, so that 4096 kept
# allows stay a few MiB whatever paths an authenticated client sends (about 72 MiB at 8 KiB
# paths before). Longer paths are decided every time.
MAX_KEPT_PATH = 1024


def repeatable(request: AuthzRequest) -> bool:
    """Whether the memo may keep an answer to this request: not a DPoP request."""
    if any(name in request.headers for name in NEVER_REPEATED_HEADERS):
        return False
    return not any(dpop_scheme(value) for value in request.authorization)


def certificate_of(request: AuthzRequest, snapshot: Snapshot) -> str:
    """The client certificate a decision on ``request`` reads, as given ("" for none): what
    ``AnswerMemo.lookup`` compares (a door's fast path may pass the same bytes unparsed)."""
    found = client_certificate(request, snapshot.certificate_source)
    return found.value if found is not None else ""


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Kept(Generic[T]):
    """An allow answered once: the rendered answer and what recording a repeat needs."""

    answer: T
    record: object  # telemetry's record of the decision, repeated as it was
    valid_from: float
    valid_until: float
    token: tuple[bytes, VerifiedToken]  # the cache key and the very entry it was decided on
    certificate: str  # the client certificate the request carried, as given ("" for none)
    revocations: int = 0  # the revocation mirror's generation when it was decided
    # The subscription mirror's generation when it was decided; None: no subscription was checked.
    subscriptions: int | None = None


class AnswerMemo(Generic[T]):
    """A bounded memo of one snapshot's allows (oldest out first); not thread-safe."""

    __slots__ = ("_entries", "_snapshot", "size")

    def __init__(self) -> None:
        self.size = 0
        self._entries: dict[Hashable, Kept[T]] = {}
        self._snapshot: Snapshot | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def usable(self, snapshot: Snapshot, size: int) -> bool:
        """Whether the memo may answer on this snapshot, holding ``size`` entries (a new snapshot
        empties it; 0 turns it off)."""
        if snapshot is not self._snapshot:
            self._entries, self._snapshot, self.size = {}, snapshot, size
        return size > 0 and snapshot.cache.max_entries > 0

    def forget(self) -> None:
        """Let the current snapshot's entries go (the memo was turned off)."""
        if self._snapshot is not None:
            self._entries, self._snapshot = {}, None

    def lookup(self, snapshot: Snapshot, key: Hashable, now: float, *, certificate: str) -> Kept[T] | None:
        """The kept answer under ``key`` if it still holds (then the cache counts a hit).

        ``certificate``: the client certificate this request carries, as given ("" for
        none; ``certificate_of``); an entry decided with another is no hit.
        """
        kept = self._entries.get(key)
        if kept is None or snapshot is not self._snapshot or not kept.valid_from <= now < kept.valid_until:
            return None
        if kept.certificate != certificate:
            return None
        if not snapshot.revocations.holds(kept.revocations):
            return None
        if kept.subscriptions is not None and not snapshot.subscriptions.holds(kept.subscriptions):
            return None
        if not snapshot.cache.holds(*kept.token, snapshot.token_keys, now):
            return None
        snapshot.revocations.repeated()  # a repeat served on a stale mirror is counted like a check
        if kept.subscriptions is not None:
            snapshot.subscriptions.repeated()
        return kept

    def remember(
        self,
        snapshot: Snapshot,
        key: Hashable,
        *,
        request: AuthzRequest,
        decision: Decision,
        answer: T,
        record: Callable[[], object],
    ) -> None:
        """Keep an allow of a cached, verified token (anything else is decided afresh every time);
        ``record`` makes what recording its repeats needs (only for an answer that is kept)."""
        if (
            snapshot is not self._snapshot
            or self.size <= 0
            or decision.verdict is not Verdict.ALLOW
            or not decision.token_present  # a public rule by host: cheap to decide, tied to no token
            or decision.dpop
            or decision.binding is Binding.DPOP
            or not repeatable(request)
            or len(request.path) > MAX_KEPT_PATH
        ):
            return
        found = credentials(request)
        if found is None or found.scheme is not Scheme.BEARER:
            return
        cache_key = snapshot.cache.key(found.token)
        verified = snapshot.cache.peek(cache_key)
        if verified is None:
            return  # not cached (yet): nothing to tie the answer to
        entries = self._entries
        if key not in entries:
            while len(entries) >= self.size:
                del entries[next(iter(entries))]  # the oldest first
        entries[key] = Kept(
            answer,
            record(),
            decision.valid_from,
            decision.valid_until,
            (cache_key, verified),
            certificate_of(request, snapshot),
            snapshot.revocations.generation,
            None if decision.subscription is None else snapshot.subscriptions.generation,
        )
