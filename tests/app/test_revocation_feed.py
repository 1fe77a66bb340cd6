"""The revocation mirror fed from a real Redis: within a second everywhere, resynced, stale when it must be.

Two ``RevocationService``s stand for two processes; entries are written as ``authz revoke``
writes them (authz.app.revoke), from a thread, as a separate program would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from authz.app.revocation import RevocationService
from authz.app.revoke import StoreTarget, list_entries, remove_entries, write_entries
from authz.app.store import StoreClient, StoreHolder, StoreMetrics
from authz.config import Config
from authz.config.settings import RevocationSettings
from authz.core.revocation import Entry, EntryKind, jti_hash
from authz.telemetry.metrics import Registry
from testkit.loop import worst_wait
from testkit.redis import RedisServer
from tests.app.test_store import settings as store_settings

PROPAGATION = 1.0  # the promise: a revocation written anywhere is enforced everywhere within this


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def running(server: RedisServer) -> None:
    server.resume()
    if server.process is None or server.process.poll() is not None:
        server.start()
    server.client().flushall()


def _config(config: Config, **revocation: float | bool) -> Config:
    settings = RevocationSettings(max_staleness=2.0, resync_interval=0.2, full_resync_interval=60.0)
    return replace(config, revocation=replace(settings, **revocation))  # type: ignore[arg-type]


class Process:
    def __init__(self, server: RedisServer, config: Config) -> None:
        self.config = config
        self.store = store_settings(server)
        self.holder = StoreHolder()
        self.service = RevocationService(StoreMetrics(Registry()))

    async def __aenter__(self) -> Process:
        client = await self.holder.apply(self.store)
        await self.service.apply(self.config, client, 5.0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.service.stop()
        await self.holder.close()

    def has(self, entry: Entry) -> bool:
        """Whether the mirror holds ``entry`` (by its member: the expiry aside)."""
        return entry.member() in {e.member() for e in self.service.mirror.entries()}


async def _within(seconds: float, condition: Callable[[], bool]) -> float:
    """How long until ``condition`` held (polled); fails past ``seconds``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, f"not within {seconds} s"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def _target(server: RedisServer) -> StoreTarget:
    return StoreTarget(store_settings(server), 3600.0)


def _jti(name: str) -> Entry:
    return Entry(EntryKind.JTI, jti_hash(name), expires_at=time.time() + 600)


async def test_a_revocation_reaches_every_process_within_a_second(
    server: RedisServer, config: Config
) -> None:
    async with Process(server, _config(config)) as one, Process(server, _config(config)) as two:
        assert one.service.ready()
        assert two.service.ready()
        entry = _jti("leaked")
        subject = Entry(EntryKind.SUBJECT, "alice", "https://idp.acme.test", time.time(), time.time() + 600)
        await asyncio.to_thread(write_entries, _target(server), [entry, subject])
        took = await _within(PROPAGATION, lambda: all(p.has(e) for p in (one, two) for e in (entry, subject)))
        assert took < PROPAGATION
        listed = await asyncio.to_thread(list_entries, _target(server))
        assert {e.member() for e in listed} == {entry.member(), subject.member()}
        removed = await asyncio.to_thread(remove_entries, _target(server), lambda e: e.kind is EntryKind.JTI)
        assert [e.member() for e in removed] == [entry.member()]
        await _within(PROPAGATION, lambda: not one.has(entry) and not two.has(entry))
        assert one.has(subject)
        assert two.has(subject)


async def test_a_process_started_later_loads_what_is_there(server: RedisServer, config: Config) -> None:
    entry = _jti("earlier")
    await asyncio.to_thread(write_entries, _target(server), [entry])
    async with Process(server, _config(config)) as late:
        assert late.has(entry)  # loaded before the process goes live (apply awaits the first load)


async def test_a_cut_subscription_is_made_again_and_the_mirror_resynced(
    server: RedisServer, config: Config
) -> None:
    async with Process(server, _config(config, resync_interval=30.0, max_staleness=60.0)) as one:
        feed = one.service.feed
        assert feed is not None
        await _within(5, lambda: feed.subscribed)
        killed = server.client().client_kill_filter(_type="pubsub")
        assert killed >= 1
        await _within(5, lambda: not feed.subscribed)
        # Written while nobody listens, with no message at all (a lost one): only a resync finds it.
        client = server.client()
        client.zadd(b"authz:{rev}:entries", {_jti("silent").member(): time.time() + 600})
        client.incr(b"authz:{rev}:version")
        await _within(5, lambda: feed.subscribed)  # subscribed again (backoff from 0.1 s) ...
        await _within(2, lambda: one.has(_jti("silent")))  # ... and resynced at once, not in 30 s
        await asyncio.to_thread(write_entries, _target(server), [_jti("after")])
        await _within(PROPAGATION, lambda: one.has(_jti("after")))  # and listening again


async def test_a_lost_message_is_found_by_the_version_check(server: RedisServer, config: Config) -> None:
    async with Process(server, _config(config, resync_interval=0.2)) as one:
        client = server.client()
        client.zadd(b"authz:{rev}:entries", {_jti("unannounced").member(): time.time() + 600})
        client.incr(b"authz:{rev}:version")
        await _within(2, lambda: one.has(_jti("unannounced")))


