"""DPoP replay protection: each (key thumbprint, ``jti``) is accepted once while its proof lives.

``ReplayStore`` is the interface the check sequence awaits (async, so that a store shared
across replicas, e.g. Redis ``SET key 1 NX PX ms``, never blocks the event loop);
``MemoryReplayStore`` is the per-process one. Per process means: with ``--workers N`` and R
replicas a captured proof can be accepted up to N x R times within its window, once per
process that receives it; the two doors of one process share one store. When full, the
store refuses (``dpop_replay_cache_full``) and never evicts an unexpired entry.
``ReplayMemory``: when a store's memory of accepted proofs began or narrowed (a start, a
store change, a reload raising ``max_age``), so that a proof it cannot know is refused.
"""

from __future__ import annotations

import enum
import hashlib
import math
import threading
from typing import Protocol

__all__ = ["MemoryReplayStore", "ReplayMemory", "ReplayStore", "ReplayVerdict", "replay_key"]

_PERSON = b"dpop-jti-v1"


class ReplayVerdict(enum.Enum):
    """The answer of a store to one claim."""

    FRESH = "fresh"  # first sight: remembered, the proof may pass
    REPLAYED = "replayed"  # seen before and not expired: dpop_proof_replayed
    FULL = "full"  # not remembered (no room): dpop_replay_cache_full
    UNAVAILABLE = "unavailable"  # a shared store did not answer: deny as well
    # made before the store's memory began (or under a shorter max_age): the store cannot
    # know whether it was accepted, so it is refused (dpop_proof_invalid: make a new proof)
    UNREMEMBERED = "unremembered"


def replay_key(jkt: str, jti: str) -> bytes:
    """The store key of a proof: BLAKE2b-128 of its key's thumbprint and its ``jti``.

    Per key, so one client's ``jti`` values can neither collide with nor use up another's;
    hashed, so the client's text is not stored. ``jkt`` is always 43 characters: the
    concatenation is unambiguous without a length.
    """
    data = jkt.encode("ascii") + jti.encode("utf-8")
    return hashlib.blake2b(data, digest_size=16, person=_PERSON).digest()


class ReplayMemory:
    """Where a replay store's memory breaks: proofs made before a break may have been accepted unseen.

    ``forgot(at)``: nothing accepted before ``at`` is remembered (the process started, the
    shared store changed): a proof with ``iat`` before it is refused. ``narrowed(at, max_age)``:
    proofs accepted before ``at`` were remembered only for that shorter ``max_age`` (a reload
    raised it): such a proof is judged by it. A break matters for one proof window; later,
    every proof made before it is too old anyway, and the break is dropped.
    Residual: a proof whose ``iat`` was ahead of the server's clock (at most the skew),
    accepted within that much time before the break.
    """

    __slots__ = ("_breaks",)

    def __init__(self) -> None:
        self._breaks: tuple[tuple[float, float | None], ...] = ()

    @property
    def breaks(self) -> tuple[tuple[float, float | None], ...]:
        """(at, max_age before, or None when nothing before is remembered), oldest first."""
        return self._breaks

    def forgot(self, at: float) -> None:
        # Up to the next whole second: iat is usually whole seconds, so a proof accepted just
        # before the break may carry the break's own second. A client's proofs of that second
        # are refused too (at most a second after a start: it makes a new one).
        self._breaks = (*self._breaks, (math.ceil(at), None))

    def narrowed(self, at: float, max_age: float) -> None:
        self._breaks = (*self._breaks, (math.ceil(at), max_age))

    def covers(self, issued_at: float, expires_at: float, now: float) -> bool:
        """Whether a proof made at ``issued_at`` (remembered until ``expires_at``) was seen if accepted."""
        breaks = self._breaks
        if not breaks:
            return True
        window = expires_at - issued_at  # max_age + skew in force now
        if breaks[0][0] < now - window:  # the oldest break no longer matters: drop what passed
            breaks = self._breaks = tuple(b for b in breaks if b[0] >= now - window)
        for at, max_age in breaks:
            if issued_at < at and (max_age is None or now > issued_at + max_age):
                return False
        return True


