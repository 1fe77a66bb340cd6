"""``authz serve``: the composition root. Config, telemetry, both doors, reloads, the admin port.

Start-up: the config is loaded (an invalid one exits 2 with the reason); the listeners open
with health NOT_SERVING while the first fetch of each ``jwks_uri`` is awaited (bounded); then
the config goes live, health turns SERVING and the files are watched. SIGTERM drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from authz.app.admin import run_admin
from authz.app.jwks import JwksRegistry
from authz.app.limits import raise_open_files_limit
from authz.app.reload import RESTART_SETTINGS, Deferred, Reloader, ReloadStatus
from authz.app.revocation import RevocationService, attach
from authz.app.store import SharedReplayStore, StoreHolder, StoreMetrics
from authz.app.subscriptions import SubscriptionService
from authz.app.subscriptions import attach as attach_subscriptions
from authz.app.workers import WorkerLink
from authz.config import Config, SnapshotHolder, TlsSettings, load_config
from authz.config.holder import ProcessReplayStore
from authz.core.replay import MemoryReplayStore
from authz.errors import ConfigError
from authz.grpc.server import run_server
from authz.http.door import HttpDoor
from authz.telemetry.logs import Throttle
from authz.telemetry.metrics import Collector
from authz.telemetry.multiprocess import WorkerFiles
from authz.telemetry.recorder import Telemetry
from authz.telemetry.tracing import tracer_provider_from_env

__all__ = ["GAUGE_MODES", "config_metrics", "serve", "tls_restart_required"]

_log = logging.getLogger("authz.server")


async def serve(
    config_path: str,
    listen: str | None,
    admin_listen: str | None = None,
    *,
    http_listen: str | None = None,
    worker: WorkerLink | None = None,
) -> int:
    """Run until SIGTERM or SIGINT; returns the process exit code.

    Start-up: the config is loaded (a missing or invalid one exits 2 with the
    reason); the server listens with health NOT_SERVING while the first fetch
    of any ``jwks_uri`` is awaited (bounded); then the snapshot is installed,
    health turns SERVING and the files are watched for changes. Tracing is set
    up from the ``OTEL_*`` environment and flushed on the way out.
    """
    registry = JwksRegistry()
    try:
        config = load_config(config_path, registry)
        provider = tracer_provider_from_env()
    except ConfigError as exc:
        _log.error("configuration rejected", extra={"fields": {"error": str(exc)}})
        return 2
    except ValueError as exc:  # an OTEL_* variable asks for something we cannot do
        _log.error("telemetry configuration rejected", extra={"fields": {"error": str(exc)}})
        return 2
    telemetry = Telemetry(provider)
    # One store client and one revocation and subscription mirror per process, kept across
    # reloads: every snapshot reads the same mirrors, so a revocation, an approval or the
    # revocation of a subscription needs no reload to take effect.
    stores = StoreHolder()
    store_metrics = StoreMetrics(telemetry.registry)
    mirrors = Mirrors(RevocationService(store_metrics), SubscriptionService(store_metrics))
    telemetry.registry.collector(mirrors.revocations.collector())
    telemetry.registry.collector(mirrors.subscriptions.collector())
    telemetry.registry.collector(stores.collector())
    config = mirrors.attach(config)
    prepare = functools.partial(_prepare, registry, stores, mirrors)
    open_files, _ = raise_open_files_limit()  # the doors and the admin port share the descriptors
    address = listen or config.listen or "127.0.0.1:9001"
    admin_address = admin_listen or config.admin_listen
    http_address = http_listen or config.http_listen
    if worker is not None:
        # A worker's admin port is private; the supervisor serves the public one.
        address, admin_address, http_address = worker.listen, "127.0.0.1:0", worker.http_listen
    holder = SnapshotHolder()
    started = time.time()
    if isinstance(holder.replay, MemoryReplayStore):
        # The process's own replay memory begins now: a proof made before may have been
        # accepted by the process this one replaces (a restart, a replaced worker).
        holder.replay.memory.forgot(started)
    if config.store is not None and isinstance(holder.replay, MemoryReplayStore):
        # DPoP replay claims go to the shared store (both doors read holder.replay when they
        # are made); this process's store stays as the fallback (on_unavailable: local, or a
        # reload that removes the store). Started without a store, a reload that adds one is
        # applied to revocations at once, to DPoP after a restart (restart required: store).
        holder.replay = SharedReplayStore(stores, store_metrics, local=holder.replay, tracer=telemetry.tracer)
    # A worker's metrics reach the supervisor's admin port through files (authz.telemetry.multiprocess).
    files = None
    if worker is not None and worker.metrics is not None:
        files = WorkerFiles(worker.metrics, telemetry.registry, GAUGE_MODES)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The replay memory refuses proofs of the second it began in (iat is whole seconds): listen
    # from the next one, so that no client with a right clock meets that (at most 1 s; before
    # the listeners, so a worker joining a SO_REUSEPORT group is not longer unready in it).
    await asyncio.sleep(max(0.0, math.ceil(started) - time.time()))
    try:
        async with contextlib.AsyncExitStack() as stack:
            running = await stack.enter_async_context(
                run_server(
                    holder,
                    address,
                    config.server,
                    telemetry=telemetry,
                    reuse_port=worker is not None,
                    tls=config.tls,
                )
            )
            reloader: Reloader | None = None
            admin_port = None
            if admin_address:
                ready = functools.partial(_ready, holder, stop, mirrors)
                admin_port = await stack.enter_async_context(
                    run_admin(
                        admin_address,
                        telemetry.registry,
                        ready,
                        before_scrape=functools.partial(_write_metrics, files) if files else None,
                    )
                )
            telemetry.registry.collector(
                config_metrics(holder, registry, lambda: reloader.status if reloader else None)
            )
            if files is not None:
                writer = asyncio.ensure_future(_write_every(WRITE_INTERVAL, files))
                stack.callback(writer.cancel)
            if worker is not None and admin_port is not None:
                worker.announce_admin(admin_port)
            http_port = None
            if http_address:
                door = HttpDoor(holder, time.time, telemetry, config.http)
                http_port = await door.start(http_address, reuse_port=worker is not None)
                # Registered after the gRPC server: on the way out it stops first.
                stack.push_async_callback(door.stop, config.server.grace_seconds)
            # Listening, NOT_SERVING until the first jwks_uri fetches are in (bounded).
            ports = {"port": running.port, "admin_port": admin_port, "http_port": http_port}
            _log.info("listening", extra={"fields": ports})
            await prepare(config)
            holder.swap(config)
            await running.set_serving(True)
            reloader = Reloader(
                holder,
                config_path,
                loader=functools.partial(_load, registry, mirrors),
                prepare=prepare,
                restart_required=functools.partial(_restart_required, config.tls, config.store is not None),
            )
            reloader.start()
            _log.info(
                "serving",
                extra={
                    "fields": {
                        "listen": address,
                        **ports,
                        "tracing": provider is not None,
                        "open_files": open_files,
                        "config": config.source,
                        "config_sha256": config.digest,
                        "generation": holder.generation,
                        "tenants": sorted(config.snapshot.tenants.by_name),
                    }
                },
            )
            await stop.wait()
            _log.info("draining", extra={"fields": {"grace_seconds": config.server.grace_seconds}})
            await reloader.stop()
            await registry.stop()
            await mirrors.revocations.stop()
            await mirrors.subscriptions.stop()
            await stores.close()
    except OSError as exc:
        _log.error("cannot serve", extra={"fields": {"error": str(exc)}})
        return 1
    finally:
        if files is not None:
            _write_metrics(files)  # the last counts: the supervisor keeps a dead worker's
            files.close()
        await asyncio.to_thread(telemetry.shutdown)
    _log.info("stopped")
    return 0


WRITE_INTERVAL = 1.0  # seconds: at most this much of a killed worker's counts is lost


async def _write_every(interval: float, files: WorkerFiles) -> None:
    """A worker's metrics files, written every ``interval`` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        _write_metrics(files)


