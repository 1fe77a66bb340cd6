"""A per-process mirror kept current from the shared store: publish/subscribe, loads, resyncs.

The pattern of both store-fed mirrors (revocations, authz/app/revocation.py; subscriptions,
authz/app/subscriptions.py). The store keeps the state, a version counter raised by every
change, and a channel on which each change is published as ``"<version> <sign> <rest>"``
by the same script that makes it (atomic: a reader that loads the state and the version in
one transaction sees a state some version names).

Each process subscribes to the channel, then loads the state. Messages apply at once (the 1 s
promise); one that skips a version (a message lost) is applied and followed by a full load; one
that does not go past the version held (the counter went back: a backup restored, the key
evicted, a FLUSHALL and re-seed) is not applied, and the state is loaded again at once.
Every ``resync_interval`` the version is read: equal, the mirror is confirmed current;
different (lower too), it is loaded again. Every ``full_resync_interval`` it is loaded again anyway. A lost
subscription is made again, then the state loaded again. While the store reads a
``maxmemory-policy`` that may evict these keys (``allkeys-*``, or not read:
authz/app/eviction.py), nothing is loaded or confirmed. Checks never wait for any of this:
they read the mirror, which says when it has gone unconfirmed for longer than
``max_staleness`` (authz.core.mirror).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Iterable
from typing import Any, Generic, Protocol, TypeVar

from prometheus_client.metrics_core import CounterMetricFamily

from authz.app.bounded import cancel_all, within
from authz.app.store import BACKGROUND_TIMEOUT, StoreClient, StoreMetrics
from authz.config.settings import FeedSettings
from authz.telemetry.logs import Throttle

__all__ = ["FeedCounters", "FeedMirror", "StoreFeed"]

_RETRY_MIN, _RETRY_MAX = 0.1, 2.0  # seconds between attempts to subscribe again
_STOP_BOUND = 5.0  # seconds a stopping feed waits for its tasks to end (then they are left running)


class FeedMirror(Protocol):
    """What a feed writes: the whole state at once, and the freshness of the mirror."""

    def __len__(self) -> int: ...

    def replace(self, items: Iterable[Any], /) -> None: ...

    def adopt(self, fresh: Any, /) -> None: ...

    def confirm(self, at: float | None = None) -> None: ...

    def age(self, now: float | None = None) -> float: ...


M = TypeVar("M", bound=FeedMirror)
S = TypeVar("S", bound=FeedSettings)


class StoreFeed(Generic[M, S]):
    """Keeps one mirror current from one store client (until stopped).

    Subclasses name their keys (``version_key``, ``channel``), read the whole state
    (``fetch``, on the loop, bounded), make a fresh mirror of it (``build``, in a worker thread:
    at 100,000 entries parsing takes over a second, which on the loop would hold every check)
    and apply one change message (``_apply``).
    """

    name = "state"  # in store operation labels, task names and log lines

    def __init__(
        self,
        mirror: M,
        client: StoreClient,
        settings: S,
        counters: FeedCounters,
    ) -> None:
        self.mirror = mirror
        self.client = client
        self.settings = settings
        self._counters = counters
        self.version = -1  # the store version the mirror holds (once loaded)
        self._loading: list[tuple[int, str]] | None = None  # messages while a load is in flight
        self._resync = asyncio.Event()
        self._loaded = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._warnings = Throttle(10.0)
        self._log = logging.getLogger(f"authz.{self.name}")
        self.subscribed = False
        self._unreadable = 0  # at the last load: warned when it changes

    async def start(self, wait: float) -> bool:
        """Subscribe and load in the background; wait up to ``wait`` for the first load."""
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._subscription(), name=f"authz-{self.name}-subscription"),
            loop.create_task(self._resyncs(), name=f"authz-{self.name}-resync"),
        ]
        if not self.client.eviction.state_safe:
            wait = 0  # no load until the store reads a policy that keeps its keys: do not hold the start
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._loaded.wait()
        return self._loaded.is_set()

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await cancel_all(tasks, _STOP_BOUND, f"{self.name} feed")

    # -- messages ----------------------------------------------------------------

    def on_message(self, data: bytes | str) -> None:
        """Apply one change message: at once, and again after a load that was in flight."""
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        try:
            head, sign, rest = text.split(" ", 2)
            version = int(head)
        except ValueError:
            self._counters.bad_messages += 1
            return
        if self._loading is not None:
            self._loading.append((version, text))
        if not self._loaded.is_set():
            self._apply(sign, rest)  # early; the first load holds it too
            return
        if version <= self.version:
            # Either a message a load overtook (it holds it), or the store's counter went back
            # (a backup restored, the key evicted, a FLUSHALL and re-seed): then this change, and
            # the versions the mirror will be told next, name another history than the one the
            # mirror holds. Not told apart here: load it all (a spare load at worst).
            self._resync.set()
            return
        if self._apply(sign, rest) is None:
            self._counters.bad_messages += 1
        if version != self.version + 1:
            self._resync.set()  # one or more messages went missing: load it all
        self.version = version

    def _apply(self, sign: str, rest: str) -> bool | None:
        """Apply one change (``sign``, ``rest`` of its message): True changed, None unreadable."""
        raise NotImplementedError

    @property
    def version_key(self) -> str:
        raise NotImplementedError

    @property
    def channel(self) -> str:
        raise NotImplementedError

    async def fetch(self) -> tuple[Any, int]:
        """The whole state as the store answered it, and the version it is at."""
        raise NotImplementedError

    def build(self, raw: Any) -> tuple[M, int]:
        """A fresh mirror of ``fetch``'s state, and how many items were unreadable; runs in a
        worker thread, so it touches nothing but ``raw`` (not ``self.mirror``)."""
        raise NotImplementedError

    # -- loads ---------------------------------------------------------------------

    async def load(self) -> bool:
        """Load every entry and replace the mirror's; True when done."""
        started = time.perf_counter()
        self._loading = []  # messages meanwhile: applied to the mirror now, and to the fresh one
        try:
            try:
                async with asyncio.timeout(BACKGROUND_TIMEOUT * 5):  # the store's answer, not the parse
                    raw, version = await self.fetch()
            except Exception as exc:  # noqa: BLE001 - the store is unavailable: the mirror ages
                self._counters.store.observe(f"{self.name}_load", _result(exc), time.perf_counter() - started)
                self._counters.resyncs["failure"] += 1
                self._warn(f"{self.name} load failed", exc)
                return False
            self._counters.store.observe(f"{self.name}_load", "ok", time.perf_counter() - started)
            # Off the loop: the loop goes on answering checks from the mirror as it is.
            fresh, bad = await asyncio.to_thread(self.build, raw)
        finally:
            pending, self._loading = self._loading, None
        before = len(self.mirror)
        self.mirror.adopt(fresh)  # one swap, no loop over the entries
        self.version = version
        for message_version, text in pending:
            if message_version > version:
                _, sign, rest = text.split(" ", 2)
                self._apply(sign, rest)
                self.version = max(self.version, message_version)
        self.mirror.confirm()
        self._counters.applied["resync"] += max(0, len(self.mirror) - before)
        self._counters.resyncs["success"] += 1
        self._counters.bad_members += bad
        if bad != self._unreadable:  # once per change of their number, not at every load
            self._unreadable = bad
            self._log.warning(
                f"{self.name} entries in the store are unreadable: skipped (not in the mirror)",
                extra={"fields": {"unreadable": bad, "store": self.client.settings.endpoint}},
            )
        if not self._loaded.is_set():
            self._loaded.set()
            self._log.info(
                f"{self.name} state loaded",
                extra={"fields": {"entries": len(self.mirror), "version": version, "unreadable": bad}},
            )
        return True

    async def _resyncs(self) -> None:
        """The first load, once subscribed (so that no change falls between the two; 1 s at most);
        then the safety net: the version confirmed every resync_interval, a load on a difference,
        a gap or a new subscription, and every full_resync_interval anyway."""
        settings = self.settings
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await self._resync.wait()
        self._resync.clear()
        last_full = -math.inf
        requested = True
        while True:
            # A store that may evict these keys (allkeys-*, or a policy not read) may have
            # dropped some (a revocation: an un-revocation): neither load nor confirm; the
            # mirror keeps what it has and ages towards stale, as with a store that is lost.
            if self.client.eviction.state_safe:
                due = time.monotonic() - last_full >= settings.full_resync_interval
                if requested or due or not self._loaded.is_set():
                    if await self.load():
                        last_full = time.monotonic()
                else:
                    await self._confirm()
                requested = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.resync_interval):
                    await self._resync.wait()
            requested = requested or self._resync.is_set()
            self._resync.clear()

    async def _confirm(self) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(BACKGROUND_TIMEOUT):
                raw = await self.client.background.get(self.version_key)
        except Exception as exc:  # noqa: BLE001 - unavailable: the mirror ages
            self._counters.store.observe(f"{self.name}_version", _result(exc), time.perf_counter() - started)
            self._warn(f"{self.name} version check failed", exc)
            return
        self._counters.store.observe(f"{self.name}_version", "ok", time.perf_counter() - started)
        if int(raw or 0) == self.version:
            self.mirror.confirm()
        else:
            await self.load()

    # -- the subscription ------------------------------------------------------------

    async def _subscription(self) -> None:
        delay = _RETRY_MIN
        while True:
            pubsub = self.client.background.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(BACKGROUND_TIMEOUT):
                    await pubsub.subscribe(self.channel)
                self.subscribed = True
                self._counters.subscriptions["subscribed"] += 1
                # Load now: the first time, or changes may have been missed while unsubscribed.
                self._resync.set()
                delay = _RETRY_MIN
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self.on_message(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - lost: subscribe again, then load
                if self.subscribed:
                    self._counters.subscriptions["lost"] += 1
                    self._log.warning(
                        f"{self.name} subscription lost; subscribing again",
                        extra={
                            "fields": {"error": type(exc).__name__, "store": self.client.settings.endpoint}
                        },
                    )
                self.subscribed = False
            finally:
                self.subscribed = False
                # Bounded, and let go past the bound: redis-py finishes a pubsub's teardown
                # before it lets a cancel through, and a stuck one would hold stop() forever.
                await within(pubsub.aclose(), BACKGROUND_TIMEOUT)
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not a secret
            delay = min(_RETRY_MAX, delay * 2)

    def _warn(self, message: str, exc: BaseException) -> None:
        left_out = self._warnings.admit(message)
        if left_out is not None:
            self._log.warning(
                message,
                extra={
                    "fields": {
                        "error": type(exc).__name__,
                        "store": self.client.settings.endpoint,
                        "age_seconds": round(self.mirror.age(), 3),
                        "left_out": left_out,
                    }
                },
            )


def _result(exc: BaseException) -> str:
    return "timeout" if isinstance(exc, TimeoutError) else "error"


class FeedCounters:
    def __init__(self, store: StoreMetrics) -> None:
        self.store = store
        self.applied = {"message": 0, "resync": 0, "file": 0}
        self.resyncs = {"success": 0, "failure": 0}
        self.subscriptions = {"subscribed": 0, "lost": 0}
        self.bad_messages = 0
        self.bad_members = 0


def counter_family(name: str, documentation: str, label: str, counts: dict[str, int]) -> CounterMetricFamily:
    """One labelled counter of a feed's counts, as both mirrors' collectors export them."""
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in sorted(counts.items()):
        family.add_metric([value], count)
    return family
