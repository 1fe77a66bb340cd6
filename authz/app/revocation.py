"""Revocations: the process's mirror, fed from the shared store or from the revocation file.

In the store (keys under ``key_prefix``, one hash tag so that they share a slot):

- ``{rev}:entries``, a sorted set: member ``Entry.member()``, score the entry's expiry (epoch s);
- ``{rev}:version``, a counter raised by every change;
- ``{rev}:changes``, a channel: ``"<version> + <expiry> <member>"`` or ``"<version> - <member>"``.

A change is one Lua script (add or remove, raise the version, publish it): atomic, so a reader
that loads the set and the version in one transaction sees a state that some version names.

Each process subscribes to the channel, then loads the set (``MULTI``: purge the expired, read
the rest, read the version). Messages apply at once (the 1 s promise); one that skips a version
(a message lost) is applied and followed by a full load. Every ``resync_interval`` the version
is read: equal, the mirror is confirmed current; different, it is loaded again. Every
``full_resync_interval`` it is loaded again anyway. A lost subscription is made again, then
the set loaded again. Checks never wait for any of this: they read the mirror, which says
when it has gone unconfirmed for longer than ``max_staleness`` (authz.core.revocation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Iterable
from dataclasses import replace

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from authz.app.store import BACKGROUND_TIMEOUT, StoreClient, StoreMetrics
from authz.config.settings import Config, RevocationSettings
from authz.core.revocation import Entry, RevocationSet
from authz.telemetry.logs import Throttle
from authz.telemetry.metrics import Collector

__all__ = ["ADD_SCRIPT", "REMOVE_SCRIPT", "RevocationFeed", "RevocationService", "attach", "load_entries"]

_log = logging.getLogger("authz.revocation")
_RETRY_MIN, _RETRY_MAX = 0.1, 2.0  # seconds between attempts to subscribe again
_PURGE_EVERY = 1.0

# KEYS: entries, version; ARGV: channel, then expiry and member pairs. Returns the last version.
ADD_SCRIPT = """
local version = 0
for i = 2, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
  version = redis.call('INCR', KEYS[2])
  redis.call('PUBLISH', ARGV[1], version .. ' + ' .. ARGV[i] .. ' ' .. ARGV[i + 1])
end
return version
"""
# KEYS: entries, version; ARGV: channel, then members. Returns how many were removed.
REMOVE_SCRIPT = """
local removed = 0
for i = 2, #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    removed = removed + 1
    local version = redis.call('INCR', KEYS[2])
    redis.call('PUBLISH', ARGV[1], version .. ' - ' .. ARGV[i])
  end
