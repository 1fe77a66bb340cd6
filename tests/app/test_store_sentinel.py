"""redis+sentinel://: the replay store and the revocation mirror through a real Sentinel, across a failover.

A primary, a replica and one Sentinel (quorum 1, down after 1 s), all real redis-server
processes on 127.0.0.1. The primary is killed: the Sentinel promotes the replica, and the
store client follows it without a restart of ours.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from authz.app.revocation import RevocationService
from authz.app.store import SharedReplayStore, StoreHolder, StoreMetrics
from authz.config import Config
from authz.config.settings import RevocationSettings, StoreSettings
from authz.config.store import parse_store_url
from authz.core.replay import MemoryReplayStore, ReplayVerdict, replay_key
from authz.telemetry.metrics import Registry
from testkit.redis import RedisSentinel, RedisServer

pytestmark = pytest.mark.slow

FAILOVER = 30.0  # bounds the Sentinel's failover (1 s to notice, then promotion) on a busy machine


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer, RedisSentinel]]:
    primary = RedisServer(tmp_path / "primary").start()
    replica = RedisServer(tmp_path / "replica").start()
    replica.client().replicaof("127.0.0.1", primary.port)
    sentinel = RedisSentinel(tmp_path / "sentinel", primary.port).start()
    try:
        yield primary, replica, sentinel
    finally:
        sentinel.stop()
        replica.stop()
        primary.stop()


def _settings(url: str) -> StoreSettings:
    parsed = parse_store_url(url)
    return StoreSettings(
        url=url, hosts=parsed.hosts, sentinel_service=parsed.sentinel_service, db=parsed.db, username=None,
        tls=False, password=None, ca_file=None, key_prefix="authz:", timeout=0.2, local_fallback=False,
        max_connections=4,
    )  # fmt: skip


async def test_claims_and_revocations_through_sentinel_survive_a_failover(cluster, config: Config) -> None:
    primary, replica, sentinel = cluster
    holder, metrics = StoreHolder(), StoreMetrics(Registry())
    store = SharedReplayStore(holder, metrics, local=MemoryReplayStore(10))
    client = await holder.apply(_settings(sentinel.url()))
    service = RevocationService(metrics)
    settings = RevocationSettings(max_staleness=60.0, resync_interval=0.5)
    await service.apply(replace(config, revocation=settings), client, 5.0)
    try:
        now = time.time()
        assert await store.claim(replay_key("A" * 43, "before"), now + 60, now) is ReplayVerdict.FRESH
        assert primary.client().exists(b"authz:dpop:" + replay_key("A" * 43, "before").hex().encode())
        deadline = time.monotonic() + FAILOVER  # the replica has the key before the primary goes
        while not replica.client().exists(b"authz:dpop:" + replay_key("A" * 43, "before").hex().encode()):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

        await asyncio.to_thread(primary.kill)
        verdict, index = ReplayVerdict.UNAVAILABLE, 0
        while verdict is not ReplayVerdict.FRESH:
            assert time.monotonic() < deadline, "no failover"
            now = time.time()
            verdict = await store.claim(replay_key("A" * 43, f"during-{index}"), now + 60, now)
            index += 1
            await asyncio.sleep(0.1)
        assert sentinel.primary() == ("127.0.0.1", replica.port)
        now = time.time()
        # Replicated before the failover: still a replay on the new primary.
        assert await store.claim(replay_key("A" * 43, "before"), now + 60, now) is ReplayVerdict.REPLAYED
        while not service.feed or not service.feed.subscribed or service.mirror.stale:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        await service.stop()
        await holder.close()
