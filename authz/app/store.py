"""The shared store (Redis or Valkey, through redis-py's asyncio client): connections and the replay store.

``StoreClient`` is one set of connections made from ``StoreSettings``: a pool for commands and,
on demand, a pub/sub connection (authz/app/revocation.py). ``StoreHolder`` keeps the current
one across reloads: a changed ``store:`` section builds and checks a new client before the
swap, and the old one is closed once what it was doing is done, so no check is dropped.

``SharedReplayStore`` is the DPoP replay store on it (``authz.core.replay.ReplayStore``): one
``SET key 1 NX PX ms`` per proof, keyed by the proof's replay key under ``key_prefix``. Claims
made in one event-loop iteration leave together as one pipeline (one round trip); while every
connection is busy, claims gather for the next. Each claim waits at most ``store.timeout``
and never past the check's deadline; a store that does not answer in time is UNAVAILABLE
(``on_unavailable: deny``), or the claim falls back to this process's replay store
(``on_unavailable: local``), logged and counted. With ``local``, every proof the store
accepts is also remembered here, so the fallback is never weaker than a per-process store.

A store that may evict keys is no replay store: its ``maxmemory-policy`` is read (``INFO``)
when a client is made and every ``revocation.resync_interval`` after, and until it reads
``noeviction`` every claim is UNAVAILABLE without asking it (authz/app/eviction.py). When
it is trusted again, or its ``evicted_keys`` grew between two readings, keys may be gone:
its memory breaks there (``ReplayMemory.forgot``), as when the store is changed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from authz.app.bounded import cancel_all, within
from authz.app.eviction import UNREAD, EvictionReading, read_eviction
from authz.config.settings import StoreSettings
from authz.core.replay import MemoryReplayStore, ReplayMemory, ReplayVerdict
from authz.telemetry.logs import Throttle
from authz.telemetry.metrics import Collector, Counter, Histogram, Registry

__all__ = ["SharedReplayStore", "StoreClient", "StoreHolder", "StoreMetrics", "connect"]

_log = logging.getLogger("authz.store")
# Background work (revocation loads, pub/sub) is not on a check's path: it may wait longer.
BACKGROUND_TIMEOUT = 2.0
_CLOSE_STEP = 2.0  # seconds one close step of a client may take before it is left to the GC
_CLOSE_GRACE = 5.0  # seconds an old client lives on after a reload, for what it was doing


class StoreMetrics:
    """The store's counters, on the process's registry."""

    def __init__(self, registry: Registry) -> None:
        self.operations: Counter = registry.counter(
            "authz_store_operations_total",
            "Shared store operations by kind and result (ok, timeout, error).",
            ("operation", "result"),
        )
        self.latency: Histogram = registry.histogram(
            "authz_store_operation_duration_seconds",
            "Time of shared store round trips, by operation.",
            ("operation",),
        )
        self.round_trips: Counter = registry.counter(
            "authz_store_round_trips_total",
            "Round trips to the shared store, by operation (a pipeline of claims is one).",
            ("operation",),
        )
        self.replay_claims: Counter = registry.counter(
            "authz_replay_claims_total",
            "DPoP replay claims by where they were decided (store, local) and verdict.",
            ("source", "verdict"),
        )

    def observe(self, operation: str, result: str, seconds: float, count: int = 1) -> None:
        self.operations.inc((operation, result), count)
        self.latency.observe((operation,), seconds)
        self.round_trips.inc((operation,))


def connect(
    settings: StoreSettings, *, timeout: float, max_connections: int | None = None
) -> tuple[Any, list[Any]]:
    """A redis-py asyncio client for ``settings`` (connections are made on first use), and the
    Sentinel clients it asks (closed with it).

    No retries inside the client: a retried ``SET NX`` whose first answer was lost would
    read as a replay; the callers bound and retry what they do themselves.
    """
    kwargs: dict[str, Any] = {
        "db": settings.db,
        "username": settings.username,
        "password": settings.password.decode("utf-8") if settings.password is not None else None,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "max_connections": max_connections or settings.max_connections,
        "health_check_interval": 0,
    }
    if settings.tls:
        kwargs["ssl"] = True
        if settings.ca_file is not None:
            kwargs["ssl_ca_certs"] = settings.ca_file
    if settings.sentinel_service is None:
        host, port = settings.hosts[0]
        return aioredis.Redis(host=host, port=port, **kwargs), []
    sentinel_kwargs = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "username": settings.username,
        "password": kwargs["password"],
    }
    sentinel = Sentinel(list(settings.hosts), sentinel_kwargs=sentinel_kwargs, **kwargs)
    client = sentinel.master_for(settings.sentinel_service, redis_class=aioredis.Redis, **kwargs)
    return client, list(sentinel.sentinels)


class StoreClient:
    """The connections of one ``store:`` section: commands (bounded by ``timeout``) and background work."""

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings
        prefix = settings.key_prefix
        self.replay_prefix = f"{prefix}dpop:".encode()
        # One hash tag, so that a Redis Cluster would keep the revocation keys in one slot.
        self.revocations_key = f"{prefix}{{rev}}:entries"
        self.version_key = f"{prefix}{{rev}}:version"
        self.channel = f"{prefix}{{rev}}:changes"
        self.commands, commands_sentinels = connect(settings, timeout=max(settings.timeout, 0.001))
        # Background: two pub/sub connections (revocations, subscriptions), their loads and
        # version checks, a readiness ping: room for all of them at once.
        self.background, background_sentinels = connect(
            settings, timeout=BACKGROUND_TIMEOUT, max_connections=8
        )
        self._clients = [self.commands, self.background, *commands_sentinels, *background_sentinels]
        # What INFO said last: until a reading says noeviction, no claim is sent (fail closed).
        self.eviction: EvictionReading = UNREAD

    async def ping(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                return bool(await self.background.ping())
        except Exception:  # noqa: BLE001 - any failure: not reachable now
            return False

    async def close(self) -> None:
        # Each step bounded: closing must never hang a reload or a shutdown (a connection left
        # mid-command by a cancelled task can keep redis-py's pool waiting; seen once in a test).
        for client in self._clients:
            await within(client.aclose(), _CLOSE_STEP)
            # A Sentinel-made client does not own its pool, so aclose leaves it open.
            await within(client.connection_pool.disconnect(), _CLOSE_STEP)


@dataclass(frozen=True, slots=True)
class _Claim:
    key: bytes
    px: int
    future: asyncio.Future[bool | None]


class SharedReplayStore:
    """``ReplayStore`` on the shared store: check-and-insert is ``SET NX PX``, atomic in the server."""

    def __init__(
        self,
        holder: StoreHolder,
        metrics: StoreMetrics,
        *,
        local: MemoryReplayStore,
        tracer: Any = None,
    ) -> None:
        self._holder = holder
        self._metrics = metrics
        self._local = local
        self._tracer = tracer
        self._pending: list[_Claim] = []
        self._scheduled = False
        self._in_flight = 0
        self._warnings = Throttle(10.0)
        # The store's memory predates this process; a reload that moves the replay keys
        # elsewhere (another server, db or key_prefix, or no store) starts a new one.
        self.memory = ReplayMemory()
        self._where: object = _UNSET
        holder.listeners.append(self._moved)
        holder.forgetting.append(self.memory.forgot)

    def _moved(self, client: StoreClient | None) -> None:
        where = _where(client)
        if self._where is not _UNSET and where != self._where:
            now = time.time()
            self.memory.forgot(now)
            self._local.memory.forgot(now)  # it decides the claims while there is no store
        self._where = where

    def narrowed(self, at: float, max_age: float) -> None:
        self.memory.narrowed(at, max_age)
        self._local.narrowed(at, max_age)

    @property
    def capacity(self) -> int:
        """The bound of this process's own store (the fallback, and the shadow with ``local``)."""
        return self._local.capacity

    def size(self) -> int:
        """Proofs remembered in this process (the store's own keys are not counted per check)."""
        return self._local.size()

    def resize(self, capacity: int) -> None:
        self._local.resize(capacity)

    async def claim(
        self,
        key: bytes,
        expires_at: float,
        now: float,
        *,
        issued_at: float | None = None,
        deadline: float | None = None,
    ) -> ReplayVerdict:
        client = self._holder.client
        if client is None:
            return self._local.claim_now(key, expires_at, now, issued_at=issued_at)
        if issued_at is not None and not self.memory.covers(issued_at, expires_at, now):
            self._metrics.replay_claims.inc(("store", ReplayVerdict.UNREMEMBERED.value))
            return ReplayVerdict.UNREMEMBERED
        settings = client.settings
        bound = settings.timeout
        if deadline is not None:
            bound = min(bound, deadline - time.monotonic())
        if not client.eviction.replay_safe:
            # It may evict this key and accept the proof again: as good as no store.
            self._metrics.operations.inc(("claim", "unsafe"))
            verdict = ReplayVerdict.UNAVAILABLE
        else:
            span = self._span()
            try:
                verdict = await self._claim(client, key, expires_at, now, bound)
            finally:
                if span is not None:
                    span.end()
        if verdict is ReplayVerdict.UNAVAILABLE and settings.local_fallback:
            verdict = self._local.claim_now(key, expires_at, now, issued_at=issued_at)
            self._metrics.replay_claims.inc(("local", verdict.value))
            left_out = self._warnings.admit("fallback")
            if left_out is not None:
                _log.warning(
                    "shared store unavailable: DPoP replay checked in this process only",
                    extra={
                        "fields": {
                            "store": settings.endpoint,
                            "maxmemory_policy": client.eviction.label,
                            "left_out": left_out,
                        }
                    },
                )
            return verdict
        # With local fallback, remembered here too: should the store fail (or restart
        # empty), this process still refuses the proofs it has seen accepted.
        if (
            verdict is ReplayVerdict.FRESH
            and settings.local_fallback
            and self._local.claim_now(key, expires_at, now) is ReplayVerdict.REPLAYED
        ):
            verdict = ReplayVerdict.REPLAYED
        self._metrics.replay_claims.inc(("store", verdict.value))
        return verdict

    async def _claim(
        self, client: StoreClient, key: bytes, expires_at: float, now: float, bound: float
    ) -> ReplayVerdict:
        if bound <= 0:
            self._metrics.operations.inc(("claim", "deadline"))
            return ReplayVerdict.UNAVAILABLE
        px = max(1, math.ceil((expires_at - now) * 1000))
        future: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Claim(client.replay_prefix + key.hex().encode("ascii"), px, future))
        self._schedule()
        try:
            async with asyncio.timeout(bound):
                fresh = await future
        except TimeoutError:
            self._metrics.operations.inc(("claim", "timeout"))
            return ReplayVerdict.UNAVAILABLE
        except Exception:  # noqa: BLE001 - the pipeline failed: counted where it failed
            return ReplayVerdict.UNAVAILABLE
        return ReplayVerdict.FRESH if fresh else ReplayVerdict.REPLAYED

    def _span(self) -> Any:
        """A child span of the check's (the current one), when a recording check span is current."""
        if self._tracer is None:
            return None
        from opentelemetry import trace

        if not trace.get_current_span().is_recording():
            return None
        return self._tracer.start_span("store claim", attributes={"db.system": "redis"})

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Send what was claimed in this loop iteration as one pipeline, if a connection is free."""
        self._scheduled = False
        client = self._holder.client
        if not self._pending or client is None:
            return
        if self._in_flight >= client.settings.max_connections:
            return  # a finishing pipeline sends what gathered meanwhile
        batch = [claim for claim in self._pending if not claim.future.done()]
        self._pending = []
        if batch:
            self._in_flight += 1
            asyncio.get_running_loop().create_task(self._send(client, batch))

    async def _send(self, client: StoreClient, batch: list[_Claim]) -> None:
        started = time.perf_counter()
        result = "ok"
        try:
            async with asyncio.timeout(client.settings.timeout):
                pipe = client.commands.pipeline(transaction=False)
                for claim in batch:
                    pipe.set(claim.key, b"1", nx=True, px=claim.px)
                answers = await pipe.execute(raise_on_error=False)
            for claim, answer in zip(batch, answers, strict=True):
                if claim.future.done():
                    continue
                if isinstance(answer, Exception):
                    claim.future.set_exception(ConnectionError("store error"))
                    result = "error"
                else:
                    claim.future.set_result(bool(answer))
        except TimeoutError:
            result = "timeout"
            _fail(batch)
        except Exception as exc:  # noqa: BLE001 - a store fault is an answer: UNAVAILABLE
            result = "error"
            _fail(batch)
            left_out = self._warnings.admit(type(exc).__name__)
            if left_out is not None:
                _log.warning(
                    "shared store operation failed",
                    extra={
                        "fields": {
                            "operation": "claim",
                            "error": type(exc).__name__,
                            "store": client.settings.endpoint,
                            "left_out": left_out,
                        }
                    },
                )
        finally:
            self._in_flight -= 1
            self._metrics.observe("claim", result, time.perf_counter() - started, len(batch))
            if self._pending:
                self._schedule()


_UNSET = object()


def _where(client: StoreClient | None) -> object:
    """Where a client keeps replay keys: the same place means the same memory."""
    if client is None:
        return None
    settings = client.settings
    return (settings.hosts, settings.sentinel_service, settings.db, settings.key_prefix)


def _fail(batch: list[_Claim]) -> None:
    for claim in batch:
        if not claim.future.done():
            claim.future.set_exception(ConnectionError("store unavailable"))
            # Nobody may await it any more (the claim timed out): mark it retrieved.
            claim.future.exception()


class StoreHolder:
    """The current ``StoreClient`` of the process (None: no store configured), and its eviction watch."""

    def __init__(self) -> None:
        self.client: StoreClient | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._replaced: set[StoreClient] = set()  # replaced clients not closed yet
        self._watch: asyncio.Task[None] | None = None
        self.listeners: list[Callable[[StoreClient | None], None]] = []
        # Called with the time when the current store may have lost replay keys (evictions).
        self.forgetting: list[Callable[[float], None]] = []
        self.check_every = 5.0  # seconds between INFO readings (revocation.resync_interval)

    async def apply(
        self, settings: StoreSettings | None, *, check_every: float | None = None
    ) -> StoreClient | None:
        """Use ``settings`` from now on: the same client if they did not change, else a new one.

        A new client's eviction policy is read before it goes live (when it answers). The old
        client is closed after a grace period, so that pipelines and loads it is running
        finish; checks pick the new one from their next claim.
        """
        if check_every is not None:
            self.check_every = check_every
        current = self.client
        if current is not None and current.settings == settings:
            return current
        client = StoreClient(settings) if settings is not None else None
        if client is not None:
            bound = max(client.settings.timeout, 1.0)
            reachable = await client.ping(bound)
            if reachable:
                await self.read_policy(client, bound)
            _log.info(
                "shared store configured",
                extra={
                    "fields": {
                        "store": client.settings.endpoint,
                        "reachable": reachable,
                        "maxmemory_policy": client.eviction.label,
                    }
                },
            )
        self.client = client
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if client is not None:
            self._watch = asyncio.get_running_loop().create_task(
                self._watching(client), name="authz-store-eviction-watch"
            )
        for listener in self.listeners:
            listener(client)
        if current is not None:
            self._replaced.add(current)
            task = asyncio.get_running_loop().create_task(_close_later(current, self._replaced))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return client

    async def read_policy(self, client: StoreClient, timeout: float = BACKGROUND_TIMEOUT) -> None:
        """Read the store's eviction policy now; say so once when what it means changes, and
        break the replay memory when keys may have been evicted since the last reading."""
        reading = await read_eviction(client.background, timeout)
        if reading is None:
            return  # not answering: claims fail on their own; the last reading stands
        before, client.eviction = client.eviction, reading
        _report(client.settings, before, reading)
        if before.replay_safe == reading.replay_safe and not _evicted_since(before, reading):
            return
        if reading.replay_safe and before.answered:
            # Trusted again after a reading that was not safe, or keys evicted between two
            # safe readings (the policy changed and back unseen): keys may be gone, and a
            # proof made before now may have been accepted and forgotten.
            now = time.time()
            for forget in self.forgetting:
                forget(now)

    async def _watching(self, client: StoreClient) -> None:
        while True:
            # Until a first answer, soon again: claims are refused until then.
            answered = client.eviction.answered
            await asyncio.sleep(self.check_every if answered else min(1.0, self.check_every))
            await self.read_policy(client)

    def collector(self) -> Collector:
        """The store's eviction policy and evicted keys as last read, at each scrape."""
        return _StoreCollector(self)

    async def close(self) -> None:
        client, self.client = self.client, None
        if self._watch is not None:
            # A reading stuck in redis-py must not hold the close.
            await cancel_all([self._watch], _CLOSE_STEP, "store eviction watch")
            self._watch = None
        if client is not None:
            await client.close()
        # Replaced clients are closed here, not by their tasks: a task cancelled before it
        # first ran never reaches its ``finally``.
        await cancel_all(list(self._closing), _CLOSE_STEP, "store clients closing")
        for old in list(self._replaced):
            await old.close()
        self._replaced.clear()


