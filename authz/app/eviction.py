"""Whether the shared store may evict what authz keeps in it, read from ``INFO`` (docs/shared-store.md).

Every DPoP replay key carries an expiry (``SET NX PX``), so any ``maxmemory-policy`` but
``noeviction`` may drop one under memory pressure, and the proof it guarded is accepted again:
silently, fleet-wide, with pressure any client can make by sending valid proofs. The
revocation and subscription keys carry no expiry: only the ``allkeys-*`` policies may drop
them, and a dropped revocation entry is an un-revocation. ``INFO`` is read rather than
``CONFIG GET``, which managed offerings disable. ``maxmemory 0`` (no limit) does not make a
policy safe: one ``CONFIG SET maxmemory`` would arm it between two readings.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

__all__ = ["UNREAD", "EvictionReading", "read_eviction"]

NOEVICTION = "noeviction"


@dataclass(frozen=True, slots=True)
class EvictionReading:
    """What ``INFO memory`` and ``INFO stats`` said last (policy None: not read, or refused)."""

    policy: str | None = None
    maxmemory: int | None = None
    evicted_keys: int | None = None
    refused: bool = False  # the server answered INFO with an error (an ACL without +info)
    answered: bool = False  # False: never read (the store has not answered yet)

    @property
    def replay_safe(self) -> bool:
        """True only when the store cannot evict a replay key (they all carry an expiry)."""
        return self.policy == NOEVICTION

    @property
    def state_safe(self) -> bool:
        """True when the store cannot evict the revocation and subscription keys (they carry
        no expiry: ``volatile-*`` policies evict only keys that do)."""
        return self.policy == NOEVICTION or (self.policy or "").startswith("volatile-")

    @property
    def label(self) -> str:
        """The policy for logs and metrics: as read; else ``refused`` (INFO refused), ``absent``
        (INFO without it) or ``unknown`` (not read yet)."""
        if self.policy is not None:
            return self.policy
        if self.refused:
            return "refused"
        return "absent" if self.answered else "unknown"


UNREAD = EvictionReading()


async def read_eviction(client: Any, timeout: float) -> EvictionReading | None:
    """The store's eviction policy and counters (one round trip), or None when it did not answer
    (unreachable or slow: nothing learnt, the last reading stands). A refused ``INFO`` (no
    ``+info`` in the user's ACL, a renamed command) is a reading: refused, so unsafe."""
    try:
        async with asyncio.timeout(timeout):
            pipe = client.pipeline(transaction=False)
            pipe.info("memory")
            pipe.info("stats")
            memory, stats = await pipe.execute()
    except ResponseError:
        return EvictionReading(refused=True, answered=True)
    except Exception:  # noqa: BLE001 - unreachable now: the next reading decides
        return None
    policy = memory.get("maxmemory_policy")
    return EvictionReading(
        policy=str(policy) if policy is not None else None,
        maxmemory=_int(memory.get("maxmemory")),
        evicted_keys=_int(stats.get("evicted_keys")),
        answered=True,
    )


def _int(value: object) -> int | None:
    if isinstance(value, int):
        return value
    try:
        return int(str(value))
    except ValueError:
        return None
