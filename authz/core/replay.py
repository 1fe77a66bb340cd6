"""DPoP replay protection: each (key thumbprint, ``jti``) is accepted once while its proof lives.

A proof is accepted until ``iat + max_age``; its entry is kept until ``iat + max_age +
skew`` (the caller's ``expires_at``), so a proof cannot outlive its entry. Keys are a
16-byte BLAKE2b of the thumbprint and the ``jti``: per key, so one client's ``jti``
values can neither collide with nor use up another's, and the ``jti`` itself (client
text) is never stored.

``ReplayStore`` is the interface the check sequence awaits; ``MemoryReplayStore`` is the
per-process one. Per process means: with ``--workers N`` and R replicas, each process has
its own memory, so a captured proof can be accepted up to N x R times within its window
(once per process that receives it), not once. Two doors of one process share one
store. A store shared across replicas (Redis ``SET key 1 NX PX ms``: ``OK`` fresh, nil
replayed, an error or a timeout unavailable) implements the same protocol; it is async
so that such a store never blocks the event loop.

When the memory store is full of unexpired entries it refuses the new proof (FULL, the
``dpop_replay_cache_full`` deny) and never evicts: evicting an unexpired entry would
silently re-open replay for that proof. "Size it so it cannot fill" would need a bound
on the accepted proof rate that authz does not have (it bounds concurrency, not rate).
Sizing rule: capacity >= peak accepted DPoP proofs per second per process x
(max_age + 2 x skew). Measured memory: about 100 bytes per entry (bench/bench_dpop.py).
"""

from __future__ import annotations

import enum
import hashlib
import math
import threading
from typing import Protocol

__all__ = ["MemoryReplayStore", "ReplayStore", "ReplayVerdict", "replay_key"]

_PERSON = b"dpop-jti-v1"


class ReplayVerdict(enum.Enum):
    """The answer of a store to one claim."""

    FRESH = "fresh"  # first sight: remembered, the proof may pass
    REPLAYED = "replayed"  # seen before and not expired: dpop_proof_replayed
    FULL = "full"  # not remembered (no room): dpop_replay_cache_full
    UNAVAILABLE = "unavailable"  # a shared store did not answer: deny as well


def replay_key(jkt: str, jti: str) -> bytes:
    """The store key of a proof: BLAKE2b-128 of its key's thumbprint and its ``jti``.

    ``jkt`` is always 43 characters, so the concatenation is unambiguous without a length.
    """
    data = jkt.encode("ascii") + jti.encode("utf-8")
    return hashlib.blake2b(data, digest_size=16, person=_PERSON).digest()


class ReplayStore(Protocol):
    """Remembers proof keys until they expire; ``claim`` is check-and-insert, atomically."""

    async def claim(self, key: bytes, expires_at: float, now: float) -> ReplayVerdict: ...

    def size(self) -> int:
        """Entries held now (for a gauge); -1 when the store cannot tell cheaply."""
        ...


class MemoryReplayStore:
    """A bounded set of proof keys in this process, purged by expiry second.

    ``_seen`` answers membership; ``_buckets`` lists the keys expiring in each whole
    second, so a purge touches only what expires. Purging is amortised over claims:
    each claim first drops the seconds that have passed since the last one.
    """

    __slots__ = ("_buckets", "_capacity", "_lock", "_purged", "_seen")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
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

    async def claim(self, key: bytes, expires_at: float, now: float) -> ReplayVerdict:
        return self.claim_now(key, expires_at, now)

    def claim_now(self, key: bytes, expires_at: float, now: float) -> ReplayVerdict:
        """``claim`` without the coroutine: for callers that are not async."""
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
