"""grpc.aio server: Check servicer, health, reflection, signals, graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2

from authz._proto import DESCRIPTOR_POOL
from authz.admin import run_admin
from authz.config import Config, ServerSettings, TlsSettings, load_config
from authz.drain import drain
from authz.errors import ConfigError
from authz.http_door import HttpDoor
from authz.jwks import JwksRegistry
from authz.reload import Deferred, Reloader
from authz.service import AUTHORIZATION_SERVICE, AuthorizationService, Clock, SnapshotHolder
from authz.telemetry import Telemetry, config_metrics, tracer_provider_from_env
from authz.workers import WorkerLink

__all__ = ["AUTHORIZATION_SERVICE", "RunningServer", "run_server", "serve", "tls_restart_required"]

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_log = logging.getLogger("authz.server")


@dataclass(frozen=True, slots=True)
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health_aio.HealthServicer
    holder: SnapshotHolder

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse
        for name in ("", AUTHORIZATION_SERVICE):
            await self.health.set(name, status.SERVING if serving else status.NOT_SERVING)


@contextlib.asynccontextmanager
async def run_server(
    holder: SnapshotHolder,
    listen: str,
    settings: ServerSettings,
    clock: Clock = time.time,
    telemetry: Telemetry | None = None,
    *,
    reuse_port: bool = False,
    tls: TlsSettings | None = None,
) -> AsyncIterator[RunningServer]:
    """Start a server on ``listen`` (port 0 picks a free port) and drain it on exit."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            # SO_REUSEPORT only for --workers: otherwise a second server on a taken
            # port would silently share it instead of failing.
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
        maximum_concurrent_rpcs=settings.max_concurrent_checks,
    )
    _register_descriptors()
    service = AuthorizationService(holder, clock, telemetry)
    server.add_generic_rpc_handlers((service.handler(),))
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (AUTHORIZATION_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server, pool=DESCRIPTOR_POOL
    )
    try:
        if tls is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, _credentials(holder, tls))
    except RuntimeError as exc:  # grpc reports a failed bind (port taken, bad address) this way
        raise OSError(f"cannot listen on {listen}") from exc
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if holder.current
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", AUTHORIZATION_SERVICE):
        await health.set(name, status)
    try:
        yield RunningServer(server, port, health, holder)
    finally:
        # Health goes NOT_SERVING first so that probes and Envoy stop sending,
        # then in-flight checks get the grace period to finish.
        await health.enter_graceful_shutdown()
        await drain(server, service.in_flight, settings.grace_seconds)


def _credentials(holder: SnapshotHolder, initial: TlsSettings) -> grpc.ServerCredentials:
    """TLS (mTLS with a client CA) whose certificate follows the loaded snapshot.

    gRPC asks the fetcher before each new handshake; a reload that brings new
    certificate files is picked up by the next connection, in-flight ones keep
    theirs. Whether client certificates are required is fixed when the listener
    is made (``require_client_authentication``): a snapshot that adds or removes
    ``client_ca`` (or ``tls``) rotates the certificate only, and the reload says
    so (:func:`tls_restart_required`).
    """
    served = [initial]
    mutual = initial.client_ca is not None

    def certificate(tls: TlsSettings) -> Any:
        return grpc.ssl_server_certificate_configuration([(tls.private_key, tls.cert_chain)], tls.client_ca)

    def fetch() -> Any:
        config = holder.current
        wanted = config.tls if config is not None else None
        if wanted is None:
            return None  # tls removed: the listener stays TLS until a restart, with its certificate
        # What this listener can serve of it: the certificate; a client CA only while
        # client certificates are required (mTLS removed: keep verifying with the last one).
        client_ca = (wanted.client_ca or served[0].client_ca) if mutual else None
        tls = TlsSettings(wanted.cert_chain, wanted.private_key, client_ca)
        if tls == served[0]:
            return None  # unchanged: keep the current certificate
        rotated = [
            name
            for name, old, new in (
                ("cert", served[0].cert_chain, tls.cert_chain),
                ("key", served[0].private_key, tls.private_key),
                ("client_ca", served[0].client_ca, tls.client_ca),
            )
            if old != new
        ]
        served[0] = tls
        _log.info("tls certificate rotated", extra={"fields": {"rotated": rotated}})
        return certificate(tls)

    return grpc.dynamic_ssl_server_credentials(
        certificate(initial), fetch, require_client_authentication=mutual
    )


def _tls_mode(tls: TlsSettings | None) -> str:
    return "plaintext" if tls is None else "mTLS" if tls.client_ca is not None else "TLS"


_IN_EFFECT = {
    "plaintext": "plaintext gRPC",
    "TLS": "TLS, client certificates not requested",
    "mTLS": "mTLS, client certificates required (from the client CA in effect)",
}


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


def _register_descriptors() -> None:
    """Add the health and reflection protos to our private pool, once.

    Reflection answers from ``DESCRIPTOR_POOL`` only; without them a client
    could list these services but not resolve their descriptors.
    """
    for file in (health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR):
        try:
            DESCRIPTOR_POOL.FindFileByName(file.name)
        except KeyError:
            DESCRIPTOR_POOL.AddSerializedFile(file.serialized_pb)


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
    address = listen or config.listen or "127.0.0.1:9001"
    admin_address = admin_listen or config.admin_listen
    http_address = http_listen or config.http_listen
    if worker is not None:
        # A worker's admin port is private; the supervisor serves the public one.
        address, admin_address, http_address = worker.listen, "127.0.0.1:0", worker.http_listen
    holder = SnapshotHolder()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
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
                ready = functools.partial(_ready, holder, stop)
                admin_port = await stack.enter_async_context(
                    run_admin(admin_address, telemetry.registry, ready)
                )
            telemetry.registry.collector(
                config_metrics(holder, lambda: reloader.status if reloader else None)
            )
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
            await _prepare(registry, config)
            holder.swap(config)
            await running.set_serving(True)
            reloader = Reloader(
                holder,
                config_path,
                loader=functools.partial(load_config, registry=registry),
                prepare=functools.partial(_prepare, registry),
                restart_required=functools.partial(tls_restart_required, config.tls),
            )
            reloader.start()
            _log.info(
                "serving",
                extra={
                    "fields": {
                        "listen": address,
                        **ports,
                        "tracing": provider is not None,
                        "config": config.source,
                        "config_sha256": config.digest,
                        "generation": holder.generation,
                        "tenants": sorted(config.tenants.by_name),
                    }
                },
            )
            await stop.wait()
            _log.info("draining", extra={"fields": {"grace_seconds": config.server.grace_seconds}})
            await reloader.stop()
            await registry.stop()
    except OSError as exc:
        _log.error("cannot serve", extra={"fields": {"error": str(exc)}})
        return 1
    finally:
        await asyncio.to_thread(telemetry.shutdown)
    _log.info("stopped")
    return 0


def _ready(holder: SnapshotHolder, stopping: asyncio.Event) -> bool:
    return holder.current is not None and not stopping.is_set()


async def _prepare(registry: JwksRegistry, config: Config) -> None:
    """Before a snapshot goes live: refresh its jwks_uri sources, first fetch awaited (bounded)."""
    await registry.start(config.remote_jwks, config.server.jwks_first_fetch_wait)
