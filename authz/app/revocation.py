"""Revocations: the process's mirror, fed from the shared store or from the revocation file.

In the store (keys under ``key_prefix``, one hash tag so that they share a slot):

- ``{rev}:entries``, a sorted set: member ``Entry.member()``, score the entry's expiry (epoch s);
- ``{rev}:version``, a counter raised by every change;
- ``{rev}:changes``, a channel: ``"<version> + <expiry> <member>"`` or ``"<version> - <member>"``.

A change is one Lua script (add or remove, raise the version, publish it): atomic, so a reader
that loads the set and the version in one transaction sees a state that some version names.

Each process subscribes to the channel, then loads the set (``MULTI``: purge the expired, read
the rest, read the version), and keeps it current as authz/app/feed.py describes. Checks never
wait for any of this: they read the mirror, which says when it has gone unconfirmed for longer
than ``max_staleness`` (authz.core.mirror).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from authz.app.feed import FeedCounters, StoreFeed, counter_family
from authz.app.store import StoreClient, StoreMetrics
from authz.config.settings import Config, RevocationSettings
from authz.core.revocation import Entry, RevocationSet
from authz.telemetry.metrics import Collector

__all__ = ["ADD_SCRIPT", "REMOVE_SCRIPT", "RevocationFeed", "RevocationService", "attach", "load_entries"]

_log = logging.getLogger("authz.revocation")
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
    members, version = await _fetch(client, now)
    entries, bad = _parse(members)
    return entries, version, bad


async def _fetch(client: StoreClient, now: float) -> tuple[list[tuple[bytes, float]], int]:
    pipe = client.background.pipeline(transaction=True)
    pipe.zremrangebyscore(client.revocations_key, "-inf", now)
    pipe.zrange(client.revocations_key, now, "+inf", byscore=True, withscores=True)
    pipe.get(client.version_key)
    _, members, version = await pipe.execute()
    return members, int(version or 0)


def _parse(members: Iterable[tuple[bytes, float]]) -> tuple[list[Entry], int]:
    entries, bad = [], 0
    for member, score in members:
        try:
            entries.append(Entry.from_member(member, float(score)))
        except (ValueError, TypeError, UnicodeDecodeError):
            bad += 1
    return entries, bad


class RevocationFeed(StoreFeed[RevocationSet, RevocationSettings]):
    """Keeps the revocation mirror current from one store client (until stopped)."""

    name = "revocation"

    @property
    def version_key(self) -> str:
        return self.client.version_key

    @property
    def channel(self) -> str:
        return self.client.channel

    async def fetch(self) -> tuple[Any, int]:
        return await _fetch(self.client, time.time())

    def build(self, raw: Any) -> tuple[RevocationSet, int]:
        entries, bad = _parse(raw)
        return RevocationSet(entries), bad

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


class RevocationService:
    """The process's mirror and what feeds it, following each loaded configuration."""

    def __init__(self, store_metrics: StoreMetrics) -> None:
        self.mirror = RevocationSet()
        self.feed: RevocationFeed | None = None
        self._counters = FeedCounters(store_metrics)
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
        applied = counter_family(
            "authz_revocations_applied",
            "Revocation entries applied to the mirror, by how they arrived.",
            "source",
            counters.applied,
        )
        resyncs = counter_family(
            "authz_revocation_resyncs",
            "Full loads of the mirror from the store, by result.",
            "result",
            counters.resyncs,
        )
        subscriptions = counter_family(
            "authz_revocation_subscriptions",
            "Subscriptions to the store's revocation channel: made, and lost.",
            "event",
            counters.subscriptions,
        )
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
