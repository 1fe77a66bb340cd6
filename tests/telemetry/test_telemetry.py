"""Telemetry of the Check handler: spans (parents, attributes, status), decision log, OTEL_* set-up.

Spans are collected with the SDK's ``InMemorySpanExporter`` behind a
``SimpleSpanProcessor`` (exported synchronously when a span ends). The handler
is the real ``AuthorizationService.check``; its gRPC context is a plain holder
of invocation metadata, the only part of the context the handler reads.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from authz.config import Config, SnapshotHolder, load_config
from authz.errors import AuthzError
from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from authz.grpc.servicer import AuthorizationService
from authz.telemetry.logs import JsonFormatter, JsonHandler, direct_sink
from authz.telemetry.recorder import Telemetry
from authz.telemetry.tracing import CHECK_SPAN, exporter_from_env, tracer_provider_from_env
from testkit.fakes import ServicerContext
from testkit.world import CONFIG, NOW, World, check_request

STEPS = ("decrypt", "verify", "policy")
# Claim values that must never reach a span or a log line (the subject only when enabled).
SUBJECT = "subject-9c2f41d7e0"
EMAIL = "alice.9c2f41d7@example.test"
DEPARTMENT = "dept-9c2f41d7-secret"
SECRET_CLAIMS = {"sub": SUBJECT, "email": EMAIL, "department": DEPARTMENT}
CLAIM_VALUES = (SUBJECT, EMAIL, DEPARTMENT, "orders-api", "orders:read", "profile-x7")

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
OTHER_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
OTHER_SPAN_ID = "b7ad6b7169203331"

_config_names = itertools.count()


def traceparent(trace_id: str = TRACE_ID, span_id: str = SPAN_ID, flags: str = "01") -> str:
    return f"00-{trace_id}-{span_id}-{flags}"


def hex_trace(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


def hex_span(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.span_id, "016x")


def variant(world: World, folder: Path, extra: str) -> Config:
    """The world's config plus ``extra`` YAML (e.g. a telemetry section), keys by absolute path."""
    path = folder / f"config-{next(_config_names)}.yaml"
    path.write_text(CONFIG.replace("keys/", f"{world.root}/keys/") + extra, encoding="utf-8")
    return load_config(path)


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    """Every span of this module: the leak test reads them all at the end."""
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider(resource=Resource.create({"service.name": "authz-unit"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture(scope="module")
def tokens() -> list[str]:
    """Every token minted in this module (for the leak test)."""
    return []


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("telemetry")


@pytest.fixture(scope="module")
def subject_config(world: World, folder: Path) -> Config:
    return variant(world, folder, "telemetry:\n  subject: true\n")


@pytest.fixture(scope="module")
def sampled_config(world: World, folder: Path) -> Config:
    return variant(world, folder, "telemetry:\n  allow_log_sample_rate: 0\n")


class Checker:
    """Runs the real handler and returns the response with the spans this check produced."""

    def __init__(self, world: World, exporter: InMemorySpanExporter, tokens: list[str]) -> None:
        self.world, self.exporter, self.tokens = world, exporter, tokens

    def token(self, **claims: Any) -> str:
        token = self.world.token(self.world.claims(**{**SECRET_CLAIMS, **claims}))
        self.tokens.append(token)
        return token

    async def run(
        self,
        service: AuthorizationService,
        message: CheckRequest,
        metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> tuple[CheckResponse, list[ReadableSpan]]:
        before = len(self.exporter.get_finished_spans())
        response = await service.check(message.SerializeToString(), ServicerContext(metadata))
        return response, list(self.exporter.get_finished_spans()[before:])


@pytest.fixture(scope="module")
def checker(world: World, exporter: InMemorySpanExporter, tokens: list[str]) -> Checker:
    return Checker(world, exporter, tokens)


@pytest.fixture(scope="module")
def service(config: Config, provider: TracerProvider) -> AuthorizationService:
    """The handler on the world's config, clock at NOW, tracing into the in-memory exporter."""
    return AuthorizationService(SnapshotHolder(config), lambda: NOW, Telemetry(provider))


@pytest.fixture(scope="module")
def subject_service(subject_config: Config, provider: TracerProvider) -> AuthorizationService:
    return AuthorizationService(SnapshotHolder(subject_config), lambda: NOW, Telemetry(provider))


def check_span(spans: Sequence[ReadableSpan]) -> ReadableSpan:
    (span,) = [s for s in spans if s.name == CHECK_SPAN]
    return span


# ------------------------------------------------------------------ parent propagation


async def test_parent_from_w3c_traceparent_metadata(service, checker: Checker) -> None:
    """A W3C traceparent in the gRPC metadata is the Check span's remote parent."""
    _, spans = await checker.run(
        service, check_request(token=checker.token()), [("traceparent", traceparent())]
    )
    span = check_span(spans)
    assert hex_trace(span) == TRACE_ID
    assert span.parent is not None
    assert span.parent.is_remote
    assert format(span.parent.span_id, "016x") == SPAN_ID


async def test_w3c_tracestate_is_carried(service, checker: Checker) -> None:
    """The tracestate that comes with a traceparent stays on the span's context."""
    _, spans = await checker.run(
        service,
        check_request(token=checker.token()),
        [("traceparent", traceparent()), ("tracestate", "vendor=opaque-value")],
    )
    span = check_span(spans)
    assert span.context is not None
    assert span.context.trace_state.get("vendor") == "opaque-value"


async def test_parent_from_b3_single_metadata(service, checker: Checker) -> None:
    """A B3 single header (``b3``) in the metadata is the parent."""
    _, spans = await checker.run(
        service, check_request(token=checker.token()), [("b3", f"{TRACE_ID}-{SPAN_ID}-1")]
    )
    span = check_span(spans)
    assert hex_trace(span) == TRACE_ID
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == SPAN_ID


async def test_parent_from_b3_multi_metadata(service, checker: Checker) -> None:
    """B3 multi headers (``x-b3-traceid``, ``x-b3-spanid``, ``x-b3-sampled``) in the metadata: the parent."""
    metadata = [("x-b3-traceid", TRACE_ID), ("x-b3-spanid", SPAN_ID), ("x-b3-sampled", "1")]
    _, spans = await checker.run(service, check_request(token=checker.token()), metadata)
    span = check_span(spans)
    assert hex_trace(span) == TRACE_ID
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == SPAN_ID


async def test_w3c_wins_over_b3_in_metadata(service, checker: Checker) -> None:
    """Both W3C and B3 in the metadata: the W3C context is the parent."""
    metadata = [("b3", f"{OTHER_TRACE_ID}-{OTHER_SPAN_ID}-1"), ("traceparent", traceparent())]
    _, spans = await checker.run(service, check_request(token=checker.token()), metadata)
    assert hex_trace(check_span(spans)) == TRACE_ID


async def test_parent_from_request_headers_when_metadata_has_none(service, checker: Checker) -> None:
    """No trace context in the metadata: the traceparent among the request's HTTP headers is the parent."""
    message = check_request(token=checker.token(), headers={"traceparent": traceparent()})
    _, spans = await checker.run(service, message, [("user-agent", "grpc-c++/1.0"), ("x-envoy-x", "1")])
    span = check_span(spans)
    assert hex_trace(span) == TRACE_ID
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == SPAN_ID


async def test_b3_request_headers_as_fallback(service, checker: Checker) -> None:
    """B3 multi among the request headers is a fallback parent too."""
    headers = {"x-b3-traceid": TRACE_ID, "x-b3-spanid": SPAN_ID, "x-b3-sampled": "1"}
    _, spans = await checker.run(service, check_request(token=checker.token(), headers=headers))
    assert hex_trace(check_span(spans)) == TRACE_ID


async def test_metadata_wins_over_request_headers(service, checker: Checker) -> None:
    """Envoy's context in the metadata beats the downstream client's in the headers."""
    message = check_request(
        token=checker.token(), headers={"traceparent": traceparent(OTHER_TRACE_ID, OTHER_SPAN_ID)}
    )
    _, spans = await checker.run(service, message, [("traceparent", traceparent())])
    span = check_span(spans)
    assert hex_trace(span) == TRACE_ID
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == SPAN_ID


async def test_invalid_metadata_context_falls_back_to_headers(service, checker: Checker) -> None:
    """An unparsable traceparent in the metadata does not hide a valid one in the headers."""
    message = check_request(token=checker.token(), headers={"traceparent": traceparent()})
    _, spans = await checker.run(
        service, message, [("traceparent", "00-zz-yy-01"), ("grpc-trace-bin", b"\x00\x01")]
    )
    assert hex_trace(check_span(spans)) == TRACE_ID


async def test_new_root_without_any_context(service, checker: Checker) -> None:
    """No trace context anywhere: the Check span is a new root."""
    _, spans = await checker.run(service, check_request(token=checker.token()))
    span = check_span(spans)
    assert span.parent is None
    assert hex_trace(span) not in (TRACE_ID, OTHER_TRACE_ID)


# ------------------------------------------------------------------ span shape and attributes


async def test_allow_span_kind_children_and_attributes(service, checker: Checker) -> None:
    """An allow: SERVER span with rpc.* and decision attributes; decrypt/verify/policy are its children."""
    response, spans = await checker.run(
        service, check_request(token=checker.token()), [("traceparent", traceparent())]
    )
    assert response.status.code == 0
    span = check_span(spans)
    assert span.kind is SpanKind.SERVER
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": "envoy.service.auth.v3.Authorization",
        "rpc.method": "Check",
        "rpc.grpc.status_code": 0,
        "authz.decision": "allow",
        "authz.reason": "ok",
        "authz.tenant": "acme",
        "authz.rule": "read-orders",
        "authz.key_id": "acme-es256",
        "authz.decryption_key_id": "enc-rsa-oaep-256",
        "authz.cache_hit": False,
        "authz.binding": "none",
        "http.request.method": "GET",
        "url.path": "/orders",
    }
    children = [s for s in spans if s is not span]
    assert [c.name for c in children] == list(STEPS)
    for child in children:
        assert child.parent is not None
        assert format(child.parent.span_id, "016x") == hex_span(span)
        assert hex_trace(child) == TRACE_ID
        assert child.kind is SpanKind.INTERNAL
        assert child.status.status_code is StatusCode.UNSET


async def test_deny_with_reason_is_not_an_error(service, checker: Checker) -> None:
    """A policy deny: decision and reason on the span, status UNSET on the span and its steps."""
    response, spans = await checker.run(service, check_request(token=checker.token(scope="profile-x7")))
    assert response.denied_response.status.code == 403
    span = check_span(spans)
    attributes = dict(span.attributes or {})
    assert attributes["authz.decision"] == "deny"
    assert attributes["authz.reason"] == "scope_missing"
    assert attributes["authz.tenant"] == "acme"
    assert attributes["authz.rule"] == "read-orders"
    assert "authz.subject" not in attributes
    assert all(s.status.status_code is StatusCode.UNSET for s in spans)


async def test_token_deny_steps_are_not_errors(service, checker: Checker) -> None:
    """A token that fails to decrypt: the decrypt step span is not an error and quotes nothing."""
    token = checker.token()
    head, rest = token.rsplit(".", 1)
    tampered = f"{head}.{'A' if rest[0] != 'A' else 'B'}{rest[1:]}"
    checker.tokens.append(tampered)
    response, spans = await checker.run(service, check_request(token=tampered))
    assert response.denied_response.status.code == 401
    span = check_span(spans)
    assert dict(span.attributes or {})["authz.reason"] == "decryption_failed"
    assert [s.name for s in spans] == ["decrypt", CHECK_SPAN]
    for each in spans:
        assert each.status.status_code is StatusCode.UNSET, (each.name, each.status.description)
        assert each.status.description is None


async def test_dry_run_deny_attributes(service, checker: Checker) -> None:
    """A dry-run tenant's deny: decision dry-run-deny with the reason, not an error."""
    message = check_request(host="api.dry.test", token=checker.token(tenant="dry", scope="profile-x7"))
    response, spans = await checker.run(service, message)
    assert response.status.code == 0
    span = check_span(spans)
    attributes = dict(span.attributes or {})
    assert attributes["authz.decision"] == "dry-run-deny"
    assert attributes["authz.reason"] == "scope_missing"
    assert attributes["authz.tenant"] == "dry"
    assert span.status.status_code is StatusCode.UNSET


async def test_public_rule_attributes(service, checker: Checker) -> None:
    """A public rule without a token: allow with tenant and rule, no key ids, no token steps."""
    response, spans = await checker.run(service, check_request(path="/healthz"))
    assert response.status.code == 0
    span = check_span(spans)
    assert [s.name for s in spans] == [CHECK_SPAN]
    attributes = dict(span.attributes or {})
    assert {k: v for k, v in attributes.items() if k.startswith("authz.")} == {
        "authz.decision": "allow",
        "authz.reason": "ok",
        "authz.tenant": "acme",
        "authz.rule": "health",
    }


async def test_path_invalid_has_no_tenant(service, checker: Checker) -> None:
    """An unsafe path (400): deny path_invalid, no tenant, rule, method or path attribute."""
    response, spans = await checker.run(service, check_request(path="/orders%2F..", token=checker.token()))
    assert response.denied_response.status.code == 400
    span = check_span(spans)
    attributes = dict(span.attributes or {})
    assert attributes["authz.decision"] == "deny"
    assert attributes["authz.reason"] == "path_invalid"
    for absent in ("authz.tenant", "authz.rule", "url.path", "http.request.method", "authz.key_id"):
        assert absent not in attributes
    assert span.status.status_code is StatusCode.UNSET


class _Poisoned:
    """A "time" whose arithmetic fails with a message quoting a secret."""

    def __init__(self, secret: str) -> None:
        self.secret = secret

    def __sub__(self, other: object) -> float:
        raise RuntimeError(f"fault while holding {self.secret}")

    __add__ = __rsub__ = __radd__ = __sub__


async def test_internal_fault_is_error(config: Config, provider, checker: Checker) -> None:
    """An internal fault mid-decision: internal_error deny, Check span ERROR, no span quotes the fault."""
    token = checker.token()
    service = AuthorizationService(SnapshotHolder(config), lambda: _Poisoned(token), Telemetry(provider))
    response, spans = await checker.run(service, check_request(token=token))
    assert response.denied_response.status.code == 500
    span = check_span(spans)
    assert dict(span.attributes or {})["authz.reason"] == "internal_error"
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "internal_error"
    for each in spans:
        assert each.status.description in (None, "internal_error", "RuntimeError"), each.status
    assert [s.name for s in spans if s.name == "policy"] == []


def test_step_status_fault_vs_deny(provider, exporter) -> None:
    """A step ending in a fault is ERROR with the type name only; one ending in a deny stays UNSET."""
    telemetry = Telemetry(provider)
    before = len(exporter.get_finished_spans())
    with pytest.raises(RuntimeError), telemetry.step("verify"):
        raise RuntimeError(f"fault quoting {SUBJECT}")
    with pytest.raises(AuthzError), telemetry.step("decrypt"):
        raise AuthzError("decryption_failed", "detail")
    with telemetry.step("policy"):
        pass
    verify, decrypt, policy = exporter.get_finished_spans()[before:]
    assert (verify.name, verify.status.status_code, verify.status.description) == (
        "verify",
        StatusCode.ERROR,
        "RuntimeError",
    )
    assert verify.events == ()
    assert (decrypt.name, decrypt.status.status_code, decrypt.status.description) == (
        "decrypt",
        StatusCode.UNSET,
        None,
    )
    assert policy.status.status_code is StatusCode.UNSET
    counts = {labels: series[-1] for labels, series in telemetry.step_latency.series.items()}
    assert counts == {("verify",): 1, ("decrypt",): 1, ("policy",): 1}


def _raising_clock() -> float:
    raise RuntimeError("clock failed")


async def test_raising_clock_marks_check_span_error(config: Config, provider, exporter) -> None:
    """A fault outside the decision (the clock raises): the Check span still ends as ERROR."""
    service = AuthorizationService(SnapshotHolder(config), _raising_clock, Telemetry(provider))
    before = len(exporter.get_finished_spans())
    await service.check(check_request(path="/orders").SerializeToString(), ServicerContext())
    span = check_span(exporter.get_finished_spans()[before:])
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "internal_error"


async def test_raising_clock_is_answered_with_internal_error(config: Config) -> None:
    """A clock that raises is an internal_error deny, not an RPC error (the handler never raises)."""
    service = AuthorizationService(SnapshotHolder(config), _raising_clock, Telemetry())
    response = await service.check(check_request(path="/orders").SerializeToString(), ServicerContext())
    assert response.denied_response.status.code == 500


async def test_subject_only_when_enabled(service, subject_service, checker: Checker) -> None:
    """``telemetry: {subject: true}`` adds authz.subject; the default config never does."""
    _, spans = await checker.run(subject_service, check_request(token=checker.token()))
    assert dict(check_span(spans).attributes or {})["authz.subject"] == SUBJECT
    _, spans = await checker.run(service, check_request(token=checker.token()))
    assert "authz.subject" not in dict(check_span(spans).attributes or {})


# ------------------------------------------------------------------ decision log


def _decision_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.fields for r in caplog.records if r.name == "authz.decision" and r.getMessage() == "decision"]


async def test_decision_log_fields_and_trace_id(service, checker: Checker, caplog) -> None:
    """One line per check with the documented fields; trace_id is the Check span's trace id."""
    caplog.set_level(logging.INFO, logger="authz.decision")
    message = check_request(token=checker.token(), request_id="req-log-1")
    _, spans = await checker.run(service, message, [("traceparent", traceparent())])
    (fields,) = _decision_records(caplog)
    assert fields == {
        "request_id": "req-log-1",
        "trace_id": hex_trace(check_span(spans)),
        "tenant": "acme",
        "decision": "allow",
        "reason": "ok",
        "rule": "read-orders",
        "method": "GET",
        "path": "/orders",
        "kid": "acme-es256",
        "binding": "none",
    }
    assert fields["trace_id"] == TRACE_ID


async def test_decision_log_new_root_trace_id(service, checker: Checker, caplog) -> None:
    """Without an incoming context the log names the new root span's trace id."""
    caplog.set_level(logging.INFO, logger="authz.decision")
    _, spans = await checker.run(service, check_request(token=checker.token(scope="profile-x7")))
    (fields,) = _decision_records(caplog)
    assert fields["trace_id"] == hex_trace(check_span(spans))
    assert fields["decision"] == "deny"
    assert fields["reason"] == "scope_missing"
    assert "subject" not in fields


async def test_decision_log_trace_id_with_tracing_off(config: Config, checker: Checker, caplog) -> None:
    """Tracing off: the log still carries the incoming traceparent's trace id, or null without one."""
    caplog.set_level(logging.INFO, logger="authz.decision")
    service = AuthorizationService(SnapshotHolder(config), lambda: NOW, Telemetry())
    await service.check(
        check_request(token=checker.token()).SerializeToString(),
        ServicerContext([("traceparent", traceparent())]),
    )
    await service.check(check_request(token=checker.token()).SerializeToString(), ServicerContext())
    first, second = _decision_records(caplog)
    assert first["trace_id"] == TRACE_ID
    assert second["trace_id"] is None


async def test_decision_log_subject_only_when_enabled(subject_service, checker: Checker, caplog) -> None:
    """``telemetry: {subject: true}`` adds the subject to the log line."""
    caplog.set_level(logging.INFO, logger="authz.decision")
    await checker.run(subject_service, check_request(token=checker.token()))
    (fields,) = _decision_records(caplog)
    assert fields["subject"] == SUBJECT


async def test_allow_log_sample_rate_zero_drops_allows_never_denies(
    sampled_config: Config, provider, checker: Checker, caplog
) -> None:
    """``allow_log_sample_rate: 0``: no allow is logged, every deny and dry-run deny is; metrics count all."""
    caplog.set_level(logging.INFO, logger="authz.decision")
    telemetry = Telemetry(provider)
    service = AuthorizationService(SnapshotHolder(sampled_config), lambda: NOW, telemetry)
    for _ in range(20):
        await checker.run(service, check_request(token=checker.token()))
    await checker.run(service, check_request(token=checker.token(scope="profile-x7")))
    await checker.run(service, check_request(path="/nothing-here"))
    await checker.run(
        service, check_request(host="api.dry.test", token=checker.token(tenant="dry", scope="profile-x7"))
    )
    logged = [(f["decision"], f["reason"]) for f in _decision_records(caplog)]
    assert logged == [("deny", "scope_missing"), ("deny", "token_missing"), ("dry-run-deny", "scope_missing")]
    assert telemetry.checks.values[("acme", "allow", "ok")] == 20


async def test_decision_log_holds_no_token_or_claims(service, checker: Checker, caplog) -> None:
    """Formatted decision lines (allow, denies, fault) contain no token text and no claim value."""
    caplog.set_level(logging.INFO, logger="authz.decision")
    token = checker.token()
    await checker.run(service, check_request(token=token))
    await checker.run(service, check_request(token=checker.token(scope="profile-x7")))
    await checker.run(service, check_request(path="/admin/x", token=checker.token()))
    await checker.run(service, check_request(token=token[:-10]))
    await checker.run(service, check_request(path="/orders%2F..", token=token))
    formatter = JsonFormatter()
    lines = [formatter.format(r) for r in caplog.records if r.name == "authz.decision"]
    assert len(lines) == 5
    for line in lines:
        json.loads(line)
        assert_no_secret(line, [token], CLAIM_VALUES)


async def test_direct_decision_lines_equal_the_logging_lines(
    subject_service, checker: Checker, caplog
) -> None:
    """With setup_logging's handler the decision log bypasses logging's machinery: same lines, bar the time."""
    messages = [
        (check_request(token=checker.token(), request_id="a-1"), [("traceparent", traceparent())]),
        (check_request(token=checker.token(scope="profile-x7"), request_id="a-2"), []),
        (check_request(path="/orders%2F..", request_id="a-3"), []),
        (check_request(host="api.dry.test", token=checker.token(tenant="dry", scope="profile-x7")), []),
    ]

    async def run_all() -> None:
        for message, metadata in messages:
            await checker.run(subject_service, message, metadata)

    caplog.set_level(logging.INFO, logger="authz.decision")
    await run_all()
    formatter = JsonFormatter()
    through_logging = [json.loads(formatter.format(r)) for r in caplog.records if r.name == "authz.decision"]

    stream = io.StringIO()
    handler = JsonHandler()
    handler.setStream(stream)
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers[:], root.level = [handler], logging.INFO
    try:
        assert direct_sink(logging.getLogger("authz.decision")) is handler
        await run_all()
        handler.flush()  # lines written on the loop are gathered a few ms; logging.shutdown() writes them
    finally:
        root.handlers[:], root.level = saved, level
    direct = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(direct) == len(through_logging) == 4
    for line in (*direct, *through_logging):
        del line["time"]
        line.pop("trace_id")  # a new root span per check when none came in: differs run to run
    assert direct == through_logging
    assert [line["request_id"] for line in direct][:3] == ["a-1", "a-2", "a-3"]
    assert "subject" in direct[0]


# ------------------------------------------------------------------ OTEL_* environment


OTEL_VARIABLES = (
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
)
ENDPOINT = "http://127.0.0.1:4317"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No OTEL_* variable from the outer environment leaks into these tests."""
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT},
        {"OTEL_SDK_DISABLED": "TRUE", "OTEL_TRACES_EXPORTER": "otlp"},
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT},
    ],
    ids=["empty", "protocol-only", "sdk-disabled", "sdk-disabled-upper", "exporter-none"],
)
def test_exporter_off(clean_env, environ: dict[str, str]) -> None:
    """Tracing is off by default, with OTEL_SDK_DISABLED=true and with OTEL_TRACES_EXPORTER=none."""
    assert exporter_from_env(environ) is None
    assert tracer_provider_from_env(environ) is None


@pytest.mark.parametrize(
    ("environ", "module"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, "grpc"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ENDPOINT}, "grpc"),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "grpc"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "grpc"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "http"),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            "http",
        ),
    ],
    ids=["endpoint", "traces-endpoint", "exporter-otlp", "grpc", "http-protobuf", "traces-protocol-wins"],
)
def test_exporter_on(clean_env, environ: dict[str, str], module: str) -> None:
    """An endpoint or OTEL_TRACES_EXPORTER=otlp turns tracing on: gRPC by default, or http/protobuf."""
    for name, value in environ.items():
        clean_env.setenv(name, value)
    exporter = exporter_from_env(environ)
    assert exporter is not None
    try:
        assert type(exporter).__name__ == "OTLPSpanExporter"
        assert type(exporter).__module__ == f"opentelemetry.exporter.otlp.proto.{module}.trace_exporter"
    finally:
        exporter.shutdown()


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_TRACES_EXPORTER": "jaeger"},
        {"OTEL_TRACES_EXPORTER": "console"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "thrift"},
    ],
    ids=["jaeger", "console", "http-json", "thrift"],
)
def test_exporter_unsupported_raises(clean_env, environ: dict[str, str]) -> None:
    """An exporter or protocol we cannot provide is a ValueError (serve exits 2), not silently off."""
    with pytest.raises(ValueError, match="not supported"):
        exporter_from_env(environ)


@pytest.mark.parametrize(
    ("service_name", "resource_attributes", "expected"),
    [
        (None, None, "envoy-jwe-authz"),
        ("from-service-name", None, "from-service-name"),
        (None, "service.name=from-resource,team=x", "from-resource"),
        ("from-service-name", "service.name=from-resource", "from-service-name"),
    ],
    ids=["default", "service-name", "resource-attributes", "service-name-wins"],
)
def test_tracer_provider_service_name(clean_env, service_name, resource_attributes, expected) -> None:
    """service.name: OTEL_SERVICE_NAME, else OTEL_RESOURCE_ATTRIBUTES, else envoy-jwe-authz."""
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", ENDPOINT)
    if service_name:
        clean_env.setenv("OTEL_SERVICE_NAME", service_name)
    if resource_attributes:
        clean_env.setenv("OTEL_RESOURCE_ATTRIBUTES", resource_attributes)
    provider = tracer_provider_from_env()
    assert provider is not None
    try:
        assert provider.resource.attributes["service.name"] == expected
    finally:
        provider.shutdown()


# ------------------------------------------------------------------ nothing secret in any span


class SecretScanner:
    """Finds a token, any 12+ character piece of one, or a claim value in a text."""

    SIZE = 12

    def __init__(self, tokens: Sequence[str], claim_values: Sequence[str]) -> None:
        self.claim_values = tuple(claim_values)
        self.pieces = {t[i : i + self.SIZE] for t in tokens for i in range(len(t) - self.SIZE + 1)}

    def check(self, text: str) -> None:
        for value in self.claim_values:
            assert value not in text, (value, text)
        for i in range(len(text) - self.SIZE + 1):
            assert text[i : i + self.SIZE] not in self.pieces, (text[i : i + self.SIZE], text)


def assert_no_secret(text: str, tokens: Sequence[str], claim_values: Sequence[str]) -> None:
    """``text`` contains no token, no 12+ character piece of one, and no claim value."""
    SecretScanner(tokens, claim_values).check(text)


def _span_texts(span: ReadableSpan) -> Iterator[tuple[str, str]]:
    for key, value in (span.attributes or {}).items():
        yield key, str(value)
    yield "<name>", span.name
    yield "<status>", span.status.description or ""
    for event in span.events:
        yield f"<event {event.name}>", event.name
        for key, value in (event.attributes or {}).items():
            yield f"<event {event.name}> {key}", str(value)


async def test_no_token_or_claim_value_in_any_span(
    service, subject_service, config: Config, provider, *, checker: Checker, exporter
) -> None:
    """Every span of this module: no token, 12+ char piece of one, or claim value (but authz.subject)."""
    # Every scenario once more, so that this test stands alone too.
    await checker.run(service, check_request(token=checker.token()), [("traceparent", traceparent())])
    await checker.run(service, check_request(token=checker.token(scope="profile-x7")))
    await checker.run(service, check_request(path="/admin/users", token=checker.token()))
    await checker.run(service, check_request(host="api.dry.test", token=checker.token(tenant="dry")))
    await checker.run(service, check_request(path="/healthz"))
    await checker.run(service, check_request(path="/orders%2F..", token=checker.token()))
    await checker.run(service, check_request(host="api.globex.test", token=checker.token()))
    await checker.run(subject_service, check_request(token=checker.token()))
    token = checker.token()
    await checker.run(service, check_request(token=token[: len(token) // 2]))
    faulty = AuthorizationService(SnapshotHolder(config), lambda: _Poisoned(token), Telemetry(provider))
    await checker.run(faulty, check_request(token=token))

    spans = exporter.get_finished_spans()
    assert len(spans) >= 20  # this test's own scenarios, plus every earlier test's
    assert len(checker.tokens) >= 8
    scanner = SecretScanner(checker.tokens, CLAIM_VALUES)
    subjects_seen = 0
    for span in spans:
        for key, text in _span_texts(span):
            if key == "authz.subject":
                assert text == SUBJECT
                subjects_seen += 1
                continue
            scanner.check(text)
    assert subjects_seen >= 1
