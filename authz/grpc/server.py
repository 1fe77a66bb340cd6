"""The gRPC listener: the Check servicer, health, reflection, TLS that follows reloads, the drain."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from authz.config.holder import SnapshotHolder
from authz.config.settings import ServerSettings, TlsSettings
from authz.core.check import Clock
from authz.grpc._proto import DESCRIPTOR_POOL
from authz.grpc.drain import drain
from authz.grpc.servicer import AUTHORIZATION_SERVICE, AuthorizationService
from authz.telemetry.recorder import Telemetry

__all__ = ["AUTHORIZATION_SERVICE", "HEALTH_SERVICE", "RunningServer", "run_server"]

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
    server.add_generic_rpc_handlers((service.handler(),))  # first: Check is looked up first
    health = health_aio.HealthServicer()
    generic = _GenericOnly(server)
    health_pb2_grpc.add_HealthServicer_to_server(health, generic)
    services = (AUTHORIZATION_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(services, pool=DESCRIPTOR_POOL), generic
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


class _GenericOnly:
    """Takes a generated ``add_*Servicer_to_server``'s handlers as generic handlers only.

    The generated code also registers each method with the server; grpc.aio then keeps one
    pending call future per registered method and waits on all of them again after every
    call (``asyncio.wait``): with health and reflection, five futures per Check instead of
    one. Generic handlers serve the same methods without that cost.
    """

    __slots__ = ("_server",)

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: object) -> None:
        pass  # served by the generic handler above


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
