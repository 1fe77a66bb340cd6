"""Tracing for real: the server process exports OTLP/gRPC to a real receiver, alone and behind Envoy.

The server is ``python -m authz serve`` configured only through ``OTEL_*``
environment variables; its port is read from the JSON "serving" line on
stderr. Envoy runs its OpenTelemetry tracer (``envoy.tracers.opentelemetry``)
exporting to the same receiver, so one HTTP request yields one trace with
Envoy's spans and ours. Tokens are minted for the real clock.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.trace.v1 import trace_pb2

from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from authz.telemetry.tracing import CHECK_SPAN
from testkit.envoy import EchoUpstream, envoy_config, http_request, run_envoy
from testkit.otlp import OtlpReceiver, ReceivedSpan
from testkit.processes import ServeProcess
from testkit.world import CONFIG, World, check_request

pytestmark = pytest.mark.envoy

SERVICE_NAME = "authz-otel-under-test"
START_TIMEOUT = 30.0
RPC_TIMEOUT = 10.0
SPAN_TIMEOUT = 15.0
STEPS = ("decrypt", "verify", "policy")
CHECK_METHOD = "/envoy.service.auth.v3.Authorization/Check"
SERVER = trace_pb2.Span.SpanKind.SPAN_KIND_SERVER
CLIENT = trace_pb2.Span.SpanKind.SPAN_KIND_CLIENT


def new_ids() -> tuple[str, str]:
    """A fresh (trace id, span id) in hex, as a client would make them."""
    return secrets.token_hex(16), secrets.token_hex(8)


def real_clock_token(world: World, **claims: Any) -> str:
    now = int(time.time())
    return world.token(world.claims(iat=now, nbf=now, exp=now + 300, **claims))


# ------------------------------------------------------------------ the server process


@dataclass
class AuthzProcess:
    """A ``python -m authz serve`` subprocess and the JSON lines it wrote to stderr."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    serving: dict[str, Any] = field(default_factory=dict)

    @property
    def port(self) -> int:
        port: int = self.serving["port"]
        return port

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.lines) if line.startswith("{")]

    def check(self, message: CheckRequest, metadata: tuple[tuple[str, str], ...] = ()) -> CheckResponse:
        """One Check call over a real gRPC channel, with the given metadata."""
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            call = channel.unary_unary(
                CHECK_METHOD,
                request_serializer=CheckRequest.SerializeToString,
                response_deserializer=CheckResponse.FromString,
            )
            response: CheckResponse = call(message, metadata=metadata, timeout=RPC_TIMEOUT)
            return response


def otel_env(receiver: OtlpReceiver, **extra: str) -> dict[str, str]:
    """The environment of the server: ours without any OTEL_*, plus the receiver's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        PYTHONUNBUFFERED="1",
        OTEL_SERVICE_NAME=SERVICE_NAME,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def authz_process(world: World, folder: Path, env: Mapping[str, str]) -> Iterator[AuthzProcess]:
    """Start the server on 127.0.0.1:0, wait (bounded) for its "serving" line, kill it at the end."""
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "serve.yaml"
    config_path.write_text(
        CONFIG.replace("keys/", f"{world.root}/keys/") + "server:\n  grace_seconds: 2\n", encoding="utf-8"
    )
    running = ServeProcess.start(config_path, ["--listen", "127.0.0.1:0"], env=env)
    try:
        serving = running.wait_for(lambda r: r["msg"] == "serving", "the serving line", START_TIMEOUT)
        served = AuthzProcess(running.process, running.raw, serving)
        assert served.serving["tracing"] is True
        yield served
    finally:
        running.stop()


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def traced(world: World, receiver: OtlpReceiver, tmp_path_factory) -> Iterator[AuthzProcess]:
    """The server exporting to the receiver every 100 ms."""
    with authz_process(world, tmp_path_factory.mktemp("traced"), otel_env(receiver)) as served:
        yield served


def by_name(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    matching = [s for s in spans if s.name == name]
    assert len(matching) == 1, [s.name for s in spans]
    return matching[0]


# ------------------------------------------------------------------ the process alone


def test_process_exports_check_span_to_receiver(traced: AuthzProcess, receiver, world: World) -> None:
    """OTEL_* only: the Check span reaches the receiver in the metadata's trace, under its parent span."""
    trace_id, parent_id = new_ids()
    response = traced.check(
        check_request(token=real_clock_token(world)), (("traceparent", f"00-{trace_id}-{parent_id}-01"),)
    )
    assert response.status.code == 0
    spans = receiver.wait_for_trace(trace_id, names={CHECK_SPAN, *STEPS}, timeout=SPAN_TIMEOUT)
    check = by_name(spans, CHECK_SPAN)
    assert check.parent_span_id == parent_id
    assert check.kind == SERVER
    assert check.service_name == SERVICE_NAME
    assert check.scope == "envoy-jwe-authz"
    assert check.attributes["authz.decision"] == "allow"
    assert check.attributes["authz.tenant"] == "acme"
    assert check.attributes["rpc.method"] == "Check"
    for step in STEPS:
        child = by_name(spans, step)
        assert child.parent_span_id == check.span_id
        assert child.service_name == SERVICE_NAME


