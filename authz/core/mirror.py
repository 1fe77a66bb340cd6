"""What every per-process mirror of shared state has: a generation, and how fresh it is.

A mirror (the revocation entries, the API subscriptions) is read by checks without I/O and
written by the app's feed on the event loop (authz/app/feed.py). ``generation`` changes with
every change of the contents, so that an answer kept from before (an answer memo) is decided
again rather than repeated. Freshness: a mirror fed from a shared store is current while its
feed confirms it (``confirm``); past ``max_staleness`` without one it is stale, and a check
that reads it fails closed unless ``serve_stale`` (then it is counted in ``stale_checks``).
A mirror fed from a file, or from nothing, is always current (``max_staleness`` None).
"""

from __future__ import annotations

import math
import time

__all__ = ["Mirror"]


class Mirror:
    """The generation and freshness of one mirror; not thread-safe (one event loop writes it)."""

    __slots__ = ("_fresh_until", "generation", "max_staleness", "serve_stale", "stale_checks")

    def __init__(self, *, max_staleness: float | None = None) -> None:
        self.generation = 0
        # None: always current (a file, or nothing); else seconds a confirmation holds.
        self.max_staleness = max_staleness
        self.serve_stale = False
        self.stale_checks = 0
        self._fresh_until = math.inf if max_staleness is None else -math.inf

    def current(self) -> bool:
        """For a check: False when stale (it must fail closed); a check served stale is counted."""
        if self._fresh_until != math.inf and time.monotonic() >= self._fresh_until:
            if not self.serve_stale:
                return False
            self.stale_checks += 1
        return True

    def holds(self, generation: int) -> bool:
        """Whether an allow decided at ``generation`` may be repeated now without a check."""
        if generation != self.generation:
            return False
        return self._fresh_until == math.inf or self.serve_stale or time.monotonic() < self._fresh_until

    def repeated(self) -> None:
        """An answer kept from before was repeated (``holds`` was True): counted when served stale,
        as ``current`` counts a check, so a memo hit is no gap in ``stale_checks``."""
        if self._fresh_until != math.inf and time.monotonic() >= self._fresh_until:
            self.stale_checks += 1

    def changed(self) -> None:
        """The contents changed: answers decided before must be decided again."""
        self.generation += 1

    # -- freshness ---------------------------------------------------------------

    def confirm(self, at: float | None = None) -> None:
        """The feed has just shown the mirror current (monotonic ``at``, default now)."""
        if self.max_staleness is not None:
            self._fresh_until = (time.monotonic() if at is None else at) + self.max_staleness

    def set_staleness(self, max_staleness: float | None, *, serve_stale: bool) -> None:
        """A reload's settings; None: always current (the contents come from a file, or none)."""
        if max_staleness is None:
            self._fresh_until = math.inf
        elif self.max_staleness is None:
            self._fresh_until = -math.inf  # not confirmed by the new feed yet
        elif self._fresh_until != -math.inf:
            self._fresh_until += max_staleness - self.max_staleness
        self.max_staleness = max_staleness
        self.serve_stale = serve_stale

    def age(self, now: float | None = None) -> float:
        """Seconds since the last confirmation (0 when always current, inf before the first)."""
        if self._fresh_until == math.inf or self.max_staleness is None:
            return 0.0
        return max(0.0, (time.monotonic() if now is None else now) - (self._fresh_until - self.max_staleness))

    @property
    def stale(self) -> bool:
        return self._fresh_until != math.inf and time.monotonic() >= self._fresh_until