class ReplayStore(Protocol):
    """Remembers proof keys until they expire; ``claim`` is check-and-insert, atomically.

    ``issued_at``: the proof's ``iat``, refused as UNREMEMBERED when the store's memory
    (``ReplayMemory``) cannot cover a proof made then.
    """

    async def claim(
        self, key: bytes, expires_at: float, now: float, *, issued_at: float | None = None
    ) -> ReplayVerdict: ...

    def size(self) -> int:
        """Entries held now (for a gauge); -1 when the store cannot tell cheaply."""
        ...


class MemoryReplayStore:
    """A bounded set of proof keys in this process, purged by expiry second.

    The caller's ``expires_at`` is ``iat + max_age + skew``: a proof is accepted until
    ``iat + max_age``, so it never outlives its entry. Full of unexpired entries, the store
    answers FULL: evicting one would silently re-open replay for that proof, and "sized so
    it cannot fill" would need a bound on the accepted proof rate that authz does not have.
    Size: capacity >= peak accepted proofs per second per process x (max_age + 2 x skew),
    at about 100 bytes per entry (bench/bench_dpop.py measures it).

    ``_seen`` answers membership; ``_buckets`` lists the keys expiring in each whole
    second, so a purge touches only what expires. Purging is amortised over claims:
    each claim first drops the seconds that have passed since the last one.
    """

    __slots__ = ("_buckets", "_capacity", "_lock", "_purged", "_seen", "memory")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self.memory = ReplayMemory()
        self._seen: set[bytes] = set()
        self._buckets: dict[int, list[bytes]] = {}
        self._purged = -1  # every second up to this one has been purged
        # The doors share one event loop, and claim_now never awaits, so the check and
        # the insert cannot interleave there; the lock keeps that true should a thread
        # (an admin or executor task) ever call in.
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return self._capacity

    def size(self) -> int:
        return len(self._seen)

    def resize(self, capacity: int) -> None:
        """A new bound (a reload changed it); entries beyond a smaller one stay until they expire."""
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        with self._lock:
            self._capacity = capacity

    def narrowed(self, at: float, max_age: float) -> None:
        self.memory.narrowed(at, max_age)

    async def claim(
        self, key: bytes, expires_at: float, now: float, *, issued_at: float | None = None
    ) -> ReplayVerdict:
        return self.claim_now(key, expires_at, now, issued_at=issued_at)

    def claim_now(
        self, key: bytes, expires_at: float, now: float, *, issued_at: float | None = None
    ) -> ReplayVerdict:
        """``claim`` without the coroutine: for callers that are not async."""
        if issued_at is not None and not self.memory.covers(issued_at, expires_at, now):
            return ReplayVerdict.UNREMEMBERED
        with self._lock:
            self._purge(math.floor(now))
            if key in self._seen:
                return ReplayVerdict.REPLAYED
            if len(self._seen) >= self._capacity:
                return ReplayVerdict.FULL
            # Rounded up, and never into a second already purged (a clock that stepped
            # back): an entry may outlive its proof by under a second, never the reverse.
            second = max(math.ceil(expires_at), self._purged + 1)
            self._seen.add(key)
            bucket = self._buckets.get(second)
            if bucket is None:
                self._buckets[second] = [key]
            else:
                bucket.append(key)
            return ReplayVerdict.FRESH

    def _purge(self, through: int) -> None:
        """Forget every entry whose expiry second is ``through`` or earlier."""
        if through <= self._purged:
            return
        buckets = self._buckets
        if through - self._purged > len(buckets):
            # Idle for longer than there are buckets: walk the buckets, not the seconds.
            expired = [second for second in buckets if second <= through]
        else:
            expired = [second for second in range(self._purged + 1, through + 1) if second in buckets]
        for second in expired:
            self._seen.difference_update(buckets.pop(second))
        self._purged = through
