"""The README's quick start, as written: `authz demo` + `authz serve` + deploy/envoy/demo.yaml."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from testkit.dpop import NO_TOKEN_CHALLENGE
from testkit.envoy import EnvoyProcess, free_port, http_request, run_envoy
from testkit.quickstart import demo_proof, demo_token, wait_serving

pytestmark = pytest.mark.envoy

REPO = Path(__file__).resolve().parents[2]
DEMO_ENVOY = REPO / "deploy" / "envoy" / "demo.yaml"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, EnvoyProcess]]:
    """The demo folder, a served demo config and Envoy running deploy/envoy/demo.yaml."""
    root = tmp_path_factory.mktemp("quickstart")
    folder = root / "demo"
    port = free_port()
    authz = [sys.executable, "-m", "authz"]
    subprocess.run(
        [*authz, "demo", "--dir", str(folder), "--listen", f"127.0.0.1:{port}"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    # The demo's admin port is fixed (9002): a test must not collide with a running demo.
    server = subprocess.Popen(
        [*authz, "serve", "--config", str(folder / "config.yaml"), "--admin-listen", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_serving(port, server)
        config: dict[str, Any] = yaml.safe_load(DEMO_ENVOY.read_text())
        # The committed ports, moved so that tests never clash with a running demo.
        config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = 0
        config["admin"]["address"]["socket_address"]["port_value"] = 0
        endpoint = config["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]
        endpoint["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"] = port
        with run_envoy(config, tmp_path=root) as envoy:
            yield folder, envoy
    finally:
        server.terminate()
        server.wait(timeout=15)


def test_demo_envoy_config_is_the_committed_one_and_valid() -> None:
    """deploy/envoy/demo.yaml calls authz on 127.0.0.1:9001, the port `make run` serves."""
    config = yaml.safe_load(DEMO_ENVOY.read_text())
    cluster = config["static_resources"]["clusters"][0]
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "127.0.0.1", "port_value": 9001}
    ext_authz = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    filters = ext_authz["typed_config"]["http_filters"]
    assert filters[0]["typed_config"]["failure_mode_allow"] is False


def test_quickstart_allowed_request_shows_identity(demo: tuple[Path, EnvoyProcess]) -> None:
    """A demo token with orders:read passes Envoy and the identity headers reach the upstream."""
    folder, envoy = demo
    token = demo_token(folder, "--scope", "orders:read")
    reply = http_request(
        envoy.port,
        "GET",
        "/orders",
        host="api.acme.test",
        headers={"authorization": f"Bearer {token}", "x-authz-subject": "forged"},
    )
    assert reply.status == 200
    assert reply.header("x-seen-tenant") == "acme"
    assert reply.header("x-seen-subject") == "demo-user"
    assert reply.header("x-seen-scopes") == "orders:read"


def test_quickstart_denials(demo: tuple[Path, EnvoyProcess]) -> None:
    """No token is a 401 with the bearer challenge; /admin without the role is a 403."""
    folder, envoy = demo
    missing = http_request(envoy.port, "GET", "/orders", host="api.acme.test")
    assert missing.status == 401
    assert missing.header("www-authenticate") == NO_TOKEN_CHALLENGE
    assert missing.json()["reason"] == "token_missing"
    token = demo_token(folder, "--scope", "orders:read")
    forbidden = http_request(
        envoy.port, "GET", "/admin/users", host="api.acme.test", headers={"authorization": f"Bearer {token}"}
    )
    assert forbidden.status == 403
    assert forbidden.json()["reason"] == "role_missing"


def test_quickstart_dpop_request(demo: tuple[Path, EnvoyProcess]) -> None:
    """The README's DPoP request: a token bound to the demo client's key, a fresh proof for the URL
    Envoy sees (http, Host api.acme.test); the same proof again is a replay."""
    folder, envoy = demo
    client = str(folder / "keys" / "client-dpop.private.jwks.json")
    token = demo_token(folder, "--scope", "orders:read", "--dpop-key", client)
    proof = demo_proof(folder, "--method", "GET", "--url", "http://api.acme.test/orders", "--token", token)
    headers = {"authorization": f"DPoP {token}", "dpop": proof}
    reply = http_request(envoy.port, "GET", "/orders", host="api.acme.test", headers=headers)
    assert reply.status == 200, reply
    assert reply.header("x-seen-subject") == "demo-user"
    again = http_request(envoy.port, "GET", "/orders", host="api.acme.test", headers=headers)
    assert (again.status, again.json()["reason"]) == (401, "dpop_proof_replayed")
    bearer = http_request(
        envoy.port, "GET", "/orders", host="api.acme.test", headers={"authorization": f"Bearer {token}"}
    )
    assert (bearer.status, bearer.json()["reason"]) == (401, "dpop_proof_missing")
