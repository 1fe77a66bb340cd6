"""Issuer keys from a ``jwks_uri``, fetched from a real local HTTPS server (testkit/jwks_server.py).

Covers the first fetch, scheduled refresh, the rate-limited unknown-kid refetch
(through AuthorizationService, where the retry lives), failed fetches of every
kind (the last good key set is kept, the error is short and never a response
body), never-fetched issuers (deny issuer_keys_unavailable), TLS trust, config
validation, files-plus-URL issuers, the registry across reloads, and a real
``python -m authz serve`` that waits (bounded) for a hanging first fetch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from jwcrypto.jwk import JWK

from authz.app.jwks import JwksRegistry, RemoteJwks
from authz.config import Config, SnapshotHolder, load_config
from authz.errors import ConfigError
from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from authz.grpc.servicer import AuthorizationService, check
from authz.jose.mint import generate_key, mint, public_jwks, write_jwks
from testkit.jwks_server import BODY_MARKER, CertificateAuthority, JwksServer
from testkit.world import NOW, World, check_request

REMOTE_IDP = "https://idp.remote.test"
REMOTE_HOST = "api.remote.test"
DEADLINE = 10.0  # upper bound of every poll
FETCH_TIMEOUT = 1.0
MAX_ERROR_CHARS = 120

ALLOWED = (0, 200, "ok")
UNAVAILABLE = (14, 503, "issuer_keys_unavailable")
KID_UNKNOWN = (16, 401, "signing_key_unknown")


# ------------------------------------------------------------------ fixtures and helpers


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A private CA with a server certificate for 127.0.0.1, and an unrelated second CA."""
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create(folder, "good")
    other = CertificateAuthority.create(folder, "other")
    return {"ca_file": ca.ca_file, "other_ca_file": other.ca_file, "server": ca.server_files(folder, "srv")}


@pytest.fixture
def ca_file(pki: dict[str, Any]) -> Path:
    """The CA bundle that verifies the ``idp`` server."""
    return pki["ca_file"]


@pytest.fixture
def idp(pki: dict[str, Any]) -> Iterator[JwksServer]:
    """The issuer's JWKS endpoint (HTTPS), serving key k1; stopped after the test."""
    server = JwksServer(pki["server"])
    server.serve_keys([KEYS["k1"]])
    try:
        yield server
    finally:
        server.stop()


KEYS: dict[str, JWK] = {kid: generate_key("ES256", kid) for kid in ("k1", "k2", "k3", "evil", "s1")}
# Two keys with one kid: one in a key file, the other served at the URL.
KEYS["b-file"] = generate_key("ES256", "both")
KEYS["b-remote"] = generate_key("ES256", "both")


def write_config(
    folder: Path,
    world: World,
    *,
    uri: str,
    ca_file: Path | None,
    jwks_file: Path | None = None,
    issuer: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
    name: str = "config.yaml",
) -> Path:
    """A config: issuer REMOTE_IDP from ``uri`` (tenant ``remote``) plus the world's acme issuer."""
    settings = {"refresh_interval": 300, "min_refetch_interval": 30, "fetch_timeout": FETCH_TIMEOUT}
    settings.update(issuer or {})
    lines = [
        "decryption:",
        f"  keys: [{world.root}/keys/decrypt.jwks.json]",
        "issuers:",
        f"  - issuer: {REMOTE_IDP}",
        f"    jwks_uri: {uri}",
    ]
    lines += [f"    ca_file: {ca_file}"] if ca_file else []
    lines += [f"    jwks: {jwks_file}"] if jwks_file else []
    lines += [f"    {key}: {value}" for key, value in settings.items()]
    lines += [
        "  - issuer: https://idp.acme.test",
        f"    jwks: {world.root}/keys/acme-idp.jwks.json",
        "tenants:",
    ]
    for tenant, idp_name, host in (
        ("remote", REMOTE_IDP, REMOTE_HOST),
        ("acme", "https://idp.acme.test", "api.acme.test"),
    ):
        lines += [
            f"  - name: {tenant}",
            f"    issuers: [{idp_name}]",
            "    audiences: [orders-api]",
            f"    hosts: [{host}]",
            "    rules:",
            "      - name: read-orders",
            "        paths: [/orders]",
            "        scopes: [orders:read]",
        ]
    server_settings = {"jwks_first_fetch_wait": 5, "jwks_unknown_kid_wait": 5, **(server or {})}
    lines += ["server:"] + [f"  {key}: {value}" for key, value in server_settings.items()]
    path = folder / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def remote_token(world: World, key: JWK, **claims: Any) -> str:
    """A token of REMOTE_IDP for tenant ``remote``, signed with ``key`` (its kid in the header)."""
    return mint(
        world.claims(iss=REMOTE_IDP, tenant="remote", **claims),
        encryption_key=world.decryption_keys["enc-rsa-oaep-256"],
        signing_key=key,
    )


