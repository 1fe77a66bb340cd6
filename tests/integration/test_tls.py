"""TLS and mTLS on the gRPC listener: certificates made here, rotation by reload, real Envoy as the client."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from authz.config import SnapshotHolder, load_config
from authz.errors import ConfigError
from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2_grpc import AuthorizationStub
from authz.grpc.server import RunningServer, run_server
from testkit.envoy import EchoUpstream, envoy_config, http_request, run_envoy
from testkit.exposition import parse_exposition
from testkit.jwks_server import CertificateAuthority
from testkit.processes import ServeProcess
from testkit.world import CONFIG, NOW, World, check_request

pytestmark = pytest.mark.slow

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


@pytest.mark.envoy
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


def test_which_tls_changes_need_a_restart(world: World) -> None:
    """Every pair of modes (plaintext, TLS, mTLS): only a change of mode is reported, as the setting
    that changed; a change of certificate or client CA content within a mode is not."""
    from dataclasses import replace

    from authz.app.serve import tls_restart_required
    from authz.config import TlsSettings

    config = world.config()
    modes = {
        "plaintext": None,
        "TLS": TlsSettings(b"cert", b"key", None),
        "mTLS": TlsSettings(b"cert", b"key", b"ca"),
    }
    expected = {
        ("plaintext", "TLS"): ("tls", "added"),
        ("plaintext", "mTLS"): ("tls", "added"),
        ("TLS", "plaintext"): ("tls", "removed"),
        ("mTLS", "plaintext"): ("tls", "removed"),
        ("TLS", "mTLS"): ("tls.client_ca", "added"),
        ("mTLS", "TLS"): ("tls.client_ca", "removed"),
    }
    for started, tls in modes.items():
        for loaded, wanted in modes.items():
            deferred = tls_restart_required(tls, replace(config, tls=wanted))
            found = [(d.setting, d.change) for d in deferred]
            assert found == ([expected[started, loaded]] if (started, loaded) in expected else []), (
                started,
                loaded,
            )
            assert all(
                d.in_effect.startswith(started.replace("plaintext", "plaintext gRPC")) for d in deferred
            )
    rotated = TlsSettings(b"new cert", b"new key", b"new ca")
    assert tls_restart_required(modes["mTLS"], replace(config, tls=rotated)) == ()


# ------------------------------------------------------------------ TLS mode changes by reload
#
# A running `authz serve` keeps the TLS mode its listener started with (plaintext, TLS, mTLS):
# a reload that adds or removes `tls` or `tls.client_ca` applies everything else, logs
# "restart required: SETTING CHANGE" with what stays in effect, and sets
# authz_config_restart_required{setting} to 1; it rotates only what the listener can serve.

TLS_ONLY = """
tls:
  cert: tls/server.pem
  key: tls/server.key
