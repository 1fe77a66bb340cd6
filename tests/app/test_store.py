"""The DPoP replay store on a real Redis: shared across clients, one round trip per batch, bounded, failing as set.

Two ``StoreHolder``s stand for two processes (each its own connections). Faults are real:
the server is paused with SIGSTOP, killed and restarted on its port.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz.app.store import SharedReplayStore, StoreHolder, StoreMetrics
from authz.config.settings import StoreSettings
from authz.config.store import parse_store_url
from authz.core.replay import MemoryReplayStore, ReplayVerdict, replay_key
from authz.telemetry.metrics import Registry
from testkit.redis import RedisServer

FRESH, REPLAYED, UNAVAILABLE = ReplayVerdict.FRESH, ReplayVerdict.REPLAYED, ReplayVerdict.UNAVAILABLE
JKT = "A" * 43
TIMEOUT = 0.1
SLACK = 0.5  # seconds a claim may take beyond its bound on a busy 2-core machine (scheduling)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def running(server: RedisServer) -> None:
    """Each test starts with the server up, answering and empty."""
    server.resume()
    if server.process is None or server.process.poll() is not None:
        server.start()
    server.client().flushall()


def settings(
    server: RedisServer, *, local: bool = False, prefix: str = "authz:", timeout: float = TIMEOUT
) -> StoreSettings:
    url = parse_store_url(server.url)
    return StoreSettings(
        url=server.url, hosts=url.hosts, sentinel_service=None, db=0, username=None, tls=False,
        password=None, ca_file=None, key_prefix=prefix, timeout=timeout, local_fallback=local, max_connections=4,
    )  # fmt: skip


class Process:
    """What one authz process holds: its store client, metrics and replay store."""

    def __init__(self, store: StoreSettings) -> None:
        self.store = store
        self.holder = StoreHolder()
        self.metrics = StoreMetrics(Registry())
        self.replay = SharedReplayStore(self.holder, self.metrics, local=MemoryReplayStore(10_000))

    async def __aenter__(self) -> Process:
        await self.holder.apply(self.store)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.holder.close()

    async def claim(self, jti: str, *, window: float = 60.0, deadline: float | None = None) -> ReplayVerdict:
        now = time.time()
        return await self.replay.claim(replay_key(JKT, jti), now + window, now, deadline=deadline)

    def count(self, metric: str, *labels: str) -> float:
        counter = getattr(self.metrics, metric)
        return float(counter.values.get(labels, 0.0))


async def test_a_proof_accepted_by_one_process_is_a_replay_for_every_other(server: RedisServer) -> None:
    async with Process(settings(server)) as one, Process(settings(server)) as two:
        assert await one.claim("p-1") is FRESH
        assert await two.claim("p-1") is REPLAYED
        assert await one.claim("p-1") is REPLAYED
        assert await two.claim("p-2") is FRESH
    # Keyed under the prefix by the hash of thumbprint and jti: the jti itself is not stored.
    keys = server.client().keys("*")
    assert sorted(keys) == sorted(b"authz:dpop:" + replay_key(JKT, j).hex().encode() for j in ("p-1", "p-2"))


async def test_an_entry_lives_as_long_as_its_proof(server: RedisServer) -> None:
    async with Process(settings(server)) as one:
        assert await one.claim("short", window=0.2) is FRESH
        ttl = server.client().pttl(b"authz:dpop:" + replay_key(JKT, "short").hex().encode())
        assert 0 < ttl <= 201  # rounded up to the millisecond, never shorter than the proof
        deadline = time.monotonic() + 5  # bounds the wait for Redis's expiry (100 ms resolution)
        while await one.claim("short", window=0.2) is REPLAYED and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert time.monotonic() < deadline


async def test_claims_of_one_loop_iteration_share_one_round_trip(server: RedisServer) -> None:
    """Under load the store is asked once per batch, never more than once per check.

    (A batch of 300 claims may take longer than the 0.1 s the other tests bound a claim by, on
    a 2-core machine at load 7: this test is about batching, so its bound is 5 s.)"""
    async with Process(settings(server, timeout=5.0)) as one:
        verdicts = await asyncio.gather(*(one.claim(f"burst-{i}") for i in range(300)))
        assert verdicts == [FRESH] * 300
        trips, claims = one.count("round_trips", "claim"), one.count("operations", "claim", "ok")
        assert claims == 300
        assert trips <= 300 / 10, trips  # gathered: a few pipelines, not one each
        replays = await asyncio.gather(*(one.claim(f"burst-{i}") for i in range(300)))
        assert replays == [REPLAYED] * 300


async def test_a_paused_store_answers_unavailable_within_the_timeout_then_recovers(
    server: RedisServer,
) -> None:
    async with Process(settings(server)) as one:
        assert await one.claim("before") is FRESH
        server.pause()
        try:
            started = time.monotonic()
            verdicts = await asyncio.gather(*(one.claim(f"paused-{i}") for i in range(20)))
            took = time.monotonic() - started
        finally:
            server.resume()
        assert verdicts == [UNAVAILABLE] * 20
        assert took < TIMEOUT + SLACK
        assert one.count("operations", "claim", "timeout") >= 1
        deadline = time.monotonic() + 10  # bounds the reconnection after the cut connections
        while (verdict := await one.claim("after")) is UNAVAILABLE and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert verdict is FRESH


async def test_no_claim_waits_past_the_checks_deadline(server: RedisServer) -> None:
    async with Process(settings(server)) as one:
        assert await one.claim("late", deadline=time.monotonic() - 0.001) is UNAVAILABLE
        server.pause()
        try:
            started = time.monotonic()
            verdict = await one.claim("tight", deadline=time.monotonic() + 0.02)
            took = time.monotonic() - started
        finally:
            server.resume()
        assert verdict is UNAVAILABLE
        assert took < 0.02 + SLACK
        assert took < TIMEOUT or verdict is UNAVAILABLE


async def test_local_fallback_decides_in_the_process_and_remembers_what_the_store_accepted(
    server: RedisServer,
) -> None:
    """on_unavailable: local -- never weaker than a per-process store: a proof the store accepted
    is still refused here while the store is away."""
    async with Process(settings(server, local=True)) as one:
        assert await one.claim("seen") is FRESH
        server.pause()
        try:
            assert await one.claim("seen") is REPLAYED  # remembered locally
            assert await one.claim("new") is FRESH  # decided locally
            assert await one.claim("new") is REPLAYED
        finally:
            server.resume()
        assert one.count("replay_claims", "local", "fresh") == 1
        assert one.count("replay_claims", "local", "replayed") == 2


async def test_killed_and_restarted_under_load(server: RedisServer) -> None:
    """Claims keep coming while the store is killed and brought back: every claim answers within
    its bound, none is accepted twice, and the store is used again without a restart of ours."""
    async with Process(settings(server)) as one, Process(settings(server)) as two:
        answered: dict[str, list[ReplayVerdict]] = {}
        slowest = 0.0
        stop = time.monotonic() + 4.0  # the load's length (bounded)

        async def load(process: Process, name: str) -> None:
            nonlocal slowest
            index = 0
            while time.monotonic() < stop:
                jti = f"{name}-{index // 2}"  # each proof sent twice: once fresh, then replayed
                index += 1
                started = time.monotonic()
                verdict = await process.claim(jti)
                slowest = max(slowest, time.monotonic() - started)
                answered.setdefault(jti, []).append(verdict)
                await asyncio.sleep(0.002)

        async def fault() -> None:
            await asyncio.sleep(1.0)
            await asyncio.to_thread(server.kill)
            await asyncio.sleep(0.8)
            await asyncio.to_thread(server.start)

        await asyncio.gather(load(one, "a"), load(two, "b"), load(one, "c"), fault())
        assert slowest < TIMEOUT + SLACK
        verdicts = [v for vs in answered.values() for v in vs]
        assert UNAVAILABLE in verdicts  # the outage was seen
        assert all(vs.count(FRESH) <= 1 for vs in answered.values())  # no proof accepted twice
        assert sum(v is FRESH for v in verdicts[-20:]) > 0  # and the store serves again
        assert await one.claim("after-restart") is FRESH
        assert await two.claim("after-restart") is REPLAYED


async def test_a_changed_store_takes_the_next_claims_without_dropping_any(
    server: RedisServer, tmp_path: Path
) -> None:
    """A reload that changes store.url: checks in flight finish on the old client, the next use the new."""
    with_other = RedisServer(tmp_path / "other").start()
    try:
        async with Process(settings(server)) as one:
            pending = [asyncio.ensure_future(one.claim(f"move-{i}")) for i in range(50)]
            await one.holder.apply(settings(with_other))
            assert await asyncio.gather(*pending) == [FRESH] * 50
            assert await one.claim("on-the-new-one") is FRESH
        assert with_other.client().exists(b"authz:dpop:" + replay_key(JKT, "on-the-new-one").hex().encode())
        assert not server.client().exists(b"authz:dpop:" + replay_key(JKT, "on-the-new-one").hex().encode())
    finally:
        with_other.stop()


async def test_a_claim_is_a_child_span_of_the_check_span(server: RedisServer) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    holder, metrics = StoreHolder(), StoreMetrics(Registry())
    store = SharedReplayStore(holder, metrics, local=MemoryReplayStore(10), tracer=tracer)
    await holder.apply(settings(server))
    try:
        with tracer.start_as_current_span("check") as check:
            now = time.time()
            assert await store.claim(replay_key(JKT, "traced"), now + 60, now) is FRESH
        now = time.time()
        assert await store.claim(replay_key(JKT, "untraced"), now + 60, now) is FRESH  # no check span: none
    finally:
        await holder.close()
        provider.shutdown()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"check", "store claim"}
    assert spans["store claim"].parent.span_id == check.get_span_context().span_id
    assert "traced" not in repr(spans["store claim"].attributes)


async def test_the_check_span_is_the_parent_of_its_store_claim(
    server: RedisServer, world, tmp_path: Path
) -> None:
    """Through the HTTP door, a DPoP check whose claim goes to the shared store: the claim's span
    is a child of the check's span (the check sequence makes it current while it waits)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from authz.config import SnapshotHolder, load_config
    from authz.http.door import HttpDoor
    from authz.telemetry.recorder import Telemetry
    from testkit import dpop
    from testkit.sender import jkt, proof, write_config
    from testkit.world import NOW

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(provider)
    config = load_config(write_config(world, tmp_path))
    holder = SnapshotHolder(config, clock=lambda: float(NOW))
    stores = StoreHolder()
    await stores.apply(settings(server))
    holder.replay = SharedReplayStore(
        stores, StoreMetrics(Registry()), local=MemoryReplayStore(10), tracer=telemetry.tracer
    )
    door = HttpDoor(holder, lambda: float(NOW), telemetry, config.http)
    key = dpop.new_key("ES256")
    token = world.token(world.claims(cnf={"jkt": jkt(key)}))
    raw = [(b"host", b"api.acme.test"), (b"x-forwarded-proto", b"https"),
           (b"authorization", f"DPoP {token}".encode()), (b"dpop", proof(key, token).encode())]  # fmt: skip
    try:
        answer = door.answer_raw(b"GET", b"/orders", raw)
        if not isinstance(answer, bytes):
            answer = await answer
    finally:
        await stores.close()
        provider.shutdown()
    assert answer.startswith(b"HTTP/1.1 200 ")
    spans = exporter.get_finished_spans()
    (claim,) = [s for s in spans if s.name == "store claim"]
    (check,) = [s for s in spans if s.parent is None]
    assert claim.parent is not None
    assert claim.parent.span_id == check.context.span_id


