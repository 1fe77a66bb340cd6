"""Subscriptions: the process's mirror, fed from the shared store or from the subscriptions file.

In the store (keys under ``key_prefix``, one hash tag so that they share a slot):

- ``{sub}:records``, a hash: field ``"<tenant> <api> <client>"`` (tenant and API names hold no
  space; the client is the rest), value the record as JSON (``Subscription.to_json``);
- ``{sub}:version``, a counter raised by every change;
- ``{sub}:changes``, a channel: ``"<version> = <record JSON>"``;
- ``{sub}:log``, a stream: the audit trail, one entry per change (``Event.to_dict``, as strings).

A change is one Lua script (``CHANGE_SCRIPT``): compare the record with the one the workflow
decided on (nothing changes if another change came first), write it, raise the version,
publish it and append the event: atomic, so the audit trail and the state never disagree.
The mirror is kept current as authz/app/feed.py describes; checks read only the mirror.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from authz.app.feed import FeedCounters, StoreFeed, counter_family
from authz.app.store import StoreClient, StoreMetrics
from authz.config.settings import Config, SubscriptionSettings
from authz.core.subscription import Subscription, SubscriptionSet
from authz.telemetry.metrics import Collector

__all__ = [
    "CHANGE_SCRIPT",
    "SubscriptionFeed",
    "SubscriptionKeys",
    "SubscriptionService",
    "attach",
    "fetch_records",
    "field_of",
    "load_records",
    "parse_records",
    "record_at",
]

_log = logging.getLogger("authz.subscription")

# KEYS: records, version, log; ARGV: channel, field, the value expected now ("" for none), the
# new value, then the event's field and value pairs. Returns the new version, or -1 (changed
# meanwhile: nothing written).
CHANGE_SCRIPT = """
local current = redis.call('HGET', KEYS[1], ARGV[2])
if (current or '') ~= ARGV[3] then
  return -1
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[4])
local version = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[1], version .. ' = ' .. ARGV[4])
local event = {}
for i = 5, #ARGV do
  event[#event + 1] = ARGV[i]
end
redis.call('XADD', KEYS[3], '*', unpack(event))
return version
"""


class SubscriptionKeys:
    """The store keys of the subscriptions under one key prefix."""

    def __init__(self, prefix: str) -> None:
        self.records = f"{prefix}{{sub}}:records"
        self.version = f"{prefix}{{sub}}:version"
        self.channel = f"{prefix}{{sub}}:changes"
        self.log = f"{prefix}{{sub}}:log"


def field_of(key: tuple[str, str, str]) -> str:
    """The hash field of a subscription's (tenant, API, client)."""
    tenant, api, client = key
    return f"{tenant} {api} {client}"


def attach(config: Config, mirror: SubscriptionSet) -> Config:
    """``config`` with its snapshot reading ``mirror`` (a fresh snapshot: nothing cached yet)."""
    return replace(config, snapshot=replace(config.snapshot, subscriptions=mirror))


async def load_records(client: StoreClient) -> tuple[list[Subscription], int, int]:
    """Every subscription in the store, the version they are at, and how many were unreadable."""
    values, version = await fetch_records(client)
    records, bad = parse_records(values)
    return records, version, bad


async def fetch_records(client: StoreClient) -> tuple[dict[Any, Any], int]:
    """The records hash as the store keeps it, and its version (read together)."""
    keys = SubscriptionKeys(client.settings.key_prefix)
    pipe = client.background.pipeline(transaction=True)
    pipe.hgetall(keys.records)
    pipe.get(keys.version)
    values, version = await pipe.execute()
    return values, int(version or 0)


def parse_records(values: Mapping[Any, Any]) -> tuple[list[Subscription], int]:
    """The readable records of ``fetch_records``' hash, and how many were not."""
    records, bad = [], 0
    for field, value in values.items():
        try:
            records.append(record_at(field, value))
        except ValueError:
            bad += 1
    return records, bad


def record_at(field: str | bytes, value: str | bytes) -> Subscription:
    """The record stored under ``field``; ValueError if it is not one, or names another
    subscription than its field (forged or misfiled: it would grant what ``revoke`` cannot find)."""
    record = Subscription.from_json(value)
    name = field.decode("utf-8", "replace") if isinstance(field, bytes) else field
    if field_of(record.key) != name:
        raise ValueError("the record names another subscription than its field")
    return record


class SubscriptionFeed(StoreFeed[SubscriptionSet, SubscriptionSettings]):
    """Keeps the subscription mirror current from one store client (until stopped)."""

    name = "subscription"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._keys = SubscriptionKeys(self.client.settings.key_prefix)

    @property
    def version_key(self) -> str:
        return self._keys.version

    @property
    def channel(self) -> str:
        return self._keys.channel

    async def fetch(self) -> tuple[Any, int]:
        return await fetch_records(self.client)

    def build(self, raw: Any) -> tuple[SubscriptionSet, int]:
        records, bad = parse_records(raw)
        return SubscriptionSet(records), bad

    def _apply(self, sign: str, rest: str) -> bool | None:
        if sign != "=":
            return None
        try:
            record = Subscription.from_json(rest)
        except ValueError:
            return None
        changed = self.mirror.put(record)
        if changed:
            self._counters.applied["message"] += 1
        return changed


class SubscriptionService:
    """The process's subscription mirror and what feeds it, following each loaded configuration."""

    def __init__(self, store_metrics: StoreMetrics) -> None:
        self.mirror = SubscriptionSet()
        self.feed: SubscriptionFeed | None = None
        self.required = False
        self._counters = FeedCounters(store_metrics)
        self._file_records: tuple[Subscription, ...] | None = None

    async def apply(self, config: Config, client: StoreClient | None, wait: float) -> None:
        """Follow ``config``: its file's records, or the store's (first load awaited up to ``wait``)."""
        settings = config.subscriptions
        self.required = settings.required
        if settings.file is not None or client is None:
            await self.stop()
            self.mirror.set_staleness(None, serve_stale=False)
            if settings.records != self._file_records:
                self.mirror.replace(settings.records)
                self._counters.applied["file"] += len(settings.records)
                self._file_records = settings.records
                if settings.file is not None:
                    _log.info(
                        "subscriptions loaded",
                        extra={"fields": {"file": settings.file, "subscriptions": len(self.mirror)}},
                    )
            return
        self._file_records = None
        self.mirror.set_staleness(settings.max_staleness, serve_stale=settings.serve_stale)
        feed = self.feed
        if feed is not None and feed.client is client and _same_feed(feed.settings, settings):
            return
        await self.stop()
        self.feed = SubscriptionFeed(self.mirror, client, settings, self._counters)
        if not await self.feed.start(wait):
            _log.warning(
                "subscriptions not loaded yet; the mirror is stale until they are",
                extra={"fields": {"store": client.settings.endpoint, "waited": wait}},
            )

    def ready(self) -> bool:
        """False while checks of APIs that require subscriptions would be subscription_state_stale."""
        return not (self.required and self.mirror.stale and not self.mirror.serve_stale)

    async def stop(self) -> None:
        if self.feed is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.feed.stop()
            self.feed = None

    def collector(self) -> Collector:
        """The mirror's and its feed's metrics, read at each scrape."""
        return _SubscriptionCollector(self)


class _SubscriptionCollector:
    def __init__(self, service: SubscriptionService) -> None:
        self._service = service

    def collect(self) -> list[Metric]:
        service = self._service
        mirror, counters, feed = service.mirror, service._counters, service.feed
        applied = counter_family(
            "authz_subscriptions_applied",
            "Subscription records applied to the mirror, by how they arrived.",
            "source",
            counters.applied,
        )
        resyncs = counter_family(
            "authz_subscription_resyncs",
            "Full loads of the mirror from the store, by result.",
            "result",
            counters.resyncs,
        )
        unreadable = CounterMetricFamily(
            "authz_subscription_unreadable",
            "Subscription messages and stored records that could not be read (skipped).",
            labels=["what"],
        )
        unreadable.add_metric(["message"], counters.bad_messages)
        unreadable.add_metric(["record"], counters.bad_members)
        return [
            GaugeMetricFamily(
                "authz_subscription_records", "Subscriptions in this process's mirror.", len(mirror)
            ),
            GaugeMetricFamily(
                "authz_subscription_mirror_age_seconds",
                "Seconds since the store last confirmed the mirror current (0: from a file or none).",
                mirror.age(),
            ),
            GaugeMetricFamily(
                "authz_subscription_mirror_stale",
                "1 while the mirror is older than subscriptions.max_staleness.",
                float(mirror.stale),
            ),
            GaugeMetricFamily(
                "authz_subscription_subscribed",
                "1 while this process is subscribed to the store's subscription channel.",
                float(feed is not None and feed.subscribed),
            ),
            CounterMetricFamily(
                "authz_subscription_stale_checks",
                "Checks served on a stale mirror (subscriptions.on_stale: serve).",
                mirror.stale_checks,
            ),
            applied,
            resyncs,
            unreadable,
        ]


def _same_feed(a: SubscriptionSettings, b: SubscriptionSettings) -> bool:
    return (a.resync_interval, a.full_resync_interval) == (b.resync_interval, b.full_resync_interval)
