"""Self-tests of the Envoy end-to-end harness; no authz server is involved."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

import pytest

from testkit.envoy import (
    EXT_AUTHZ_FILTER,
    HEALTH_PATH,
    EchoUpstream,
    EnvoyError,
    EnvoyProcess,
    WsgiUpstream,
    envoy_config,
    http_request,
    raw_request,
    refused_port,
    run_envoy,
    validate_config,
)

pytestmark = pytest.mark.envoy

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

OPEN_PREFIX = "/open/"
TENANTS = {"api.acme.test": "acme", "api.globex.test": "globex", "plain.test": None}


@pytest.fixture(scope="module")
def upstream() -> Iterator[EchoUpstream]:
    """One echo upstream for the module."""
    with EchoUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def dead_authz_port() -> Iterator[int]:
    """A port nothing listens on, held bound so nothing can."""
    with refused_port() as port:
        yield port


@pytest.fixture(scope="module")
def config(upstream: EchoUpstream, dead_authz_port: int) -> dict[str, Any]:
    """The module's Envoy config: tenant vhosts, test-only open prefix, dead authz."""
    return envoy_config(
        authz_port=dead_authz_port,
        upstream_port=upstream.port,
        tenants_by_domain=TENANTS,
        unprotected_prefixes=[OPEN_PREFIX],
    )


@pytest.fixture(scope="module")
def envoy(config: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvoyProcess]:
    """One Envoy for the module."""
    with run_envoy(config, tmp_path=tmp_path_factory.mktemp("envoy")) as proc:
        yield proc


@pytest.fixture(autouse=True)
def _clean_upstream(upstream: EchoUpstream) -> None:
    upstream.clear()


def _per_route(route: dict[str, Any]) -> dict[str, Any]:
    cfg: dict[str, Any] = route.get("typed_per_filter_config", {}).get(EXT_AUTHZ_FILTER, {})
    return cfg


def test_config_maps_domains_to_tenants(config: dict[str, Any]) -> None:
    """Tenant vhosts carry context_extensions; unmapped and default ones carry none."""
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    vhosts = hcm["typed_config"]["route_config"]["virtual_hosts"]
    by_domain = {vh["domains"][0]: vh for vh in vhosts}
    assert by_domain["api.acme.test"]["domains"] == ["api.acme.test", "api.acme.test:*"]
    assert set(by_domain) == {"api.acme.test", "api.globex.test", "plain.test", "*"}
    for domain, tenant in [*TENANTS.items(), ("*", None)]:
        routes = by_domain[domain]["routes"]
        assert routes[0]["match"] == {"path": HEALTH_PATH}
        assert _per_route(routes[0])["disabled"] is True
        protected = _per_route(routes[-1])
        expected = {"tenant": tenant} if tenant else None
        assert protected.get("check_settings", {}).get("context_extensions") == expected
    filters = hcm["typed_config"]["http_filters"]
    assert [f["name"] for f in filters] == [
        EXT_AUTHZ_FILTER,
        "envoy.filters.http.router",
    ]
    ext_authz = filters[0]["typed_config"]
    assert ext_authz["failure_mode_allow"] is False
    assert ext_authz["encode_raw_headers"] is True


def test_generated_config_passes_envoy_validate(config: dict[str, Any], tmp_path: Path) -> None:
    """The generated bootstrap passes `envoy --mode validate`."""
    assert validate_config(config, tmp_path=tmp_path).is_file()


@pytest.mark.parametrize(
    "options",
    [
        {"encode_raw_headers": False, "include_peer_certificate": False},
        {"tenants_by_domain": {"*": "solo"}, "listen_port": 0, "admin_port": 0},
        {"ext_authz_overrides": {"with_request_body": {"max_request_bytes": 1024}}},
        {"hcm_overrides": {"use_remote_address": True}, "authz_timeout": "0.5s"},
    ],
    ids=["plain-headers", "catch-all-tenant", "with-body", "overrides"],
)
def test_config_options_pass_envoy_validate(options: dict[str, Any], tmp_path: Path) -> None:
    """Every envoy_config option yields a bootstrap Envoy accepts."""
    config = envoy_config(authz_port=1, upstream_port=2, **options)
    assert validate_config(config, tmp_path=tmp_path).is_file()


def test_startup_failure_raises_with_envoy_output(upstream: EchoUpstream, tmp_path: Path) -> None:
    """An Envoy that cannot start (listener port taken) fails fast with its output."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = envoy_config(authz_port=1, upstream_port=upstream.port, listen_port=port)
        with (
            pytest.raises(EnvoyError, match="envoy output"),
            run_envoy(config, tmp_path=tmp_path, ready_timeout=10),
        ):
            pytest.fail("run_envoy yielded although the listener port is taken")


def test_invalid_config_is_rejected(config: dict[str, Any], tmp_path: Path) -> None:
    """Validation is real: an unknown field is rejected with Envoy's message."""
    broken = {**config, "no_such_field": 1}
    with pytest.raises(EnvoyError, match="no_such_field"):
        validate_config(broken, tmp_path=tmp_path)


