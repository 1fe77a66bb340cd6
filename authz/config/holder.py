"""The current configuration of a running process: swapping it is one reference assignment."""

from __future__ import annotations

from authz.config.settings import Config

__all__ = ["SnapshotHolder"]


class SnapshotHolder:
    """Doors read ``current`` once per check, so a reload mid-check cannot split it."""

    def __init__(self, config: Config | None = None) -> None:
        self.current: Config | None = config
        self.generation = 1 if config is not None else 0

    def swap(self, config: Config) -> None:
        self.current = config
        self.generation += 1
