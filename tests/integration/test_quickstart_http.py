"""The HTTP-door quick start, as deploy/envoy/demo-http.yaml's header says: `authz demo`, the
path prefix appended to its config, `authz serve --http-listen`, and Envoy on demo-http.yaml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from testkit.dpop import NO_TOKEN_CHALLENGE
from testkit.envoy import free_port, http_request, run_envoy
from testkit.quickstart import demo_token, wait_serving

pytestmark = pytest.mark.envoy

REPO = Path(__file__).resolve().parents[2]
DEMO_HTTP_ENVOY = REPO / "deploy" / "envoy" / "demo-http.yaml"


def test_quickstart_through_the_http_door(tmp_path: Path) -> None:
    """Through Envoy's http_service and authz's HTTP door: 200 with the identity, 401, 403."""
    config: dict[str, Any] = yaml.safe_load(DEMO_HTTP_ENVOY.read_text())
    resources = config["static_resources"]
    hcm = resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    prefix = hcm["http_filters"][0]["typed_config"]["http_service"]["path_prefix"]

    folder = tmp_path / "demo"
    grpc_port, http_port = free_port(), free_port()
    authz = [sys.executable, "-m", "authz"]
    subprocess.run(
        [*authz, "demo", "--dir", str(folder), "--listen", f"127.0.0.1:{grpc_port}"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert f"path_prefix: {prefix}" in (folder / "config.yaml").read_text()  # the demo config matches
    server = subprocess.Popen(
        [*authz, "serve", "--config", str(folder / "config.yaml"),
         "--http-listen", f"127.0.0.1:{http_port}", "--admin-listen", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_serving(grpc_port, server)  # SERVING once the config is installed: the door has it too
        # The committed ports, moved so that the test never clashes with a running demo.
        resources["listeners"][0]["address"]["socket_address"]["port_value"] = 0
        config["admin"]["address"]["socket_address"]["port_value"] = 0
        endpoint = resources["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
        endpoint["endpoint"]["address"]["socket_address"]["port_value"] = http_port
        with run_envoy(config, tmp_path=tmp_path) as envoy:
            token = demo_token(folder, "--scope", "orders:read")
            allowed = http_request(
                envoy.port,
                "GET",
                "/orders",
                host="api.acme.test",
                headers={"authorization": f"Bearer {token}", "x-authz-subject": "forged"},
            )
            assert allowed.status == 200, allowed
            assert allowed.header("x-seen-tenant") == "acme"
            assert allowed.header("x-seen-subject") == "demo-user"  # authz's, not the client's
            assert allowed.header("x-seen-scopes") == "orders:read"

            missing = http_request(envoy.port, "GET", "/orders", host="api.acme.test")
            assert missing.status == 401
            assert missing.header("www-authenticate") == NO_TOKEN_CHALLENGE
            assert missing.header("cache-control") == "no-store"
            assert missing.json()["reason"] == "token_missing"

            forbidden = http_request(
                envoy.port,
                "GET",
                "/admin/users",
                host="api.acme.test",
                headers={"authorization": f"Bearer {token}"},
            )
            assert forbidden.status == 403
            assert forbidden.json()["reason"] == "role_missing"
    finally:
        server.terminate()
        server.wait(timeout=15)