def test_health_route_is_answered_by_envoy(envoy: EnvoyProcess, upstream: EchoUpstream) -> None:
    """/envoy-health (ext_authz disabled) gets a direct 200 from Envoy on any host."""
    for host in [*TENANTS, "unknown.example"]:
        resp = http_request(envoy.port, "GET", HEALTH_PATH, host=host)
        assert (resp.status, resp.body, resp.header("server")) == (
            200,
            b"ok\n",
            "envoy",
        )
    assert envoy.admin("/ready").strip() == "LIVE"
    assert upstream.requests == []


@pytest.mark.parametrize("host", ["api.acme.test", "api.acme.test:8080", "plain.test", "other"])
def test_protected_route_fails_closed_without_authz(
    envoy: EnvoyProcess, upstream: EchoUpstream, host: str
) -> None:
    """With no authz server a protected request is denied 403 and never forwarded."""
    before = envoy.stats(r"^http\.ingress_http\.ext_authz\.error$")
    resp = http_request(
        envoy.port,
        "POST",
        "/orders?x=1",
        host=host,
        headers=[
            ("Authorization", "Bearer forged"),
            ("X-Tenant", "acme"),
            ("X-Tenant", "globex"),
        ],
        body=b'{"a": 1}',
    )
    assert resp.status == 403
    assert upstream.requests == []
    after = envoy.stats(r"^http\.ingress_http\.ext_authz\.error$")
    key = "http.ingress_http.ext_authz.error"
    assert after[key] == before.get(key, 0) + 1


def test_unprotected_route_reaches_echo_upstream(envoy: EnvoyProcess, upstream: EchoUpstream) -> None:
    """An ext_authz-disabled test route reaches the upstream, which echoes headers."""
    resp = http_request(
        envoy.port,
        "PUT",
        f"{OPEN_PREFIX}item?q=1",
        host="api.acme.test",
        headers=[("X-Dup", "one"), ("x-dup", "two"), ("X-Single", "v")],
        body=b"hello",
    )
    assert resp.status == 200
    echoed = resp.json()
    assert echoed["method"] == "PUT"
    assert echoed["path"] == f"{OPEN_PREFIX}item?q=1"
    assert echoed["body"] == "hello"
    assert echoed["headers"]["host"] == ["api.acme.test"]
    assert echoed["headers"]["x-dup"] == ["one", "two"]
    assert echoed["headers"]["x-single"] == ["v"]
    [seen] = upstream.requests
    assert (seen.method, seen.path, seen.body) == (
        "PUT",
        f"{OPEN_PREFIX}item?q=1",
        b"hello",
    )
    assert seen.header("X-Single") == "v"


def test_raw_request_reaches_envoy(envoy: EnvoyProcess) -> None:
    """raw_request sends bytes verbatim and parses Envoy's response."""
    resp = raw_request(
        envoy.port,
        f"GET {HEALTH_PATH} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
    )
    assert (resp.status, resp.body) == (200, b"ok\n")
    no_host = raw_request(envoy.port, b"GET / HTTP/1.1\r\n\r\n")
    assert no_host.status == 400
    assert envoy.url(HEALTH_PATH) == f"http://127.0.0.1:{envoy.port}{HEALTH_PATH}"


@pytest.mark.parametrize(
    ("request_head", "authority"),
    [
        (
            "GET /open/a HTTP/1.1\r\nHost: api.acme.test\r\nHost: evil\r\n",
            "api.acme.test,evil",
        ),
        ("GET http://evil/open/a HTTP/1.1\r\nHost: api.acme.test\r\n", "evil"),
    ],
    ids=["duplicate-host-joined", "absolute-form-wins"],
)
def test_envoy_host_normalisation(
    envoy: EnvoyProcess, upstream: EchoUpstream, request_head: str, authority: str
) -> None:
    """Pins how this Envoy turns odd Host input into the authority the server sees."""
    resp = raw_request(envoy.port, f"{request_head}\r\n".encode())
    assert resp.status == 200
    assert resp.json()["headers"]["host"] == [authority]
    assert [r.header("host") for r in upstream.requests] == [authority]


def test_wsgi_upstream_reads_headers_as_cgi_does() -> None:
    """The premise of the identity-spelling attack: ``x-authz-subject`` and ``x_authz_subject`` are
    one key for a WSGI application, values joined in arrival order; other separators stay apart."""
    with WsgiUpstream() as upstream:
        headers = [("x_authz_subject", "forged"), ("X-Authz-Subject", "user-1"), ("x.authz.tenant", "t")]
        reply = http_request(upstream.port, "GET", "/p", headers=headers)
        assert reply.status == 200
        (seen,) = upstream.requests
        assert (seen.method, seen.path) == ("GET", "/p")
        assert seen.starting("HTTP_X_AUTHZ_") == {"HTTP_X_AUTHZ_SUBJECT": "forged,user-1"}
        assert seen.environ["HTTP_X.AUTHZ.TENANT"] == "t"
        assert reply.json() == seen.environ
