"""Stand-ins for what cannot run in-process: the part of a grpc.aio servicer context the servicer uses."""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["ServicerContext"]


class ServicerContext:
    """Invocation metadata, the caller's time left (Envoy's grpc-timeout), and done callbacks."""

    def __init__(
        self, metadata: Sequence[tuple[str, str | bytes]] = (), remaining: float | None = None
    ) -> None:
        self._metadata = tuple(metadata)
        self.remaining = remaining
        self.callbacks: list[Callable[[object], None]] = []

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return self.remaining

    def add_done_callback(self, callback: Callable[[object], None]) -> None:
        """grpc calls these when the RPC ends (the drain counts checks in flight with them)."""
        self.callbacks.append(callback)
