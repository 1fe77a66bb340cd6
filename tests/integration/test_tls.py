"""TLS and mTLS on the gRPC listener: certificates made here, rotation by reload, real Envoy as the client."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from authz._proto.envoy.service.auth.v3.external_auth_pb2_grpc import AuthorizationStub
from authz.config import load_config
from authz.errors import ConfigError
from authz.server import RunningServer, run_server
from authz.service import SnapshotHolder
from tests.helpers import CONFIG, NOW, World, check_request
from tests.https_jwks import CertificateAuthority
from tests.integration.harness import EchoUpstream, envoy_config, http_request, run_envoy

TLS = """
tls:
  cert: tls/server.pem
  key: tls/server.key
  client_ca: tls/clients-ca.pem
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A server CA with two server certificates, and a client CA with a client certificate."""
    folder = tmp_path_factory.mktemp("pki")
    servers = CertificateAuthority.create(folder, "servers")
    clients = CertificateAuthority.create(folder, "clients")
    return {
        "folder": folder,
        "servers": servers,
        "clients": clients,
        "first": servers.server_files(folder, "server-1"),
        "second": servers.server_files(folder, "server-2"),
        "client": clients.client_files(folder, "envoy"),
        "stranger": CertificateAuthority.create(folder / "other", "other").client_files(folder, "stranger"),
    }


def _install(root: Path, pki: dict[str, Any], which: str) -> None:
    tls = root / "tls"
    tls.mkdir(exist_ok=True)
    cert, key = pki[which]
    shutil.copy(cert, tls / "server.pem")
    shutil.copy(key, tls / "server.key")
    shutil.copy(pki["clients"].ca_file, tls / "clients-ca.pem")


@pytest.fixture(scope="module")
async def served(
    world: World, pki: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[RunningServer, Path]]:
    """The real server with mTLS on 127.0.0.1:0 (clock NOW), config and certificates in a folder."""
    root = tmp_path_factory.mktemp("tls-server")
    shutil.copytree(world.root / "keys", root / "keys")
    _install(root, pki, "first")
    (root / "config.yaml").write_text(CONFIG + TLS)
    config = load_config(root / "config.yaml")
    holder = SnapshotHolder(config)
    async with run_server(
        holder, "127.0.0.1:0", config.server, lambda: float(NOW), tls=config.tls
    ) as running:
        yield running, root


def _credentials(pki: dict[str, Any], client: str | None = "client") -> grpc.ChannelCredentials:
    chain = key = None
    if client is not None:
        cert_file, key_file = pki[client]
        chain, key = cert_file.read_bytes(), key_file.read_bytes()
    return grpc.ssl_channel_credentials(pki["servers"].ca_file.read_bytes(), key, chain)


async def _check(port: int, credentials: grpc.ChannelCredentials | None, token: str) -> int:
    target = f"127.0.0.1:{port}"
    options = [("grpc.ssl_target_name_override", "localhost")]
    channel = (
        grpc.aio.secure_channel(target, credentials, options)
        if credentials
        else grpc.aio.insecure_channel(target)
    )
    async with channel:
        stub = AuthorizationStub(channel)  # type: ignore[no-untyped-call]
        response = await stub.Check(check_request(token=token), timeout=5)
        return int(response.status.code)


async def test_mtls_client_is_answered(served, pki, world: World) -> None:
    """A client with a certificate from the configured client CA gets its decision."""
    running, _ = served
    assert await _check(running.port, _credentials(pki), world.token()) == 0


@pytest.mark.parametrize("client", [None, "stranger"], ids=["no-client-cert", "cert-from-another-ca"])
async def test_clients_without_a_trusted_certificate_are_refused(served, pki, world: World, client) -> None:
    """No client certificate, or one from another CA: the handshake fails, no Check runs."""
    running, _ = served
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await _check(running.port, _credentials(pki, client), world.token())
    assert failure.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_plaintext_client_is_refused(served, world: World) -> None:
    """A plaintext client cannot talk to the TLS listener."""
    running, _ = served
    with pytest.raises(grpc.aio.AioRpcError):
        await _check(running.port, None, world.token())


def _served_certificate(port: int, pki: dict[str, Any]) -> bytes:
    context = ssl.create_default_context(cafile=str(pki["servers"].ca_file))
    cert_file, key_file = pki["client"]
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der


def _der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(serialization.Encoding.DER)


async def test_certificate_rotation_by_reload(served, pki, world: World) -> None:
    """New certificate files in a reloaded snapshot are served to the next connection."""
    running, root = served
    assert await asyncio.to_thread(_served_certificate, running.port, pki) == _der(pki["first"][0])
    _install(root, pki, "second")
    running.holder.swap(load_config(root / "config.yaml"))  # what the Reloader does after the files change
    assert await asyncio.to_thread(_served_certificate, running.port, pki) == _der(pki["second"][0])
    assert await _check(running.port, _credentials(pki), world.token()) == 0


def test_a_key_that_does_not_match_the_certificate_is_a_config_error(
    world: World, pki, tmp_path: Path
) -> None:
    """cert and key from different pairs: the config is rejected, naming the tls section."""
    shutil.copytree(world.root / "keys", tmp_path / "keys")
    _install(tmp_path, pki, "first")
    shutil.copy(pki["second"][1], tmp_path / "tls" / "server.key")
    (tmp_path / "config.yaml").write_text(CONFIG + TLS)
    with pytest.raises(ConfigError, match="key does not match"):
        load_config(tmp_path / "config.yaml")


def _tls_envoy(
    authz_port: int, upstream_port: int, pki: dict[str, Any], client: str | None
) -> dict[str, Any]:
    config = envoy_config(authz_port=authz_port, upstream_port=upstream_port)
    cluster = next(c for c in config["static_resources"]["clusters"] if c["name"] == "authz")
    common: dict[str, Any] = {
        "alpn_protocols": ["h2"],
        "validation_context": {
            "trusted_ca": {"filename": str(pki["servers"].ca_file)},
            "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "localhost"}}],
        },
    }
    if client is not None:
        cert_file, key_file = pki[client]
        common["tls_certificates"] = [
            {"certificate_chain": {"filename": str(cert_file)}, "private_key": {"filename": str(key_file)}}
        ]
    cluster["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "localhost",
            "common_tls_context": common,
        },
    }
    return config


@pytest.mark.parametrize(("client", "status"), [("client", 200), (None, 403)], ids=["mtls", "no-client-cert"])
async def test_envoy_as_the_mtls_client(served, pki, world: World, tmp_path: Path, client, status) -> None:
    """Real Envoy over mTLS gets our decision; without a client certificate it fails closed (403)."""
    running, _ = served
    with EchoUpstream() as upstream:
        config = _tls_envoy(running.port, upstream.port, pki, client)
        with run_envoy(config, tmp_path=tmp_path) as envoy:
            reply = await asyncio.to_thread(
                http_request, envoy.port, "GET", "/orders", host="api.acme.test",
                headers={"authorization": f"Bearer {world.token()}"},
            )  # fmt: skip
        assert reply.status == status
        assert len(upstream.requests) == (1 if status == 200 else 0)