def _evicted_since(before: EvictionReading, after: EvictionReading) -> bool:
    """Whether the store evicted keys between two readings (a restart resets the count: not that)."""
    if before.evicted_keys is None or after.evicted_keys is None:
        return False
    return after.evicted_keys > before.evicted_keys


def _report(settings: StoreSettings, before: EvictionReading, after: EvictionReading) -> None:
    """One line when the reading changes what authz does with the store (not at every reading)."""
    evicted = _evicted_since(before, after) and before.replay_safe and after.replay_safe
    if (before.label, before.replay_safe) == (after.label, after.replay_safe) and not evicted:
        return
    fields: dict[str, object] = {
        "store": settings.endpoint,
        "maxmemory_policy": after.label,
        "maxmemory": after.maxmemory,
        "evicted_keys": after.evicted_keys,
        "on_unavailable": "local" if settings.local_fallback else "deny",
        "revocations": "kept" if after.state_safe else "not confirmed",
    }
    if evicted:
        _log.error(
            "the shared store evicted keys since the last reading; proofs made before now are refused"
            " for one proof window (set maxmemory-policy noeviction and keep it)",
            extra={"fields": fields},
        )
        return
    if after.replay_safe:
        if before.answered:
            _log.info(
                "shared store cannot evict keys: DPoP replay claims use it again"
                " (proofs made before now are refused for one proof window)",
                extra={"fields": fields},
            )
        return
    if after.refused:
        message = (
            "cannot read the shared store's maxmemory-policy (INFO refused: grant +info to authz's user);"
            " DPoP replay claims do not use it until it reads noeviction"
        )
    else:
        message = (
            "the shared store may evict keys (set maxmemory-policy noeviction);"
            " DPoP replay claims do not use it until then"
        )
    _log.error(message, extra={"fields": fields})


class _StoreCollector:
    def __init__(self, holder: StoreHolder) -> None:
        self._holder = holder

    def collect(self) -> list[Metric]:
        client = self._holder.client
        if client is None:
            return []
        reading = client.eviction
        safe = GaugeMetricFamily(
            "authz_store_eviction_safe",
            "1 while the shared store reads maxmemory-policy noeviction; 0 otherwise (DPoP claims not sent).",
            labels=["policy"],
        )
        safe.add_metric([reading.label], float(reading.replay_safe))
        families: list[Metric] = [safe]
        if reading.evicted_keys is not None:
            families.append(
                GaugeMetricFamily(
                    "authz_store_evicted_keys",
                    "The shared store's evicted_keys (INFO stats) as last read: keys it dropped for memory.",
                    reading.evicted_keys,
                )
            )
        return families


async def _close_later(client: StoreClient, replaced: set[StoreClient]) -> None:
    await asyncio.sleep(_CLOSE_GRACE)
    replaced.discard(client)
    await client.close()
