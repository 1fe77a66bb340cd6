"""The current configuration of a running process, and what outlives each configuration.

Swapping the configuration is one reference assignment. Two things belong to the process,
not to a configuration, and a reload must not reset them: the DPoP replay store (emptying it
would re-open replay of every live proof; a reload only changes its bound) and the nonce keys
a reload drops (verify-only for two lifetimes, so no client's current nonce turns invalid).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from authz.config.settings import Config
from authz.core.replay import MemoryReplayStore, ReplayStore
from authz.core.snapshot import DEFAULT_DPOP

__all__ = ["ProcessReplayStore", "SnapshotHolder"]


class ProcessReplayStore(ReplayStore, Protocol):
    """The process's replay store: in memory, or the shared store over one (authz/app/store.py)."""

    @property
    def capacity(self) -> int: ...

    def resize(self, capacity: int) -> None: ...

    def narrowed(self, at: float, max_age: float) -> None:
        """Proofs accepted before ``at`` were remembered for this shorter ``max_age`` only."""
        ...


class SnapshotHolder:
    """Doors read ``current`` once per check, so a reload mid-check cannot split it.

    ``replay``: the process's replay store, one for both doors and every reload. A reload
    that raises ``dpop.max_age`` narrows its memory (ReplayMemory): entries made so far
    expire by the old one.
    """

    def __init__(self, config: Config | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.current: Config | None = config
        self.generation = 1 if config is not None else 0
        size = (config.snapshot.dpop if config is not None else DEFAULT_DPOP).replay_cache_size
        self.replay: ProcessReplayStore = MemoryReplayStore(size)
        self._clock = clock

    def swap(self, config: Config) -> None:
        config = self._carry_nonce_keys(config)
        self.replay.resize(config.snapshot.dpop.replay_cache_size)
        if self.current is not None:
            before = self.current.snapshot.dpop.max_age
            if config.snapshot.dpop.max_age > before:  # entries made so far expire by the old one
                self.replay.narrowed(self._clock(), before)
        self.current = config
        self.generation += 1

    def _carry_nonce_keys(self, config: Config) -> Config:
        """``config`` with the nonce issuer succeeding the current one (NonceIssuer.successor)."""
        before = self.current.snapshot.dpop.nonce if self.current is not None else None
        after = config.snapshot.dpop.nonce
        if before is None or after is None:
            return config
        issuer = before.successor(after.keys, now=self._clock(), lifetime=after.lifetime, skew=after.skew)
        dpop = replace(config.snapshot.dpop, nonce=issuer)
        return replace(config, snapshot=replace(config.snapshot, dpop=dpop))