async def test_the_mirror_goes_stale_without_the_store_and_comes_back_with_it(
    server: RedisServer, config: Config
) -> None:
    async with Process(server, _config(config, max_staleness=1.0, resync_interval=0.2)) as one:
        mirror = one.service.mirror
        assert not mirror.stale
        await asyncio.to_thread(server.kill)
        took = await _within(5, lambda: mirror.stale)
        assert took >= 0.5  # not before max_staleness (confirmed up to the kill)
        assert not one.service.ready()  # /readyz: 503 while token checks would be denied
        await asyncio.to_thread(server.start)
        await _within(10, lambda: not mirror.stale)
        assert one.service.ready()


async def test_a_paused_store_makes_the_mirror_stale_in_bounded_time(
    server: RedisServer, config: Config
) -> None:
    async with Process(server, _config(config, max_staleness=1.0, resync_interval=0.2)) as one:
        server.pause()
        try:
            await _within(5, lambda: one.service.mirror.stale)
        finally:
            server.resume()
        await _within(10, lambda: not one.service.mirror.stale)


async def test_on_stale_serve_keeps_serving_on_the_last_entries(server: RedisServer, config: Config) -> None:
    async with Process(server, _config(config, max_staleness=1.0, serve_stale=True)) as one:
        await asyncio.to_thread(server.kill)
        await _within(5, lambda: one.service.mirror.stale)
        assert one.service.ready()


async def test_a_changed_store_feeds_the_mirror_from_then_on(
    server: RedisServer, config: Config, tmp_path
) -> None:
    other = RedisServer(tmp_path / "other").start()
    try:
        async with Process(server, _config(config)) as one:
            client = await one.holder.apply(store_settings(other))
            assert isinstance(client, StoreClient)
            await one.service.apply(_config(config), client, 5.0)
            await asyncio.to_thread(write_entries, _target(other), [_jti("on-other")])
            await _within(PROPAGATION, lambda: one.has(_jti("on-other")))
    finally:
        other.stop()


@pytest.mark.parametrize("how", ["back-by-one", "flushed-and-reseeded"])
async def test_a_counter_that_went_back_is_not_taken_for_the_mirror_s_history(
    server: RedisServer, config: Config, how: str
) -> None:
    """A restored backup that lost the last write, an evicted version key, or a FLUSHALL and a
    re-seed: the next changes carry versions the mirror has held already. They must not be
    taken as old news, nor the old state confirmed by an equal number."""
    # Version checks 30 s apart: the changes must be found by their messages, within 1 s.
    async with Process(server, _config(config, resync_interval=30.0, max_staleness=60.0)) as one:
        client = server.client()
        first, second = _jti("first"), _jti("second")
        await asyncio.to_thread(write_entries, _target(server), [first])
        await asyncio.to_thread(write_entries, _target(server), [second])
        await _within(PROPAGATION, lambda: one.has(first) and one.has(second))
        leaked = _jti("leaked")
        if how == "back-by-one":
            client.zrem(b"authz:{rev}:entries", second.member())  # the restore lost the last write
            client.decr(b"authz:{rev}:version")
            await asyncio.to_thread(write_entries, _target(server), [leaked])  # version 2 again
            await _within(PROPAGATION, lambda: one.has(leaked))
        else:
            client.flushall()
            await asyncio.to_thread(write_entries, _target(server), [leaked])  # versions 1 and 2 again
            await asyncio.to_thread(write_entries, _target(server), [_jti("third")])
            await _within(PROPAGATION, lambda: one.has(leaked) and one.has(_jti("third")))
            assert not one.has(first)  # wiped: the mirror is the store's again
        if how == "back-by-one":
            assert not one.has(second)


LOAD_STALL = 0.5  # generous: a parse on the loop holds it over a second at 100k entries on this machine


async def test_checks_go_on_during_a_full_load_of_100k_entries(server: RedisServer, config: Config) -> None:
    """A full load parses every entry: in a worker thread, swapped in at once, so a check made
    meanwhile waits no longer than ``LOAD_STALL`` (on the loop it waited the whole parse)."""
    client = server.client()
    expires = time.time() + 3600
    members = {_jti(f"t{i}").member(): expires for i in range(100_000)}
    client.zadd(b"authz:{rev}:entries", members)  # type: ignore[arg-type]
    client.set(b"authz:{rev}:version", 1)
    async with Process(server, _config(config, resync_interval=30.0, max_staleness=60.0)) as one:
        feed = one.service.feed
        assert feed is not None
        mirror = one.service.mirror
        assert len(mirror) == 100_000
        for _ in range(2):
            loaded, worst = await worst_wait(feed.load(), lambda: mirror.generation)
            assert loaded
            assert worst < LOAD_STALL, f"a check waited {worst:.3f} s during a load"
        assert one.has(_jti("t99999"))


async def test_a_version_check_reading_a_lower_version_reloads(server: RedisServer, config: Config) -> None:
    """No message at all (a restore while the subscription was down): the version check finds
    any other version than the mirror's, lower too, and reloads (resync_interval 0.2 s)."""
    async with Process(server, _config(config, resync_interval=0.2, max_staleness=60.0)) as one:
        first, second = _jti("first"), _jti("second")
        await asyncio.to_thread(write_entries, _target(server), [first, second])
        await _within(PROPAGATION, lambda: one.has(first) and one.has(second))
        client = server.client()
        client.zrem(b"authz:{rev}:entries", second.member())  # the restore lost the last write
        client.decr(b"authz:{rev}:version")
        await _within(2.0, lambda: not one.has(second))
        assert one.has(first)