_write_failures = Throttle(10.0)


def _write_metrics(files: WorkerFiles) -> None:
    try:
        files.write()
    except Exception as exc:  # noqa: BLE001 - metrics must not take the worker down
        left_out = _write_failures.admit("write")
        if left_out is not None:
            _log.warning(
                "cannot write the metrics files",
                extra={"fields": {"error": f"{type(exc).__name__}: {exc}", "left_out": left_out}},
            )


@dataclass(frozen=True, slots=True)
class Mirrors:
    """The process's mirrors of shared state, the same objects across reloads."""

    revocations: RevocationService
    subscriptions: SubscriptionService

    def attach(self, config: Config) -> Config:
        """``config`` with its snapshot reading these mirrors."""
        return attach_subscriptions(attach(config, self.revocations.mirror), self.subscriptions.mirror)


def _ready(holder: SnapshotHolder, stopping: asyncio.Event, mirrors: Mirrors | None = None) -> bool:
    # Not ready while every token check would be revocation_state_stale (on_stale: deny), or
    # every check of an API that requires subscriptions subscription_state_stale.
    ready = holder.current is not None and not stopping.is_set()
    return ready and (mirrors is None or (mirrors.revocations.ready() and mirrors.subscriptions.ready()))


def _load(registry: JwksRegistry, mirrors: Mirrors, path: str) -> Config:
    return mirrors.attach(load_config(path, registry))


