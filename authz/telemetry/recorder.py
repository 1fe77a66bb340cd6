"""Telemetry of the check path: spans, metrics and the decision log, behind the core's Recorder."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode

from authz.core.decision import Decision
from authz.core.observe import Trace
from authz.core.request import AuthzRequest
from authz.core.snapshot import RecordSettings
from authz.errors import AuthzError, Reason
from authz.telemetry import decision_log
from authz.telemetry.decision_log import DEFAULT_SETTINGS, RepeatedAnswer, subscription_labels
from authz.telemetry.metrics import Histogram, Registry
from authz.telemetry.tracing import EMPTY_CONTEXT, UNTRACED, CheckTrace, extract_parent

__all__ = ["Telemetry"]

_GRPC_ATTRIBUTES = {
    "rpc.system": "grpc",
    "rpc.service": "envoy.service.auth.v3.Authorization",
    "rpc.method": "Check",
}
_HTTP_ATTRIBUTES = {"network.protocol.name": "http"}


class _Timer:
    """Times a block into a histogram; a class, not a generator, for speed."""

    __slots__ = ("_histogram", "_labels", "_start")

    def __init__(self, labels: tuple[str, ...], histogram: Histogram) -> None:
        self._labels = labels
        self._histogram = histogram
        self._start = 0.0

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._histogram.observe(self._labels, time.perf_counter() - self._start)


class Telemetry:
    """Spans, metrics and the decision log of the check path (the core's Recorder)."""

    def __init__(self, provider: TracerProvider | None = None, *, registry: Registry | None = None) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("envoy-jwe-authz") if provider is not None else None
        self.registry = registry or Registry()
        self.checks = self.registry.counter(
            "authz_checks_total",
            "Checks answered, by tenant, decision and reason.",
            ("tenant", "decision", "reason"),
        )
        self.latency = self.registry.histogram(
            "authz_check_duration_seconds", "Time to decide a check, by decision.", ("decision",)
        )
        self.memo_hits = self.registry.counter(
            "authz_http_memo_hits_total", "HTTP door checks answered from the answer memo (repeats).", ()
        )
        self.grpc_memo_hits = self.registry.counter(
            "authz_grpc_memo_hits_total", "gRPC door checks answered from the answer memo (repeats).", ()
        )
        self.http_connections = self.registry.counter(
            "authz_http_connections_total",
            "Connections the HTTP door accepted (Envoy keeps its own open: a rise per check is a reconnect).",
            (),
        )
        self.http_rejections = self.registry.counter(
            "authz_http_rejections_total",
            "HTTP door requests answered without a decision and the connection closed, by status and cause.",
            ("status", "cause"),
        )
        self.bindings = self.registry.counter(
            "authz_sender_bindings_total",
            "Checks of a token, by how the request proved it holds it: dpop, mtls or none (bearer).",
            ("binding",),
        )
        self.subscriptions = self.registry.counter(
            "authz_subscription_checks_total",
            "Checks of a client's API subscription, by tenant, API and result (ok, or the deny reason).",
            ("tenant", "api", "result"),
        )
        self._timers: dict[str, _Timer] = {}
        self.step_latency = self.registry.histogram(
            "authz_token_step_duration_seconds",
            "Time of the token steps: decrypt, verify, policy.",
            ("step",),
        )

    # -- one check's trace -----------------------------------------------------

    def begin(
        self,
        metadata: Iterable[tuple[str, Any]],
        headers: Mapping[str, Sequence[str]] | None,
        name: str,
        *,
        grpc: bool,
    ) -> CheckTrace:
        """The trace of one check: its SERVER span (tracing on) under the parent the caller sent."""
        parent = extract_parent(metadata, headers)
        if self.tracer is None:
            return UNTRACED if parent is EMPTY_CONTEXT else CheckTrace(None, parent)
        span = self.tracer.start_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=_GRPC_ATTRIBUTES if grpc else _HTTP_ATTRIBUTES,
            record_exception=False,
            set_status_on_exception=False,
        )
        return CheckTrace(span, parent)

    def step(self, name: str) -> contextlib.AbstractContextManager[None]:
        """A step of the decision: timed for metrics, a child span when tracing."""
        if self.tracer is None:
            # One reusable timer per step name: steps never nest or interleave
            # (the decision is synchronous), and this path must cost next to nothing.
            timer = self._timers.get(name)
            if timer is None:
                timer = self._timers[name] = _Timer((name,), self.step_latency)
            return timer
        return self._traced_step(name)

    @contextlib.contextmanager
    def _traced_step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            with self.tracer.start_as_current_span(  # type: ignore[union-attr]
                name, record_exception=False, set_status_on_exception=False
            ) as span:
                try:
                    yield
                except AuthzError:
                    raise  # a deny (bad token, failed check) is not an error of this service
                except Exception as exc:
                    # The type name only: the SDK's default status would quote the message.
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    raise
        finally:
            self.step_latency.observe((name,), time.perf_counter() - start)

    # -- recording -------------------------------------------------------------

    def finish(
        self,
        trace: Trace,
        decision: Decision,
        request: AuthzRequest | None,
        *,
        request_id: str,
        elapsed: float,
        settings: RecordSettings | None,
    ) -> None:
        """Record an answered check: metrics, span attributes and status (then the span ends), log line."""
        settings = settings or DEFAULT_SETTINGS
        self.checks.inc((decision.tenant or "", decision.verdict.value, decision.reason))
        self.latency.observe((decision.verdict.value,), elapsed)
        if decision.token_present:
            self.bindings.inc((decision.binding.value,))
        subscription = subscription_labels(decision)
        if subscription is not None:
            self.subscriptions.inc(subscription)
        check = trace if isinstance(trace, CheckTrace) else UNTRACED
        span = check.span
        if span is not None:
            span.set_attributes(_attributes(decision, request, settings))
            span.set_attribute("rpc.grpc.status_code", 0)  # every answer is a CheckResponse
            if decision.reason == Reason.INTERNAL_ERROR:
                span.set_status(Status(StatusCode.ERROR, Reason.INTERNAL_ERROR))
        decision_log.write(
            decision, request, request_id=request_id, trace_id=check.trace_id, settings=settings
        )
        if span is not None:
            span.end()

    def repeat(
        self, answer: RepeatedAnswer, *, request_id: str, trace_id: str | None, elapsed: float
    ) -> None:
        """Record a check answered from an earlier identical one: what finish() recorded for it (no span:
        repeats are answered only with tracing off)."""
        self.checks.inc(answer.labels)
        self.latency.observe(answer.verdict_label, elapsed)
        self.bindings.inc(answer.binding_label)  # a repeat is always of a token's allow
        if answer.subscription_label is not None:
            self.subscriptions.inc(answer.subscription_label)
        decision_log.write_repeat(answer, request_id=request_id, trace_id=trace_id)

    def shutdown(self) -> None:
        """Flush and stop the exporter (on server shutdown)."""
        if self.provider is not None:
            self.provider.shutdown()


def _attributes(decision: Decision, request: AuthzRequest | None, settings: RecordSettings) -> dict[str, Any]:
    attributes: dict[str, Any] = {"authz.decision": decision.verdict.value, "authz.reason": decision.reason}
    if decision.token_present:
        attributes["authz.cache_hit"] = decision.cache_hit
        attributes["authz.binding"] = decision.binding.value
    if decision.proof_key:
        attributes["authz.dpop.key_hash"] = decision.proof_key
    for key, value in (
        ("authz.tenant", decision.tenant),
        ("authz.rule", decision.rule),
        ("authz.key_id", decision.key_id),
        ("authz.decryption_key_id", decision.decryption_key_id),
        ("http.request.method", request.method if request else None),
        ("url.path", request.path if request else None),
        ("authz.subject", decision.subject if settings.log_subject else None),
        ("authz.revocation", decision.revocation),
        ("authz.jti_hash", decision.jti_hash),
        ("authz.api", decision.api),
        ("authz.client", decision.client),
        ("authz.subscription", decision.subscription),
    ):
        if value:
            attributes[key] = value
    return attributes