end
return removed
"""


def attach(config: Config, mirror: RevocationSet) -> Config:
    """``config`` with its snapshot reading ``mirror`` (a fresh snapshot: nothing cached yet)."""
    return replace(config, snapshot=replace(config.snapshot, revocations=mirror))


async def load_entries(client: StoreClient, now: float) -> tuple[list[Entry], int, int]:
    """Every live entry in the store, the version they are at, and how many members were unreadable.

    One transaction: the expired are dropped, the rest and the version read together.
    """
    pipe = client.background.pipeline(transaction=True)
    pipe.zremrangebyscore(client.revocations_key, "-inf", now)
    pipe.zrange(client.revocations_key, now, "+inf", byscore=True, withscores=True)
    pipe.get(client.version_key)
    _, members, version = await pipe.execute()
    entries, bad = _parse(members)
    return entries, int(version or 0), bad


def _parse(members: Iterable[tuple[bytes, float]]) -> tuple[list[Entry], int]:
    entries, bad = [], 0
    for member, score in members:
        try:
            entries.append(Entry.from_member(member, float(score)))
        except (ValueError, TypeError, UnicodeDecodeError):
            bad += 1
    return entries, bad


class RevocationFeed:
    """Keeps one mirror current from one store client (until stopped)."""

    def __init__(
        self,
        mirror: RevocationSet,
        client: StoreClient,
        settings: RevocationSettings,
        counters: _Counters,
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
        self.subscribed = False

    async def start(self, wait: float) -> bool:
        """Subscribe and load in the background; wait up to ``wait`` for the first load."""
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._subscription(), name="authz-revocation-subscription"),
            loop.create_task(self._resyncs(), name="authz-revocation-resync"),
        ]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._loaded.wait()
        return self._loaded.is_set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

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
            return  # a load already holds it
        if self._apply(sign, rest) is None:
            self._counters.bad_messages += 1
        if version != self.version + 1:
            self._resync.set()  # one or more messages went missing: load it all
        self.version = version

    def _apply(self, sign: str, rest: str) -> bool | None:
        if sign == "+":
            score, _, member = rest.partition(" ")
            try:
                entry = Entry.from_member(member, float(score))
            except (ValueError, TypeError):
                return None
            changed = self.mirror.add(entry)
            if changed:
                self._counters.applied["message"] += 1
            return changed
        if sign == "-":
            return self.mirror.remove(rest)
        return None

    # -- loads ---------------------------------------------------------------------

    async def load(self) -> bool:
        """Load every entry and replace the mirror's; True when done."""
        started = time.perf_counter()
        self._loading = []
        try:
            async with asyncio.timeout(BACKGROUND_TIMEOUT * 5):
                entries, version, bad = await load_entries(self.client, time.time())
        except Exception as exc:  # noqa: BLE001 - the store is unavailable: the mirror ages
            self._counters.store.observe("revocation_load", _result(exc), time.perf_counter() - started)
            self._counters.resyncs["failure"] += 1
            self._warn("revocation load failed", exc)
            return False
        finally:
            pending, self._loading = self._loading, None
        self._counters.store.observe("revocation_load", "ok", time.perf_counter() - started)
        before = len(self.mirror)
        self.mirror.replace(entries)
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
        if not self._loaded.is_set():
            self._loaded.set()
            _log.info(
                "revocations loaded",
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
            due = time.monotonic() - last_full >= settings.full_resync_interval
            if requested or due or not self._loaded.is_set():
                if await self.load():
                    last_full = time.monotonic()
            else:
                await self._confirm()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.resync_interval):
                    await self._resync.wait()
            requested = self._resync.is_set()
            self._resync.clear()

    async def _confirm(self) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(BACKGROUND_TIMEOUT):
                raw = await self.client.background.get(self.client.version_key)
        except Exception as exc:  # noqa: BLE001 - unavailable: the mirror ages
            self._counters.store.observe("revocation_version", _result(exc), time.perf_counter() - started)
            self._warn("revocation version check failed", exc)
            return
        self._counters.store.observe("revocation_version", "ok", time.perf_counter() - started)
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
                    await pubsub.subscribe(self.client.channel)
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
                    _log.warning(
                        "revocation subscription lost; subscribing again",
                        extra={
                            "fields": {"error": type(exc).__name__, "store": self.client.settings.endpoint}
                        },
                    )
                self.subscribed = False
            finally:
                self.subscribed = False
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), BACKGROUND_TIMEOUT)
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not a secret
            delay = min(_RETRY_MAX, delay * 2)

    def _warn(self, message: str, exc: BaseException) -> None:
        left_out = self._warnings.admit(message)
        if left_out is not None:
            _log.warning(
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


class _Counters:
    def __init__(self, store: StoreMetrics) -> None:
        self.store = store
        self.applied = {"message": 0, "resync": 0, "file": 0}
        self.resyncs = {"success": 0, "failure": 0}
        self.subscriptions = {"subscribed": 0, "lost": 0}
        self.bad_messages = 0
        self.bad_members = 0


class RevocationService:
    """The process's mirror and what feeds it, following each loaded configuration."""

    def __init__(self, store_metrics: StoreMetrics) -> None:
        self.mirror = RevocationSet()
        self.feed: RevocationFeed | None = None
        self._counters = _Counters(store_metrics)
        self._file_entries: tuple[Entry, ...] | None = None
        self._purger: asyncio.Task[None] | None = None

    async def apply(self, config: Config, client: StoreClient | None, wait: float) -> None:
        """Follow ``config``: its file's entries, or the store's (first load awaited up to ``wait``)."""
        settings = config.revocation
        if self._purger is None:
            self._purger = asyncio.get_running_loop().create_task(
                self._purge(), name="authz-revocation-purge"
            )
        if settings.file is not None or client is None:
            await self._stop_feed()
            self.mirror.set_staleness(None, serve_stale=False)
            if settings.entries != self._file_entries:
                self.mirror.replace(settings.entries)
                self.mirror.purge(time.time())
                self._counters.applied["file"] += len(settings.entries)
                self._file_entries = settings.entries
                if settings.file is not None:
                    _log.info(
                        "revocations loaded",
                        extra={"fields": {"file": settings.file, "entries": len(self.mirror)}},
                    )
            return
        self._file_entries = None
        self.mirror.set_staleness(settings.max_staleness, serve_stale=settings.serve_stale)
        feed = self.feed
        if feed is not None and feed.client is client and _same_feed(feed.settings, settings):
            return
        await self._stop_feed()
        self.feed = RevocationFeed(self.mirror, client, settings, self._counters)
        if not await self.feed.start(wait):
            _log.warning(
                "revocations not loaded yet; the mirror is stale until they are",
                extra={"fields": {"store": client.settings.endpoint, "waited": wait}},
            )

    def ready(self) -> bool:
        """False while token checks would be denied as revocation_state_stale."""
        return not (self.mirror.stale and not self.mirror.serve_stale)

    async def stop(self) -> None:
        await self._stop_feed()
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
            self._purger = None

    async def _stop_feed(self) -> None:
        if self.feed is not None:
            await self.feed.stop()
            self.feed = None

    async def _purge(self) -> None:
        while True:
            await asyncio.sleep(_PURGE_EVERY)
            self.mirror.purge(time.time())

    def collector(self) -> Collector:
        """The mirror's and its feed's metrics, read at each scrape."""
        return _RevocationCollector(self)


class _RevocationCollector:
    def __init__(self, service: RevocationService) -> None:
        self._service = service

    def collect(self) -> list[Metric]:
        service = self._service
        mirror, counters, feed = service.mirror, service._counters, service.feed
        applied = CounterMetricFamily(
            "authz_revocations_applied",
            "Revocation entries applied to the mirror, by how they arrived.",
            labels=["source"],
        )
        for source, count in sorted(counters.applied.items()):
            applied.add_metric([source], count)
        resyncs = CounterMetricFamily(
            "authz_revocation_resyncs",
            "Full loads of the mirror from the store, by result.",
            labels=["result"],
        )
        for result, count in sorted(counters.resyncs.items()):
            resyncs.add_metric([result], count)
        subscriptions = CounterMetricFamily(
            "authz_revocation_subscriptions",
            "Subscriptions to the store's revocation channel: made, and lost.",
            labels=["event"],
        )
        for event, count in sorted(counters.subscriptions.items()):
            subscriptions.add_metric([event], count)
        unreadable = CounterMetricFamily(
            "authz_revocation_unreadable",
            "Revocation messages and stored entries that could not be read (skipped).",
            labels=["what"],
        )
        unreadable.add_metric(["message"], counters.bad_messages)
        unreadable.add_metric(["entry"], counters.bad_members)
        return [
            GaugeMetricFamily(
                "authz_revocation_entries", "Revocation entries in this process's mirror.", len(mirror)
            ),
            GaugeMetricFamily(
                "authz_revocation_mirror_age_seconds",
                "Seconds since the store last confirmed the mirror current (0: from a file or none).",
                mirror.age(),
            ),
            GaugeMetricFamily(
                "authz_revocation_mirror_stale",
                "1 while the mirror is older than revocation.max_staleness.",
                float(mirror.stale),
            ),
            GaugeMetricFamily(
                "authz_revocation_subscribed",
                "1 while this process is subscribed to the store's revocation channel.",
                float(feed is not None and feed.subscribed),
            ),
            CounterMetricFamily(
                "authz_revocation_stale_checks",
                "Token checks served on a stale mirror (revocation.on_stale: serve).",
                mirror.stale_checks,
            ),
            applied,
            resyncs,
            subscriptions,
            unreadable,
        ]


def _same_feed(a: RevocationSettings, b: RevocationSettings) -> bool:
    return (a.resync_interval, a.full_resync_interval) == (b.resync_interval, b.full_resync_interval)