"""
MODES = {"plaintext": "", "TLS": TLS_ONLY, "mTLS": TLS}
# Another part of the config changed in the same reload: /status becomes a public rule.
WITH_STATUS = CONFIG.replace("        paths: [/healthz]\n", "        paths: [/healthz, /status]\n")
ANSWERED_WITHIN = 5.0  # one RPC: a handshake and a decision on a busy machine


def _write_config(root: Path, text: str) -> None:
    """Replace config.yaml in one rename, as an editor or a ConfigMap swap does."""
    tmp = root / "config.yaml.tmp"
    tmp.write_text(text)
    os.replace(tmp, root / "config.yaml")


def _answer(port: int, pki: dict[str, Any], client: str, path: str = "/healthz") -> int | None:
    """The Check's gRPC status code as a client of kind ``client`` gets it; None: no answer at all.

    ``client``: "plaintext", "no-cert" (TLS, no client certificate), "cert" (TLS with the
    client certificate of the configured client CA).
    """
    target = f"127.0.0.1:{port}"
    if client == "plaintext":
        channel = grpc.insecure_channel(target)
    else:
        credentials = _credentials(pki, "client" if client == "cert" else None)
        channel = grpc.secure_channel(target, credentials, [("grpc.ssl_target_name_override", "localhost")])
    with channel:
        stub = AuthorizationStub(channel)  # type: ignore[no-untyped-call]
        try:
            response = stub.Check(check_request(path=path), timeout=ANSWERED_WITHIN)
        except grpc.RpcError as failure:
            refused = failure.code()  # type: ignore[attr-defined]
        else:
            return int(response.status.code)
    assert refused is grpc.StatusCode.UNAVAILABLE, refused  # refused at the handshake, nothing else
    return None


def _restart_metric(admin_port: int, setting: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as response:
        metrics = parse_exposition(response.read().decode())
    return metrics.value("authz_config_restart_required", setting=setting)


def _start(root: Path) -> tuple[ServeProcess, int, int]:
    server = ServeProcess.start(
        root / "config.yaml", ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
    )
    port, admin = server.ports()
    assert admin is not None
    return server, port, admin


def _decisions(server: ServeProcess) -> int:
    return sum(1 for r in list(server.lines) if r["msg"] == "decision")


def _clients_answered(server: ServeProcess, port: int, pki: dict[str, Any]) -> dict[str, bool]:
    """Which kinds of client get an answer now (each on a new connection: a new handshake).

    Returns after the decision lines of the answered ones are in: a "tls certificate rotated"
    line, written during a handshake, is then in ``server.lines`` too.
    """
    before = _decisions(server)
    answered = {client: _answer(port, pki, client) is not None for client in ("plaintext", "no-cert", "cert")}
    expected = before + sum(answered.values())
    server.wait_for(lambda _: _decisions(server) >= expected, "the decision lines")
    return answered


ANSWERED_IN = {
    "plaintext": {"plaintext": True, "no-cert": False, "cert": False},
    "TLS": {"plaintext": False, "no-cert": True, "cert": True},
    "mTLS": {"plaintext": False, "no-cert": False, "cert": True},
}


@pytest.mark.parametrize(
    ("start", "reload", "setting", "change"),
    [
        ("TLS", "mTLS", "tls.client_ca", "added"),
        ("mTLS", "TLS", "tls.client_ca", "removed"),
        ("plaintext", "TLS", "tls", "added"),
        ("plaintext", "mTLS", "tls", "added"),
        ("mTLS", "plaintext", "tls", "removed"),
        ("TLS", "plaintext", "tls", "removed"),
    ],
)
def test_a_tls_mode_change_by_reload_waits_for_a_restart(
    world: World, pki: dict[str, Any], tmp_path: Path, start: str, reload: str, setting: str, change: str
) -> None:
    """The listener keeps its mode (who is answered does not change), the rest of the reload
    applies, the log says "restart required" and what is in effect, no line says the TLS
    changed, the metric is 1; after a restart the new mode is in effect and the metric 0."""
    root = tmp_path / "srv"
    shutil.copytree(world.root / "keys", root / "keys")
    _install(root, pki, "first")
    _write_config(root, CONFIG + MODES[start])
    server, port, admin = _start(root)
    try:
        assert _clients_answered(server, port, pki) == ANSWERED_IN[start]
        assert _restart_metric(admin, setting) == 0
        _write_config(root, WITH_STATUS + MODES[reload])
        server.wait_for(lambda r: r["msg"] == "config reloaded", "the reload")
        line = server.wait_for(lambda r: str(r["msg"]).startswith("restart required"), "restart required")
        assert line["msg"] == f"restart required: {setting} {change}"
        assert (line["level"], line["setting"], line["change"]) == ("error", setting, change)
        assert str(line["in_effect"]).startswith(start)
        reloaded = next(r for r in server.lines if r["msg"] == "config reloaded")
        assert reloaded["restart_required"] == [f"{setting} {change}"]
        # Who gets an answer is what the running listener was started with.
        assert _clients_answered(server, port, pki) == ANSWERED_IN[start]
        assert not any(r["msg"] == "tls certificate rotated" for r in server.lines)
        assert _restart_metric(admin, setting) == 1
        other = "tls" if setting == "tls.client_ca" else "tls.client_ca"
        assert _restart_metric(admin, other) == 0
        # The rest of the configuration is in effect: /status is public now.
        client = "plaintext" if start == "plaintext" else "cert"
        assert _answer(port, pki, client, "/status") == 0
    finally:
        server.stop()
    restarted, port, admin = _start(root)
    try:
        assert _clients_answered(restarted, port, pki) == ANSWERED_IN[reload]
        assert _restart_metric(admin, setting) == 0
    finally:
        restarted.stop()


def test_a_certificate_rotation_beside_an_mtls_change_rotates_the_certificate_only(
    world: World, pki: dict[str, Any], tmp_path: Path
) -> None:
    """mTLS turned on together with new certificate files: the certificate is rotated (and the log
    says just that), clients without a certificate are still answered until a restart."""
    root = tmp_path / "srv"
    shutil.copytree(world.root / "keys", root / "keys")
    _install(root, pki, "first")
    _write_config(root, CONFIG + TLS_ONLY)
    server, port, admin = _start(root)
    try:
        assert _served_certificate(port, pki) == _der(pki["first"][0])
        _install(root, pki, "second")
        _write_config(root, CONFIG + TLS)
        server.wait_for(lambda r: r["msg"] == "restart required: tls.client_ca added", "restart required")
        assert _served_certificate(port, pki) == _der(pki["second"][0])
        rotated = server.wait_for(lambda r: r["msg"] == "tls certificate rotated", "the rotation")
        assert rotated["rotated"] == ["cert", "key"]
        assert _clients_answered(server, port, pki) == ANSWERED_IN["TLS"]
        assert _restart_metric(admin, "tls.client_ca") == 1
    finally:
        server.stop()


def test_certificate_rotation_by_reload_in_a_served_process(
    world: World, pki: dict[str, Any], tmp_path: Path
) -> None:
    """mTLS unchanged, new certificate files: served from the next handshake, mTLS still required,
    no restart asked for."""
    root = tmp_path / "srv"
    shutil.copytree(world.root / "keys", root / "keys")
    _install(root, pki, "first")
    _write_config(root, CONFIG + TLS)
    server, port, admin = _start(root)
    try:
        assert _served_certificate(port, pki) == _der(pki["first"][0])
        _install(root, pki, "second")
        server.wait_for(lambda r: r["msg"] == "config reloaded", "the reload")
        assert _served_certificate(port, pki) == _der(pki["second"][0])
        rotated = server.wait_for(lambda r: r["msg"] == "tls certificate rotated", "the rotation")
        assert rotated["rotated"] == ["cert", "key"]
        assert _clients_answered(server, port, pki) == ANSWERED_IN["mTLS"]
        assert not any(str(r["msg"]).startswith("restart required") for r in server.lines)
        assert _restart_metric(admin, "tls.client_ca") == _restart_metric(admin, "tls") == 0
    finally:
        server.stop()