async def test_a_reload_that_moves_the_replay_keys_refuses_proofs_made_before_it(server: RedisServer) -> None:
    """Security review of issue 14, finding D: another key_prefix (or server, db, or no store) is a
    memory without the proofs accepted so far; a proof made before the move is refused
    (UNREMEMBERED: dpop_proof_invalid, make a new one), one made after is claimed as usual."""
    async with Process(settings(server)) as one:
        made = time.time() - 1
        key = replay_key(JKT, "captured")
        assert await one.replay.claim(key, made + 65, time.time(), issued_at=made) is FRESH
        await one.holder.apply(settings(server, prefix="other:"))
        assert (
            await one.replay.claim(key, made + 65, time.time(), issued_at=made) is ReplayVerdict.UNREMEMBERED
        )
        fresh = float(math.ceil(time.time()) + 1)  # made in a second after the move's
        assert await one.replay.claim(replay_key(JKT, "new"), fresh + 65, fresh, issued_at=fresh) is FRESH
        # a client change that keeps the keys where they were (a new timeout) is no move
        before = one.replay.memory.breaks
        await one.holder.apply(settings(server, prefix="other:", local=True))
        assert one.replay.memory.breaks == before
        await one.holder.apply(None)  # the store removed: this process's own memory decides
        assert (
            await one.replay.claim(key, made + 65, time.time(), issued_at=made) is ReplayVerdict.UNREMEMBERED
        )