async def _prepare(registry: JwksRegistry, stores: StoreHolder, mirrors: Mirrors, config: Config) -> None:
    """Before a snapshot goes live: refresh its jwks_uri sources, first fetch awaited (bounded);
    connect to its store (a changed one replaces the old) and load its revocations and
    subscriptions (bounded)."""
    await registry.start(config.jwks, config.server.jwks_first_fetch_wait)
    client = await stores.apply(config.store, check_every=config.revocation.resync_interval)
    wait = config.server.jwks_first_fetch_wait
    await mirrors.revocations.apply(config, client, wait)
    await mirrors.subscriptions.apply(config, client, wait)


def _tls_mode(tls: TlsSettings | None) -> str:
    return "plaintext" if tls is None else "mTLS" if tls.client_ca is not None else "TLS"


_IN_EFFECT = {
    "plaintext": "plaintext gRPC",
    "TLS": "TLS, client certificates not requested",
    "mTLS": "mTLS, client certificates required (from the client CA in effect)",
}


def _restart_required(
    started_tls: TlsSettings | None, started_store: bool, config: Config
) -> tuple[Deferred, ...]:
    """What of ``config`` waits for a restart: the TLS mode, and a store added to a process that
    started without one (its doors claim DPoP proofs in the process's own store until then)."""
    deferred = tls_restart_required(started_tls, config)
    if not started_store and config.store is not None:
        deferred += (
            Deferred(
                "store",
                "added",
                "DPoP replay checked per process; revocations and subscriptions from the store",
            ),
        )
    return deferred


def tls_restart_required(started: TlsSettings | None, config: Config) -> tuple[Deferred, ...]:
    """What of ``config.tls`` the listener started with ``started`` cannot do before a restart.

    A plaintext port cannot become TLS (nor the reverse) without a new listener, and
    gRPC fixes whether client certificates are required when the credentials are made.
    Rebinding the port under live traffic (refused connections in between, a port
    another process may take) is worse than a restart the operator controls, so the
    reload applies everything else and reports this part.
    """
    before, after = _tls_mode(started), _tls_mode(config.tls)
    if before == after:
        return ()
    in_effect = _IN_EFFECT[before]
    if "plaintext" in (before, after):
        return (Deferred("tls", "added" if before == "plaintext" else "removed", in_effect),)
    return (Deferred("tls.client_ca", "added" if after == "mTLS" else "removed", in_effect),)


class _Holder(Protocol):
    current: Config | None
    generation: int
    replay: ProcessReplayStore