def remote_request(world: World, key: JWK, **claims: Any) -> CheckRequest:
    return check_request(host=REMOTE_HOST, token=remote_token(world, key, **claims))


def outcome(response: CheckResponse) -> tuple[int, int, str]:
    """(gRPC code, HTTP status, reason) of a CheckResponse; an allow is (0, 200, "ok")."""
    reason = response.dynamic_metadata.fields["reason"].string_value
    if response.HasField("ok_response"):
        return response.status.code, 200, reason
    body = json.loads(response.denied_response.body)
    assert body["reason"] == reason
    return response.status.code, response.denied_response.status.code, reason


def sync_check(config: Config, message: CheckRequest) -> tuple[int, int, str]:
    """authz.grpc.servicer.check: no refetch, just the keys as they are."""
    return outcome(check(SnapshotHolder(config), message, lambda: NOW))


async def service_check(config: Config, message: CheckRequest) -> tuple[int, int, str]:
    """AuthorizationService.check on the serialized request: with the unknown-kid refetch."""
    service = AuthorizationService(SnapshotHolder(config), lambda: NOW)
    return outcome(await service.check(message.SerializeToString(), context=None))  # type: ignore[arg-type]


def load_fetched(path: Path | str, registry: JwksRegistry | None = None) -> Config:
    """load_config with the server's fetchers: each jwks_uri gets a RemoteJwks of its own."""
    return load_config(path, registry or JwksRegistry())


def remote_of(config: Config) -> RemoteJwks:
    """The one jwks_uri source of the config's issuers."""
    (remote,) = (
        keys.remote for keys in config.snapshot.token_keys.issuers.values() if keys.remote is not None
    )
    assert isinstance(remote, RemoteJwks)
    return remote


