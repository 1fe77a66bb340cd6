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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from authz.config.settings import StoreSettings
from authz.core.replay import MemoryReplayStore, ReplayMemory, ReplayVerdict
from authz.telemetry.logs import Throttle
from authz.telemetry.metrics import Counter, Histogram, Registry

__all__ = ["SharedReplayStore", "StoreClient", "StoreHolder", "StoreMetrics", "connect"]

_log = logging.getLogger("authz.store")
# Background work (revocation loads, pub/sub) is not on a check's path: it may wait longer.
BACKGROUND_TIMEOUT = 2.0
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

    async def ping(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                return bool(await self.background.ping())
        except Exception:  # noqa: BLE001 - any failure: not reachable now
            return False

    async def close(self) -> None:
        for client in self._clients:
            with contextlib.suppress(Exception):
                await client.aclose()
            # A Sentinel-made client does not own its pool, so aclose leaves it open.
            with contextlib.suppress(Exception):
                await client.connection_pool.disconnect()


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
                    extra={"fields": {"store": settings.endpoint, "left_out": left_out}},
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
    """The current ``StoreClient`` of the process (None: no store configured)."""

    def __init__(self) -> None:
        self.client: StoreClient | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._replaced: set[StoreClient] = set()  # replaced clients not closed yet
        self.listeners: list[Callable[[StoreClient | None], None]] = []

    async def apply(self, settings: StoreSettings | None) -> StoreClient | None:
        """Use ``settings`` from now on: the same client if they did not change, else a new one.

        The old client is closed after a grace period, so that pipelines and loads it is
        running finish; checks pick the new one from their next claim.
        """
        current = self.client
        if current is not None and current.settings == settings:
            return current
        client = StoreClient(settings) if settings is not None else None
        if client is not None:
            reachable = await client.ping(max(settings.timeout, 1.0))  # type: ignore[union-attr]
            _log.info(
                "shared store configured",
                extra={"fields": {"store": client.settings.endpoint, "reachable": reachable}},
            )
        self.client = client
        for listener in self.listeners:
            listener(client)
        if current is not None:
            self._replaced.add(current)
            task = asyncio.get_running_loop().create_task(_close_later(current, self._replaced))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return client

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await client.close()
        # Replaced clients are closed here, not by their tasks: a task cancelled before it
        # first ran never reaches its ``finally``.
        for task in list(self._closing):
            task.cancel()
        await asyncio.gather(*self._closing, return_exceptions=True)
        for old in list(self._replaced):
            await old.close()
        self._replaced.clear()


async def _close_later(client: StoreClient, replaced: set[StoreClient]) -> None:
    await asyncio.sleep(_CLOSE_GRACE)
    replaced.discard(client)
    await client.close()