# How the supervisor of ``--workers`` merges each gauge over its live workers (prometheus-client's
# multiprocess_mode; a dead worker's value is dropped). docs/observability.md, "Metrics".
GAUGE_MODES = {
    # Each worker counts its own loads, and a replacement starts at 1: the highest moves with a reload.
    "authz_config_generation": "livemax",
    # The oldest last good load: a worker still on an older configuration shows.
    "authz_config_last_success_timestamp_seconds": "livemin",
    "authz_config_restart_required": "livemax",  # 1 if any worker needs a restart
    "authz_keys": "livemax",
    # Each worker has its own cache: the memory held, and the room there is.
    "authz_token_cache_entries": "livesum",
    "authz_token_cache_capacity": "livesum",
    # Each worker has its own replay cache (docs/sender-constrained.md: a proof may pass once per process).
    "authz_dpop_replay_cache_entries": "livesum",
    "authz_dpop_replay_cache_capacity": "livesum",
    # Every worker mirrors the same revocations: the largest mirror, the oldest, any stale one,
    # and 0 when any worker has lost its subscription.
    "authz_revocation_entries": "livemax",
    "authz_revocation_mirror_age_seconds": "livemax",
    "authz_revocation_mirror_stale": "livemax",
    "authz_revocation_subscribed": "livemin",
    # Likewise the subscriptions.
    "authz_subscription_records": "livemax",
    "authz_subscription_mirror_age_seconds": "livemax",
    "authz_subscription_mirror_stale": "livemax",
    "authz_subscription_subscribed": "livemin",
    # One store for all: 0 when any worker read a policy that may evict; the store's own counter.
    "authz_store_eviction_safe": "livemin",
    "authz_store_evicted_keys": "livemax",
}


def config_metrics(
    holder: _Holder, registry: JwksRegistry, reload_status: Callable[[], ReloadStatus | None]
) -> Collector:
    """A scrape-time collector for the loaded configuration, its reloads, keys and JWKS fetches."""
    return _ConfigCollector(holder, registry, reload_status)


class _ConfigCollector:
    def __init__(
        self, holder: _Holder, registry: JwksRegistry, reload_status: Callable[[], ReloadStatus | None]
    ) -> None:
        self._holder, self._registry, self._reload_status = holder, registry, reload_status

    def collect(self) -> list[Metric]:
        config = self._holder.current
        families: list[Metric] = [
            GaugeMetricFamily(
                "authz_config_generation", "Generation of the loaded config.", self._holder.generation
            )
        ]
        status = self._reload_status()
        if status is not None:
            reloads = CounterMetricFamily(
                "authz_config_reloads_total", "Config reloads by result.", labels=["result"]
            )
            for result, count in sorted(status.results.items()):
                reloads.add_metric([result], count)
            pending = {deferred.setting for deferred in status.restart_required}
            restart = GaugeMetricFamily(
                "authz_config_restart_required",
                "1 while the loaded config changes a setting that only a restart applies.",
                labels=["setting"],
            )
            for setting in RESTART_SETTINGS:
                restart.add_metric([setting], float(setting in pending))
            families += [
                reloads,
                GaugeMetricFamily(
                    "authz_config_last_success_timestamp_seconds", "Last good config load.", status.loaded_at
                ),
                restart,
            ]
        if config is None:
            return families
        keys = GaugeMetricFamily("authz_keys", "Keys loaded, by key set.", labels=["set", "issuer"])
        keys.add_metric(["decryption", ""], len(config.snapshot.token_keys.decryption))
        for issuer, issuer_keys in sorted(config.snapshot.token_keys.issuers.items()):
            keys.add_metric(["issuer", issuer], issuer_keys.size())
        fetches = CounterMetricFamily(
            "authz_jwks_fetches_total", "JWKS fetches by result.", labels=["jwks_uri", "result"]
        )
        for remote in self._registry.sources(config.jwks):
            for result, count in sorted(remote.results.items()):
                fetches.add_metric([remote.settings.uri, result], count)
        cache = config.snapshot.cache
        lookups = CounterMetricFamily(
            "authz_token_cache_lookups_total", "Token cache lookups.", labels=["result"]
        )
        lookups.add_metric(["hit"], cache.hits)
        lookups.add_metric(["miss"], cache.misses)
        families += [
            keys,
            fetches,
            lookups,
            GaugeMetricFamily("authz_token_cache_entries", "Tokens in the cache.", len(cache)),
            GaugeMetricFamily("authz_token_cache_capacity", "Bound of the cache.", cache.max_entries),
            GaugeMetricFamily(
                "authz_dpop_replay_cache_entries",
                "DPoP proofs remembered until they expire (this process; both doors).",
                self._holder.replay.size(),
            ),
            GaugeMetricFamily(
                "authz_dpop_replay_cache_capacity",
                "Bound of the DPoP replay cache (full: 503 dpop_replay_cache_full).",
                self._holder.replay.capacity,
            ),
        ]
        return families