async def until(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Poll ``condition`` (bounded) on the event loop."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------ fetching


async def test_first_fetch_makes_served_keys_usable(idp, ca_file, world, tmp_path) -> None:
    """The first good fetch stores the served keys; a token signed by one of them is allowed."""
    config = load_fetched(write_config(tmp_path, world, uri=idp.url(), ca_file=ca_file))
    remote = remote_of(config)
    assert remote.keyset is None
    assert await remote.fetch()
    assert set(remote.keyset.by_kid) == {"k1"}
    assert (remote.results["success"], remote.results["failure"], remote.last_error) == (1, 0, None)
    assert idp.total == 1
    assert sync_check(config, remote_request(world, KEYS["k1"])) == ALLOWED
    assert await service_check(config, remote_request(world, KEYS["k1"])) == ALLOWED
    assert idp.total == 1  # a known kid costs no fetch


async def test_scheduled_refresh_picks_up_new_key(idp, ca_file, world, tmp_path) -> None:
    """With a short refresh_interval, a key the issuer adds becomes usable without any request."""
    path = write_config(tmp_path, world, uri=idp.url(), ca_file=ca_file, issuer={"refresh_interval": 0.2})
    config = load_fetched(path)
    remote = remote_of(config)
    remote.start()
    try:
        assert await remote.wait_first(DEADLINE)
        assert sync_check(config, remote_request(world, KEYS["k2"])) == KID_UNKNOWN
        idp.serve_keys([KEYS["k1"], KEYS["k2"]])
        await until(lambda: "k2" in remote.keyset.by_kid, "the refresh to fetch k2")
        assert sync_check(config, remote_request(world, KEYS["k2"])) == ALLOWED
        assert remote.results["success"] >= 2
    finally:
        await remote.stop()


async def test_unknown_kid_refetch_is_rate_limited(idp, ca_file, world, tmp_path) -> None:
    """A new kid: one refetch (shared) lets it in; another new kid within min_refetch_interval: no fetch."""
    interval = 1.0
    path = write_config(
        tmp_path,
        world,
        uri=idp.url(),
        ca_file=ca_file,
        issuer={"min_refetch_interval": interval},
    )
    config = load_fetched(path)
    remote = remote_of(config)
    assert await remote.fetch()
    fetched = time.monotonic()
    idp.serve_keys([KEYS["k1"], KEYS["k2"]])
    # The initial fetch counts against the limit: let its window pass (a rate limit is time).
    await asyncio.sleep(max(0.0, fetched + interval + 0.05 - time.monotonic()))

    results = await asyncio.gather(
        *(service_check(config, remote_request(world, KEYS["k2"])) for _ in range(3))
    )
    assert results == [ALLOWED] * 3
    assert idp.total == 2  # one refetch for all three
    refetched = time.monotonic()

    idp.serve_keys([KEYS["k1"], KEYS["k2"], KEYS["k3"]])
    assert await service_check(config, remote_request(world, KEYS["k3"])) == KID_UNKNOWN
    assert time.monotonic() - refetched < interval, "too slow to test the window"
    assert idp.total == 2  # within min_refetch_interval: no request to the issuer

    await asyncio.sleep(max(0.0, refetched + interval + 0.05 - time.monotonic()))
    assert await service_check(config, remote_request(world, KEYS["k3"])) == ALLOWED
    assert idp.total == 3


def _fail_server(mode: str, idp: JwksServer, plain: JwksServer) -> None:
    if mode == "down":
        idp.stop()
    elif mode == "redirect":
        idp.mode, idp.redirect_to = "redirect", plain.url()
    elif mode == "bad-document":
        bogus = {"kid": "x", "kty": "EC", "crv": "P-256", "alg": BODY_MARKER + "A" * 2000}
        idp.document = json.dumps({"keys": [bogus]}).encode()
    else:
        idp.mode = mode


FAILURES = {
    "down": "ConnectionRefusedError",
    "error": "HTTP 500",
    "garbage": "invalid JWKS document",
    "bad-document": "invalid JWKS document",
    "hang": "TimeoutError",
    "trickle": "TimeoutError",
    "redirect": "non-https",
}


@pytest.mark.parametrize("mode", list(FAILURES))
async def test_failed_fetch_keeps_last_good_keys(mode, idp, ca_file, world, tmp_path, caplog) -> None:
    """A failed fetch keeps the last good keys, counts a failure, logs a short error without the body."""
    config = load_fetched(write_config(tmp_path, world, uri=idp.url(), ca_file=ca_file))
    remote = remote_of(config)
    assert await remote.fetch()
    good = remote.keyset
    plain = JwksServer()  # plain HTTP, serving another key: a redirect there must not be followed
    plain.serve_keys([KEYS["evil"]])
    try:
        _fail_server(mode, idp, plain)
        started = time.monotonic()
        with caplog.at_level(logging.ERROR, logger="authz.jwks"):
            assert not await remote.fetch()
        elapsed = time.monotonic() - started
    finally:
        plain.stop()
    assert remote.keyset is good
    assert dict(remote.results) == {"success": 1, "failure": 1}
    assert isinstance(remote.last_error, str)
    assert FAILURES[mode] in remote.last_error
    assert len(remote.last_error) <= MAX_ERROR_CHARS
    assert remote.last_error.isprintable()
    if mode != "bad-document":  # a parsed JWKS may be quoted (its bogus alg), clipped; a body never
        assert BODY_MARKER not in remote.last_error
    assert plain.total == 0
    logged = [r for r in caplog.records if r.name == "authz.jwks"]
    assert [r.fields["error"] for r in logged] == [remote.last_error]  # type: ignore[attr-defined]
    if mode in ("hang", "trickle"):
        assert FETCH_TIMEOUT * 0.9 <= elapsed < FETCH_TIMEOUT * 2 + 1, elapsed
    assert sync_check(config, remote_request(world, KEYS["k1"])) == ALLOWED


async def test_never_fetched_issuer_is_denied_unavailable(idp, ca_file, world, tmp_path) -> None:
    """Before a good fetch the issuer's tokens are denied issuer_keys_unavailable (503, gRPC 14)."""
    config = load_fetched(write_config(tmp_path, world, uri=idp.url(), ca_file=ca_file))
    remote = remote_of(config)
    assert sync_check(config, remote_request(world, KEYS["k1"])) == UNAVAILABLE
    assert await service_check(config, remote_request(world, KEYS["k1"])) == UNAVAILABLE
    assert idp.total == 0  # the request path never fetches
    idp.mode = "error"
    assert not await remote.fetch()
    assert sync_check(config, remote_request(world, KEYS["k1"])) == UNAVAILABLE
    # Another issuer of the same snapshot is unaffected.
    assert sync_check(config, check_request(token=world.token())) == ALLOWED


@pytest.mark.parametrize("trust", ["other-ca", "system-store"])
async def test_untrusted_server_certificate_is_a_fetch_failure(trust, idp, pki, world, tmp_path) -> None:
    """A server certificate the configured trust does not verify: the fetch fails, no keys, no request."""
    ca_file = pki["other_ca_file"] if trust == "other-ca" else None
    config = load_fetched(write_config(tmp_path, world, uri=idp.url(), ca_file=ca_file))
    remote = remote_of(config)
    assert not await remote.fetch()
    assert remote.keyset is None
    assert dict(remote.results) == {"failure": 1}
    assert "CERTIFICATE_VERIFY_FAILED" in remote.last_error
    assert len(remote.last_error) <= MAX_ERROR_CHARS
    assert idp.total == 0
    assert sync_check(config, remote_request(world, KEYS["k1"])) == UNAVAILABLE


# ------------------------------------------------------------------ configuration


def test_http_jwks_uri_is_rejected_with_its_line(world, tmp_path) -> None:
    """An http:// jwks_uri is a ConfigError naming the file and the jwks_uri line."""
    path = write_config(tmp_path, world, uri="http://127.0.0.1:1/jwks.json", ca_file=None)
    text = path.read_text(encoding="utf-8")
    line = text.splitlines().index("    jwks_uri: http://127.0.0.1:1/jwks.json") + 1
    with pytest.raises(ConfigError) as caught:
        load_fetched(path)
    assert (caught.value.file, caught.value.line) == (str(path), line)
    assert "jwks_uri" in caught.value.reason
    assert "https://" in caught.value.reason


def test_unusable_ca_file_is_a_config_error(world, tmp_path) -> None:
    """A ca_file that holds no PEM certificate is a ConfigError naming it, not an ssl.SSLError."""
    bad = tmp_path / "not-a-ca.pem"
    bad.write_text("this is not PEM\n", encoding="utf-8")
    path = write_config(tmp_path, world, uri="https://127.0.0.1:1/jwks.json", ca_file=bad)
    with pytest.raises(ConfigError) as caught:
        load_fetched(path)
    assert caught.value.file == str(bad)
    assert "CA bundle" in caught.value.reason


async def test_issuer_with_files_and_uri_uses_files_first(idp, ca_file, world, tmp_path) -> None:
    """jwks file plus jwks_uri: file keys need no fetch and win a kid clash; others come from the URL."""
    static = tmp_path / "remote-idp.jwks.json"
    write_jwks(static, public_jwks([KEYS["s1"], KEYS["b-file"]]), private=False)
    idp.serve_keys([KEYS["k1"], KEYS["b-remote"]])
    path = write_config(tmp_path, world, uri=idp.url(), ca_file=ca_file, jwks_file=static)
    config = load_fetched(path)

    assert sync_check(config, remote_request(world, KEYS["s1"])) == ALLOWED
    assert sync_check(config, remote_request(world, KEYS["b-file"])) == ALLOWED
    assert idp.total == 0
    # Not in the files, and the URL not fetched yet: unknown kid (not "unavailable": files exist).
    assert sync_check(config, remote_request(world, KEYS["k1"])) == KID_UNKNOWN
    assert await service_check(config, remote_request(world, KEYS["k1"])) == ALLOWED
    assert idp.total == 1
    # kid "both" is in the file and at the URL: the file's key is the one tried.
    assert sync_check(config, remote_request(world, KEYS["b-remote"])) == (16, 401, "signature_invalid")
    assert sync_check(config, remote_request(world, KEYS["b-file"])) == ALLOWED


# ------------------------------------------------------------------ registry (reloads)


async def test_registry_shares_one_source_across_loads(idp, ca_file, world, tmp_path) -> None:
    """Two loads with the same jwks_uri settings share one source: the second start does not refetch."""
    path = write_config(tmp_path, world, uri=idp.url(), ca_file=ca_file)
    registry = JwksRegistry()
    try:
        first = load_config(path, registry)
        await registry.start(first.jwks, DEADLINE)
        assert idp.total == 1
        second = load_config(path, registry)
        assert remote_of(second) is remote_of(first)
        await registry.start(second.jwks, DEADLINE)
        assert idp.total == 1
        assert sync_check(second, remote_request(world, KEYS["k1"])) == ALLOWED
    finally:
        await registry.stop()


async def test_registry_start_stops_sources_no_longer_wanted(idp, ca_file, world, tmp_path) -> None:
    """A start without a source stops its refresh (and drops it); the wanted one keeps refreshing."""
    fast = {"refresh_interval": 0.2}
    path_a = write_config(tmp_path, world, uri=idp.url("/a"), ca_file=ca_file, issuer=fast, name="a.yaml")
    path_b = write_config(tmp_path, world, uri=idp.url("/b"), ca_file=ca_file, issuer=fast, name="b.yaml")
    registry = JwksRegistry()
    try:
        config_a = load_config(path_a, registry)
        await registry.start(config_a.jwks, DEADLINE)
        await until(lambda: idp.requests["/a"] >= 2, "source a to refresh")
        config_b = load_config(path_b, registry)
        await registry.start(config_b.jwks, DEADLINE)
        a_after, b_after = idp.requests["/a"], idp.requests["/b"]
        await until(lambda: idp.requests["/b"] >= b_after + 3, "source b to refresh")
        assert idp.requests["/a"] <= a_after + 1  # at most one fetch that was already in flight
        assert remote_of(load_config(path_a, registry)) is not remote_of(config_a)  # dropped
    finally:
        await registry.stop()


async def test_registry_new_settings_keep_keys_of_same_uri(idp, ca_file, world, tmp_path) -> None:
    """New settings for the same URL (a reload) start from its last keys: unreachable, still usable."""
    path_a = write_config(tmp_path, world, uri=idp.url(), ca_file=ca_file, name="a.yaml")
    path_b = write_config(
        tmp_path, world, uri=idp.url(), ca_file=ca_file, issuer={"refresh_interval": 301}, name="b.yaml"
    )
    registry = JwksRegistry()
    try:
        config_a = load_config(path_a, registry)
        await registry.start(config_a.jwks, DEADLINE)
        assert remote_of(config_a).keyset is not None
        idp.stop()
        config_b = load_config(path_b, registry)
        assert remote_of(config_b) is not remote_of(config_a)
        await registry.start(config_b.jwks, DEADLINE)
        assert remote_of(config_b).results["failure"] == 1
        assert sync_check(config_b, remote_request(world, KEYS["k1"])) == ALLOWED
    finally:
        await registry.stop()


# ------------------------------------------------------------------ the real server


def _listening_ports(pid: int) -> set[int]:
    """TCP ports ``pid`` listens on (Linux /proc): its socket inodes in LISTEN state."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}", encoding="ascii") as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                if fields[3] == "0A" and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="envoy.service.auth.v3.Authorization")
        return int(stub.Check(request, timeout=5).status)


def _grpc_check(port: int, message: CheckRequest) -> tuple[int, int, str]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            "/envoy.service.auth.v3.Authorization/Check",
            request_serializer=CheckRequest.SerializeToString,
            response_deserializer=CheckResponse.FromString,
        )
        return outcome(call(message, timeout=5))


def _wait(condition: Callable[[], bool], what: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert process.poll() is None, f"server exited while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="finds the port through Linux /proc")
def test_serve_is_not_serving_while_first_fetch_hangs(idp, ca_file, world, tmp_path) -> None:
    """`authz serve`: NOT_SERVING during a hanging first fetch (1 s), then SERVING, issuer unavailable."""
    idp.mode = "hang"
    path = write_config(
        tmp_path,
        world,
        uri=idp.url(),
        ca_file=ca_file,
        issuer={"fetch_timeout": 10},
        server={"jwks_first_fetch_wait": 1, "grace_seconds": 1},
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "authz", "serve", "--config", str(path), "--listen", "127.0.0.1:0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # The first fetch reached the issuer: the gRPC port is bound (it listens before fetching).
        _wait(lambda: idp.total >= 1, "the first fetch", process)
        fetch_started = time.monotonic()
        _wait(lambda: bool(_listening_ports(process.pid)), "a listening port", process)
        (port,) = _listening_ports(process.pid)
        assert _health(port) == health_pb2.HealthCheckResponse.NOT_SERVING

        def serving() -> list[dict[str, Any]]:
            return [json.loads(x) for x in list(lines) if '"msg":"serving"' in x]

        _wait(lambda: bool(serving()), "the serving log line", process)
        # Bounded by jwks_first_fetch_wait (1 s), not by the hanging fetch (fetch_timeout 10 s).
        assert time.monotonic() - fetch_started < 5
        assert serving()[0]["port"] == port
        assert _health(port) == health_pb2.HealthCheckResponse.SERVING

        now = int(time.time())
        claims = {"iat": now, "nbf": now, "exp": now + 300}
        assert _grpc_check(port, remote_request(world, KEYS["k1"], **claims)) == UNAVAILABLE
        assert _grpc_check(port, check_request(token=world.token(world.claims(**claims)))) == ALLOWED
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        idp.stop()  # ends the hanging answer, so the fetch thread lets the process exit
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        reader.join(timeout=10)
        assert process.stderr is not None
        process.stderr.close()
    assert process.returncode == 0, "".join(lines)
    assert "Traceback" not in "".join(lines)


async def test_unknown_kid_of_a_file_issuer_does_not_fetch_other_issuers(
    idp, ca_file, world, tmp_path
) -> None:
    """An unknown kid from an issuer with key files only refetches nobody's jwks_uri."""
    config = load_fetched(write_config(tmp_path, world, uri=idp.url(), ca_file=ca_file))
    assert await remote_of(config).fetch()
    before = idp.total
    stranger = generate_key("ES256", "acme-unknown")
    token = mint(
        world.claims(),
        encryption_key=world.decryption_keys["enc-rsa-oaep-256"],
        signing_key=stranger,
    )
    assert await service_check(config, check_request(token=token)) == (16, 401, "signing_key_unknown")
    assert idp.total == before


async def test_a_hanging_jwks_server_delays_no_check_beyond_its_bound(idp, ca_file, world, tmp_path) -> None:
    """Under a load of checks, with the IdP hanging: unknown-kid checks wait at most the bound, others not at all."""
    wait = 0.3
    path = write_config(
        tmp_path, world, uri=idp.url(), ca_file=ca_file,
        issuer={"min_refetch_interval": 0.01, "fetch_timeout": 10}, server={"jwks_unknown_kid_wait": wait},
    )  # fmt: skip
    config = load_fetched(path)
    assert await remote_of(config).fetch()
    idp.mode = "hang"  # from now on every fetch hangs (until fetch_timeout)
    service = AuthorizationService(SnapshotHolder(config), lambda: NOW)
    unknown = remote_request(world, KEYS["k2"]).SerializeToString()  # a kid the IdP never served
    other = check_request(token=world.token()).SerializeToString()  # acme: keys from a file

    async def timed(data: bytes) -> tuple[float, int]:
        start = time.monotonic()
        response = await service.check(data, None)  # type: ignore[arg-type]
        return time.monotonic() - start, response.status.code

    results = await asyncio.gather(*(timed(unknown if i % 2 else other) for i in range(40)))
    unknown_times = [t for i, (t, _) in enumerate(results) if i % 2]
    other_results = [r for i, r in enumerate(results) if not i % 2]
    assert all(code == 16 for i, (_, code) in enumerate(results) if i % 2)  # signing_key_unknown
    assert all(code == 0 for _, code in other_results)
    # Bounded by jwks_unknown_kid_wait (0.3 s), not by the hang (10 s, fetch_timeout). The 40 checks
    # share one event loop, so on a busy 2-core machine each also waits for the others' crypto:
    # 3 s is generous for that and still far from the hang.
    assert max(unknown_times) < 3.0
    idp.stop()  # ends the hanging answer


async def test_http_door_refetches_for_an_unknown_kid(idp, ca_file, world, tmp_path) -> None:
    """The HTTP door, too, waits (bounded) for a refetch when a token names a new kid of its issuer."""
    from authz.http.door import HttpDoor
    from authz.telemetry.recorder import Telemetry

    config = load_fetched(
        write_config(tmp_path, world, uri=idp.url(), ca_file=ca_file, issuer={"min_refetch_interval": 0.01})
    )
    assert await remote_of(config).fetch()
    idp.serve_keys([KEYS["k1"], KEYS["k2"]])
    await asyncio.sleep(0.05)  # past min_refetch_interval (the first fetch counts against it)
    door = HttpDoor(SnapshotHolder(config), lambda: NOW, Telemetry(), config.http)
    headers = {"host": (REMOTE_HOST,), "authorization": (f"Bearer {remote_token(world, KEYS['k2'])}",)}
    answer = door.answer("GET", "/orders", headers)
    assert isinstance(answer, asyncio.Future)  # the unknown kid sends it to the refetch
    assert (await answer).startswith(b"HTTP/1.1 200 ")
    # A file-only issuer's unknown kid is answered at once, without a refetch.
    stranger = mint(world.claims(), encryption_key=world.decryption_keys["enc-rsa-oaep-256"],
                    signing_key=generate_key("ES256", "acme-unknown"))  # fmt: skip
    at_once = door.answer(
        "GET", "/orders", {"host": ("api.acme.test",), "authorization": (f"Bearer {stranger}",)}
    )
    assert isinstance(at_once, bytes)
    assert at_once.startswith(b"HTTP/1.1 401 ")


async def test_http_door_memo_does_not_outlive_a_removed_signing_key(idp, ca_file, world, tmp_path) -> None:
    """A repeat answered from the HTTP door's memo is denied once a refresh drops its signing key."""
    from authz.http.door import HttpDoor
    from authz.telemetry.recorder import Telemetry

    idp.serve_keys([KEYS["k1"], KEYS["k2"]])
    config = load_fetched(write_config(tmp_path, world, uri=idp.url(), ca_file=ca_file))
    remote = remote_of(config)
    assert await remote.fetch()
    door = HttpDoor(SnapshotHolder(config), lambda: NOW, Telemetry(), config.http)
    raw = [
        (b"host", REMOTE_HOST.encode()),
        (b"authorization", f"Bearer {remote_token(world, KEYS['k2'])}".encode()),
    ]
    for _ in range(2):
        answer = door.answer_raw(b"GET", b"/orders", raw)
        assert isinstance(answer, bytes)
        assert answer.startswith(b"HTTP/1.1 200 ")
    assert door.memo_hits == 1
    idp.serve_keys([KEYS["k1"]])  # the issuer retires k2
    assert await remote.fetch()
    answer = door.answer_raw(b"GET", b"/orders", raw)
    if not isinstance(answer, bytes):  # the unknown kid may be worth a (bounded) refetch
        answer = await answer
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert b'"reason": "signing_key_unknown"' in answer
    assert door.memo_hits == 1


async def test_grpc_door_memo_does_not_outlive_a_removed_signing_key(idp, ca_file, world, tmp_path) -> None:
    """A repeat answered from the gRPC door's memo is denied once a refresh drops its signing key."""
    idp.serve_keys([KEYS["k1"], KEYS["k2"]])
    config = load_fetched(write_config(tmp_path, world, uri=idp.url(), ca_file=ca_file))
    remote = remote_of(config)
    assert await remote.fetch()
    service = AuthorizationService(SnapshotHolder(config), lambda: NOW)
    data = remote_request(world, KEYS["k2"]).SerializeToString()
    for _ in range(2):
        assert outcome(await service.check(data, None)) == ALLOWED
    assert service.memo_hits == 1
    idp.serve_keys([KEYS["k1"]])  # the issuer retires k2
    assert await remote.fetch()
    assert outcome(await service.check(data, None)) == KID_UNKNOWN
    assert service.memo_hits == 1


# ------------------------------------------------------------------ refetches and the token cache
#
# A cached token stays a hit while its issuer serves the very key that verified it: a fetch of
# the same keys (scheduled, or forced by a made-up kid) or one that adds keys retires nothing;
# a removed or replaced key retires exactly the tokens it verified. Hits are counted by the
# snapshot's cache (config.snapshot.cache.hits): a hit is a check that decrypted and verified nothing.


def _same_keys_reshuffled(keys: list[JWK]) -> bytes:
    """The public JWKS of ``keys``, keys and members in reverse order: other bytes, same content."""
    entries = public_jwks(keys)["keys"]
    return json.dumps({"keys": [dict(reversed(list(e.items()))) for e in reversed(entries)]}).encode()


@pytest.mark.parametrize("how", ["refetch", "scheduled"])
async def test_a_fetch_of_the_same_keys_keeps_cached_tokens(how, idp, ca_file, world, tmp_path) -> None:
    """Refetched (or refreshed on schedule), the same keys are the same key set: cached tokens stay hits."""
    idp.serve_keys([KEYS["k1"], KEYS["k2"]])
    interval = 0.1 if how == "scheduled" else 300
    config = load_fetched(
        write_config(tmp_path, world, uri=idp.url(), ca_file=ca_file, issuer={"refresh_interval": interval})
    )
    remote = remote_of(config)
    assert await remote.fetch()
    first = remote.keyset
    request = remote_request(world, KEYS["k1"])
    assert sync_check(config, request) == ALLOWED
    assert (config.snapshot.cache.hits, config.snapshot.cache.misses) == (0, 1)
    idp.document = _same_keys_reshuffled([KEYS["k1"], KEYS["k2"]])
    if how == "refetch":
        for _ in range(3):
            assert await remote.fetch()
    else:
        remote.start()
        try:
            await until(lambda: remote.results["success"] >= 4, "three scheduled refreshes")
        finally:
            await remote.stop()
    assert remote.keyset is first
    for _ in range(3):
        assert sync_check(config, request) == ALLOWED
    assert (config.snapshot.cache.hits, config.snapshot.cache.misses) == (3, 1)


async def test_a_fetch_that_adds_a_key_keeps_cached_tokens(idp, ca_file, world, tmp_path) -> None:
    """The issuer adds k2: tokens verified by k1 stay hits; k2's tokens are verified and allowed."""
    config = load_fetched(write_config(tmp_path, world, uri=idp.url(), ca_file=ca_file))
    remote = remote_of(config)
    assert await remote.fetch()
    first = remote.keyset
    old = remote_request(world, KEYS["k1"])
    assert sync_check(config, old) == ALLOWED
    idp.serve_keys([KEYS["k2"], KEYS["k1"]])
    assert await remote.fetch()
    assert remote.keyset is not first
    assert remote.keyset.by_kid["k1"] is first.by_kid["k1"]  # the unchanged key is the same object
    assert sync_check(config, old) == ALLOWED
    assert sync_check(config, old) == ALLOWED
    assert (config.snapshot.cache.hits, config.snapshot.cache.misses) == (2, 1)
    assert sync_check(config, remote_request(world, KEYS["k2"])) == ALLOWED
    assert (config.snapshot.cache.hits, config.snapshot.cache.misses) == (2, 2)


@pytest.mark.parametrize("change", ["removed", "replaced", "member-added"])
async def test_a_removed_or_changed_key_retires_the_tokens_it_verified(
    change, idp, ca_file, world, tmp_path
) -> None:
    """k2 removed, replaced under its kid, or re-served with one member more: k2's cached tokens are
    decrypted and verified again (denied if k2's key is gone); k1's stay hits."""
    idp.serve_keys([KEYS["k1"], KEYS["k2"]])
    config = load_fetched(write_config(tmp_path, world, uri=idp.url(), ca_file=ca_file))
    remote = remote_of(config)
    assert await remote.fetch()
    by_k1, by_k2 = remote_request(world, KEYS["k1"]), remote_request(world, KEYS["k2"])
    assert sync_check(config, by_k1) == sync_check(config, by_k2) == ALLOWED
    assert (config.snapshot.cache.hits, config.snapshot.cache.misses) == (0, 2)
    new_k2 = generate_key("ES256", "k2")
    if change == "removed":
        idp.serve_keys([KEYS["k1"]])
    elif change == "replaced":
        idp.serve_keys([KEYS["k1"], new_k2])
    else:  # the same key material, with "key_ops" added: content compared as a whole
        document = public_jwks([KEYS["k1"], KEYS["k2"]])
        document["keys"][1]["key_ops"] = ["verify"]
        idp.document = json.dumps(document).encode()
    assert await remote.fetch()
    expected = {
        "removed": KID_UNKNOWN,
        "replaced": (16, 401, "signature_invalid"),
        "member-added": ALLOWED,
    }[change]
    assert sync_check(config, by_k2) == expected  # a miss: verified again
    assert (config.snapshot.cache.hits, config.snapshot.cache.misses) == (0, 3)
    assert sync_check(config, by_k1) == ALLOWED  # a hit
    assert (config.snapshot.cache.hits, config.snapshot.cache.misses) == (1, 3)
    if change == "replaced":
        assert sync_check(config, remote_request(world, new_k2)) == ALLOWED


async def test_made_up_kids_forcing_refetches_do_not_make_cached_tokens_verify_again(
    idp, ca_file, world, tmp_path
) -> None:
    """The attack of issue 19 (5): tokens encrypted to our public key with made-up inner kids force
    refetches of an unchanged JWKS; a cached valid token stays a hit on both doors."""
    from authz.http.door import HttpDoor
    from authz.telemetry.recorder import Telemetry

    window = 0.05
    config = load_fetched(
        write_config(tmp_path, world, uri=idp.url(), ca_file=ca_file, issuer={"min_refetch_interval": window})
    )
    remote = remote_of(config)
    assert await remote.fetch()
    valid = remote_request(world, KEYS["k1"])
    assert await service_check(config, valid) == ALLOWED  # verified, cached
    door = HttpDoor(SnapshotHolder(config), lambda: NOW, Telemetry(), config.http)
    raw = [
        (b"host", REMOTE_HOST.encode()),
        (b"authorization", f"Bearer {remote_token(world, KEYS['k1'])}".encode()),
    ]
    assert door.answer_raw(b"GET", b"/orders", raw).startswith(b"HTTP/1.1 200 ")  # type: ignore[union-attr]
    hits, misses, fetches = config.snapshot.cache.hits, config.snapshot.cache.misses, idp.total
    rounds = 4
    for number in range(rounds):
        # Past the refetch rate limit (a rate limit is time): each forged token gets its fetch.
        await asyncio.sleep(window * 1.5)
        forged = remote_request(world, generate_key("ES256", f"made-up-{number}"))
        assert await service_check(config, forged) == KID_UNKNOWN
        assert await service_check(config, valid) == ALLOWED
        answer = door.answer_raw(b"GET", b"/orders", raw)
        assert isinstance(answer, bytes)  # from the memo: no refetch, no verification
        assert answer.startswith(b"HTTP/1.1 200 ")
    assert idp.total == fetches + rounds  # every forged token did force a fetch
    # The valid token: a hit each round on the gRPC door, and each memo answer counts a hit;
    # the only misses are the forged tokens (twice each: before and after their refetch).
    assert config.snapshot.cache.hits == hits + 2 * rounds
    assert config.snapshot.cache.misses == misses + 2 * rounds
    assert door.memo_hits == rounds
