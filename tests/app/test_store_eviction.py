"""A shared store that may evict keys is no replay store (attack review 14, finding F).

Every replay key carries an expiry, so under any ``maxmemory-policy`` but ``noeviction`` the
store may drop one and the proof is accepted again. authz reads the policy with ``INFO`` when
it connects and every ``check_every`` seconds: until it reads ``noeviction``, DPoP claims are
UNAVAILABLE (``deny``) or decided in the process (``local``), logged and shown in metrics.
Revocation keys carry no expiry: only ``allkeys-*`` (or a policy not read) stops their loads.
Real redis-server, its policy changed at run time with ``CONFIG SET``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
from prometheus_client.metrics_core import Metric

from authz.app.revocation import RevocationService
from authz.app.store import StoreHolder, StoreMetrics
from authz.app.subscriptions import SubscriptionService
from authz.config import Config
from authz.config.settings import RevocationSettings
from authz.core.replay import ReplayVerdict, replay_key
from authz.telemetry.metrics import Registry
from testkit.redis import RedisServer
from tests.app.test_store import JKT, Process, settings

FRESH, REPLAYED, UNAVAILABLE = ReplayVerdict.FRESH, ReplayVerdict.REPLAYED, ReplayVerdict.UNAVAILABLE
UNREMEMBERED = ReplayVerdict.UNREMEMBERED
CHECK_EVERY = 0.2  # seconds between INFO readings in these tests (revocation.resync_interval)
NOTICED = 10.0  # bounds the wait for a reading to take effect (a few CHECK_EVERY on a busy machine)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(
        tmp_path_factory.mktemp("redis"), extra=("--maxmemory-policy", "volatile-lru")
    ).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def evicting(server: RedisServer) -> None:
    """Each test starts on an empty store with an evicting policy and no memory limit: a limit
    is one CONFIG SET away, so the policy alone makes it unsafe."""
    client = server.client()
    client.flushall()
    client.config_set("maxmemory-policy", "volatile-lru")
    client.config_set("maxmemory", "0")
    client.execute_command("ACL", "DELUSER", "blind")


class Watched(Process):
    """A process whose holder reads the policy every CHECK_EVERY."""

    async def __aenter__(self) -> Watched:
        await self.holder.apply(self.store, check_every=CHECK_EVERY)
        return self


def _stored(server: RedisServer, jti: str) -> bool:
    return bool(server.client().exists(b"authz:dpop:" + replay_key(JKT, jti).hex().encode()))


def _gauges(holder: StoreHolder) -> dict[tuple[str, tuple[str, ...]], float]:
    families: list[Metric] = holder.collector().collect()  # type: ignore[assignment]
    return {(s.name, tuple(s.labels.values())): s.value for f in families for s in f.samples}


async def _within(seconds: float, condition: Callable[[], bool]) -> None:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, f"not within {seconds} s"
        await asyncio.sleep(0.02)


def _errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "authz.store" and r.levelno == logging.ERROR]


async def test_an_evicting_store_gets_no_claims_with_deny(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """volatile-lru (the managed default), no limit yet: UNAVAILABLE, nothing written, one error line."""
    caplog.set_level(logging.INFO, logger="authz.store")
    async with Watched(settings(server)) as one:
        assert await one.claim("p-1") is UNAVAILABLE
        assert await one.claim("p-1") is UNAVAILABLE
        assert not _stored(server, "p-1")
        assert one.count("replay_claims", "store", "unavailable") == 2
        assert one.count("operations", "claim", "unsafe") == 2
        assert _gauges(one.holder)[("authz_store_eviction_safe", ("volatile-lru",))] == 0
        assert _gauges(one.holder)[("authz_store_evicted_keys", ())] == 0
        await asyncio.sleep(CHECK_EVERY * 3)  # several readings: still one line, not one per reading
    [line] = _errors(caplog)
    assert "maxmemory-policy noeviction" in line.getMessage()
    assert line.fields["maxmemory_policy"] == "volatile-lru"  # type: ignore[attr-defined]
    assert line.fields["on_unavailable"] == "deny"  # type: ignore[attr-defined]


async def test_an_evicting_store_leaves_claims_to_the_process_with_local(server: RedisServer) -> None:
    async with Watched(settings(server, local=True)) as one:
        assert await one.claim("p-1") is FRESH
        assert await one.claim("p-1") is REPLAYED
        assert not _stored(server, "p-1")
        assert one.count("replay_claims", "local", "fresh") == 1
        assert one.count("replay_claims", "local", "replayed") == 1


async def test_set_to_noeviction_at_run_time_the_store_is_used_again_without_a_restart(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="authz.store")
    async with Watched(settings(server)) as one, Watched(settings(server)) as two:
        assert await one.claim("before") is UNAVAILABLE
        server.client().config_set("maxmemory-policy", "noeviction")
        await _within(
            NOTICED, lambda: one.holder.client is not None and one.holder.client.eviction.replay_safe
        )
        assert await one.claim("after") is FRESH
        await _within(
            NOTICED, lambda: two.holder.client is not None and two.holder.client.eviction.replay_safe
        )
        assert await two.claim("after") is REPLAYED
        assert _stored(server, "after")
        assert _gauges(one.holder)[("authz_store_eviction_safe", ("noeviction",))] == 1
        assert any("use it again" in r.getMessage() for r in caplog.records)
        # And back to an evicting policy (allkeys-lru): refused again from the next reading.
        server.client().config_set("maxmemory-policy", "allkeys-lru")
        await _within(
            NOTICED, lambda: one.holder.client is not None and not one.holder.client.eviction.replay_safe
        )
        assert await one.claim("later") is UNAVAILABLE
        assert _gauges(one.holder)[("authz_store_eviction_safe", ("allkeys-lru",))] == 0


async def _claim_made_at(process: Process, jti: str, issued_at: float) -> ReplayVerdict:
    now = time.time()
    return await process.replay.claim(replay_key(JKT, jti), issued_at + 70, now, issued_at=issued_at)


async def test_trusted_again_a_store_refuses_proofs_made_before_for_one_window(server: RedisServer) -> None:
    """Keys it evicted while it was not trusted are gone: a proof made before it is trusted
    again may have been accepted then forgotten, so it is refused (made again by the client);
    a proof made after is claimed as usual."""
    server.client().config_set("maxmemory-policy", "noeviction")
    async with Watched(settings(server)) as one:
        before = time.time() - 2
        assert await _claim_made_at(one, "old", before) is FRESH
        server.client().config_set("maxmemory-policy", "volatile-ttl")
        await _within(
            NOTICED, lambda: one.holder.client is not None and not one.holder.client.eviction.replay_safe
        )
        server.client().delete(b"authz:dpop:" + replay_key(JKT, "old").hex().encode())  # as if evicted
        server.client().config_set("maxmemory-policy", "noeviction")
        await _within(
            NOTICED, lambda: one.holder.client is not None and one.holder.client.eviction.replay_safe
        )
        assert await _claim_made_at(one, "old", before) is UNREMEMBERED
        assert await _claim_made_at(one, "new", time.time() + 1) is FRESH


async def test_keys_evicted_between_two_readings_break_the_replay_memory(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The policy changed and back between two readings, and the store evicted meanwhile: the
    evicted_keys counter shows it, and proofs made before are refused as above."""
    caplog.set_level(logging.INFO, logger="authz.store")
    server.client().config_set("maxmemory-policy", "noeviction")
    async with Watched(settings(server)) as one:
        await one.holder.apply(one.store, check_every=3600.0)  # readings only when the test asks
        client = one.holder.client
        assert client is not None
        before = time.time() - 2
        assert await _claim_made_at(one, "old", before) is FRESH
        _evict(server)
        await one.holder.read_policy(client)
        assert client.eviction.replay_safe
        assert await _claim_made_at(one, "old", before) is UNREMEMBERED
        assert await _claim_made_at(one, "new", time.time() + 1) is FRESH
        assert _gauges(one.holder)[("authz_store_evicted_keys", ())] > 0
    assert any("evicted keys since the last reading" in r.getMessage() for r in _errors(caplog))


