"""Hot reload: watch the config and key files, build a new Config, swap one reference.

Files are polled with ``stat`` by the path the operator wrote, which follows Kubernetes'
``..data`` swaps; a failed build keeps the last good config and names file, line and reason.
Settings fixed at start are reported as restart required (docs/architecture.md, "Reloads").
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from authz.config import Config, load_config
from authz.config.build import read_regular
from authz.errors import ConfigError

__all__ = ["RESTART_SETTINGS", "Deferred", "ReloadStatus", "Reloader", "fingerprint"]

_log = logging.getLogger("authz.reload")
_MAX_SETTLE = 1.5  # seconds: a change is loaded within about interval + this

Fingerprint = tuple[tuple[str, tuple[int, ...] | None], ...]


def fingerprint(paths: Sequence[str]) -> Fingerprint:
    """Identity and version of each file, following symlinks; None for a missing file."""
    states: list[tuple[str, tuple[int, ...] | None]] = []
    for path in paths:
        try:
            st = os.stat(path)
        except (OSError, ValueError):  # ValueError: a NUL byte in the path
            states.append((path, None))
        else:
            states.append((path, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)))
    return tuple(states)


def _content_digest(paths: Sequence[str]) -> str | None:
    """sha256 over the files' bytes in order, as authz.config computes Config.digest; None if unreadable."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            digest.update(read_regular(path))
        except (OSError, ValueError):
            return None
    return digest.hexdigest()


# Settings a reload cannot change in a running process (authz.server decides which
# differ); authz_config_restart_required has one series for each.
RESTART_SETTINGS = ("tls", "tls.client_ca", "store")


@dataclass(frozen=True, slots=True)
class Deferred:
    """A change of the loaded config that the running process cannot apply until a restart."""

    setting: str  # one of RESTART_SETTINGS
    change: str  # "added", "removed"
    in_effect: str  # what is served meanwhile, for the log


@dataclass(frozen=True, slots=True)
class ReloadStatus:
    """What an operator needs to know about the loaded configuration."""

    generation: int
    digest: str
    loaded_at: float  # wall-clock time of the last successful load
    results: dict[str, int]  # config_reload counter by result: success, failure, unchanged
    last_error: str | None
    restart_required: tuple[Deferred, ...] = ()  # parts of the loaded config not in effect


class Reloader:
    """Keeps ``holder.current`` in step with the files on disk."""

    def __init__(
        self,
        holder: Holder,
        path: str,
        *,
        interval: float = 0.25,
        debounce: float = 0.3,
        loader: Callable[[str], Config] = load_config,
        prepare: Callable[[Config], Awaitable[None]] | None = None,
        restart_required: Callable[[Config], tuple[Deferred, ...]] | None = None,
    ) -> None:
        self._holder = holder
        self._restart_required = restart_required
        self._path = path
        self._interval = interval
        self._debounce = debounce
        self._loader = loader
        self._prepare = prepare
        self._results: Counter[str] = Counter(success=0, failure=0, unchanged=0)
        self._last_error: str | None = None
        self._loaded_at = time.time()
        self._watched = self._files()
        self._seen = fingerprint(self._watched)
        # The snapshot was loaded before this watcher existed (serve() awaits first
        # JWKS fetches in between): a change made meanwhile must not go unseen until
        # the next one. Stat first, then compare contents, so no change falls between.
        config = holder.current
        if config is None or _content_digest(config.files) != config.digest:
            self._seen = ()  # reload on the first poll ("unchanged" if only the digest rule differs)
        self._task: asyncio.Task[None] | None = None

    @property
    def status(self) -> ReloadStatus:
        config = self._holder.current
        return ReloadStatus(
            generation=self._holder.generation,
            digest=config.digest if config else "",
            loaded_at=self._loaded_at,
            results=dict(self._results),
            last_error=self._last_error,
            restart_required=self._deferred(config),
        )

    def _deferred(self, config: Config | None) -> tuple[Deferred, ...]:
        return self._restart_required(config) if config is not None and self._restart_required else ()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="authz-reload")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def reload(self) -> bool:
        """Build a snapshot from disk now and swap it in; False keeps the last good one."""
        try:
            config = await asyncio.to_thread(self._loader, self._path)
            current = self._holder.current
            self._watched = tuple(config.files)
            if current is not None and current.digest == config.digest:
                self._results["unchanged"] += 1
                self._last_error = None  # the files are good again (e.g. a bad edit reverted)
                return True
            if self._prepare is not None:
                await self._prepare(config)
        except ConfigError as exc:
            self._watch_also(exc.file)
            return self._failed(str(exc))
        except Exception as exc:  # noqa: BLE001 - a reload must never take the service down
            return self._failed(f"{self._path}: unexpected {type(exc).__name__}")
        self._holder.swap(config)
        self._results["success"] += 1
        self._loaded_at = time.time()
        self._last_error = None
        deferred = self._deferred(config)
        _log.info(
            "config reloaded",
            extra={
                "fields": {
                    "config": config.source,
                    "generation": self._holder.generation,
                    "config_sha256": config.digest,
                    "config_reload": dict(self._results),
                    "restart_required": [f"{d.setting} {d.change}" for d in deferred],
                }
            },
        )
        for item in deferred:
            # An error, not a warning: the file says one thing, the listener does another.
            _log.error(
                f"restart required: {item.setting} {item.change}",
                extra={
                    "fields": {
                        "setting": item.setting,
                        "change": item.change,
                        "in_effect": item.in_effect,
                        "applied": "the rest of the configuration",
                        "generation": self._holder.generation,
                    }
                },
            )
        return True

    def _failed(self, error: str) -> bool:
        self._results["failure"] += 1
        self._last_error = error
        current = self._holder.current
        _log.error(
            "config reload failed; keeping the last good configuration",
            extra={
                "fields": {
                    "error": error,
                    "generation": self._holder.generation,
                    "config_sha256": current.digest if current else None,
                    "config_reload": dict(self._results),
                }
            },
        )
        return False

    def _watch_also(self, file: str) -> None:
        """Watch the file a failed load names: the config may name a key file that is
        missing or bad; its appearance or fix must trigger the next reload. Kept until
        the next successful load replaces the watch list."""
        path = file.partition(": key #")[0]  # authz.jose.keys names a bad key "FILE: key #N (kid ...)"
        if os.path.isabs(path) and path not in self._watched:
            self._watched = (*self._watched, path)

    def _files(self) -> tuple[str, ...]:
        config = self._holder.current
        return tuple(config.files) if config is not None else (self._path,)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            now = fingerprint(self._watched)
            if now == self._seen:
                continue
            # Debounce: wait until the files stop changing, then reload once; but
            # never longer than the bound, or a file rewritten faster than the
            # debounce would never be reloaded.
            deadline = time.monotonic() + _MAX_SETTLE
            while time.monotonic() < deadline:
                await asyncio.sleep(self._debounce)
                settled = fingerprint(self._watched)
                if settled == now:
                    break
                now = settled
            before = self._watched
            await self.reload()
            # A reload may add or drop key files. Then the files' state at load time
            # is unknown: force one more (cheap, "unchanged") reload on the next poll.
            self._seen = now if self._watched == before else ()


class Holder(Protocol):
    """What the reloader needs of the snapshot holder (authz.service.SnapshotHolder)."""

    current: Config | None
    generation: int

    def swap(self, config: Config) -> None: ...