def test_process_deny_span_and_new_root(traced: AuthzProcess, receiver, world: World) -> None:
    """A deny without trace context: a new root Check span with the reason, named by the decision log."""
    request_id = f"req-{secrets.token_hex(6)}"
    response = traced.check(check_request(path="/admin/x", request_id=request_id))
    assert response.denied_response.status.code == 401
    deadline = time.monotonic() + SPAN_TIMEOUT
    while not (logged := [r for r in traced.records() if r.get("request_id") == request_id]):
        assert time.monotonic() < deadline, "no decision line"
        time.sleep(0.02)
    trace_id = logged[0]["trace_id"]
    assert trace_id
    check = by_name(receiver.wait_for_trace(trace_id, names={CHECK_SPAN}, timeout=SPAN_TIMEOUT), CHECK_SPAN)
    assert check.parent_span_id == ""
    assert check.attributes["authz.reason"] == "token_missing"
    assert check.attributes["authz.decision"] == "deny"
    assert check.status_code == trace_pb2.Status.StatusCode.STATUS_CODE_UNSET


def test_sigterm_flushes_the_batch(world: World, receiver, tmp_path) -> None:
    """With a one-minute batch delay, spans are held until SIGTERM flushes them before exit."""
    env = otel_env(receiver, OTEL_BSP_SCHEDULE_DELAY="60000")
    with authz_process(world, tmp_path / "flush", env) as served:
        trace_id, parent_id = new_ids()
        served.check(
            check_request(token=real_clock_token(world)), (("traceparent", f"00-{trace_id}-{parent_id}-01"),)
        )
        time.sleep(0.5)
        assert receiver.spans(trace_id) == [], "exported before the batch delay: the flush is not shown"
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=15) == 0
        spans = receiver.wait_for_trace(trace_id, names={CHECK_SPAN, *STEPS}, timeout=5)
        assert by_name(spans, CHECK_SPAN).parent_span_id == parent_id


# ------------------------------------------------------------------ behind Envoy


def tracing_envoy_config(authz_port: int, upstream_port: int, otlp_port: int) -> dict[str, Any]:
    """The harness config plus Envoy's OpenTelemetry tracer exporting to the receiver every 100 ms."""
    config = envoy_config(
        authz_port=authz_port,
        upstream_port=upstream_port,
        hcm_overrides={
            "tracing": {
                "random_sampling": {"value": 100},
                "provider": {
                    "name": "envoy.tracers.opentelemetry",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                        "grpc_service": {"envoy_grpc": {"cluster_name": "otlp"}, "timeout": "1s"},
                        "service_name": "envoy",
                    },
                },
            }
        },
    )
    options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    config["static_resources"]["clusters"].append(
        {
            "name": "otlp",
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": "otlp",
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {"address": "127.0.0.1", "port_value": otlp_port}
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
            "typed_extension_protocol_options": {
                options: {
                    "@type": f"type.googleapis.com/{options}",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            },
        }
    )
    # Envoy's OpenTelemetry tracer flushes every 5 s by default; the runtime key shortens that.
    config["layered_runtime"] = {
        "layers": [{"name": "static", "static_layer": {"tracing.opentelemetry.flush_interval_ms": 100}}]
    }
    return config


def test_envoy_and_check_spans_share_one_trace(
    traced: AuthzProcess, receiver: OtlpReceiver, world: World, tmp_path
) -> None:
    """Through Envoy: its spans and our Check span in the client's trace, ours under its ext_authz span."""
    trace_id, client_span = new_ids()
    with EchoUpstream() as upstream:
        config = tracing_envoy_config(traced.port, upstream.port, receiver.port)
        with run_envoy(config, tmp_path=tmp_path) as envoy:
            response = http_request(
                envoy.port,
                "GET",
                "/orders",
                host="api.acme.test",
                headers={
                    "authorization": f"Bearer {real_clock_token(world)}",
                    "traceparent": f"00-{trace_id}-{client_span}-01",
                },
            )
            assert response.status == 200, response.body

            def complete(spans: list[ReceivedSpan]) -> bool:
                mine = [s for s in spans if s.trace_id == trace_id]
                names = {s.name for s in mine if s.service_name == SERVICE_NAME}
                downstream = [s for s in mine if s.parent_span_id == client_span]
                ext_authz = [s for s in mine if _is_ext_authz_client(s)]
                return {CHECK_SPAN, *STEPS} <= names and bool(downstream) and bool(ext_authz)

            receiver.wait_until(complete, timeout=SPAN_TIMEOUT)
            spans = receiver.spans(trace_id)
            envoy_logs = envoy.logs()
    envoy_spans = [s for s in spans if s.service_name == "envoy"]
    ours = [s for s in spans if s.service_name == SERVICE_NAME]
    (ext_authz,) = [s for s in envoy_spans if _is_ext_authz_client(s)]
    check = by_name(ours, CHECK_SPAN)
    assert check.parent_span_id == ext_authz.span_id, (ext_authz, envoy_logs)
    assert ext_authz.kind == CLIENT
    assert check.kind == SERVER
    assert check.attributes["authz.decision"] == "allow"
    # Envoy's downstream span continues the client's trace; the ext_authz span hangs below it.
    (downstream,) = [s for s in envoy_spans if s.parent_span_id == client_span]
    assert downstream.kind == SERVER
    assert ext_authz.parent_span_id == downstream.span_id
    assert {s.parent_span_id for s in ours if s.name in STEPS} == {check.span_id}


def _is_ext_authz_client(span: ReceivedSpan) -> bool:
    """Envoy's gRPC client span of the Check call (named after the method, "async ... egress")."""
    return span.service_name == "envoy" and "envoy.service.auth.v3.Authorization.Check" in span.name