def _evict(server: RedisServer) -> None:
    """Make the store evict at least one key, then put it back to noeviction and no limit."""
    admin = server.client()
    evicted = int(admin.info("stats")["evicted_keys"])
    admin.config_set("maxmemory-policy", "allkeys-random")
    admin.config_set("maxmemory", str(int(admin.info("memory")["used_memory"]) + 200_000))
    pipe = admin.pipeline(transaction=False)
    for i in range(5_000):
        pipe.set(f"filler:{i}", "x" * 64)
    pipe.execute()
    assert int(admin.info("stats")["evicted_keys"]) > evicted
    admin.config_set("maxmemory", "0")
    admin.config_set("maxmemory-policy", "noeviction")


async def test_info_refused_by_the_acl_is_unsafe_and_says_what_to_grant(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An ACL without +info hides the policy: fail closed, and name the missing permission."""
    caplog.set_level(logging.INFO, logger="authz.store")
    server.client().config_set("maxmemory-policy", "noeviction")
    server.client().execute_command(
        "ACL", "SETUSER", "blind", "on", ">blind-pw", "~authz:*", "&authz:*", "+@all", "-info"
    )
    store = replace(settings(server), username="blind", password=b"blind-pw")
    async with Watched(store) as one:
        assert await one.claim("p-1") is UNAVAILABLE
        assert not _stored(server, "p-1")
        assert _gauges(one.holder)[("authz_store_eviction_safe", ("refused",))] == 0
    [line] = _errors(caplog)
    assert "+info" in line.getMessage()


def _revocations(max_staleness: float) -> RevocationSettings:
    return RevocationSettings(
        max_staleness=max_staleness, resync_interval=CHECK_EVERY, full_resync_interval=60.0
    )


async def test_store_mirrors_are_not_confirmed_by_a_store_that_may_evict_them(
    server: RedisServer, config: Config
) -> None:
    """allkeys-lru may drop the revocation set (an un-revocation) or the subscriptions: the
    mirrors are neither loaded nor confirmed, and go stale as with a lost store; volatile-lru
    cannot drop them (no expiry on them); back to noeviction: confirmed again, no restart."""
    revocation = _revocations(max_staleness=1.0)
    subscriptions = replace(config.subscriptions, max_staleness=1.0, resync_interval=CHECK_EVERY)
    config = replace(config, revocation=revocation, subscriptions=subscriptions)
    server.client().config_set("maxmemory-policy", "allkeys-lru")
    holder = StoreHolder()
    services = (RevocationService(StoreMetrics(Registry())), SubscriptionService(StoreMetrics(Registry())))
    mirrors = [service.mirror for service in services]
    try:
        client = await holder.apply(settings(server), check_every=CHECK_EVERY)
        for service in services:
            await service.apply(config, client, 5.0)
        await _within(NOTICED, lambda: all(mirror.stale for mirror in mirrors))
        assert not services[0].ready()
        server.client().config_set("maxmemory-policy", "noeviction")
        await _within(NOTICED, lambda: not any(mirror.stale for mirror in mirrors))
        assert services[0].ready()
        server.client().config_set("maxmemory-policy", "volatile-lru")  # replay refused, mirrors kept
        await asyncio.sleep(revocation.max_staleness + CHECK_EVERY * 3)
        assert not any(mirror.stale for mirror in mirrors)
        server.client().config_set("maxmemory-policy", "allkeys-lfu")  # loaded, then at risk: stale
        await _within(NOTICED, lambda: all(mirror.stale for mirror in mirrors))
    finally:
        for service in services:
            await service.stop()
        await holder.close()
